"""stats() reports what an operator needs, measured; creating and dropping collections is
atomic across SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import proxistore
from proxistore.errors import DataDirectoryError

from conftest import ids_for, random_vectors


def test_stats_report_rows_memtable_wal_storage_flush_reasons_and_separate_timings(db, rng):
    col = db.create_collection("c", dim=8)
    col.insert(ids_for(100), random_vectors(rng, 100, 8), [{"k": i} for i in range(100)])
    db.flush("c")
    col.insert(ids_for(10, "m"), random_vectors(rng, 10, 8))
    s = db.stats()
    json.dumps(s)  # serialisable as is
    c = s["collections"]["c"]
    assert c["rows"] == 110
    assert c["memtable"]["rows"] == 10 and c["memtable"]["bytes"] >= 10 * 8 * 4
    assert c["wal"]["bytes"] > 0 and c["wal"]["segments"] >= 1
    assert c["wal"]["append_seconds"] > 0 and c["wal"]["fsync_seconds"] > 0
    assert c["wal"]["append_seconds"] != c["wal"]["fsync_seconds"]
    assert c["storage"]["segments"] == 1 and c["storage"]["rows"] == 100
    assert c["flushes"]["by_policy"] == {"manual": 1}
    last = c["flushes"]["last"][-1]
    assert last["reason"]["policy"] == "manual" and last["rows"] == 100 and last["segment"]
    assert {"freeze", "wal_checkpoint"} <= set(last["phases"])
    assert all(v >= 0 for v in last["phases"].values())


def test_memtable_bytes_count_vectors_ids_and_metadata(db, rng):
    col = db.create_collection("c", dim=64)
    col.insert(ids_for(100), random_vectors(rng, 100, 64))
    plain = db.stats()["collections"]["c"]["memtable"]["bytes"]
    assert plain >= 100 * 64 * 4 + 100 * len("id-00")
    col2 = db.create_collection("d", dim=64)
    col2.insert(ids_for(100), random_vectors(rng, 100, 64), [{"text": "x" * 500} for _ in range(100)])
    with_meta = db.stats()["collections"]["d"]["memtable"]["bytes"]
    assert with_meta - plain >= 100 * 500


def test_why_lists_every_enabled_policy_with_threshold_and_measure(db, rng):
    col = db.create_collection("c", dim=8)
    col.insert(ids_for(10), random_vectors(rng, 10, 8))
    rows = db.why("c")
    policies = {r["policy"] for r in rows}
    assert policies == {"size", "global_memory", "time", "wal_size", "manual"}
    size = next(r for r in rows if r["key"] == "memory_flush_size_bytes")
    assert size["threshold"] == 1_000_000 and 0 < size["measured"] < 1_000_000 and size["due"] is False


CREATE_DROP_CHILD = """
import sys, numpy as np, proxistore
db = proxistore.open(sys.argv[1])
i = 0
while True:
    name = f"c{i % 7}"
    if name in db.collections():
        db.drop_collection(name)
        print("dropped", name, flush=True)
    else:
        c = db.create_collection(name, dim=4)
        c.insert(["a", "b"], np.ones((2, 4)))
        print("created", name, flush=True)
    i += 1
"""


def test_create_and_drop_are_all_or_nothing_across_sigkill(tmp_path, child_env):
    db_path = tmp_path / "db"
    present = set()  # the model: collections whose last acknowledged operation created them
    for kill_after in (0.15, 0.3, 0.45, 0.6, 0.75, 0.9):
        proc = subprocess.Popen([sys.executable, "-c", CREATE_DROP_CHILD, str(db_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=child_env)
        time.sleep(kill_after + 0.5)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        lines = out.splitlines()
        for line in lines:
            assert len(line.split()) == 2, f"the child printed {line!r}; stderr: {err[-2000:]}"
            verb, name = line.split()
            (present.add if verb == "created" else present.discard)(name)
        in_flight = f"c{len(lines) % 7}"
        with proxistore.open(db_path) as db:
            names = set(db.collections())
            assert names - {in_flight} == present - {in_flight}
            for name in names:  # only the in-flight create may be cut off before its insert
                assert db.collection(name).count() in ((0, 2) if name == in_flight else (2,))
            on_disk = {p.name for p in (db_path / "collections").iterdir()}
            assert on_disk == names, "half-created or half-dropped collection left in the catalog"
            for part in ("wal", "storage"):
                leftovers = {p.name for p in (db_path / part).iterdir() if p.is_dir()} - names
                assert leftovers == set(), f"orphan {part} directories: {leftovers}"
            present = set(names)
            for name in names:  # a create whose insert was cut off is kept empty: make it whole
                if db.collection(name).count() == 0:
                    db.collection(name).insert(["a", "b"], np.ones((2, 4)))


@pytest.mark.parametrize("damage, message", [
    ("{not json", "is damaged .JSONDecodeError"),
    ("", "is damaged .JSONDecodeError"),
    ('{"format_version": 1, "name": "docs"}', "is damaged .KeyError: 'dim'"),
    ('["a list"]', "is damaged"),
    ('{"format_version": 9, "name": "docs", "dim": 8, "metric": "l2"}', "format 9 is not supported"),
    ('{"format_version": 1, "name": "other", "dim": 8, "metric": "l2"}', "names collection 'other'"),
])
def test_a_damaged_collection_record_is_a_data_directory_error_naming_its_file(tmp_path, damage, message):
    with proxistore.open(tmp_path / "db") as db:
        db.create_collection("docs", dim=8, metric="l2").insert(["a"], np.ones((1, 8), dtype=np.float32))
    record = tmp_path / "db" / "collections" / "docs" / "collection.json"
    good = record.read_bytes()
    record.write_text(damage)
    with pytest.raises(DataDirectoryError, match=message) as e:
        proxistore.open(tmp_path / "db")
    assert str(record) in str(e.value)
    record.write_bytes(good)
    with proxistore.open(tmp_path / "db") as db:
        assert db.collection("docs").count() == 1
