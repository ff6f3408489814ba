"""Regression tests for the defects the fault-injection sweeps found, one behaviour each, plus
disk-full ingest and failing background work with maintenance running."""
from __future__ import annotations

import errno
import os
import time

import numpy as np
import pytest

import proxistore
from proxistore.errors import CollectionNotFound, DataDirectoryError, FlushError, WalError
from proxistore.fileio import LocalFileSystem
from proxistore.testing.faultfs import Fault, FaultInjectingFileSystem

CONFIG = {"wal": {"avro": {"segment_size": "2kB"}}, "flush": {"policies": ["manual"]},
          "maintenance": {"check_interval": "1h"}}


def vectors(n, seed=0, dim=8):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def reopen_image(fs, tmp_path, config=CONFIG):
    return proxistore.open(fs.crash().materialize(str(tmp_path / "after")), config)


def test_a_failed_wal_checkpoint_after_the_storage_commit_does_not_fail_or_repeat_the_flush(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"))
    db = proxistore.open(tmp_path / "db", CONFIG, fs=fs)
    db.maintenance.pause(True)                 # this thread flushes, not a worker
    col = db.create_collection("c", dim=8)
    for b in range(4):
        col.insert([f"{b}-{i}" for i in range(20)], vectors(20, b))
    fs.faults.append(Fault("unlink", nth=1, persistent=True, path="wal/*"))
    (event,) = db.flush("c")                   # the rows are in storage: a success
    assert event["rows"] == 80 and event["checkpoint_error"]
    stats = db.stats()["collections"]["c"]
    assert stats["flushes"]["checkpoint_failures"] == 1 and stats["flushes"]["failures"] == 0
    assert stats["storage"]["rows"] == 80 and stats["memtable"]["rows"] == 0
    db.close()
    with reopen_image(fs, tmp_path) as again:   # open deletes the segments storage covers
        assert again.collection("c").count() == 80
        assert again.stats()["collections"]["c"]["wal"]["records"] == 0


def test_an_io_error_opening_the_data_directory_is_a_proxistore_error(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"), faults=[Fault("fsync_dir", nth=1, errno=errno.EIO)])
    with pytest.raises(DataDirectoryError, match="Input/output error|injected"):
        proxistore.open(tmp_path / "db", CONFIG, fs=fs)
    with proxistore.open(tmp_path / "db", CONFIG, fs=fs) as db:      # the fault was once: usable
        db.create_collection("c", dim=8)


def test_a_collection_whose_creation_failed_can_be_created_again_and_is_durable(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"))
    db = proxistore.open(tmp_path / "db", CONFIG, fs=fs)
    fs.faults.append(Fault("fsync_dir", nth=1, errno=errno.ENOSPC, persistent=True))
    with pytest.raises((WalError, DataDirectoryError, proxistore.errors.StorageError)):
        db.create_collection("c", dim=8)
    assert db.collections() == []
    fs.clear_faults()
    db.create_collection("c", dim=8).insert(["a"], vectors(1))
    db.close()
    with reopen_image(fs, tmp_path) as again:     # every directory of it was made durable
        assert again.collections() == ["c"] and again.collection("c").count() == 1


def test_a_failed_wal_write_fails_only_its_batch_and_leaves_no_partial_record(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"))
    db = proxistore.open(tmp_path / "db", CONFIG, fs=fs)
    col = db.create_collection("c", dim=8)
    col.insert(["a"], vectors(1, 1))
    fs.faults.append(Fault("write", nth=1, errno=errno.ENOSPC, path="wal/*"))
    with pytest.raises(WalError, match="write .*failed"):
        col.insert(["b"], vectors(1, 2))
    col.insert(["c"], vectors(1, 3))             # the next batch goes straight on
    assert col.get(["b"]) == [None] and col.count() == 2
    db.close()
    with reopen_image(fs, tmp_path) as again:
        assert again.collection("c").count() == 2
        assert again.stats()["collections"]["c"]["recovery"]["torn_tails"] == []


def test_disk_full_during_ingest_fails_writes_clearly_keeps_reads_and_resumes_when_space_returns(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"))
    db = proxistore.open(tmp_path / "db", {"flush": {"size": {"memory_flush_size_bytes": "4kB"}},
                                           "maintenance": {"check_interval": "20ms",
                                                           "retry_initial_backoff": "20ms",
                                                           "retry_max_backoff": "100ms"}}, fs=fs)
    col = db.create_collection("c", dim=8)
    acked = []
    db.maintenance.pause(True)          # flushes are due when storage runs out of space ...
    for b in range(10):
        col.insert([f"{b}-{i}" for i in range(10)], vectors(10, b))
        acked += [f"{b}-{i}" for i in range(10)]
    fs.faults.append(Fault(None, nth=1, errno=errno.ENOSPC, persistent=True, path="storage/*"))
    db.maintenance.pause(False)
    deadline = time.monotonic() + 30
    while db.stats()["collections"]["c"]["flushes"]["failures"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    fs.faults.append(Fault(None, nth=1, errno=errno.ENOSPC, persistent=True))     # ... then everywhere
    failures = 0
    for b in range(10, 20):
        try:
            col.insert([f"{b}-{i}" for i in range(10)], vectors(10, b))
            acked += [f"{b}-{i}" for i in range(10)]
        except WalError as exc:
            failures += 1
            assert "No space left on device" in str(exc)
        time.sleep(0.01)
    assert failures >= 9                         # (a batch may have been appended before the fault hit)
    assert all(r is not None for r in col.get(acked))           # reads keep working ...
    assert col.search(vectors(1, 0)[0], k=1)[0].id == "0-0"      # ... searches too
    assert db.stats()["collections"]["c"]["flushes"]["failures"] >= 1
    fs.clear_faults()                            # space returns
    col.insert(["resumed"], vectors(1, 99))
    acked.append("resumed")
    assert db.wait_idle(30)
    deadline = time.monotonic() + 30
    while db.stats()["collections"]["c"]["memtable"]["frozen"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)                         # the failed flushes are retried and go through
    assert db.stats()["collections"]["c"]["memtable"]["frozen"] == 0
    s = db.stats()["collections"]["c"]
    assert s["storage"]["rows"] > 0 and s["storage"]["rows"] + s["memtable"]["rows"] == len(acked)
    db.close()
    with reopen_image(fs, tmp_path, None) as again:
        c = again.collection("c")
        assert all(r is not None for r in c.get(acked)) and c.count() == len(acked)


def test_failing_background_flushes_and_compactions_are_retried_and_lose_nothing(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "db"))
    config = {"flush": {"size": {"memory_flush_size_bytes": "2kB"}},
              "storage": {"viper": {"compaction_min_segments": 2, "compaction_base_rows": 8,
                                    "indexing_threshold": 32, "index": "flat"}},
              "maintenance": {"check_interval": "10ms", "retry_initial_backoff": "10ms",
                              "retry_max_backoff": "50ms"}}
    db = proxistore.open(tmp_path / "db", config, fs=fs)
    col = db.create_collection("c", dim=8)
    fs.faults.append(Fault(None, nth=3, errno=errno.EIO, persistent=True, path="storage/*"))
    expected = {}
    for b in range(40):
        ids = [f"{b}-{i}" for i in range(8)]
        vecs = vectors(8, b)
        col.upsert(ids, vecs)
        expected.update(zip(ids, vecs))
    assert fs.injected, "storage never failed: the test did not test anything"
    stats = db.stats()["collections"]["c"]
    assert stats["flushes"]["failures"] >= 1 and stats["memtable"]["rows"] > 0
    fs.clear_faults()
    deadline = time.monotonic() + 30
    while db.stats()["collections"]["c"]["memtable"]["rows"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stats()["collections"]["c"]["memtable"]["rows"] == 0
    assert db.wait_idle(30)
    db.compact("c")                              # merging works again too
    got = col.get(sorted(expected))
    assert all(np.array_equal(r.vector, expected[i]) for i, r in zip(sorted(expected), got))
    db.close()
    with reopen_image(fs, tmp_path, None) as again:
        c = again.collection("c")
        assert c.count() == len(expected)
        assert all(np.array_equal(r.vector, expected[i]) for i, r in zip(sorted(expected), c.get(sorted(expected))))


class SlowWalDisk(LocalFileSystem):
    """WAL fsyncs take a while (a busy disk), and rmtree lists a directory some time before it
    deletes what it listed: a spare segment is still being made when its collection is dropped."""

    def _fsync(self, handle):
        if "/wal/" in handle.path:
            time.sleep(0.1)
        super()._fsync(handle)

    def rmtree(self, path):
        names = os.listdir(path)
        time.sleep(0.3)
        for name in names:
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


def test_dropping_a_collection_while_a_flush_makes_its_next_wal_segments_succeeds(tmp_path):
    """Found by the crash soak: drop_collection raised WalError when a flush of the collection
    was making a spare WAL segment at that moment (the spare was removed under the drop)."""
    import threading
    db = proxistore.open(tmp_path / "db", CONFIG, fs=SlowWalDisk())
    db.maintenance.pause(True)
    col = db.create_collection("c", dim=8)
    col.insert([f"{i}" for i in range(10)], vectors(10))
    outcome = []

    def flush():
        try:
            outcome.append(db.flush("c"))
        except (FlushError, CollectionNotFound) as exc:   # dropped under it: fine
            outcome.append(exc)

    flusher = threading.Thread(target=flush)
    flusher.start()
    time.sleep(0.15)                  # the freeze rotated the WAL and is making a spare segment
    db.drop_collection("c")
    flusher.join()
    assert db.collections() == [] and len(outcome) == 1
    db.close()
    with proxistore.open(tmp_path / "db", CONFIG) as again:
        assert again.collections() == []


def test_a_batch_whose_memtable_apply_fails_does_not_block_later_flushes(tmp_path, monkeypatch):
    """Found by the A/B runs: if applying a synced batch to the memtable raised (an allocation
    failure, say), the batch stayed counted as in flight and every later freeze (flush, close)
    waited for it forever. The patched apply stands in for a MemoryError while growing."""
    import threading
    from proxistore.memtable import Memtable
    db = proxistore.open(tmp_path / "db", CONFIG)
    col = db.create_collection("c", dim=8)
    real_apply = Memtable.apply

    def failing_apply(self, batch, written_at=None):
        raise MemoryError("injected: cannot grow the memtable")

    monkeypatch.setattr(Memtable, "apply", failing_apply)
    with pytest.raises(MemoryError):
        col.insert(["a"], vectors(1))
    monkeypatch.setattr(Memtable, "apply", real_apply)
    col.insert(["b"], vectors(1, 1))
    done = threading.Event()
    threading.Thread(target=lambda: (db.flush("c"), done.set()), daemon=True).start()
    assert done.wait(10), "db.flush() hangs on a batch that never left the in-flight count"
    db.close()
