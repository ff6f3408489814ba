"""Config: every key declared once; anything unenforceable is refused, naming key and file."""
from __future__ import annotations

import sys

import pytest

import proxistore
from proxistore.config import load_config, read_toml
from proxistore.errors import ConfigError

from conftest import REPO

DEFAULT_TOML = REPO / "config" / "default.toml"


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_toml_equals_the_effective_defaults():
    from_file = load_config(DEFAULT_TOML)
    builtin = load_config(None)
    assert from_file.wal == builtin.wal
    assert from_file.storage == builtin.storage
    assert from_file.flush == builtin.flush
    assert from_file.maintenance == builtin.maintenance
    assert from_file.policies == builtin.policies


def test_default_toml_spells_out_every_declared_key():
    raw = read_toml(str(DEFAULT_TOML))
    cfg = load_config(None)
    declared = {row.path for row in cfg.explain()}
    present = set()
    for section, body in raw.items():
        for key, value in body.items():
            if isinstance(value, dict):
                present |= {f"{section}.{key}.{k}" for k in value}
            else:
                present.add(f"{section}.{key}")
    assert present == declared


def test_default_toml_keeps_the_original_systems_thresholds():
    cfg = load_config(DEFAULT_TOML)
    assert cfg.flush["size"]["memory_flush_size_bytes"] == 1_000_000
    assert cfg.flush["global_memory"]["global_flush_threshold"] == 512_000_000
    assert cfg.flush["global_memory"]["global_memory_limit"] == 512_000_000


def test_unknown_key_is_an_error_listing_the_valid_keys(tmp_path):
    p = write(tmp_path, '[flush.size]\nmemory_flush_size = "1MB"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "flush.size.memory_flush_size" in msg and str(p) in msg and "memory_flush_size_bytes" in msg


def test_unknown_top_level_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cache"):
        load_config(write(tmp_path, "[cache]\nsize = 1\n"))


def test_threshold_under_a_policy_that_is_not_enabled_is_refused(tmp_path):
    p = write(tmp_path, '[flush]\npolicies = ["manual"]\n[flush.size]\nmemory_flush_size_bytes = "1MB"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "flush.size" in str(e.value) and "not enabled" in str(e.value) and str(p) in str(e.value)


def test_section_for_an_unregistered_policy_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no registered flush policy"):
        load_config(write(tmp_path, '[flush.sizee]\nmemory_flush_size_bytes = "1MB"\n'))


def test_enabling_an_unregistered_policy_names_the_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, '[flush]\npolicies = ["size", "nope"]\n'))
    assert "flush.policies" in str(e.value) and "choose one of" in str(e.value) and "manual" in str(e.value)


def test_section_for_a_wal_strategy_that_is_not_selected_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"wal\.other"):
        load_config(write(tmp_path, '[wal.other]\nx = 1\n'))


@pytest.mark.parametrize("text,fragment", [
    ('[flush.size]\nmemory_flush_size_bytes = true\n', "memory_flush_size_bytes"),
    ('[flush.size]\nmemory_flush_size_bytes = "1 parsec"\n', "unknown size unit"),
    ('[flush.size]\nmemory_flush_size_bytes = -1\n', "negative"),
    ('[flush.time]\nmax_unflushed_age = "-5s"\n', "negative"),
    ('[maintenance]\nworkers = "two"\n', "maintenance.workers"),
    ('[maintenance]\nworkers = 0\n', "minimum"),
    ('[flush]\npolicies = "size"\n', "list of strings"),
    ('[flush]\npolicies = ["size", "size"]\n', "more than once"),
])
def test_wrong_types_bad_units_and_negative_values_name_the_key(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert fragment in str(e.value) and str(p) in str(e.value)


def test_contradictory_global_thresholds_are_refused(tmp_path):
    p = write(tmp_path, '[flush.global_memory]\nglobal_flush_threshold = "1GB"\nglobal_memory_limit = "512MB"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "flush.global_memory.global_flush_threshold" in str(e.value)


def test_toml_syntax_errors_give_file_line_and_column(tmp_path):
    p = write(tmp_path, '[flush.size]\nmemory_flush_size_bytes = = 3\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.line == 2 and e.value.column is not None and f"{p}:2:" in str(e.value)


def test_a_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_dict_overrides_are_validated_like_files():
    cfg = load_config({"flush": {"size": {"memory_flush_size_bytes": "4MB"}}})
    assert cfg.flush["size"]["memory_flush_size_bytes"] == 4_000_000
    with pytest.raises(ConfigError, match="<dict>"):
        load_config({"flush": {"size": {"memory_flush_size_byte": "4MB"}}})


def test_explain_names_the_component_enforcing_each_threshold():
    rows = {r.path: r for r in load_config(None).explain()}
    row = rows["flush.size.memory_flush_size_bytes"]
    assert row.threshold and "size" in row.component and row.display == "1MB"
    assert "global_memory" in rows["flush.global_memory.global_memory_limit"].component


def test_bad_config_passed_to_open_leaves_no_lock_and_no_data(tmp_path):
    with pytest.raises(ConfigError):
        proxistore.open(tmp_path / "db", {"flush": {"size": {"bogus": 1}}})
    assert not (tmp_path / "db").exists()


def test_per_collection_override_of_a_global_key_is_refused(db):
    with pytest.raises(ConfigError, match="per collection"):
        db.create_collection("c", dim=4, config={"flush": {"global_memory": {"global_memory_limit": "1GB"}}})
    assert db.collections() == []


def test_per_collection_overrides_persist_with_the_collection(db_path):
    with proxistore.open(db_path) as db:
        db.create_collection("c", dim=4, config={"flush": {"size": {"memory_flush_size_bytes": "4MB"}}})
    with proxistore.open(db_path) as db:
        rt = db._runtime("c")
        assert rt.settings["flush"]["size"]["memory_flush_size_bytes"] == 4_000_000
        assert db.stats()["collections"]["c"]["overrides"] == {"flush": {"size": {"memory_flush_size_bytes": "4MB"}}}
