"""Replay on open: yield the intact batches, repair a torn tail, refuse or set aside corruption.

- A torn tail (see :mod:`.reader`) of the last segment is truncated at the end of the last
  whole record (a torn *header*, left by a crash while creating the segment, removes the file);
  either way no acknowledged record is lost, because a record is only acknowledged after the
  segment header and the record itself were fsynced. "The last segment" is the last one that
  holds more than a header (:func:`.segment.tail_index`): a spare segment made ahead of the
  next rotation may follow the segment a crash tore.
- Corruption before the tail raises :class:`WalCorruption` naming file and offset
  (``recovery_mode="strict"``), or (``"point_in_time"``) stops at the last good record and moves
  the rest of that file and every later segment aside to ``.corrupt`` files.
- Records at or below ``after_lsn`` are checked (CRC, framing) but not decoded, and counted as
  skipped. ``recovery.seconds`` counts the time spent in replay, not in the caller between yields.
"""
from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Iterator, List, Optional

from proxistore.contracts import RecoveryReport, TornTail, WalBatch
from proxistore.errors import WalCorruption, WalError

from .reader import TORN, SegmentReader, Stop
from .segment import Segment, corrupt_path_for, tail_index

if TYPE_CHECKING:  # pragma: no cover
    from .collection import AvroCollectionWal

__all__ = ["replay_log"]

log = logging.getLogger("proxistore.wal")


def replay_log(wal: "AvroCollectionWal", after_lsn: int) -> Iterator[WalBatch]:
    """The body of ``AvroCollectionWal.replay`` (a generator; fills ``wal.recovery``)."""
    if wal._active is not None:
        raise WalError(f"WAL of {wal.name!r}: replay() must run before the first append")
    report = RecoveryReport()
    wal.recovery = report
    started: Optional[float] = perf_counter()
    highest = -1
    segments: List[Segment] = list(wal._segments)
    tail = tail_index(wal.fs, segments)
    try:
        for i, seg in enumerate(segments):
            try:
                size = wal.fs.size(seg.path)
                handle = wal.fs.open(seg.path, "rb")
            except OSError as e:
                raise WalError(f"cannot read WAL segment {seg.path}: {e}") from e
            reader = SegmentReader(handle, size, seg.path, last=(i >= tail))
            seg.size, seg.records, seg.rows, seg.first_lsn, seg.last_lsn = size, 0, 0, None, None
            try:
                for rec in reader.records(decode_above=after_lsn):
                    rows = rec.last_lsn - rec.first_lsn + 1
                    seg.note_record(rec.first_lsn, rec.last_lsn, rows)
                    if rec.last_lsn <= after_lsn or rec.first_lsn <= highest:
                        if after_lsn < rec.last_lsn:
                            log.warning("wal %s: %s@%d repeats LSNs up to %d; skipped", wal.name,
                                        seg.name, rec.offset, highest)
                        report.skipped_batches += 1
                        highest = max(highest, rec.last_lsn)
                        continue
                    highest = rec.last_lsn
                    report.batches += 1
                    report.rows += rows
                    assert rec.batch is not None
                    report.seconds += perf_counter() - started
                    started = None
                    yield rec.batch
                    started = perf_counter()
            except OSError as e:
                raise WalError(f"cannot read WAL segment {seg.path}: {e}") from e
            finally:
                handle.close()
            seg.scanned = True
            if reader.stop is None:
                continue
            if reader.stop.kind == TORN:
                _repair_torn_tail(wal, seg, reader, report)
                continue
            if wal.settings.recovery_mode != "point_in_time":
                stop = reader.stop
                raise WalCorruption(
                    f"{seg.path}: corrupt WAL record at byte {stop.offset} ({stop.reason}); "
                    f"the records before it are intact. Set recovery_mode = \"point_in_time\" to "
                    f"recover up to the last good record and move the rest aside",
                    file=seg.path, offset=stop.offset)
            _set_aside(wal, segments[i:], reader.stop, report)
            break
        wal._recovered = True
        wal._highest_lsn = max(highest, 0)
    finally:
        if started is not None:
            report.seconds += perf_counter() - started


def _repair_torn_tail(wal: "AvroCollectionWal", seg: Segment, reader: SegmentReader,
                      report: RecoveryReport) -> None:
    stop = reader.stop
    assert stop is not None
    size = reader.size
    try:
        if stop.offset == 0:      # torn header: the segment never held a record
            wal.fs.unlink(seg.path)
            wal.fs.fsync_dir(wal.dir)
            wal._segments.remove(seg)
        else:
            with wal.fs.open(seg.path, "r+b") as h:
                h.truncate(stop.offset)
                h.fsync()
            seg.size = stop.offset
    except OSError as e:
        raise WalError(f"cannot repair the torn tail of {seg.path}: {e}") from e
    report.torn_tails.append(TornTail(file=seg.path, offset=stop.offset,
                                      bytes_dropped=size - stop.offset))
    log.warning("wal %s: torn tail of %s at byte %d (%s): dropped %d bytes of an unacknowledged "
                "record", wal.name, seg.name, stop.offset, stop.reason, size - stop.offset)


def _set_aside(wal: "AvroCollectionWal", segments: List[Segment], stop: Stop,
               report: RecoveryReport) -> None:
    """Point-in-time recovery: move everything from ``stop`` in ``segments[0]`` onwards aside."""
    first = segments[0]
    moved: List[str] = []
    total = 0
    try:
        whole_files = segments
        if stop.offset > 0:             # keep the good head of the file, copy its rest aside
            data = wal.fs.read_bytes(first.path)
            rest = data[stop.offset:]
            target = corrupt_path_for(wal.fs, first.path)
            wal.fs.write_durable(target, rest)
            wal.fs.fsync_dir(wal.dir)
            with wal.fs.open(first.path, "r+b") as h:
                h.truncate(stop.offset)
                h.fsync()
            first.size = stop.offset
            moved.append(target)
            total += len(rest)
            whole_files = segments[1:]
        for seg in whole_files:
            target = corrupt_path_for(wal.fs, seg.path)
            size = wal.fs.size(seg.path)
            wal.fs.rename(seg.path, target)
            wal._segments.remove(seg)
            moved.append(target)
            total += size
        wal.fs.fsync_dir(wal.dir)
    except OSError as e:
        raise WalError(f"point-in-time recovery could not set aside {first.path}: {e}") from e
    wal._corrupt.extend(moved)
    report.set_aside.extend(moved)
    report.set_aside_bytes += total
    log.error("wal %s: corrupt record in %s at byte %d (%s); recovered up to the last good record "
              "and set aside %d bytes: %s", wal.name, first.name, stop.offset, stop.reason,
              total, ", ".join(moved))
