"""Making the segments of :class:`~.collection.AvroCollectionWal`: the next one ahead of time.

New segments are made off the write path: after each rotation the core calls
:meth:`RotationMixin.prepare_rotation` outside its locks, which keeps :data:`SPARES` *spare*
segments ready (header fsynced, directory fsynced). The first append after a rotation just
starts using the oldest spare, made at an earlier rotation, while the one after it is being
made. Creating a file and fsyncing it and its directory on the writer's thread cost a write
several milliseconds while flushes kept the disk busy; with a single spare made right after the
rotation, the first writer in still waited for it, and made before the rotation it delayed the
freeze, so memtables overshot their flush threshold. Segment numbers are given out under
``_lock``, and an append that needs a segment while a spare is being made (none ready) waits
for it, so spares always come after every segment in use. On disk a spare is an empty segment
(a header only) after the active one: replay reads nothing from it, and a torn tail may be in
the segment before it (see :mod:`.recovery`). Unused spares are removed by close().
"""
from __future__ import annotations

import logging
import os
import threading
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from proxistore.errors import WalError

from .format import build_header, segment_name
from .healing import Damage
from .segment import Segment

if TYPE_CHECKING:  # pragma: no cover
    from proxistore.fileio import FileSystem

__all__ = ["RotationMixin", "SPARES"]

#: Spare segments kept ready: one for the next rotation, one for the rotation after it.
SPARES = 2

log = logging.getLogger("proxistore.wal")


class RotationMixin:
    """Segment creation of a collection log (state is set up by the collection's ``__init__``)."""

    fs: "FileSystem"
    dir: str
    name: str
    _lock: "threading.Lock"
    _cond: "threading.Condition"
    _spare_done: "threading.Condition"
    _active: Optional[Segment]
    _spares: List[Segment]
    _preparing: bool
    _next_seq: int
    _failed: Optional[str]
    _closed: bool
    _c: Dict[str, Any]

    def _open_segment(self) -> "tuple[Segment, float]":
        """Make the next segment active: the oldest spare if there is one, else a new file;
        returns it and the seconds spent creating it. Under _lock, not while a spare is being
        made with none ready."""
        seg = self._spares.pop(0) if self._spares else None
        dt = 0.0
        if seg is None:
            seq = self._next_seq
            self._next_seq += 1
            try:
                seg, dt = self._create_segment(seq)
            except OSError as e:
                self._undo_spare(os.path.join(self.dir, segment_name(seq)), sync_dir=True)
                raise WalError(f"WAL of collection {self.name!r}: creating segment {segment_name(seq)} in "
                               f"{self.dir} failed: {e}; the batch was not written") from e
        self._active = seg
        return seg, dt

    def _create_segment(self, seq: int) -> "tuple[Segment, float]":
        """Create segment file ``seq``: header written and fsynced, directory fsynced (raises
        OSError). Needs no lock: ``seq`` is the caller's."""
        path = os.path.join(self.dir, segment_name(seq))
        marker = os.urandom(16)
        header = build_header(marker, {"proxistore.collection": self.name,
                                       "proxistore.segment": str(seq),
                                       "proxistore.created": f"{time.time():.6f}"})
        t0 = perf_counter()
        h = self.fs.open(path, "wb")
        try:
            h.write(header)
            h.fsync()
            self.fs.fsync_dir(self.dir)
        except BaseException:
            h.close()
            raise
        dt = perf_counter() - t0
        seg = Segment(seq=seq, path=path, size=len(header), handle=h, sync_marker=marker,
                      scanned=True)
        seg.synced = seg.state()
        with self._cond:
            self._c["fsyncs"] += 1
            self._c["dir_fsyncs"] += 1
            self._c["fsync_seconds"] += dt
            self._c["segments_created"] += 1
        log.debug("wal %s: created segment %s (header write + file fsync + directory fsync "
                  "%.3f ms)", self.name, seg.name, dt * 1e3)
        return seg, dt

    def prepare_rotation(self) -> None:
        """Make spare segments until :data:`SPARES` are ready, on the caller's thread (the core
        calls this after :meth:`rotate`, outside its locks)."""
        while self._prepare_one():
            pass

    def _prepare_one(self) -> bool:
        """Make one spare if fewer than :data:`SPARES` are ready; True when one was added.

        A creation that fails is undone (file removed, directory fsynced) and leaves no spare;
        when even that fails the log fails, since a torn file must not stay before later
        segments."""
        with self._lock:
            if self._closed or self._failed or len(self._spares) >= SPARES or self._preparing:
                return False
            seq = self._next_seq
            self._next_seq += 1
            self._preparing = True
        seg: Optional[Segment] = None
        try:
            seg, _ = self._create_segment(seq)
        except OSError as e:
            log.warning("wal %s: preparing segment %s failed (the next append creates one): %s",
                        self.name, segment_name(seq), e)
            try:
                self._undo_spare(os.path.join(self.dir, segment_name(seq)), sync_dir=True)
            except WalError:
                pass                  # the log failed (and said so); the next append raises it
        finally:
            with self._lock:
                added = seg is not None and not self._closed
                if added:
                    self._spares.append(seg)
                    seg = None
                    self._c["segments_prepared"] += 1
                if seg is None:
                    self._preparing = False
                    self._spare_done.notify_all()
        if seg is not None:           # closed meanwhile: close() waits until the spare is gone
            try:
                seg.handle.close()
                self._undo_spare(seg.path, sync_dir=False)
            finally:
                with self._lock:
                    self._preparing = False
                    self._spare_done.notify_all()
        return added

    def _undo_spare(self, path: str, *, sync_dir: bool) -> None:
        """Remove a spare that will not be used. A complete spare that stays, or comes back
        after a crash (its unlink not yet durable), is an empty segment, which replay skips and
        checkpoint deletes: failing to remove it only logs. A spare whose creation failed may be
        torn, which must not stay before later segments: its removal is made durable (directory
        fsync), and failing that fails the log."""
        try:
            if self.fs.exists(path):
                self.fs.unlink(path)
            if sync_dir:
                self.fs.fsync_dir(self.dir)
        except OSError as e:
            if sync_dir:
                raise self._fail(f"removing the torn segment {path} failed: {e}", Damage(path=path)) from e
            log.warning("wal %s: could not remove the unused segment %s (an empty segment, "
                        "deleted by a later checkpoint): %s", self.name, path, e)
