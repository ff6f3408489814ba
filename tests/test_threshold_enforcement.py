"""Every threshold in config/default.toml is enforced, shown by driving a workload across it.

Each threshold key has a driver below; a key added to the config without one makes
``test_every_threshold_in_default_toml_has_a_driver`` fail. Flush-policy drivers enable only the
policy under test (plus ``manual``), so the flush they see can only come from that policy, and
assert it happened within ``check_interval`` plus a margin of the threshold being crossed.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import proxistore
from proxistore.config import load_config
from proxistore.errors import BackpressureTimeout

from conftest import REPO

CHECK = 0.05          # check_interval used by the drivers
MARGIN = 2.0          # generous: a 2-core CI machine under load


def thresholds_in_default_toml():
    return sorted(r.path for r in load_config(REPO / "config" / "default.toml").explain() if r.threshold)


def open_db(path, policies, **sections):
    cfg = {"flush": {"policies": policies + ["manual"]}, "maintenance": {"check_interval": f"{int(CHECK * 1000)}ms"}}
    for section, body in sections.items():
        top, _, sub = section.partition("__")
        cfg.setdefault(top, {})[sub] = body
    return proxistore.open(path, cfg)


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    return predicate()


def flushes(db, name):
    return db.stats()["collections"][name]["flushes"]["last"]


def first_flush_by(db, name, policy, timeout):
    return wait_for(lambda: next((f for f in flushes(db, name) if f["reason"]["policy"] == policy), None), timeout)


def rows(n, dim=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


# -- drivers -----------------------------------------------------------------------------------

def drive_memory_flush_size_bytes(tmp_path):
    with open_db(tmp_path / "db", ["size"], flush__size={"memory_flush_size_bytes": "50kB"}) as db:
        col = db.create_collection("c", dim=64)
        col.insert([f"a{i}" for i in range(40)], rows(40))
        time.sleep(3 * CHECK)
        assert flushes(db, "c") == [], "flushed below the threshold"
        col.insert([f"b{i}" for i in range(100)], rows(100, seed=1))
        crossed = time.time()
        f = first_flush_by(db, "c", "size", CHECK + MARGIN)
        assert f, "no flush by `size` after crossing memory_flush_size_bytes"
        assert f["reason"]["key"] == "memory_flush_size_bytes" and f["reason"]["threshold"] == 50_000
        assert f["reason"]["measured"] > 50_000
        assert f["started_at"] - crossed < CHECK + MARGIN


def drive_global_flush_threshold(tmp_path):
    with open_db(tmp_path / "db", ["global_memory"],
                 flush__global_memory={"global_flush_threshold": "100kB", "global_memory_limit": "10MB"}) as db:
        a, b = db.create_collection("a", dim=64), db.create_collection("b", dim=64)
        a.insert([f"a{i}" for i in range(100)], rows(100))       # ~ 42 kB
        time.sleep(3 * CHECK)
        assert flushes(db, "a") == [] and flushes(db, "b") == []
        b.insert([f"b{i}" for i in range(200)], rows(200))       # ~ 84 kB: total > 100 kB, b the largest
        f = first_flush_by(db, "b", "global_memory", CHECK + MARGIN)
        assert f and f["reason"]["key"] == "global_flush_threshold" and f["reason"]["measured"] > 100_000
        db.wait_idle()
        assert db.stats()["memtable_bytes"] <= 100_000


def drive_global_memory_limit(tmp_path):
    limit = 200_000
    with open_db(tmp_path / "db", ["global_memory"],
                 flush__global_memory={"global_flush_threshold": limit, "global_memory_limit": limit,
                                       "stall_timeout": "10s"}) as db:
        col = db.create_collection("c", dim=64)
        peak = 0
        for b in range(30):                                      # ~ 30 x 30 kB, far past the limit
            col.insert([f"{b}-{i}" for i in range(50)], rows(50, seed=b))
            peak = max(peak, db.stats()["memtable_bytes"])
        assert peak <= limit, f"memtables reached {peak} bytes past global_memory_limit={limit}"
        s = db.stats()
        assert s["backpressure"]["stalls"] >= 1 and s["backpressure"]["timeouts"] == 0
        assert s["collections"]["c"]["flushes"]["by_policy"].get("global_memory", 0) >= 1
        assert col.count() == 1500
        with pytest.raises(BackpressureTimeout, match="global_memory_limit"):
            col.insert([f"big{i}" for i in range(600)], rows(600))  # can never fit
        assert col.count() == 1500


def drive_max_unflushed_age(tmp_path):
    with open_db(tmp_path / "db", ["time"], flush__time={"max_unflushed_age": "400ms"}) as db:
        col = db.create_collection("c", dim=64)
        col.insert(["x"], rows(1))
        written = time.time()
        f = first_flush_by(db, "c", "time", 0.4 + CHECK + MARGIN)
        assert f and f["reason"]["key"] == "max_unflushed_age"
        assert 0.4 <= f["started_at"] - written < 0.4 + CHECK + MARGIN


def drive_max_wal_bytes(tmp_path):
    with open_db(tmp_path / "db", ["wal_size"], flush__wal_size={"max_wal_bytes": "50kB"}) as db:
        col = db.create_collection("c", dim=64)
        col.insert([f"a{i}" for i in range(20)], rows(20))
        time.sleep(3 * CHECK)
        assert flushes(db, "c") == []
        col.insert([f"b{i}" for i in range(250)], rows(250))
        f = first_flush_by(db, "c", "wal_size", CHECK + MARGIN)
        assert f and f["reason"]["key"] == "max_wal_bytes" and f["reason"]["measured"] > 50_000
        db.wait_idle()
        assert db.stats()["collections"]["c"]["wal"]["bytes"] < 50_000


def drive_check_interval(tmp_path):
    """With no writes after the data arrives, only the periodic check can notice its age."""
    interval = 0.3
    cfg = {"flush": {"policies": ["time", "manual"], "time": {"max_unflushed_age": "100ms"}},
           "maintenance": {"check_interval": "300ms"}}
    with proxistore.open(tmp_path / "db", cfg) as db:
        col = db.create_collection("c", dim=64)
        col.insert(["x"], rows(1))
        written = time.time()
        f = first_flush_by(db, "c", "time", 0.1 + interval + MARGIN)
        assert f and 0.1 <= f["started_at"] - written < 0.1 + interval + MARGIN


def drive_segment_size(tmp_path):
    with open_db(tmp_path / "db", [], wal__avro={"segment_size": "64kB"}) as db:
        col = db.create_collection("c", dim=64)
        for b in range(8):                                       # ~ 8 x 26 kB of WAL
            col.insert([f"{b}-{i}" for i in range(100)], rows(100, seed=b))
        wal = db.stats()["collections"]["c"]["wal"]
        assert wal["segments"] >= 3
        assert wal["bytes"] / wal["segments"] < 2 * 64_000


def viper_db(tmp_path, **viper):
    return open_db(tmp_path / "db", [], storage__viper={"auto_compaction": True, **viper})


def drive_indexing_threshold(tmp_path):
    with viper_db(tmp_path, indexing_threshold=300, compaction_min_segments=100) as db:
        col = db.create_collection("c", dim=16)
        col.insert([f"s{i}" for i in range(200)], rows(200, 16))
        db.flush("c")
        col.insert([f"l{i}" for i in range(400)], rows(400, 16, seed=2))
        db.flush("c")
        assert wait_for(lambda: db.stats()["collections"]["c"]["storage"]["indexed_segments"] == 1, 10)
        db.wait_idle()
        st = db.stats()["collections"]["c"]["storage"]
        assert st["indexed_segments"] == 1 and st["exact_segments"] == 1


def drive_filter_exact_max_rows(tmp_path):
    """A filter keeping 4,500 of 5,000 indexed rows is searched exactly only when the key allows it."""
    paths = {}
    for limit in (100, 5000):
        with open_db(tmp_path / f"db{limit}", [], storage__viper={"indexing_threshold": 1000,
                                                                  "filter_exact_max_rows": limit}) as db:
            col = db.create_collection("c", dim=16)
            col.insert([f"r{i}" for i in range(5000)], rows(5000, 16), [{"g": i % 10} for i in range(5000)])
            db.flush("c")
            db.compact("c")
            assert db.stats()["collections"]["c"]["storage"]["indexed_segments"] == 1
            col.search(rows(1, 16, seed=9)[0], k=5, filter={"g": {"$ne": 0}})
            paths[limit] = db.stats()["collections"]["c"]["storage"]["searches"]
    assert paths[5000] == {"exact_filtered": 1}
    assert paths[100].get("exact_filtered", 0) == 0 and paths[100].get("ann_postfiltered", 0) == 1


def drive_compaction_min_segments(tmp_path):
    with viper_db(tmp_path, compaction_min_segments=3) as db:
        col = db.create_collection("c", dim=16)
        for s in range(2):
            col.insert([f"{s}-{i}" for i in range(50)], rows(50, 16, seed=s))
            db.flush("c")
        time.sleep(5 * CHECK)
        db.wait_idle()
        assert db.stats()["collections"]["c"]["storage"]["segments"] == 2, "merged below min segments"
        col.insert([f"2-{i}" for i in range(50)], rows(50, 16, seed=2))
        db.flush("c")
        assert wait_for(lambda: db.stats()["collections"]["c"]["storage"]["segments"] == 1, 10)
        assert col.count() == 150


def drive_compaction_target_rows(tmp_path):
    with viper_db(tmp_path, compaction_min_segments=2, compaction_target_rows=100,
                  compaction_base_rows=10) as db:
        col = db.create_collection("c", dim=16)
        for s in range(3):                                       # each segment already "full"
            col.insert([f"{s}-{i}" for i in range(150)], rows(150, 16, seed=s))
            db.flush("c")
        time.sleep(5 * CHECK)
        db.wait_idle()
        assert db.stats()["collections"]["c"]["storage"]["segments"] == 3
        assert col.count() == 450


def drive_compaction_deleted_fraction(tmp_path):
    with viper_db(tmp_path, compaction_deleted_fraction=0.2, compaction_min_segments=100) as db:
        col = db.create_collection("c", dim=16)
        col.insert([f"r{i}" for i in range(100)], rows(100, 16))
        db.flush("c")
        col.delete([f"r{i}" for i in range(10)])                 # 10% deleted: left alone
        db.flush("c")
        time.sleep(5 * CHECK)
        db.wait_idle()
        assert db.stats()["collections"]["c"]["storage"]["deleted_rows"] == 10
        col.delete([f"r{i}" for i in range(10, 25)])             # 25%: rewritten without them
        db.flush("c")
        assert wait_for(lambda: db.stats()["collections"]["c"]["storage"]["deleted_rows"] == 0, 10)
        assert col.count() == 75 and db.stats()["collections"]["c"]["storage"]["stored_rows"] == 75


DRIVERS = {
    "flush.size.memory_flush_size_bytes": drive_memory_flush_size_bytes,
    "flush.global_memory.global_flush_threshold": drive_global_flush_threshold,
    "flush.global_memory.global_memory_limit": drive_global_memory_limit,
    "flush.time.max_unflushed_age": drive_max_unflushed_age,
    "flush.wal_size.max_wal_bytes": drive_max_wal_bytes,
    "maintenance.check_interval": drive_check_interval,
    "wal.avro.segment_size": drive_segment_size,
    "storage.viper.indexing_threshold": drive_indexing_threshold,
    "storage.viper.filter_exact_max_rows": drive_filter_exact_max_rows,
    "storage.viper.compaction_min_segments": drive_compaction_min_segments,
    "storage.viper.compaction_target_rows": drive_compaction_target_rows,
    "storage.viper.compaction_deleted_fraction": drive_compaction_deleted_fraction,
}


def test_every_threshold_in_default_toml_has_a_driver():
    assert thresholds_in_default_toml() == sorted(DRIVERS)


@pytest.mark.parametrize("path", sorted(DRIVERS))
def test_threshold_is_enforced_when_a_workload_crosses_it(tmp_path, path):
    DRIVERS[path](tmp_path)


def test_a_threshold_under_a_policy_that_is_not_enabled_is_refused_at_start(tmp_path):
    from proxistore.errors import ConfigError
    with pytest.raises(ConfigError, match="flush.time"):
        proxistore.open(tmp_path / "db", {"flush": {"policies": ["size"], "time": {"max_unflushed_age": "1s"}}})


def test_a_per_collection_override_is_enforced_for_that_collection_alone(tmp_path):
    with open_db(tmp_path / "db", ["size"]) as db:               # database default: 1 MB
        small = db.create_collection("small", dim=64,
                                     config={"flush": {"size": {"memory_flush_size_bytes": "20kB"}}})
        big = db.create_collection("big", dim=64)
        for col in (small, big):
            col.insert([f"r{i}" for i in range(100)], rows(100))  # ~ 45 kB each
        f = first_flush_by(db, "small", "size", CHECK + MARGIN)
        assert f and f["reason"]["threshold"] == 20_000
        time.sleep(5 * CHECK)
        assert flushes(db, "big") == []
    with open_db(tmp_path / "db", ["size"]) as db:               # the override persisted
        db.collection("small").insert([f"s{i}" for i in range(100)], rows(100, seed=3))
        assert first_flush_by(db, "small", "size", CHECK + MARGIN)
