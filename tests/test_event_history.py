"""Every flush's reason, and every compaction, outlives the process: the records in
``collections/<name>/flushes.jsonl`` and ``compactions.jsonl`` come back on reopen, stay bounded,
survive a torn line, and a record that cannot be written never fails a flush or loses a row."""
from __future__ import annotations

import json
import logging
import os

import numpy as np

import proxistore

from conftest import ids_for, random_vectors
from test_maintenance import FailingFileSystem

SIZE_CONFIG = {"flush": {"size": {"memory_flush_size_bytes": "20kB"}}}


def history_file(path, name="c", kind="flushes"):
    return os.path.join(path, "collections", name, f"{kind}.jsonl")


def flushes(db, name="c"):
    return db.stats()["collections"][name]["flushes"]


def test_flush_reasons_come_back_after_reopen_and_new_flushes_follow_them(db_path, rng):
    with proxistore.open(db_path, SIZE_CONFIG) as db:
        col = db.create_collection("c", dim=8)
        col.insert(ids_for(1000), random_vectors(rng, 1000))        # 32 kB: over the 20 kB threshold
        assert db.wait_idle(30)
        col.insert(ids_for(10, "m"), random_vectors(rng, 10))
        db.flush("c")
        before = flushes(db)["last"]
    policies = [e["reason"]["policy"] for e in before]
    assert "size" in policies and policies[-1] == "manual"

    with proxistore.open(db_path) as db:
        fl = flushes(db)
        assert fl["total"] == 0 and fl["by_policy"] == {}           # counters: since this open
        assert fl["last"] == json.loads(json.dumps(before))
        size = next(e for e in fl["last"] if e["reason"]["policy"] == "size")
        assert size["reason"]["key"] == "memory_flush_size_bytes" and size["reason"]["threshold"] == 20_000
        assert size["reason"]["measured"] > 20_000 and size["rows"] > 0 and size["phases"]
        db.collection("c").insert(ids_for(5, "n"), random_vectors(rng, 5))
        db.flush("c")
        assert [e["segment"] for e in flushes(db)["last"]] == [e["segment"] for e in before] + [
            flushes(db)["last"][-1]["segment"]]

    with proxistore.open(db_path) as db:
        last = flushes(db)["last"]
        assert len(last) == len(before) + 1 and last[-1]["rows"] == 5


def test_the_history_keeps_the_newest_flush_history_entries_and_the_file_stays_small(db_path, rng):
    cfg = {"maintenance": {"flush_history": 3}}
    segments = []
    with proxistore.open(db_path, cfg) as db:
        col = db.create_collection("c", dim=8)
        for i in range(10):
            col.insert(ids_for(2, f"b{i}"), random_vectors(rng, 2))
            segments.append(db.flush("c")[0]["segment"])
            with open(history_file(db_path)) as f:
                assert len(f.readlines()) <= 6                       # rewritten at twice `keep`
        assert [e["segment"] for e in flushes(db)["last"]] == segments[-3:]
    with proxistore.open(db_path, cfg) as db:
        assert [e["segment"] for e in flushes(db)["last"]] == segments[-3:]


def test_a_torn_last_line_is_skipped_and_the_rest_is_kept(db_path, rng):
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=8)
        for i in range(2):
            col.insert(ids_for(3, f"b{i}"), random_vectors(rng, 3))
            db.flush("c")
    with open(history_file(db_path), "ab") as f:
        f.write(b'{"collection":"c","reason":{"pol')                 # what a power loss can leave
    with proxistore.open(db_path) as db:
        assert [e["rows"] for e in flushes(db)["last"]] == [3, 3]
        db.collection("c").insert(ids_for(4, "x"), random_vectors(rng, 4))
        db.flush("c")
    with proxistore.open(db_path) as db:
        assert [e["rows"] for e in flushes(db)["last"]] == [3, 3, 4]


def test_a_history_that_cannot_be_written_or_read_never_fails_a_flush(db_path, rng, caplog):
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=8)
        os.makedirs(history_file(db_path))                         # the file's place is taken
        vecs = random_vectors(rng, 20)
        col.insert(ids_for(20), vecs)
        with caplog.at_level(logging.WARNING, logger="proxistore.history"):
            done = db.flush("c")
        assert done[0]["rows"] == 20 and done[0]["segment"]
        fl = flushes(db)
        assert fl["history_errors"] == 1 and fl["last"][-1]["segment"] == done[0]["segment"]
        assert "cannot append to the event history" in caplog.text
    with proxistore.open(db_path) as db:                            # reading it fails too
        fl = flushes(db)
        assert fl["history_errors"] == 1 and fl["last"] == []
        col = db.collection("c")
        assert col.count() == 20 and np.allclose(col.get(["id-7"])[0].vector, vecs[7])


def test_failed_flush_attempts_are_recorded_with_their_error(db_path, rng):
    fs = FailingFileSystem("*.parquet")
    cfg = {"maintenance": {"retry_initial_backoff": "20ms", "retry_max_backoff": "50ms"}}
    with proxistore.open(db_path, cfg, fs=fs) as db:
        col = db.create_collection("c", dim=8)
        col.insert(ids_for(5), random_vectors(rng, 5))
        fs.failing.set()
        try:
            db.flush("c")
        except proxistore.errors.FlushError:
            pass
        else:
            raise AssertionError("the flush should fail while the disk is full")
        fs.failing.clear()
        assert db.flush("c")[0]["rows"] == 5
    with proxistore.open(db_path) as db:
        last = flushes(db)["last"]
        failed, done = last[:-1], last[-1]
        assert failed, "the failed attempt was not recorded"
        assert all("No space left on device" in e["error"] and e["segment"] is None for e in failed)
        assert [e["attempt"] for e in last] == list(range(1, len(last) + 1))   # retries, in order
        assert done["error"] is None and done["rows"] == 5 and done["segment"]


def test_a_dropped_collection_takes_its_history_with_it(db_path, rng):
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=8)
        col.insert(ids_for(3), random_vectors(rng, 3))
        db.flush("c")
        db.drop_collection("c")
        assert not os.path.exists(history_file(db_path))
        db.create_collection("c", dim=8)
        assert flushes(db)["last"] == []


def test_compactions_are_recorded_with_their_time_and_come_back_after_reopen(db_path, rng):
    cfg = {"storage": {"viper": {"auto_compaction": False}}}
    with proxistore.open(db_path, cfg) as db:
        col = db.create_collection("c", dim=8)
        for b in range(3):
            col.insert(ids_for(50, f"b{b}"), random_vectors(rng, 50))
            db.flush("c")
        done = db.compact("c")
        assert done and done[0]["segments_in"] == 3 and done[0]["rows_out"] == 150
        shown = db.stats()["collections"]["c"]["compactions"]
        assert shown[-1] == done[-1] and shown[-1]["finished_at"] > 0
    with proxistore.open(db_path, cfg) as db:
        assert db.stats()["collections"]["c"]["compactions"] == json.loads(json.dumps(done))
    with open(history_file(db_path, kind="compactions")) as f:
        assert [json.loads(line)["segments_in"] for line in f] == [d["segments_in"] for d in done]
