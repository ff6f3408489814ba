"""``proxistore storage repair``: damaged segments set aside, every lost id listed, the rest served.

Damage is made on real files: one bit flipped inside a chosen Parquet column chunk (located from
the file's own metadata), a deletion vector, an index or a manifest. Each test checks what the
database serves after the repair, not only what the command printed: a lost row is absent, an
older version of a lost row does not come back, a deleted row stays deleted, and every surviving
row is found by searching for itself.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

import proxistore
from proxistore.errors import StorageError

from conftest import random_vectors
from test_cli import cli, cli_json

DIM = 8
CONFIG = {"flush": {"policies": ["manual"]}, "storage": {"viper": {"indexing_threshold": 100}}}
OLD = [f"old-{i}" for i in range(200)]
NEW = [f"new-{i}" for i in range(50)]
LATE = [f"late-{i}" for i in range(5)]


def _database(path, rng, names=("docs",)):
    """Per collection, three segments:

    - seg 1: ``old-*`` (200 rows, indexed); ``old-0..9`` superseded by seg 2, ``old-100`` deleted;
    - seg 2: ``new-*`` and the new versions of ``old-0..9`` (60 rows); ``new-1`` deleted later;
    - seg 3: ``late-*`` (5 rows).
    Live: 199 old + 49 new + 5 late = 253. Returns each live id's vector."""
    live = {}
    with proxistore.open(path, CONFIG) as db:
        for name in names:
            col = db.create_collection(name, dim=DIM, metric="l2")
            v = random_vectors(rng, 200, DIM)
            col.insert(OLD, v)
            live.update(zip(OLD, v))
            db.flush()
            v = random_vectors(rng, 60, DIM)
            col.insert(NEW, v[:50])
            col.upsert(OLD[:10], v[50:])
            live.update(zip(NEW + OLD[:10], v))
            col.delete(["old-100"])
            db.flush()
            v = random_vectors(rng, 5, DIM)
            col.insert(LATE, v)
            live.update(zip(LATE, v))
            col.delete(["new-1"])
            db.flush()
            del live["old-100"], live["new-1"]
        db.wait_idle()
    return live


def _collection_dir(path, name="docs"):
    return path / "storage" / name


def _manifest(path, name="docs"):
    return json.loads((_collection_dir(path, name) / "MANIFEST.json").read_text())


def _segment(path, n, name="docs"):
    return _manifest(path, name)["segments"][n - 1]


def _flip(file, offset):
    raw = bytearray(file.read_bytes())
    raw[offset] ^= 0x10
    file.write_bytes(bytes(raw))


def _flip_column(file, column):
    """Flip one bit near the end of ``column``'s chunk: in its last page's data, not a header."""
    meta = pq.ParquetFile(file).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.split(".")[0] == column)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    _flip(file, start + chunk.total_compressed_size - 8)


def _files(path, name="docs"):
    d = _collection_dir(path, name)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _report(path, name="docs"):
    (stamp,) = os.listdir(_collection_dir(path, name) / "damaged")
    return json.loads((_collection_dir(path, name) / "damaged" / stamp / "REPAIR.json").read_text()), stamp


def _serves_exactly(path, live, name="docs"):
    """The collection holds exactly ``live``, each row found first by searching for its vector."""
    with proxistore.open(path, CONFIG) as db:
        col = db.collection(name)
        assert col.count() == len(live)
        for i, (id_, vec) in enumerate(sorted(live.items())):
            if i % 7 == 0:
                assert col.search(vec, k=1)[0].id == id_
        got = col.get(sorted(live))
        assert all(r is not None and np.array_equal(r.vector, live[r.id]) for r in got)


