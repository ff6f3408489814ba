"""Getting a collection log going again after an I/O error, without a reopen.

A failed **write** by ``append`` is repaired at once: the partial record is cut off (the segment
is reopened and truncated at the end of the last whole record), only that batch fails, and the
log goes on.

A failed **fsync**, a failed write of deferred records (``always``/``group``: written just before
their fsync), or a write whose repair failed too *fails the log*: every record not yet
durable is reported as not written to the writers waiting for it, and appends are refused. The
next append then tries to *heal*: each segment the failure touched is truncated to what is known
to be good and fsynced, and closed; the next record goes to a fresh segment. What is known to be
good depends on the sync mode: in ``always`` and ``group`` it is what the last successful fsync
covered (after a failed fsync the kernel may have dropped the pages written since, so those
records may not be on disk even if a later fsync succeeds; none of them was acknowledged). In
``interval`` and ``none`` it is every whole record (they were acknowledged already; an fsync
failure may cost them, as the documented loss window says). The tokens of the records that failed
stay failed for good: a late ``sync`` of one raises, even once later records are durable.

While the disk still refuses (a full disk, a dead device), healing fails and the append raises a
:class:`WalError` naming the cause; when space returns the next append heals and ingest resumes.
A torn segment file left by a failed creation is removed before the log goes on, since a torn
file must not stay before later segments.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from proxistore.errors import WalError

from .segment import Segment

if TYPE_CHECKING:  # pragma: no cover
    from proxistore.fileio import FileSystem
    from .settings import Settings

__all__ = ["HealMixin", "Damage"]

log = logging.getLogger("proxistore.wal")


@dataclass(eq=False)
class Damage:
    """What a failure left to repair: a segment to cut back (to its last fsync, ``synced``, or
    to its last whole record, ``complete``), or a torn file to remove (``path``)."""

    segment: Optional[Segment] = None
    cut_to: str = "complete"
    path: Optional[str] = None


class HealMixin:
    """Write repair and healing of a collection log (state set up by the collection)."""

    fs: "FileSystem"
    dir: str
    name: str
    settings: "Settings"
    _lock: "threading.Lock"
    _cond: "threading.Condition"
    _active: Optional[Segment]
    _segments: List[Segment]
    _appended: int
    _durable: int
    _failed: Optional[str]
    _damage: List[Damage]
    _lost: List[Tuple[int, int]]
    _c: Dict[str, Any]

    def _fsync_damage(self, seg: Segment) -> Damage:
        """The repair an fsync failure of ``seg`` calls for, per sync mode."""
        strict = self.settings.sync_mode in ("always", "group")
        return Damage(segment=seg, cut_to="synced" if strict else "complete")

    def _repair_write(self, seg: Segment, error: OSError) -> WalError:
        """After a failed write to the active ``seg`` (under ``_lock``): cut the partial record
        off and carry on with a fresh handle. Returns the error for the caller to raise; if the
        repair fails too, the log fails and heals later."""
        with seg.sync_lock:
            old, seg.handle = seg.handle, None
            try:
                if old is not None:
                    old.close()       # may flush buffered bytes of the failed record: cut below
            except OSError as e:
                log.warning("wal %s: closing %s after a failed write: %s", self.name, seg.name, e)
            try:
                h = self.fs.open(seg.path, "r+b")
                try:
                    h.truncate(seg.size)
                    h.seek(0, 2)
                except OSError:
                    h.close()
                    raise
                seg.handle = h
            except OSError as e:
                return self._fail(f"write to {seg.path} failed ({error}) and cutting the partial record "
                                  f"off failed too: {e}", Damage(segment=seg, cut_to="complete"))
        self._c["write_repairs"] += 1
        log.warning("wal %s: write to %s failed (%s); the partial record was cut off and the log "
                    "goes on", self.name, seg.name, error)
        return WalError(f"WAL of collection {self.name!r}: write to {seg.path} failed: {error}; "
                        f"the batch was not written")

    def _heal(self) -> None:
        """Under ``_lock``, with the log failed: repair what the failure left and clear it, or
        raise WalError (the log stays failed) when the disk still refuses."""
        try:
            for damage in list(self._damage):
                if damage.path is not None:
                    if self.fs.exists(damage.path):
                        self.fs.unlink(damage.path)
                    self.fs.fsync_dir(self.dir)
                elif damage.segment is self._active or damage.segment in self._segments:
                    self._cut_back(damage.segment, damage.cut_to)
                # else: a checkpoint deleted the segment meanwhile: nothing left to repair
                self._damage.remove(damage)
        except OSError as e:
            raise WalError(f"WAL of collection {self.name!r} failed earlier ({self._failed}) and "
                           f"cannot recover yet: {e}") from e
        with self._cond:
            if self._appended > self._durable:
                self._lost.append((self._durable, self._appended))
            cause, self._failed = self._failed, None
        self._c["heals"] += 1
        log.warning("wal %s: recovered from an I/O error (%s); appends go to a new segment", self.name, cause)

    def _cut_back(self, seg: Segment, cut_to: str) -> None:
        """Truncate ``seg`` to its good part, fsync it, and close it (raises OSError)."""
        with seg.sync_lock:
            if seg.handle is not None:
                try:
                    seg.handle.close()
                except OSError as e:
                    log.warning("wal %s: closing failed segment %s: %s", self.name, seg.name, e)
                seg.handle = None
            seg.pending = []       # deferred records of a failed log: never written, not acknowledged
            good = seg.synced if cut_to == "synced" and seg.synced is not None else seg.state()
            with self.fs.open(seg.path, "r+b") as h:
                h.truncate(good.size)
                h.fsync()
            seg.restore(good)
        if seg is self._active:
            self._active = None
            self._segments.append(seg)

    def _token_lost(self, token: int) -> bool:
        return any(lo < token <= hi for lo, hi in self._lost)
