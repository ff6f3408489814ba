"""A data directory remembers what wrote it, and a storage root whose it is.

The failures pinned here lose data without the checks: a second data directory pointed at the
first's storage root removed the first's collections as leftovers at its open; another WAL
strategy skipped the acknowledged writes in the WAL; a changed storage root made the flushed data
look missing. Each is now a ConfigError naming the key, raised before anything is created or
removed, and the database opens as before with the right config.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types

import pytest

import proxistore
from proxistore.errors import ConfigError, DataDirectoryError, StorageError
from proxistore.identity import FORMAT_FILE, ROOT_MARKER
from proxistore.plugins import viper, wal_avro
from proxistore.plugins.viper import ViperEngine
from proxistore.plugins.wal_avro import AvroWalStrategy
from proxistore.registry import build_registry

from conftest import ids_for, random_vectors

DIM = 8
MANUAL_ONLY = {"flush": {"policies": ["manual"]}}


def _fill(path, rng, config=None, *, rows=60, flushed=40, registry=None):
    """A database with one collection: ``flushed`` rows in storage, the rest only in the WAL."""
    vecs = random_vectors(rng, rows, DIM)
    with proxistore.open(path, {**MANUAL_ONLY, **(config or {})}, registry=registry) as db:
        docs = db.create_collection("docs", dim=DIM, metric="l2")
        docs.insert(ids_for(flushed), vecs[:flushed])
        db.flush()
        docs.insert(ids_for(rows)[flushed:], vecs[flushed:])
    return vecs


def _count(path, config=None, registry=None):
    with proxistore.open(path, {**MANUAL_ONLY, **(config or {})}, registry=registry) as db:
        return db.collection("docs").count()


def _tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_a_second_data_directory_on_anothers_storage_root_is_refused_and_removes_nothing(tmp_path, rng):
    shared = {"storage": {"root": str(tmp_path / "shared-storage")}}
    _fill(tmp_path / "a", rng, shared)
    before = _tree(tmp_path / "shared-storage")
    with pytest.raises(ConfigError) as e:
        proxistore.open(tmp_path / "b", shared)
    assert e.value.key == "storage.root"
    assert "another database" in str(e.value) and str(tmp_path / "a") in str(e.value)
    assert not (tmp_path / "b").exists()
    assert _tree(tmp_path / "shared-storage") == before
    assert _count(tmp_path / "a", shared) == 60


def test_a_storage_root_that_holds_none_of_the_databases_data_is_refused(tmp_path, rng):
    _fill(tmp_path / "db", rng)
    elsewhere = {"storage": {"root": str(tmp_path / "empty")}}
    with pytest.raises(ConfigError, match="holds none of this database's 1 collection") as e:
        proxistore.open(tmp_path / "db", elsewhere)
    assert e.value.key == "storage.root" and "''" in str(e.value)
    assert not (tmp_path / "empty").exists()
    assert _count(tmp_path / "db") == 60


def test_storage_moved_with_its_marker_opens_and_the_new_root_is_recorded(tmp_path, rng):
    _fill(tmp_path / "db", rng)
    os.rename(tmp_path / "db" / "storage", tmp_path / "moved")
    moved = {"storage": {"root": str(tmp_path / "moved")}}
    assert _count(tmp_path / "db", moved) == 60
    recorded = json.loads((tmp_path / "db" / FORMAT_FILE).read_text())
    assert recorded["storage_root"] == str(tmp_path / "moved")
    with pytest.raises(ConfigError, match="holds none"):       # the old root is now the wrong one
        proxistore.open(tmp_path / "db", MANUAL_ONLY)


def test_a_new_database_refuses_a_storage_root_holding_files_nobody_claimed(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("someone else's")
    with pytest.raises(ConfigError, match="no proxistore database has claimed") as e:
        proxistore.open(tmp_path / "db", {"storage": {"root": str(root)}})
    assert e.value.key == "storage.root"
    assert not (tmp_path / "db").exists() and _tree(root) == ["notes.txt"]


def _registry_with(**specs):
    """The built-in plugins plus specs registered under new names (a third party's, in effect)."""
    plugin = types.SimpleNamespace(__name__="elsewhere")
    if "wal" in specs:
        plugin.proxistore_wal_strategies = proxistore.hookimpl(lambda: [specs["wal"]])
    if "storage" in specs:
        plugin.proxistore_storage_engines = proxistore.hookimpl(lambda: [specs["storage"]])
    return build_registry(include_external=False, extra_plugins=(plugin,))


def _elsewhere(kind):
    """A built-in plugin under a new name that keeps its files in a subdirectory of its root: it
    would open the data directory cleanly and find none of its data (for the WAL: replay none of
    the 20 acknowledged rows that are only there)."""
    if kind == "wal":
        [avro] = wal_avro.proxistore_wal_strategies()
        return dataclasses.replace(avro, name="sidecar", factory=lambda config, *, fs, root: AvroWalStrategy(
            config, fs=fs, root=os.path.join(root, "sidecar")))
    [engine] = viper.proxistore_storage_engines()
    return dataclasses.replace(engine, name="viper2", factory=lambda config, *, fs, root: ViperEngine(
        config, fs=fs, root=os.path.join(root, "v2")))


@pytest.mark.parametrize("kind, key, words", [
    ("wal", "wal.strategy", "WAL strategy 'avro'.*'sidecar'.*acknowledged writes"),
    ("storage", "storage.engine", "storage engine 'viper'.*'viper2'.*stored data")])
def test_another_wal_strategy_or_storage_engine_is_refused_while_collections_exist(tmp_path, rng, kind, key,
                                                                                    words):
    spec = _elsewhere(kind)
    reg = _registry_with(**{kind: spec})
    switched = {kind: {"strategy" if kind == "wal" else "engine": spec.name}}
    _fill(tmp_path / "db", rng, registry=reg)
    with pytest.raises(ConfigError, match=words) as e:
        proxistore.open(tmp_path / "db", switched, registry=reg)
    assert e.value.key == key
    assert _count(tmp_path / "db", registry=reg) == 60

    with proxistore.open(tmp_path / "db", registry=reg) as db:      # no collections: free to switch
        db.drop_collection("docs")
    with proxistore.open(tmp_path / "db", switched, registry=reg) as db:
        db.create_collection("docs", dim=DIM).insert(["x"], random_vectors(rng, 1, DIM))
    recorded = json.loads((tmp_path / "db" / FORMAT_FILE).read_text())
    assert recorded["wal_strategy" if kind == "wal" else "storage_engine"] == spec.name


def test_a_data_directory_from_before_the_identity_record_is_adopted(tmp_path, rng):
    _fill(tmp_path / "db", rng)
    (tmp_path / "db" / FORMAT_FILE).write_text(json.dumps({"format_version": 1}))
    (tmp_path / "db" / "storage" / ROOT_MARKER).unlink()
    assert _count(tmp_path / "db") == 60
    recorded = json.loads((tmp_path / "db" / FORMAT_FILE).read_text())
    marker = json.loads((tmp_path / "db" / "storage" / ROOT_MARKER).read_text())
    assert recorded["database_id"] == marker["database_id"] and len(marker["database_id"]) == 32
    assert (recorded["wal_strategy"], recorded["storage_engine"], recorded["storage_root"]) == ("avro", "viper", "")


def test_a_data_directory_of_a_newer_format_is_refused(tmp_path, rng):
    _fill(tmp_path / "db", rng)
    (tmp_path / "db" / FORMAT_FILE).write_text(json.dumps({"format_version": 2}))
    with pytest.raises(DataDirectoryError, match="format 2 is not supported"):
        proxistore.open(tmp_path / "db")


def test_a_damaged_storage_root_marker_is_a_storage_error_naming_it(tmp_path, rng):
    _fill(tmp_path / "db", rng)
    marker = tmp_path / "db" / "storage" / ROOT_MARKER
    marker.write_text("{not json")
    with pytest.raises(StorageError, match=ROOT_MARKER):
        proxistore.open(tmp_path / "db")
    marker.unlink()                       # what the message says to do, when it is this database's
    assert _count(tmp_path / "db") == 60


def test_stats_name_the_database_and_where_its_storage_is(tmp_path, rng):
    root = tmp_path / "bulk"
    _fill(tmp_path / "db", rng, {"storage": {"root": str(root)}})
    with proxistore.open(tmp_path / "db", {"storage": {"root": str(root)}}) as db:
        st = db.stats()
    marker = json.loads((root / ROOT_MARKER).read_text())
    assert st["database_id"] == marker["database_id"] and st["storage_root"] == str(root)
    assert marker["data_dir"] == str(tmp_path / "db")