def test_a_damaged_vector_page_is_set_aside_and_every_other_row_is_served_again(tmp_path, rng):
    d = tmp_path / "db"
    live = _database(d, rng)
    seg2 = _segment(d, 2)
    _flip_column(_collection_dir(d) / seg2["file"], "vector")
    with proxistore.open(d, CONFIG) as db:
        with pytest.raises(StorageError, match="storage repair"):
            db.collection("docs").search(live["late-0"], k=3)

    before = _files(d)
    dry = cli_json("storage", "repair", "--dry-run", d, expect=1)
    assert _files(d) == before and dry["applied"] is False and dry["lost_rows"] == 59

    result = cli_json("storage", "repair", d)
    lost = sorted(set(NEW) - {"new-1"} | set(OLD[:10]))
    (item,) = result["set_aside"]
    assert (item["segment"], item["what"], item["lost_rows"], item["lost_ids_exact"]) == (seg2["name"], "segment", 59, True)
    assert sorted(item["lost_ids"]) == lost and result["verified_after"] is True
    report, stamp = _report(d)
    assert sorted(report["set_aside"][0]["lost_ids"]) == lost
    assert sorted(os.listdir(_collection_dir(d) / "damaged" / stamp)) == sorted(["REPAIR.json"] + item["files"])

    for id_ in lost:
        del live[id_]
    _serves_exactly(d, live)           # old-0..9 do not come back in their superseded version
    with proxistore.open(d, CONFIG) as db:
        assert db.collection("docs").get(["old-0", "new-1", "old-100"]) == [None, None, None]
    cli("storage", "verify", d)
    assert os.path.isdir(_collection_dir(d) / "damaged" / stamp)   # an open leaves the evidence alone


def test_a_damaged_id_page_fails_the_open_naming_the_repair_which_reports_the_ids_as_unreadable(tmp_path, rng):
    d = tmp_path / "db"
    live = _database(d, rng)
    _flip_column(_collection_dir(d) / _segment(d, 2)["file"], "id")
    with pytest.raises(StorageError, match="storage repair"):
        proxistore.open(d, CONFIG)
    r = cli("storage", "repair", d)
    assert "59 row(s) lost, LSNs" in r.stdout and "ids unreadable" in r.stdout
    for id_ in set(NEW) - {"new-1"} | set(OLD[:10]):
        del live[id_]
    _serves_exactly(d, live)


def test_a_damaged_deletion_vector_sets_its_segment_aside_without_resurrecting_deleted_rows(tmp_path, rng):
    d = tmp_path / "db"
    live = _database(d, rng)
    seg1 = _segment(d, 1)
    _flip(_collection_dir(d) / seg1["deletes_file"], 30)
    result = cli_json("storage", "repair", d)
    (item,) = result["set_aside"]
    assert item["segment"] == seg1["name"] and item["lost_ids_exact"] is False
    assert sorted(item["lost_ids"]) == sorted(OLD) and item["lost_rows"] == 189
    assert set(item["files"]) == {seg1["file"], seg1["deletes_file"], seg1["index"]["file"]}
    for id_ in OLD[10:]:
        live.pop(id_, None)
    _serves_exactly(d, live)           # old-0..9 from seg 2 still served; old-100 still deleted
    with proxistore.open(d, CONFIG) as db:
        assert db.collection("docs").get(["old-100"]) == [None]


def test_a_damaged_index_is_set_aside_and_built_again_losing_nothing(tmp_path, rng):
    d = tmp_path / "db"
    live = _database(d, rng)
    index = _segment(d, 1)["index"]["file"]
    _flip(_collection_dir(d) / index, 200)
    assert "checksum mismatch" in cli("storage", "verify", d, expect=1).stderr
    result = cli_json("storage", "repair", d)
    assert [(s["what"], s["lost_rows"], s["files"]) for s in result["set_aside"]] == [("index", 0, [index])]
    assert result["verified_after"] is True and _segment(d, 1)["index"] is None
    _serves_exactly(d, live)
    with proxistore.open(d, CONFIG) as db:
        db.compact("docs")
    assert _manifest(d)["segments"][0]["index"] is not None      # built again by maintenance
    _serves_exactly(d, live)


def test_a_missing_segment_file_is_set_aside_as_lost(tmp_path, rng):
    """What a repair interrupted between moving the files and committing leaves (or a lost file)."""
    d = tmp_path / "db"
    live = _database(d, rng)
    seg3 = _segment(d, 3)
    (_collection_dir(d) / seg3["file"]).unlink()
    with pytest.raises(StorageError):
        proxistore.open(d, CONFIG)
    (item,) = cli_json("storage", "repair", d)["set_aside"]
    assert (item["segment"], item["lost_rows"], item["lost_ids"]) == (seg3["name"], 5, None)
    for id_ in LATE:
        del live[id_]
    _serves_exactly(d, live)


