"""The avro WAL: format, registration, sync modes, rotation, checkpoint, failures, stats."""
from __future__ import annotations

import errno
import io
import json
import logging
import os
import struct
import threading
import time
import zlib

import fastavro
import numpy as np
import pytest

from proxistore.contracts import OP_DELETE, OP_INSERT, OP_UPSERT, WalBatch
from proxistore.errors import (CollectionExists, CollectionNotFound, ConfigError,
                               InvalidCollectionName, WalError, WalVersionError)
from proxistore.fileio import LocalFileSystem
from proxistore.plugins import wal_avro
from proxistore.plugins.wal_avro import AvroWalStrategy, inspect_wal, syncing
from proxistore.plugins.wal_avro.format import REST_FIELDS, RECORD_SCHEMA, build_header, encode_long, encode_record
from proxistore.testing.wal import assert_batches_equal, make_batch

OPS = (OP_INSERT, OP_UPSERT, OP_DELETE)


def open_wal(root, fs=None, name="c", **config):
    s = AvroWalStrategy(config, fs=fs or LocalFileSystem(), root=str(root))
    if name not in s.list_collections():
        s.create_collection(name)
    wal = s.open_collection(name)
    got = list(wal.replay(0))
    return s, wal, got


def seg_files(root, name="c"):
    d = os.path.join(str(root), name)
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".avro")]


def test_plugin_registers_avro_with_declared_keys():
    [spec] = wal_avro.proxistore_wal_strategies()
    assert spec.name == "avro" and spec.factory is AvroWalStrategy and spec.kind == "wal"
    keys = {k.name: k for k in spec.keys}
    assert keys["sync_mode"].default == "group"
    assert keys["sync_mode"].choices == ("always", "group", "interval", "none")
    assert keys["recovery_mode"].default == "strict"
    assert keys["segment_size"].default == 16_000_000 and keys["segment_size"].kind == "size"
    assert keys["group_commit_window"].kind == keys["sync_interval"].kind == "duration"
    assert [k for k, v in keys.items() if v.threshold] == ["segment_size"]
    assert all(k.help for k in spec.keys)


def test_unknown_or_invalid_config_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="sync_mod"):
        AvroWalStrategy({"sync_mod": "always"}, fs=LocalFileSystem(), root=str(tmp_path))
    with pytest.raises(ConfigError, match="sync_mode"):
        AvroWalStrategy({"sync_mode": "sometimes"}, fs=LocalFileSystem(), root=str(tmp_path))


