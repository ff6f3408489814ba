"""The write-ahead log of one collection: append, rotate, checkpoint, stats, close.

``append`` runs under the core's per-collection lock and our ``_lock``, which also guards
rotation, checkpoint and close against it; ``sync`` (see :mod:`.syncing`) runs outside any lock,
from many threads. Lock order: ``_lock`` -> ``segment.sync_lock`` -> ``_cond``; nobody waits for
an earlier lock while holding a later one.

Failure (see :mod:`.healing`): a failed write cuts its partial record off and fails that batch
alone; a failed fsync *fails the log*: it is raised as :class:`WalError`, every record not yet
durable fails for good, and appends are refused until the next one manages to repair the damage
(the disk has space again). An fsync error cannot be retried safely: the kernel may have dropped
the dirty pages and a second fsync would report success for data that is gone.

New segments are made by :mod:`.rotation`, the next one ahead of time, off the write path.
"""
from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import zlib
from time import perf_counter
from typing import Any, Callable, Dict, Iterator, List, Optional

from proxistore.contracts import CollectionWal, RecoveryReport, WalBatch
from proxistore.errors import WalError
from proxistore.fileio import FileHandle, FileSystem

from .format import EncodedRecord, encode_record
from .recovery import replay_log
from .healing import Damage, HealMixin
from .segment import Segment, list_segments
from .settings import Settings
from .rotation import RotationMixin
from .syncing import SyncMixin

__all__ = ["AvroCollectionWal"]

log = logging.getLogger("proxistore.wal")

_JOIN_BELOW = 1 << 16   # records with fewer vector bytes are written with one write() call
_CHUNK = 1 << 18        # large records: write + CRC in chunks of this size


def _write_large(handle: FileHandle, rec: EncodedRecord, sync_marker: bytes) -> None:
    """Write a large record without copying its vectors: they go from the caller's array to
    the OS in chunks, each CRC'd right after its write while it is still in the CPU cache
    (about 15% faster than a CRC pass before the write; the CRC goes after the vectors)."""
    handle.write(rec.head)
    crc = zlib.crc32(rec.prefix)
    vec = rec.vectors
    for off in range(0, len(vec), _CHUNK):
        part = vec[off:off + _CHUNK]
        handle.write(part)
        crc = zlib.crc32(part, crc)
    handle.write(rec.tail(zlib.crc32(rec.rest, crc)) + sync_marker)