def test_repair_refuses_an_open_database_and_changes_nothing(tmp_path, rng):
    d = tmp_path / "db"
    _database(d, rng)
    _flip(_collection_dir(d) / _segment(d, 1)["index"]["file"], 200)
    before = _files(d)
    with proxistore.open(d, CONFIG):
        assert "already open" in cli("storage", "repair", d, expect=1).stderr
    assert _files(d) == before


def test_a_damaged_manifest_is_reported_not_repaired(tmp_path, rng):
    d = tmp_path / "db"
    _database(d, rng)
    _flip(_collection_dir(d) / "MANIFEST.json", 100)
    before = _files(d)
    r = cli("storage", "repair", d, expect=1)
    assert "NOT repaired" in r.stdout and "MANIFEST.json" in r.stderr and "does not rebuild a manifest" in r.stderr
    assert _files(d) == before


def test_collection_limits_the_repair_and_an_unknown_name_is_a_usage_error(tmp_path, rng):
    d = tmp_path / "db"
    _database(d, rng, names=("a", "b"))
    for name in ("a", "b"):
        (_collection_dir(d, name) / _segment(d, 3, name)["file"]).unlink()
    assert "no collection 'c'" in cli("storage", "repair", "--collection", "c", d, expect=2).stderr
    result = cli_json("storage", "repair", "--collection", "a", d)
    assert [s["collection"] for s in result["set_aside"]] == ["a"]
    problems = cli_json("storage", "verify", d, expect=1)["problems"]
    assert [p["collection"] for p in problems] == ["b"]


def test_a_healthy_database_needs_no_repair_and_keeps_its_manifest(tmp_path, rng):
    d = tmp_path / "db"
    _database(d, rng)
    before = _files(d)
    assert cli("storage", "repair", d).stdout.startswith("ok: nothing to repair in 1 collection(s)")
    assert _files(d) == before


# -- a repair killed part way ----------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
_REPAIR_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); from killpoints import from_env; "
                 "from proxistore.plugins.viper.repair import repair_storage; "
                 "repair_storage(sys.argv[2] + '/storage', from_env(sys.argv[2])); print('done')")


@pytest.mark.parametrize("rule", [
    {"op": "fsync", "path": "storage/docs/damaged/*/REPAIR.json", "when": "before"},
    {"op": "rename", "path": "storage/docs/damaged/*", "when": "after"},
    {"op": "rename", "path": "storage/docs/MANIFEST.json*", "when": "before"},
    {"op": "rename", "path": "storage/docs/MANIFEST.json*", "when": "after"},
], ids=["writing the report", "after moving the segment", "before the manifest commit",
        "after the manifest commit"])
def test_a_repair_killed_at_any_step_is_completed_by_the_next_losing_nothing_more(tmp_path, rng, rule):
    import subprocess
    import sys

    d = tmp_path / "db"
    live = _database(d, rng)
    _flip_column(_collection_dir(d) / _segment(d, 2)["file"], "vector")
    env = {**os.environ, "PROXISTORE_KILLPOINT": json.dumps({**rule, "nth": 1})}
    child = subprocess.run([sys.executable, "-c", _REPAIR_CHILD, HERE, str(d)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == -9 and "KILLPOINT" in child.stdout, child.stdout + child.stderr

    cli("storage", "repair", d)
    for id_ in set(NEW) - {"new-1"} | set(OLD[:10]):
        del live[id_]
    _serves_exactly(d, live)
    cli("storage", "verify", d)
    reports = [json.loads(p.read_text()) for p in (_collection_dir(d) / "damaged").glob("*/REPAIR.json")
               if p.read_text().endswith("}\n")]
    lost = sorted(set(NEW) - {"new-1"} | set(OLD[:10]))
    assert any(sorted(r["set_aside"][0]["lost_ids"] or []) == lost for r in reports)   # the ids are kept
