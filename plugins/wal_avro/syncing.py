"""Durability for :class:`~.collection.AvroCollectionWal`: ``sync`` in its four modes, group
commit, the background fsync of ``interval`` mode, and failing the log on an I/O error.

One fsync covers every record appended before it started, so the fsyncer takes a snapshot
(active segment, records appended) under the collection's ``_lock`` and fsyncs outside it,
holding only the segment's ``sync_lock``, which closing a segment also takes. Tokens are record
counts: every token ``<= _durable`` is durable.
"""
from __future__ import annotations

import _thread
import logging
import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from proxistore.errors import WalError

if TYPE_CHECKING:  # pragma: no cover
    from .healing import Damage
    from .segment import Segment
    from .settings import Settings

__all__ = ["SyncMixin"]

log = logging.getLogger("proxistore.wal")


class _Waiter:
    """A writer waiting in group mode, released once an fsync covers its token (or the log
    failed or closed: ``sync`` tells which). A bare lock, held until then, is the cheapest
    wake-up there is: a ``threading.Event`` costs several microseconds of Python per waiter on
    each side, which at group commit's rates is a good part of a batch."""

    __slots__ = ("token", "_gate")

    def __init__(self, token: int) -> None:
        self.token = token
        self._gate = _thread.allocate_lock()
        self._gate.acquire()

    def wait(self) -> None:
        self._gate.acquire()

    def release(self) -> None:
        self._gate.release()


#: A group syncer thread with nobody to sync for this long exits (the next waiter starts one).
SYNCER_IDLE_EXIT = 1.0