def test_segments_are_plain_avro_containers_one_record_per_block(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    want = [make_batch(OPS[i % 3], 1 + 4 * i, 4, 3) for i in range(3)]
    for b in want:
        wal.sync(wal.append(b))
    wal.close()
    [seg] = seg_files(tmp_path)
    with open(seg, "rb") as f:
        reader = fastavro.reader(f)
        assert reader.metadata["proxistore.format_version"] == "1.0"
        records = list(reader)
    with open(seg, "rb") as f:
        assert [b.num_records for b in fastavro.block_reader(f)] == [1, 1, 1]
    for rec, b in zip(records, want):
        assert (rec["first_lsn"], rec["last_lsn"], rec["op"]) == (b.first_lsn, b.last_lsn, b.op)
        assert rec["ids"] == list(b.ids)
        if b.vectors is not None:
            assert rec["dim"] == 3 and rec["vectors"] == b.vectors.astype("<f4").tobytes()
            assert json.loads(rec["metadata"]) == b.metadata
        # the CRC covers the encoding of every field before it
        body = io.BytesIO()
        fields = [f for f in RECORD_SCHEMA["fields"] if f["name"] != "crc32"]
        fastavro.schemaless_writer(body, {**RECORD_SCHEMA, "fields": fields}, rec)
        assert rec["crc32"] == struct.pack(">I", zlib.crc32(body.getvalue()))
    s.close()


def rewrite_with_schema(path, version, extra_field=False):
    """Rewrite a segment as format ``version``, optionally with a new field before the CRC."""
    with open(path, "rb") as f:
        records = list(fastavro.reader(f))
    schema = json.loads(json.dumps(RECORD_SCHEMA))
    if extra_field:
        schema["fields"].insert(-1, {"name": "origin", "type": "string", "default": ""})
    fields = [f for f in schema["fields"] if f["name"] != "crc32"]
    out = io.BytesIO()
    for rec in records:
        rec["origin"] = "replica-7"
        body = io.BytesIO()
        fastavro.schemaless_writer(body, {**schema, "fields": fields}, rec)
        rec["crc32"] = struct.pack(">I", zlib.crc32(body.getvalue()))
    fastavro.writer(out, schema, records, sync_interval=1,
                    metadata={"proxistore.format_version": version})
    with open(path, "wb") as f:
        f.write(out.getvalue())


def test_newer_minor_version_with_added_field_is_read(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    want = [make_batch(OPS[i % 3], 1 + 2 * i, 2) for i in range(3)]
    for b in want:
        wal.sync(wal.append(b))
    wal.close()
    s.close()
    rewrite_with_schema(seg_files(tmp_path)[0], "1.7", extra_field=True)
    s, wal, got = open_wal(tmp_path)
    assert_batches_equal(got, want)
    wal.close()


def test_newer_major_version_is_refused_with_wal_version_error(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    wal.sync(wal.append(make_batch(OP_INSERT, 1, 2)))
    wal.close()
    s.close()
    rewrite_with_schema(seg_files(tmp_path)[0], "2.0")
    for mode in ("strict", "point_in_time"):
        with pytest.raises(WalVersionError, match="2.0"):
            open_wal(tmp_path, recovery_mode=mode)


def test_header_encoding_matches_fastavro():
    marker = bytes(range(16))
    header = build_header(marker, {"x": "y"})
    assert header.startswith(b"Obj\x01") and header.endswith(marker)
    for n in (0, 1, -1, 63, 64, 2 ** 31, -(2 ** 40), 2 ** 62):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", n)
        assert encode_long(n) == buf.getvalue()


def test_small_records_are_framed_byte_for_byte_as_fastavro_frames_them():
    # a batch of fewer than 16 rows has its fields framed by format.py itself: a reader (ours,
    # fastavro's, any Avro reader) must not be able to tell
    marker = bytes(range(16))
    ids_cases = [["a"], [""], ["é\u4e2d\U0001F600", "x" * 200], [f"id-{i}" for i in range(15)]]
    for op in ("insert", "upsert", "delete"):
        for ids in ids_cases:
            for meta in (None, [{"k": "v"}] * len(ids), [None] * len(ids)):
                vecs = None if op == "delete" else np.arange(len(ids) * 3, dtype=np.float32).reshape(-1, 3)
                batch = WalBatch(op, 2 ** 33 + 7, ids, vecs, meta, 1234.5)
                rec = encode_record(batch, io.BytesIO(), 1234.5)
                meta_json = (None if meta is None or op == "delete"
                             else json.dumps(meta, separators=(",", ":")))
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, {"type": "record", "name": "R", "fields": REST_FIELDS},
                                           {"op": op, "ids": ids, "metadata": meta_json, "timestamp": 1234.5})
                assert rec.rest == buf.getvalue(), (op, ids, meta)
                block = rec.head + bytes(rec.vectors) + rec.tail(rec.crc()) + marker
                got = list(fastavro.reader(io.BytesIO(build_header(marker, {}) + block)))
                assert got[0]["ids"] == ids and got[0]["op"] == op and got[0]["first_lsn"] == 2 ** 33 + 7


def test_segment_rotates_before_exceeding_segment_size(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always", segment_size=4000)
    want = [make_batch(OP_INSERT, 1 + 5 * i, 5, 16) for i in range(30)]
    for b in want:
        wal.sync(wal.append(b))
    wal.sync(wal.append(big := make_batch(OP_INSERT, 151, 100, 16)))   # alone > segment_size
    segs = seg_files(tmp_path)
    assert len(segs) > 5 and wal.stats()["rotations"] == len(segs) - 1
    assert all(os.path.getsize(p) <= 4000 for p in segs[:-1])
    assert os.path.getsize(segs[-1]) > 4000
    wal.close()
    _, wal, got = open_wal(tmp_path)
    assert_batches_equal(got, want + [big])
    wal.close()


def test_wal_bytes_stay_bounded_under_steady_ingest_with_rotate_and_checkpoint(tmp_path):
    seg_size = 64_000
    s, wal, _ = open_wal(tmp_path, sync_mode="group", segment_size=seg_size)
    lsn, peak, ingested, flushed = 1, 0, 0, 0
    while ingested < 10 * seg_size:
        b = make_batch(OP_INSERT, lsn, 16, 64)       # ~4.5 kB per record
        wal.sync(wal.append(b))
        lsn = b.last_lsn + 1
        ingested += wal.stats()["bytes_appended"] - ingested
        if (b.last_lsn // 16) % 10 == 0:              # a flush every 10 batches
            wal.rotate()                               # at flush start
            flushed = b.last_lsn                       # the engine durably stored <= flushed
            wal.checkpoint(flushed)
        on_disk = sum(os.path.getsize(p) for p in seg_files(tmp_path))
        assert on_disk == wal.size_bytes()
        peak = max(peak, on_disk)
    assert ingested >= 10 * seg_size
    assert peak <= seg_size + 10 * 5000 + 2000        # one segment + one flush interval
    stats = wal.stats()
    assert stats["bytes_freed"] >= ingested - peak and stats["segments_deleted"] > 5
    wal.close()
    _, wal, got = open_wal(tmp_path)
    assert [b.first_lsn for b in got if b.last_lsn > flushed] == list(range(flushed + 1, lsn, 16))
    wal.close()


def test_a_checkpoint_cut_short_by_a_crash_leaves_only_flushed_segments_behind(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    want = [make_batch(OP_INSERT, 1 + 4 * i, 4) for i in range(6)]
    for i, b in enumerate(want):
        wal.sync(wal.append(b))
        if i % 2 == 1:
            wal.rotate()                                # three closed segments of two batches
    first = seg_files(tmp_path)[0]
    saved = open(first, "rb").read()
    flushed = want[3].last_lsn
    assert wal.checkpoint(flushed) > 0 and len(seg_files(tmp_path)) == 1
    wal.close()
    with open(first, "wb") as f:                        # its unlink never reached the disk
        f.write(saved)
    s = AvroWalStrategy({}, fs=LocalFileSystem(), root=str(tmp_path))
    wal = s.open_collection("c")
    assert_batches_equal(list(wal.replay(flushed)), want[4:])
    assert wal.recovery.skipped_batches == 2
    assert wal.checkpoint(flushed) == len(saved)
    assert len(seg_files(tmp_path)) == 1 and first not in seg_files(tmp_path)
    wal.close()
    s.close()


def test_group_commit_shares_fsyncs_among_eight_writers(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="group")
    lock = threading.Lock()
    lsn = [1]
    errors = []

    def writer():
        try:
            for _ in range(40):
                with lock:
                    token = wal.append(make_batch(OP_INSERT, lsn[0], 1, 8))
                    lsn[0] += 1
                wal.sync(token)
        except WalError as e:
            errors.append(e)

    before = wal.stats()["fsyncs"]
    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = wal.stats()
    assert stats["appends"] == 320
    assert stats["fsyncs"] - before < 320 and stats["pending_records"] == 0
    wal.close()
    _, wal, got = open_wal(tmp_path)
    assert [b.first_lsn for b in got] == list(range(1, 321))
    wal.close()


def concurrent_writers(wal, *, writers, batches, rows, dim=8, first_lsn=1, also=None):
    """``writers`` threads each appending and syncing ``batches`` insert batches of ``rows`` rows,
    LSNs handed out under one lock as the core does (and ``also`` on a thread of its own)."""
    lock, lsn = threading.Lock(), [first_lsn]

    def writer():
        for _ in range(batches):
            with lock:
                token = wal.append(make_batch(OP_INSERT, lsn[0], rows, dim))
                lsn[0] += rows
            wal.sync(token)
    pool = [threading.Thread(target=writer) for _ in range(writers)]
    pool += [threading.Thread(target=also)] if also is not None else []
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def syncer_threads(name="c"):
    return [t for t in threading.enumerate() if t.name == f"proxistore-wal-sync-{name}"]


def test_group_syncer_thread_starts_on_demand_exits_when_idle_and_is_joined_by_close(tmp_path, monkeypatch):
    monkeypatch.setattr(syncing, "SYNCER_IDLE_EXIT", 0.05)
    s, wal, _ = open_wal(tmp_path, sync_mode="group")
    assert syncer_threads() == []
    wal.sync(wal.append(make_batch(OP_INSERT, 1, 1, 8)))
    assert len(syncer_threads()) == 1
    deadline = time.monotonic() + 5
    while syncer_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert syncer_threads() == [], "an idle syncer stays"
    wal.sync(wal.append(make_batch(OP_INSERT, 2, 1, 8)))    # a new one starts for the next waiter
    assert len(syncer_threads()) == 1 and wal.stats()["pending_records"] == 0
    # after groups of several writers the syncer gathers the next group without waiting idle;
    # once the writers stop, that must end in idleness too, not in a loop of empty gathers
    concurrent_writers(wal, writers=6, batches=30, rows=1, first_lsn=3)
    assert wal.stats()["pending_records"] == 0 and wal.stats()["fsyncs"] < 2 + 180
    deadline = time.monotonic() + 5
    while syncer_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert syncer_threads() == [], "the syncer of a finished burst stays"
    wal.close()
    assert syncer_threads() == []
    s.close()
    _, wal, got = open_wal(tmp_path)
    assert [b.first_lsn for b in got] == list(range(1, 183))
    wal.close()


def test_group_and_always_append_defers_small_records_to_the_fsync_that_acknowledges_them(tmp_path):
    for mode in ("always", "group"):
        s, wal, _ = open_wal(tmp_path / mode, sync_mode=mode)
        wal.sync(wal.append(make_batch(OP_INSERT, 1, 1, 8)))
        path = os.path.join(wal.dir, wal.stats()["active_segment"])
        on_disk = os.path.getsize(path)
        token = wal.append(make_batch(OP_INSERT, 2, 3, 8))
        assert os.path.getsize(path) == on_disk            # kept in memory: not acknowledged yet
        wal.sync(token)
        assert os.path.getsize(path) == wal.stats()["bytes"] > on_disk
        assert wal.stats()["write_seconds"] > 0
        big = wal.append(make_batch(OP_INSERT, 5, 100, 384))    # >= 64 KiB of vectors: written now
        assert os.path.getsize(path) == wal.stats()["bytes"]
        wal.sync(big)
        wal.close()
        s.close()
        _, wal, got = open_wal(tmp_path / mode)
        assert [b.first_lsn for b in got] == [1, 2, 5]
        wal.close()


class FailingWrites(LocalFileSystem):
    """The real filesystem, except that writes fail with ENOSPC once armed (a full disk)."""

    armed = False

    def _write(self, handle, data):
        if self.armed:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return super()._write(handle, data)


def test_a_failed_deferred_write_fails_every_unacknowledged_record_and_the_log_heals(tmp_path):
    fs = FailingWrites()
    s, wal, _ = open_wal(tmp_path, fs=fs, sync_mode="always")
    wal.sync(wal.append(make_batch(OP_INSERT, 1, 2)))
    first = wal.append(make_batch(OP_INSERT, 3, 2))
    second = wal.append(make_batch(OP_INSERT, 5, 2))      # both kept for the next fsync
    fs.armed = True
    with pytest.raises(WalError, match="write of .* failed"):
        wal.sync(second)
    fs.armed = False
    with pytest.raises(WalError, match="not made durable|has not recovered"):
        wal.sync(first)
    later = wal.append(make_batch(OP_INSERT, 7, 2))      # heals: the segment is cut back to its fsync
    wal.sync(later)
    for token in (first, second):
        with pytest.raises(WalError, match="not made durable"):
            wal.sync(token)
    assert wal.stats()["heals"] == 1
    wal.close()
    s.close()
    _, wal, got = open_wal(tmp_path)
    assert [b.first_lsn for b in got] == [1, 7]
    wal.close()


def test_group_commit_under_concurrent_rotation_loses_nothing(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="group", segment_size=2000)
    concurrent_writers(wal, writers=6, batches=30, rows=2, dim=16,
                       also=lambda: [wal.rotate() or time.sleep(0.001) for _ in range(50)])
    assert wal.stats()["rotations"] > 10
    wal.close()
    _, wal, got = open_wal(tmp_path)
    assert [b.first_lsn for b in got] == list(range(1, 361, 2))
    wal.close()


def test_interval_mode_syncs_in_the_background(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="interval", sync_interval=0.02)
    t0 = time.perf_counter()
    for i in range(5):
        wal.sync(wal.append(make_batch(OP_INSERT, 1 + i, 1)))
    assert wal.stats()["pending_records"] > 0 or time.perf_counter() - t0 > 0.02
    deadline = time.time() + 5
    while wal.stats()["pending_records"] and time.time() < deadline:
        time.sleep(0.01)
    assert wal.stats()["pending_records"] == 0
    s.close()


def test_none_mode_never_fsyncs_records_but_close_does(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="none")
    for i in range(20):
        wal.sync(wal.append(make_batch(OP_INSERT, 1 + i, 1)))
    assert wal.stats()["fsyncs"] == 1              # the new segment's header only
    wal.close()
    assert wal.stats()["fsyncs"] == 2
    s.close()


class FailingFsync(LocalFileSystem):
    """The real filesystem, except that fsyncs fail with EIO once armed (a dying disk)."""

    armed = False

    def _fsync(self, handle):
        if self.armed:
            handle.raw.flush()
            raise OSError(errno.EIO, "Input/output error (injected)")
        super()._fsync(handle)


@pytest.mark.parametrize("mode", ["always", "group"])
def test_fsync_failure_fails_the_record_for_good_and_the_log_heals_when_the_disk_recovers(tmp_path, mode):
    fs = FailingFsync()
    s, wal, _ = open_wal(tmp_path, fs=fs, sync_mode=mode)
    good = make_batch(OP_INSERT, 1, 2)
    wal.sync(wal.append(good))
    fs.armed = True
    token = wal.append(make_batch(OP_INSERT, 3, 2))
    with pytest.raises(WalError, match="fsync"):
        wal.sync(token)
    with pytest.raises(WalError, match="cannot recover yet"):   # the disk still fails: no append
        wal.append(make_batch(OP_INSERT, 5, 2))
    assert wal.stats()["failed"]
    fs.armed = False                               # a retry would "succeed": it must not be trusted
    with pytest.raises(WalError, match="not made durable|has not recovered"):
        wal.sync(token)
    later = wal.append(make_batch(OP_INSERT, 7, 2))  # heals: the failed segment is cut back
    wal.sync(later)
    with pytest.raises(WalError, match="not made durable"):
        wal.sync(token)                            # ... and the failed record stays failed
    assert not wal.stats()["failed"] and wal.stats()["heals"] == 1
    wal.close()
    s.close()
    _, wal, got = open_wal(tmp_path)               # what is on disk: the good and the later batch
    assert [b.first_lsn for b in got] == [1, 7]
    wal.close()


class FsyncFailsAfterAnotherFailure(LocalFileSystem):
    """Once armed, an fsync fails with EIO just after another thread failed the log (as when a
    spare segment's creation fails at the same moment)."""

    armed = False
    wal = None

    def _fsync(self, handle):
        if self.armed:
            self.wal._fail("a spare's creation failed meanwhile (injected)")
            raise OSError(errno.EIO, "Input/output error (injected)")
        super()._fsync(handle)


def test_a_failed_rotation_fsync_never_counts_when_the_log_failed_meanwhile(tmp_path):
    """Regression: the closing fsync's error was ignored when the log had failed meanwhile, and
    the records were still marked durable, so a later sync acknowledged them."""
    fs = FsyncFailsAfterAnotherFailure()
    s, wal, _ = open_wal(tmp_path, fs=fs, sync_mode="always")
    fs.wal = wal
    wal.sync(wal.append(make_batch(OP_INSERT, 1, 2)))
    token = wal.append(make_batch(OP_INSERT, 3, 2))
    fs.armed = True
    with pytest.raises(WalError, match="fsync/close"):
        wal.rotate()
    fs.armed = False
    with pytest.raises(WalError):
        wal.sync(token)
    assert wal.stats()["pending_records"] == 1
    wal.close()
    s.close()


def test_fsync_failure_under_group_commit_fails_every_waiting_writer_and_none_hangs(tmp_path):
    fs = FailingFsync()
    s, wal, _ = open_wal(tmp_path, fs=fs, sync_mode="group")
    lock = threading.Lock()
    lsn = [1]
    outcomes = []

    def writer():
        for i in range(30):
            if i == 10:
                fs.armed = True
            try:
                with lock:
                    token = wal.append(make_batch(OP_INSERT, lsn[0], 1))
                    lsn[0] += 1
                wal.sync(token)
                outcomes.append("ok")
            except WalError:
                outcomes.append("error")
                return

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a writer hangs after an fsync failure"
    assert outcomes.count("error") == 6
    wal.close()
    s.close()


def test_stats_time_append_and_fsync_separately_and_debug_logs_name_the_work(tmp_path, caplog):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    with caplog.at_level(logging.DEBUG, logger="proxistore.wal"):
        wal.sync(wal.append(make_batch(OP_INSERT, 1, 50, 32)))
    stats = wal.stats()
    assert stats["append_seconds"] > 0 and stats["fsync_seconds"] > 0 and stats["fsyncs"] == 2
    assert stats["write_seconds"] > 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "append of 50 rows (encode+CRC, 7825 bytes kept for the next fsync to write, no fsync)" in text
    assert "wrote 1 deferred records (7825 bytes) to the OS" in text
    assert "fsync of wal-0000000001.avro made 1 records durable" in text
    assert "header write + file fsync + directory fsync" in text
    wal.close()


def test_interval_mode_writes_each_record_to_the_os_at_append(tmp_path, caplog):
    """Acknowledged at once, so it must survive a process crash from the moment of the ack."""
    s, wal, _ = open_wal(tmp_path, sync_mode="interval")
    with caplog.at_level(logging.DEBUG, logger="proxistore.wal"):
        wal.sync(wal.append(make_batch(OP_INSERT, 1, 50, 32)))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "append of 50 rows (encode+CRC, 7825 bytes written to the OS, no fsync)" in text
    path = wal.stats()["active_segment"]
    assert os.path.getsize(os.path.join(wal.dir, path)) == wal.stats()["bytes"]
    wal.close()
    s.close()


def test_strategy_collections_lifecycle(tmp_path):
    s = AvroWalStrategy({}, fs=LocalFileSystem(), root=str(tmp_path / "wal"))
    assert s.list_collections() == []
    with pytest.raises(InvalidCollectionName):
        s.create_collection("../escape")
    with pytest.raises(CollectionNotFound):
        s.open_collection("missing")
    s.create_collection("a")
    s.create_collection("a")                       # an empty log: idempotent
    wal = s.open_collection("a")
    with pytest.raises(WalError, match="already open"):
        s.open_collection("a")
    wal.sync(wal.append(make_batch(OP_INSERT, 1, 1)))
    with pytest.raises(CollectionExists):
        s.create_collection("a")
    s.create_collection("b")
    assert s.list_collections() == ["a", "b"]
    s.drop_collection("a")                         # closes the open log first
    assert s.list_collections() == ["b"]
    s.close()


def test_inspect_reports_segments_lsn_ranges_and_bytes(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always", segment_size=3000)
    for i in range(12):
        wal.sync(wal.append(make_batch(OP_INSERT, 1 + 10 * i, 10, 8)))
    wal.close()
    info = inspect_wal(str(tmp_path))
    c = info["collections"]["c"]
    assert c["records"] == 12 and c["rows"] == 120 and (c["first_lsn"], c["last_lsn"]) == (1, 120)
    assert c["bytes"] == info["bytes"] == sum(os.path.getsize(p) for p in seg_files(tmp_path))
    assert len(c["segments"]) > 1 and all(e["problem"] is None for e in c["segments"])
    json.dumps(info)


def test_empty_or_inconsistent_batches_are_refused(tmp_path):
    s, wal, _ = open_wal(tmp_path)
    with pytest.raises(WalError):
        wal.append(WalBatch(op=OP_INSERT, first_lsn=1, ids=[]))
    with pytest.raises(WalError):
        wal.append(WalBatch(op=OP_INSERT, first_lsn=1, ids=["a"]))       # no vectors
    wal.close()