class AvroCollectionWal(HealMixin, SyncMixin, RotationMixin, CollectionWal):
    """The Avro segment log of collection ``name`` in directory ``dirpath``."""

    def __init__(self, *, fs: FileSystem, dirpath: str, name: str, settings: Settings,
                 on_close: Optional[Callable[["AvroCollectionWal"], None]] = None) -> None:
        self.fs = fs
        self.dir = dirpath
        self.name = name
        self.settings = settings
        self.recovery = RecoveryReport()
        self._on_close = on_close
        self._segments, max_seq, self._corrupt = list_segments(fs, dirpath)
        self._next_seq = max_seq + 1
        self._active: Optional[Segment] = None
        self._spares: List[Segment] = []            # made by prepare_rotation(), not yet in use
        self._preparing = False
        self._lock = threading.Lock()
        self._spare_done = threading.Condition(self._lock)
        self._cond = threading.Condition()
        self._appended = 0          # records appended (tokens are 1, 2, ...)
        self._durable = 0           # every token <= this is durable
        self._syncer: Optional[threading.Thread] = None    # group mode (see .syncing)
        self._syncer_idle = False
        self._waiters: list = []
        self._gathering = False
        self._last_group = 1
        self._failed: Optional[str] = None
        self._damage: List[Damage] = []        # what the next heal must repair (see .healing)
        self._lost: List[tuple] = []           # token ranges (lo, hi] that failed for good
        self._closed = False
        self._strict = settings.sync_mode in ("always", "group")   # an fsync before each ack
        self._recovered = False
        self._highest_lsn = 0
        self._c: Dict[str, Any] = dict(
            appends=0, rows_appended=0, bytes_appended=0, append_seconds=0.0, write_seconds=0.0, fsyncs=0,
            dir_fsyncs=0, fsync_seconds=0.0, rotations=0, segments_created=0, segments_prepared=0,
            checkpoints=0, segments_deleted=0, bytes_freed=0, write_repairs=0, heals=0)

    # -- replay ----------------------------------------------------------------------------

    def replay(self, after_lsn: int) -> Iterator[WalBatch]:
        """Yield intact batches with ``last_lsn > after_lsn``; repair a torn tail (see recovery)."""
        return replay_log(self, after_lsn)

    def _ensure_recovered(self) -> None:
        if not self._recovered:
            for _ in replay_log(self, sys.maxsize):
                pass

    # -- append ----------------------------------------------------------------------------

    def append(self, batch: WalBatch) -> int:
        """Write ``batch`` as one record (handed to the OS, not fsynced); return its token."""
        if self._closed:
            raise WalError(f"WAL of collection {self.name!r} is closed")
        self._ensure_recovered()
        t0 = perf_counter()
        rec = encode_record(batch, io.BytesIO(), batch.timestamp or time.time())
        small = len(rec.vectors) < _JOIN_BELOW
        tail = rec.tail(rec.crc()) if small else b""
        defer = small and self._strict
        fsync_dt = 0.0
        with self._lock:
            if self._closed:
                raise WalError(f"WAL of collection {self.name!r} is closed")
            if self._failed:
                self._heal()
            limit = self.settings.segment_size
            while True:
                seg = self._active
                if seg is not None and seg.records and seg.size + rec.nbytes > limit:
                    fsync_dt += self._close_active(final=False)
                    self._c["rotations"] += 1
                    seg = None
                if seg is not None:
                    break
                if self._preparing and not self._spares:   # a spare is being made: wait (releases _lock)
                    self._spare_done.wait()
                    self._check_usable()
                    continue
                seg, dt = self._open_segment()
                fsync_dt += dt
                break
            h = seg.handle
            assert h is not None
            if defer:
                seg.pending.append(b"".join((rec.head, rec.vectors, tail, seg.sync_marker)))
            else:
                if seg.pending:
                    self._write_pending(seg)
                try:
                    if small:
                        h.write(b"".join((rec.head, rec.vectors, tail, seg.sync_marker)))
                    else:
                        _write_large(h, rec, seg.sync_marker)
                    h.flush()
                except OSError as e:
                    raise self._repair_write(seg, e) from e
            seg.note_record(batch.first_lsn, batch.first_lsn + rec.rows - 1, rec.rows, rec.nbytes)
            self._highest_lsn = max(self._highest_lsn, batch.first_lsn + rec.rows - 1)
            self._appended += 1
            token = self._appended
            # wake a gathering syncer only once the group it waits for is complete (each
            # wake-up is a trip through the GIL that delays the group's other writers)
            gathering = self._gathering and token - self._durable >= self._last_group
            dt = perf_counter() - t0 - fsync_dt
            c = self._c
            c["appends"] += 1
            c["rows_appended"] += rec.rows
            c["bytes_appended"] += rec.nbytes
            c["append_seconds"] += dt
        if gathering:
            with self._cond:
                self._cond.notify_all()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("wal %s: append of %d rows (encode+CRC, %d bytes %s, no fsync) took %.3f ms",
                      self.name, rec.rows, rec.nbytes,
                      "kept for the next fsync to write" if defer else "written to the OS", dt * 1e3)
        return token

    def _write_pending(self, seg: Segment) -> None:
        """Under ``_lock``: hand ``seg``'s deferred records to the OS, in order.

        In ``always`` and ``group`` a small record is not written by ``append`` but kept until
        the fsync that acknowledges it: an append then makes no system call, which would let
        the other writers take the GIL mid-append, and each fsync is preceded by one write of
        all its records. None of them is acknowledged yet, so a failed write fails the log and
        the next heal cuts the segment back to its last fsync, as after a failed fsync."""
        records = len(seg.pending)
        data = seg.take_pending()
        h = seg.handle
        assert h is not None
        t0 = perf_counter()
        try:
            h.write(data)
            h.flush()
        except OSError as e:
            raise self._fail(f"write of {len(data)} bytes to {seg.path} failed: {e}",
                             self._fsync_damage(seg)) from e
        dt = perf_counter() - t0
        self._c["write_seconds"] += dt
        if log.isEnabledFor(logging.DEBUG):
            log.debug("wal %s: wrote %d deferred records (%d bytes) to the OS in %.3f ms", self.name,
                      records, len(data), dt * 1e3)

    def _close_active(self, *, final: bool) -> float:
        """Close the active segment, fsyncing it first (unless sync_mode=none and not final).
        Under _lock; returns the fsync seconds."""
        seg = self._active
        if seg is None:
            return 0.0
        upto = self._appended
        # Nothing to fsync when every record appended is durable already (the header was
        # fsynced when the segment was created): the usual case at a rotation, since the core
        # rotates with no batch in flight and in always/group mode each ack waited for an fsync.
        do_fsync = ((final or self.settings.sync_mode != "none") and not self._failed
                    and upto > self._durable)
        dt = 0.0
        err: Optional[OSError] = None
        data = seg.take_pending()       # deferred records: written if they are to be kept
        with seg.sync_lock:
            h = seg.handle
            assert h is not None
            try:
                if do_fsync:
                    if data:
                        t0 = perf_counter()
                        h.write(data)
                        self._c["write_seconds"] += perf_counter() - t0
                    t0 = perf_counter()
                    h.fsync()
                    dt = perf_counter() - t0
            except OSError as e:
                err = e
            try:
                h.close()
            except OSError as e:
                err = err or e
            seg.handle = None
        self._active = None
        self._segments.append(seg)
        # An fsync that failed counts for nothing, even when another thread failed the log
        # meanwhile (a spare's creation at the same moment, say): those records are not durable.
        if err is not None and (do_fsync or not self._failed):
            raise self._fail(f"fsync/close of {seg.path} failed: {err}", self._fsync_damage(seg)) from err
        if do_fsync:
            self._mark_durable(upto, dt)
            log.debug("wal %s: closed segment %s (fsync %.3f ms)", self.name, seg.name, dt * 1e3)
        return dt

    # -- rotation, checkpoint, accounting ---------------------------------------------------

    def rotate(self) -> None:
        """Close the active segment (fsynced unless sync_mode=none)."""
        with self._lock:
            if self._closed:
                raise WalError(f"WAL of collection {self.name!r} is closed")
            if self._active is not None:
                self._close_active(final=False)
                self._c["rotations"] += 1

    def checkpoint(self, flushed_lsn: int) -> int:
        """Delete the oldest closed segments whose records are all <= ``flushed_lsn``.

        The segments are taken off the log under ``_lock`` and unlinked without it (appends
        need that lock). The directory is not fsynced here: the unlinks become durable with its
        next fsync, when the next spare segment is created (after the next rotation). A crash
        before that may bring a deleted segment back; all its records are flushed, so replay
        skips them and the next checkpoint deletes it again. Each directory fsync is one more
        journal commit that the writers' fsyncs queue behind, and one is made per flush."""
        self._ensure_recovered()
        with self._lock:
            if self._closed:
                raise WalError(f"WAL of collection {self.name!r} is closed")
            victims = []
            for seg in self._segments:
                if seg.records and (seg.last_lsn is None or seg.last_lsn > flushed_lsn):
                    break
                victims.append(seg)
            if not victims:
                return 0
            del self._segments[:len(victims)]
        freed = 0
        done = 0
        try:
            for seg in victims:
                self.fs.unlink(seg.path)
                done += 1
                freed += seg.size
        finally:
            if done < len(victims):       # still on disk: back on the log, oldest first
                with self._lock:
                    self._segments[:0] = victims[done:]
        with self._lock:
            self._c["checkpoints"] += 1
            self._c["segments_deleted"] += len(victims)
            self._c["bytes_freed"] += freed
        log.debug("wal %s: checkpoint at LSN %d deleted %d segments (%d bytes)", self.name,
                  flushed_lsn, len(victims), freed)
        return freed

    def size_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments) + (self._active.size if self._active else 0)

    def stats(self) -> Dict[str, Any]:
        """Counters plus bytes/segments/records on disk; times are seconds (perf_counter)."""
        with self._lock:
            segs = self._segments + ([self._active] if self._active else [])
            with self._cond:
                out: Dict[str, Any] = dict(self._c)
                durable = self._durable
            out.update(
                bytes=sum(s.size for s in segs), segments=len(segs),
                records=sum(s.records for s in segs), rows=sum(s.rows for s in segs),
                first_lsn=next((s.first_lsn for s in segs if s.first_lsn is not None), None),
                last_lsn=self._highest_lsn or None,
                active_segment=self._active.name if self._active else None,
                pending_records=self._appended - durable,
                sync_mode=self.settings.sync_mode, failed=self._failed,
                corrupt_files=[os.path.basename(p) for p in self._corrupt])
        return out

    def close(self) -> None:
        """Fsync and close the active segment (even under sync_mode=none) and stop."""
        if self._closed:
            return
        spares: List[Segment] = []
        try:
            with self._lock:
                self._closed = True             # a prepare_rotation() finishing now discards its spare
                while self._preparing:          # ... and is waited for: the directory may be deleted next
                    self._spare_done.wait()
                spares, self._spares = self._spares, []
                if self._failed:
                    try:
                        self._heal()            # so that no partial record stays for replay
                    except WalError as e:
                        log.error("wal %s: closing a failed log: %s", self.name, e)
                if self._failed and self._active is not None:
                    self._close_failed_active()
                self._close_active(final=True)
        finally:
            for spare in spares:
                spare.handle.close()
                self._undo_spare(spare.path, sync_dir=False)
            self._closed = True
            with self._cond:
                self._cond.notify_all()
                syncer = self._syncer
            if syncer is not None and syncer is not threading.current_thread():
                syncer.join()       # it wakes whoever still waits and exits
            if self._on_close is not None:
                self._on_close(self)

    def _close_failed_active(self) -> None:
        seg = self._active
        assert seg is not None
        try:
            if seg.handle is not None:     # a failed heal may have closed it already
                seg.handle.close()
        except OSError as e:   # the failure that matters was already raised to the writers
            log.warning("wal %s: closing failed segment %s: %s", self.name, seg.name, e)
        seg.handle = None
        seg.pending = []                  # not acknowledged: the heal cut it back to its last fsync
        self._active = None
        self._segments.append(seg)
