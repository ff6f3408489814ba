"""Read-only tools behind ``proxistore wal inspect DIR`` and ``proxistore wal verify DIR``.

Both accept the WAL root of a database (one subdirectory per collection) or a single
collection's directory, never modify anything (a torn tail is reported, not repaired) and use
the same reader and the same torn-tail rule as replay.

    >>> from proxistore.plugins.wal_avro import inspect_wal, verify_wal
    >>> info = inspect_wal("data/wal")            # JSON-serialisable dict
    >>> result = verify_wal("data/wal")           # VerifyResult; the CLI exits 1 unless .ok
    >>> result.ok, result.first_bad_file, result.first_bad_offset
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from proxistore.contracts import TornTail
from proxistore.errors import WalError, WalVersionError
from proxistore.fileio import FileSystem, default_filesystem

from .format import FORMAT_VERSION, FORMAT_VERSION_KEY, SEGMENT_RE
from .reader import TORN, SegmentReader
from .segment import list_segments, tail_index

__all__ = ["inspect_wal", "verify_wal", "VerifyResult"]


@dataclass
class VerifyResult:
    """The outcome of :func:`verify_wal`. ``ok`` is false on corruption or a newer format;
    a torn tail (repairable, holds no acknowledged record) is listed but keeps ``ok`` true."""

    ok: bool
    root: str
    collections: int = 0
    segments: int = 0
    records: int = 0
    rows: int = 0
    bytes: int = 0
    torn_tails: List[TornTail] = field(default_factory=list)
    first_bad_file: Optional[str] = None
    first_bad_offset: Optional[int] = None
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _collection_dirs(root: str, fs: FileSystem) -> Dict[str, str]:
    if not fs.isdir(root):
        raise WalError(f"no WAL directory at {root}")
    names = fs.listdir(root)
    if any(SEGMENT_RE.match(n) for n in names):
        return {os.path.basename(os.path.normpath(root)): root}
    return {n: os.path.join(root, n) for n in names if fs.isdir(os.path.join(root, n))}


@contextmanager
def _reader(fs: FileSystem, path: str, last: bool) -> Iterator[SegmentReader]:
    """A reader over ``path``, open for the duration of the block (read errors -> WalError)."""
    try:
        with fs.open(path, "rb") as handle:
            yield SegmentReader(handle, fs.size(path), path, last=last)
    except OSError as e:
        raise WalError(f"cannot read WAL segment {path}: {e}") from e


def inspect_wal(root: str, fs: Optional[FileSystem] = None) -> Dict[str, Any]:
    """Per collection: its segments (bytes, records, rows, LSN range, format version, any
    problem with its offset), totals, and set-aside ``.corrupt`` files. CRCs are checked;
    records are not fully decoded (use :func:`verify_wal` for that)."""
    fs = fs or default_filesystem()
    out: Dict[str, Any] = {"root": root, "reader_format_version": "%d.%d" % FORMAT_VERSION,
                           "collections": {}, "bytes": 0}
    for name, d in _collection_dirs(root, fs).items():
        segments, _, corrupt = list_segments(fs, d)
        tail = tail_index(fs, segments)
        entries = []
        for i, seg in enumerate(segments):
            entry: Dict[str, Any] = {"file": seg.name, "bytes": seg.size, "records": 0, "rows": 0,
                                     "first_lsn": None, "last_lsn": None, "format_version": None,
                                     "problem": None}
            with _reader(fs, seg.path, last=i >= tail) as reader:
                try:
                    for rec in reader.records(decode_above=1 << 62):
                        entry["records"] += 1
                        entry["rows"] += rec.last_lsn - rec.first_lsn + 1
                        if entry["first_lsn"] is None:
                            entry["first_lsn"] = rec.first_lsn
                        entry["last_lsn"] = rec.last_lsn
                except WalVersionError as e:
                    entry["problem"] = {"kind": "version", "offset": 0, "reason": str(e)}
            if reader.header is not None:
                entry["format_version"] = reader.header.meta[FORMAT_VERSION_KEY].decode()
            if reader.stop is not None:
                entry["problem"] = {"kind": reader.stop.kind, "offset": reader.stop.offset,
                                    "reason": reader.stop.reason,
                                    "bytes_after": seg.size - reader.stop.offset}
            entries.append(entry)
        lsns = [e for e in entries if e["records"]]
        out["collections"][name] = {
            "dir": d, "segments": entries, "bytes": sum(e["bytes"] for e in entries),
            "records": sum(e["records"] for e in entries), "rows": sum(e["rows"] for e in entries),
            "first_lsn": lsns[0]["first_lsn"] if lsns else None,
            "last_lsn": lsns[-1]["last_lsn"] if lsns else None,
            "corrupt_files": [os.path.basename(p) for p in corrupt]}
        out["bytes"] += out["collections"][name]["bytes"]
    return out


def verify_wal(root: str, fs: Optional[FileSystem] = None) -> VerifyResult:
    """Check the framing, CRC and full decoding of every record of every segment.

    Reports the first bad file and byte offset (``ok=False``); scanning continues in the other
    collections so the totals cover everything readable.
    """
    fs = fs or default_filesystem()
    result = VerifyResult(ok=True, root=root)
    for _name, d in _collection_dirs(root, fs).items():
        result.collections += 1
        segments, _, _ = list_segments(fs, d)
        tail = tail_index(fs, segments)
        for i, seg in enumerate(segments):
            result.segments += 1
            result.bytes += seg.size
            with _reader(fs, seg.path, last=i >= tail) as reader:
                try:
                    for rec in reader.records(decode_above=-1):
                        result.records += 1
                        result.rows += rec.last_lsn - rec.first_lsn + 1
                except WalVersionError as e:
                    _bad(result, seg.path, 0, str(e))
                    break
            stop = reader.stop
            if stop is None:
                continue
            if stop.kind == TORN:
                result.torn_tails.append(TornTail(seg.path, stop.offset, seg.size - stop.offset))
            else:
                _bad(result, seg.path, stop.offset, stop.reason)
                break
    return result


def _bad(result: VerifyResult, path: str, offset: int, reason: str) -> None:
    if result.ok:
        result.ok = False
        result.first_bad_file = path
        result.first_bad_offset = offset
        result.error = f"{path}: byte {offset}: {reason}"
