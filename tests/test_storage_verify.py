"""``proxistore storage verify``: every stored file checked against its checksum, as a scrub.

Each kind of damage (a segment page, a deletion vector, an index, a manifest, a missing file) is
made on real files and must exit 1 naming the file; a healthy database, also one open in
another process's place (here: this one), exits 0 with its counts.
"""
from __future__ import annotations

import os
import shutil

import pytest

import proxistore

from conftest import ids_for, random_vectors
from test_cli import cli, cli_json

DIM = 8
CONFIG = {"flush": {"policies": ["manual"]}, "storage": {"viper": {"indexing_threshold": 100}}}


def _database(path, rng, config=CONFIG):
    """Two segments (one indexed), a deletion vector; 20 of 350 rows deleted."""
    with proxistore.open(path, config) as db:
        docs = db.create_collection("docs", dim=DIM, metric="l2")
        docs.insert(ids_for(300), random_vectors(rng, 300, DIM))
        db.flush()
        docs.insert(ids_for(350)[300:], random_vectors(rng, 50, DIM))
        docs.delete(ids_for(20))
        db.flush()
        db.wait_idle()
    return path


def _storage_files(path, suffix):
    d = path / "storage" / "docs"
    return sorted(f for f in os.listdir(d) if f.endswith(suffix))


def test_a_healthy_database_verifies_with_its_counts(tmp_path, rng):
    d = _database(tmp_path / "db", rng)
    result = cli_json("storage", "verify", d)
    assert result["ok"] is True and result["problems"] == []
    assert (result["collections"], result["segments"], result["rows"], result["live_rows"],
            result["indexes"]) == (1, 2, 350, 330, 1)
    assert cli("--data", d, "storage", "verify").stdout.startswith("ok: 1 collection(s), 2 segment(s)")


def _flip(path, where=0.5):
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["segment page", "deletion vector", "index", "manifest", "missing segment",
                                    "truncated segment"])
def test_each_kind_of_damage_exits_1_naming_the_file(tmp_path, rng, damage):
    d = _database(tmp_path / "db", rng)
    col = d / "storage" / "docs"
    segment = col / _storage_files(d, ".parquet")[0]
    target = {"segment page": segment, "missing segment": segment, "truncated segment": segment,
              "deletion vector": col / _storage_files(d, ".del")[0],
              "index": col / _storage_files(d, (".faiss", ".hnswlib"))[0], "manifest": col / "MANIFEST.json"}[damage]
    if damage == "missing segment":
        target.unlink()
    elif damage == "truncated segment":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        _flip(target, 0.3 if damage == "segment page" else 0.5)
    r = cli("storage", "verify", d, expect=1)
    assert r.stdout.startswith("DAMAGED: 1 file problem(s)")
    assert f"docs/{target.name}" in r.stderr
    result = cli_json("storage", "verify", d, expect=1)
    assert [p["file"] for p in result["problems"]] == [f"docs/{target.name}"]


def test_it_checks_a_database_while_it_is_open_and_follows_the_recorded_storage_root(tmp_path, rng):
    elsewhere = {**CONFIG, "storage": {**CONFIG["storage"], "root": str(tmp_path / "bulk")}}
    d = _database(tmp_path / "db", rng, elsewhere)
    with proxistore.open(d, elsewhere) as db:
        db.collection("docs").insert(["new"], random_vectors(rng, 1, DIM))
        db.flush()
        result = cli_json("storage", "verify", d)        # no --config: the root proxistore.json records
    assert result["ok"] is True and result["rows"] == 351 and result["root"] == str(tmp_path / "bulk")


def test_a_collection_the_catalog_has_and_storage_lacks_is_reported(tmp_path, rng):
    d = _database(tmp_path / "db", rng)
    shutil.rmtree(d / "storage" / "docs")
    r = cli("storage", "verify", d, expect=1)
    assert "docs" in r.stderr and "holds no manifest" in r.stderr


def test_unreferenced_files_are_listed_not_counted_as_damage(tmp_path, rng):
    d = _database(tmp_path / "db", rng)
    (d / "storage" / "docs" / "seg-99999999.parquet").write_bytes(b"left by a crashed flush")
    result = cli_json("storage", "verify", d)
    assert result["ok"] is True and result["unreferenced"] == ["docs/seg-99999999.parquet"]


def test_storage_verify_of_a_directory_that_is_no_database_exits_2(tmp_path):
    assert "no proxistore database" in cli("storage", "verify", tmp_path, expect=2).stderr
