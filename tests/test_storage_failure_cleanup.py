"""A storage write that fails leaves no file behind, and failed background storage work waits
before it is tried again: on a full disk, retries must not fill it further, rebuild an index on
every tick, or flood the log. Real WAL and storage code; the disk's failures are injected by
FaultInjectingFileSystem (ENOSPC on matching writes until the space returns)."""
from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest

import proxistore
from proxistore.errors import FlushError, StorageError
from proxistore.testing.faultfs import Fault, FaultInjectingFileSystem

DIM = 16
CONFIG = {"flush": {"policies": ["manual"]},
          "maintenance": {"check_interval": "20ms", "retry_initial_backoff": "20ms", "retry_max_backoff": "200ms"}}


def vectors(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def full_disk(pattern):
    """Writes of files matching ``pattern`` (relative to the data directory) fail with ENOSPC."""
    return Fault(op="write", path=pattern, errno=errno.ENOSPC, persistent=True)


def storage_files(root, name="c"):
    return sorted(os.listdir(root / "storage" / name))


def config(**viper):
    return {**CONFIG, "storage": {"viper": viper}}


def assert_no_orphans_on_reopen(root, cfg):
    with proxistore.open(root, cfg) as db:
        assert db.stats()["collections"]["c"]["storage"]["orphans_removed_on_open"] == 0


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_failed_index_builds_leave_no_file_and_are_retried_with_backoff(tmp_path):
    root = tmp_path / "db"
    fault = full_disk("storage/c/*.hnsw.*")
    fs = FaultInjectingFileSystem(str(root), faults=[fault])
    cfg = config(indexing_threshold=50)
    vecs = vectors(100)
    with proxistore.open(root, cfg, fs=fs) as db:
        col = db.create_collection("c", dim=DIM)
        col.insert([f"r{i}" for i in range(100)], vecs)
        db.flush("c")
        assert wait_for(lambda: fault.fired >= 2), "the failed index build was not retried"
        time.sleep(1.5)
        m = db.stats()["maintenance"]
        # back-off 20, 40, 80, 160 ms, then every 200 ms: about 10 attempts in 1.5 s, where
        # retrying on every 20 ms tick would make about 75
        assert fault.fired <= 20, f"{fault.fired} attempts in 1.5 s: storage retries do not back off"
        assert m["error_count"] >= fault.fired - 1 and len(m["errors"]) <= 10
        assert "No space left" in m["errors"][-1]
        assert not [f for f in storage_files(root) if f.endswith((".faiss", ".hnswlib"))], storage_files(root)
        assert col.search(vecs[7], k=1)[0].id == "r7"            # searched exactly meanwhile
        fs.clear_faults()                                          # space comes back
        assert wait_for(lambda: db.stats()["collections"]["c"]["storage"]["indexed_segments"] == 1)
        assert db.stats()["maintenance"]["storage_retry_in_seconds"] == {}
        assert len([f for f in storage_files(root) if f.endswith((".faiss", ".hnswlib"))]) == 1
    assert_no_orphans_on_reopen(root, cfg)


def test_a_merge_whose_index_write_fails_removes_the_segment_it_wrote(tmp_path):
    root = tmp_path / "db"
    fault = full_disk("storage/c/*.hnsw.*")
    fs = FaultInjectingFileSystem(str(root), faults=[fault])
    cfg = config(indexing_threshold=300, auto_compaction=False)
    vecs = vectors(400)
    with proxistore.open(root, cfg, fs=fs) as db:
        col = db.create_collection("c", dim=DIM)
        for k in range(4):
            col.insert([f"r{i}" for i in range(k * 100, k * 100 + 100)], vecs[k * 100:k * 100 + 100])
            db.flush("c")
        before = storage_files(root)
        with pytest.raises(StorageError, match="No space left"):
            db.compact("c")                 # the merged segment (400 rows) needs an index
        assert fault.fired >= 1
        assert storage_files(root) == before, "the failed merge left its files"
        assert col.count() == 400 and col.search(vecs[321], k=1)[0].id == "r321"
        fs.clear_faults()
        db.compact("c")
        st = db.stats()["collections"]["c"]["storage"]
        assert st["segments"] == 1 and st["indexed_segments"] == 1
    assert_no_orphans_on_reopen(root, cfg)


def test_a_flush_whose_deletion_vector_write_fails_removes_its_segment(tmp_path):
    root = tmp_path / "db"
    fault = full_disk("storage/c/*.del")
    fs = FaultInjectingFileSystem(str(root), faults=[fault])
    vecs, newer = vectors(100), vectors(10, seed=1)
    ids = [f"r{i}" for i in range(100)]
    with proxistore.open(root, CONFIG, fs=fs) as db:
        col = db.create_collection("c", dim=DIM)
        col.insert(ids, vecs)
        db.flush("c")
        before = storage_files(root)
        col.upsert(ids[:10], newer)        # their stored rows must be marked deleted
        with pytest.raises(FlushError, match="No space left"):
            db.flush("c")
        assert storage_files(root) == before, "the failed flush left its segment"
        assert np.allclose(col.get(["r3"])[0].vector, newer[3])
        fs.clear_faults()
        db.flush("c")
        assert col.count() == 100
    assert_no_orphans_on_reopen(root, CONFIG)
    with proxistore.open(root, CONFIG) as db:
        col = db.collection("c")
        assert col.count() == 100 and np.allclose(col.get(["r3"])[0].vector, newer[3])
