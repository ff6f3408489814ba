"""Segment files of one collection's log: what we know about each, listing, setting aside."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from proxistore.fileio import FileHandle, FileSystem

from proxistore.errors import WalVersionError

from .format import CORRUPT_RE, SEGMENT_RE
from .reader import TORN, SegmentReader

__all__ = ["Segment", "SegmentState", "list_segments", "tail_index", "corrupt_path_for"]


@dataclass(frozen=True)
class SegmentState:
    """A segment's accounting at one moment (to cut it back to after a failure)."""

    size: int
    records: int
    rows: int
    first_lsn: Optional[int]
    last_lsn: Optional[int]


@dataclass(eq=False)
class Segment:
    """One segment file. ``handle`` is set only for the active (open for append) segment.

    ``first_lsn``/``last_lsn``/``records`` are known once the segment was written in this
    process or scanned by replay (``scanned``); ``sync_lock`` serialises fsync against close.
    """

    seq: int
    path: str
    size: int = 0
    records: int = 0
    rows: int = 0
    first_lsn: Optional[int] = None
    last_lsn: Optional[int] = None
    scanned: bool = False
    handle: Optional[FileHandle] = None
    sync_marker: bytes = b""
    sync_lock: threading.Lock = field(default_factory=threading.Lock)
    synced: Optional[SegmentState] = None     # as of the last fsync made in this process
    #: Records appended but not yet handed to the OS (``always``/``group`` only: they are
    #: written just before the fsync that acknowledges them; see ``AvroCollectionWal.append``).
    pending: List[bytes] = field(default_factory=list)

    def take_pending(self) -> bytes:
        """The deferred records' bytes, in order, and forget them."""
        chunks, self.pending = self.pending, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def state(self) -> SegmentState:
        return SegmentState(self.size, self.records, self.rows, self.first_lsn, self.last_lsn)

    def restore(self, state: SegmentState) -> None:
        self.size, self.records, self.rows = state.size, state.records, state.rows
        self.first_lsn, self.last_lsn = state.first_lsn, state.last_lsn

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def note_record(self, first_lsn: int, last_lsn: int, rows: int, nbytes: int = 0) -> None:
        """Account for one record of this segment."""
        if self.first_lsn is None:
            self.first_lsn = first_lsn
        self.last_lsn = last_lsn
        self.records += 1
        self.rows += rows
        self.size += nbytes

    def describe(self) -> dict:
        return {"file": self.name, "bytes": self.size, "records": self.records, "rows": self.rows,
                "first_lsn": self.first_lsn, "last_lsn": self.last_lsn,
                "active": self.handle is not None}


def list_segments(fs: FileSystem, dirpath: str) -> Tuple[List[Segment], int, List[str]]:
    """The segments in ``dirpath`` in log order, the highest sequence number in use (including
    set-aside ``.corrupt`` files, so that a new segment never reuses a number), and the
    set-aside files."""
    segments: List[Segment] = []
    corrupt: List[str] = []
    max_seq = 0
    for name in fs.listdir(dirpath):
        m = SEGMENT_RE.match(name)
        path = os.path.join(dirpath, name)
        if m:
            seq = int(m.group(1))
            segments.append(Segment(seq=seq, path=path, size=fs.size(path)))
            max_seq = max(max_seq, seq)
            continue
        c = CORRUPT_RE.match(name)
        if c:
            corrupt.append(path)
            max_seq = max(max_seq, int(c.group(1)))
    segments.sort(key=lambda s: s.seq)
    return segments, max_seq, corrupt


def tail_index(fs: FileSystem, segments: List[Segment]) -> int:
    """The index of the segment where a torn tail may be: the last one, or the one before any
    trailing segments that hold no record (a header only, or a torn header).

    Such trailing segments are spares, made while the segment before them was still taking
    appends (see :mod:`.collection`), or segments whose creation a crash interrupted: either
    way the crash may have torn the last append of the segment before them."""
    i = len(segments) - 1
    while i > 0:
        seg = segments[i]
        try:
            size = fs.size(seg.path)
            with fs.open(seg.path, "rb") as handle:
                reader = SegmentReader(handle, size, seg.path, last=True)
                has_header = reader.read_header()
        except (OSError, WalVersionError):
            return i                        # unreadable: let replay report it where it is
        if has_header and reader.good_end < size:
            return i                        # bytes after the header: it may hold records
        if not has_header and reader.stop is not None and reader.stop.kind != TORN:
            return i                        # a bad header is corruption, reported by replay
        i -= 1
    return max(i, 0)


def corrupt_path_for(fs: FileSystem, path: str) -> str:
    """A free ``<segment>.corrupt[.N]`` name next to ``path``."""
    candidate = path + ".corrupt"
    n = 1
    while fs.exists(candidate):
        candidate = f"{path}.corrupt.{n}"
        n += 1
    return candidate