class SyncMixin:
    """The sync half of a collection log (state is set up by the collection's ``__init__``)."""

    name: str
    settings: "Settings"
    _lock: "threading.Lock"
    _cond: "threading.Condition"
    _active: "Optional[Segment]"
    _appended: int
    _durable: int
    _syncer: Optional[threading.Thread]
    _syncer_idle: bool
    _waiters: List[_Waiter]
    _gathering: bool
    _last_group: int
    _failed: Optional[str]
    _closed: bool
    _c: Dict[str, Any]

    def sync(self, token: int) -> None:
        """Return once the record of ``token`` is durable per ``sync_mode``."""
        mode = self.settings.sync_mode
        if self._lost and self._token_lost(token):
            raise WalError(f"WAL of collection {self.name!r}: the record was not made durable (an I/O "
                           f"error failed the log before its fsync)")
        if token <= self._durable:
            return
        if self._failed:
            raise self._failure()
        if mode in ("none", "interval"):
            return
        if mode == "always":
            self._fsync_covering()
        else:
            self._group_sync(token)
        if token > self._durable:
            raise self._failure()

    def _group_sync(self, token: int) -> None:
        """Wait until the collection's syncer thread has fsynced a snapshot covering ``token``.

        One thread per log does every group fsync, and starts the next one as soon as the last
        ends if anyone is waiting: writers woken by one fsync append their next records while
        the next fsync runs, instead of one of them having to wake up and lead it. Only the
        covered waiters are woken (no thundering herd on every fsync)."""
        waiter = _Waiter(token)
        with self._cond:
            if token <= self._durable or self._failed or self._closed:
                return                      # sync() tells which
            self._waiters.append(waiter)
            if self._syncer is None:
                self._syncer = threading.Thread(target=self._run_syncer, daemon=True,
                                                name=f"proxistore-wal-sync-{self.name}")
                self._syncer.start()
            elif self._syncer_idle:
                self._cond.notify_all()
        waiter.wait()

    def _run_syncer(self) -> None:
        """The group syncer: gather, fsync, wake the covered waiters; exit when closed or idle."""
        while True:
            with self._cond:
                # After a group of several, gather the next one at once: the writers it woke
                # are about to append again, and waking an idle syncer for the first of them
                # would cost a trip through the GIL in every cycle.
                self._syncer_idle = not self._expect_group()
                while self._syncer_idle and not self._waiters and not self._closed:
                    if not self._cond.wait(SYNCER_IDLE_EXIT) and not self._waiters:
                        self._syncer = None
                        self._syncer_idle = False
                        return
                self._syncer_idle = False
                closed = self._closed
                if closed:              # close() fsynced everything appended, or failed
                    self._syncer = None
                    wake, self._waiters = self._waiters, []
            if closed:
                for w in wake:
                    w.release()
                return
            try:
                self._gather()
                before = self._durable
                upto = self._fsync_covering()
                self._last_group = max(1, upto - before)
            except WalError:
                pass                        # the log has failed: every waiter is woken below
            except BaseException as e:      # noqa: B902 - the waiters must not hang on a bug
                self._fail(f"group fsync failed: {e!r}")
                raise
            finally:
                with self._cond:
                    if self._failed:
                        wake, self._waiters = self._waiters, []
                    else:
                        durable = self._durable
                        wake = [w for w in self._waiters if w.token <= durable]
                        if wake:
                            self._waiters = [w for w in self._waiters if w.token > durable]
                for w in wake:
                    w.release()

    def _expect_group(self) -> bool:
        """Whether the next fsync waits to gather a group: the previous group had several
        writers and group_commit_window allows a wait."""
        return self._last_group > 1 and self.settings.group_commit_window > 0

    def _gather(self) -> None:
        """Before an fsync, wait up to group_commit_window for as many pending records as the
        previous group had (only when that group had several writers)."""
        if not self._expect_group():
            return
        deadline = perf_counter() + self.settings.group_commit_window
        with self._cond:
            self._gathering = True
            try:
                while self._appended - self._durable < self._last_group and not self._failed:
                    remaining = deadline - perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            finally:
                self._gathering = False

    def _fsync_covering(self) -> int:
        """One fsync that makes every record appended so far durable; returns that count."""
        with self._lock:
            if self._failed:
                raise self._failure()
            seg = self._active
            if seg is not None and seg.pending:
                self._write_pending(seg)
            upto = self._appended
            snap = seg.state() if seg is not None else None
        if seg is None:       # everything is in closed segments, fsynced when they closed
            return upto
        before = self._durable
        with seg.sync_lock:
            if self._failed:                         # failed (and maybe cut back) meanwhile
                raise self._failure()
            h = seg.handle
            if h is None or upto <= self._durable:   # closed (fsynced) or covered meanwhile
                return upto
            t0 = perf_counter()
            try:
                h.fsync()
            except OSError as e:
                raise self._fail(f"fsync of {seg.path} failed: {e}", self._fsync_damage(seg)) from e
            dt = perf_counter() - t0
            seg.synced = snap
            self._mark_durable(upto, dt)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("wal %s: fsync of %s made %d records durable in %.3f ms", self.name,
                      seg.name, max(0, upto - before), dt * 1e3)
        return upto

    def _mark_durable(self, upto: int, fsync_seconds: float) -> None:
        with self._cond:
            if upto > self._durable:
                self._durable = upto
            self._c["fsyncs"] += 1
            self._c["fsync_seconds"] += fsync_seconds
            self._cond.notify_all()

    def background_sync(self) -> None:
        """sync_mode=interval: fsync if anything is pending (called by the strategy's thread).
        A failure fails the log; the next append or sync raises it."""
        if self._closed or self._failed or self._appended <= self._durable:
            return
        try:
            self._fsync_covering()
        except WalError as e:
            log.error("wal %s: background fsync failed; the log refuses further writes: %s",
                      self.name, e)

    def _fail(self, message: str, damage: "Optional[Damage]" = None) -> WalError:
        """Fail the log (see :mod:`.healing`), noting what the next heal must repair."""
        with self._cond:
            if self._failed is None:
                self._failed = message
            if damage is not None:
                self._damage.append(damage)
            self._cond.notify_all()
        log.error("wal %s: %s; appends are refused until the log recovers", self.name, message)
        return WalError(f"WAL of collection {self.name!r}: {message}")

    def _failure(self) -> WalError:
        return WalError(f"WAL of collection {self.name!r} failed and has not recovered yet: {self._failed}")

    def _check_usable(self) -> None:
        if self._closed:
            raise WalError(f"WAL of collection {self.name!r} is closed")
        if self._failed:
            raise self._failure()
