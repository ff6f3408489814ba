"""Background maintenance: the thing that enforces the flush policies.

Started by ``open()`` and stopped by ``close()``. A scheduler thread wakes after every write and
every ``check_interval``, asks each enabled policy which collections are due and why, freezes
their active memtables at once, and hands the writing of segments to worker threads (off the
write path). It also lets the storage engine do its own
background work (index builds, compaction). A failed flush is retried with exponential back-off;
the data stays in the memtable and the WAL until a flush succeeds. Failed storage work is retried
with the same back-off, so that a full disk does not get an index rebuilt and an error logged on
every tick.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Deque, Dict, List, Mapping, Optional, Set, Tuple

from .contracts import FlushPolicy
from .errors import CloseTimeout, FlushError, MaintenanceStopped
from .flush import drain, freeze_for
from .heap import release_free_heap
from .control import ControlResponder

__all__ = ["Maintenance"]

log = logging.getLogger("proxistore.maintenance")

#: Recent background errors kept for stats() (``error_count`` counts them all).
ERRORS_KEPT = 10


def _lower_priority(nice: int) -> None:
    """Run in each worker thread as it starts: give this thread (not the process) ``nice``.

    On Linux a thread is a task with its own nice value, set through its thread id; threads it
    starts later (the merge writer, faiss's OpenMP team for an index build) inherit it. Writers
    then win the CPU from flushes, merges and index builds, which matters for their latency on
    machines with few cores. Elsewhere ``setpriority`` would apply to the whole process, so
    nothing is done."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:  # e.g. a sandbox that forbids it: run at normal priority
        log.warning("could not lower the priority of a maintenance worker: %s", exc)


class _PoolShutDown(Exception):
    """The worker pool refuses new work: :meth:`Maintenance.close` shut it, or the interpreter
    is exiting without ``close()`` (Python shuts every thread pool then). The scheduler stops
    quietly; acknowledged writes are in the WAL and replay on the next open."""


class Maintenance:
    def __init__(self, db: Any, policies: List[FlushPolicy], settings: Mapping[str, Any],
                 responder: Optional[ControlResponder] = None) -> None:
        self.db = db
        self.policies = policies
        self.check_interval = settings["check_interval"]
        self.initial_backoff = settings["retry_initial_backoff"]
        self.max_backoff = settings["retry_max_backoff"]
        # The workers run at a lower priority (worker_nice): on a busy CPU, writers and searches
        # go first. A separate, lower-priority pool for merges alone was tried: compaction then
        # kept up during writer floods, and its working memory took the process 40% higher.
        self._pool = ThreadPoolExecutor(max_workers=settings["workers"], thread_name_prefix="proxistore-worker",
                                        initializer=_lower_priority, initargs=(settings["worker_nice"],))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: Dict[str, Future] = {}          # collection -> flush future
        self._storage_running: Dict[str, Future] = {}  # collection -> storage maintain() future
        # Storage work (merges, index builds) runs on at most workers - 1 workers, so one is always
        # free for flushes: a maintain() can run for seconds, and flushes queued behind two of them
        # kept writers held at global_memory_limit waiting for those seconds.
        self._storage_slots = max(1, settings["workers"] - 1)
        self._storage_turn = 0    # where the next search for a collection to maintain starts
        self._storage_seen: Dict[str, Optional[int]] = {}   # collection -> its flushes when its storage job started
        # collection -> (consecutive failures of its storage job, when it may be retried)
        self._storage_retry: Dict[str, Tuple[int, float]] = {}
        self._retry_at: Dict[str, float] = {}
        self._paused = False
        self.ticks = 0
        self._ticks_completed = 0
        self._ticked = threading.Condition()
        self.heap_releases = 0
        self.heap_release_seconds = 0.0
        self.errors: Deque[str] = deque(maxlen=ERRORS_KEPT)
        self.error_count = 0
        self.policy_failures: Dict[str, int] = {}       # policy -> checks that raised, since open
        self.failed_ticks = 0
        # what fails now ("tick", "policy <name>", "has_background_work <collection>") -> its last
        # error: said when new or different, counted otherwise (see _failed)
        self._failing: Dict[str, str] = {}
        # requests of other processes are taken by this thread (not one of their own), so that
        # taking one shows the scheduler runs (control.py)
        self._responder = responder
        self._next_control_poll = 0.0
        self.died: Optional[str] = None      # why the scheduler thread ended before close()
        self._thread = threading.Thread(target=self._loop, name="proxistore-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def pause(self, paused: bool = True) -> None:
        """Stop scheduling new background work (benchmarks compare with and without it)."""
        self._paused = paused
        self.wake()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self._schedule()
        except BaseException as exc:  # noqa: B902 - the thread ends either way; this says so, loudly
            died = f"{type(exc).__name__}: {exc}"
            try:    # logged before stats() can say "died", so whoever sees that finds the log line too
                log.critical("background maintenance stopped (%s): no flush policy is enforced and no flush "
                             "or compaction runs until the database is reopened", died, exc_info=exc)
            finally:
                self.died = died

    def _schedule(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.check_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._take_control_requests()
            if self._paused:
                continue
            try:
                self.tick()
                if self._failing.pop("tick", None) is not None:
                    log.warning("maintenance ticks work again after %d failed", self.failed_ticks)
            except _PoolShutDown:
                break
            except Exception as exc:  # the scheduler must survive any bad tick: counted, said when new
                self.failed_ticks += 1
                error = self._failed("tick", exc)
                if error is not None:
                    log.exception("maintenance tick failed (said again only when the error changes)")
                    self._note_error(f"tick failed: {error}")
            finally:
                with self._ticked:
                    self._ticks_completed += 1
                    self._ticked.notify_all()

    def _take_control_requests(self) -> None:
        """Take other processes' requests (control.py), at most once per check_interval:
        writes wake this thread far more often."""
        now = time.monotonic()
        if self._responder is None or now < self._next_control_poll:
            return
        self._next_control_poll = now + self.check_interval
        try:
            self._responder.poll()
        except Exception:  # control files are not the data: whatever fails, log it and keep scheduling
            log.exception("could not take a control request")

    def tick(self) -> None:
        """Ask every policy once, freeze what is due, and start draining what is frozen.

        A policy that raises, or a collection that cannot be frozen, is reported and skipped:
        the other policies are still enforced and the other collections still flushed."""
        self.ticks += 1
        state = self.db.database_state()
        now = time.monotonic()
        seen: Set[str] = set()
        for policy in self.policies:
            for request in self._ask(policy, state):
                name = request.collection
                if name in seen or self._retry_at.get(name, 0.0) > now:
                    continue
                seen.add(name)
                rt = self.db.runtime_or_none(name)
                if rt is None:
                    continue
                try:
                    freeze_for(rt, request)
                except Exception as exc:  # this collection stays unfrozen; the next tick asks again
                    log.error("could not freeze %s for a flush (%s): %s", name, request.describe(), exc)
                    self._note_error(f"{name}: freeze failed: {type(exc).__name__}: {exc}")
        for rt in self.db.runtimes():
            if rt.has_frozen():
                self.submit_drain(rt.name, now)
        self._submit_storage_work()

    def _ask(self, policy: FlushPolicy, state: Any) -> List[Any]:
        """``policy.due(state)``; a policy that raises is reported when it starts failing (or
        fails differently), counted on every tick, and answers nothing until it works again."""
        name = policy.name
        try:
            requests = list(policy.due(state))
        except Exception as exc:
            self.policy_failures[name] = self.policy_failures.get(name, 0) + 1
            error = self._failed(f"policy {name}", exc)
            if error is not None:
                log.error("flush policy %r failed; its thresholds are not enforced until it works again "
                          "(the other policies are): %s", name, error, exc_info=exc)
                self._note_error(f"policy {name}: {error}")
            return []
        if self._failing.pop(f"policy {name}", None) is not None:
            log.warning("flush policy %r works again after %d failed checks", name, self.policy_failures[name])
        return requests

    def failing_policies(self) -> Dict[str, str]:
        """Policies whose last check raised, with that error."""
        return {key[len("policy "):]: error for key, error in list(self._failing.items()) if key.startswith("policy ")}

    def _failed(self, what: str, exc: BaseException) -> Optional[str]:
        """Note that ``what`` (a policy, a tick, a probe) failed with ``exc``; its error text if
        that is new for it (to be said), None if it failed the same way last time (counted only)."""
        error = f"{type(exc).__name__}: {exc}"
        if self._failing.get(what) == error:
            return None
        self._failing[what] = error
        return error

    def submit_drain(self, name: str, now: Optional[float] = None) -> Optional[Future]:
        """Start a worker flushing ``name``'s frozen memtables, unless one runs or a retry waits."""
        now = time.monotonic() if now is None else now
        with self._lock:
            running = self._running.get(name)
            if running is not None and not running.done():
                return None
            if self._retry_at.get(name, 0.0) > now:
                return None
            future = self._submit(self._drain_job, name)
            self._running[name] = future
            return future

    def _submit(self, job: Any, *args: Any) -> Future:
        try:
            return self._pool.submit(job, *args)
        except RuntimeError as exc:     # concurrent.futures' only refusal: the pool is shut down
            raise _PoolShutDown() from exc

    def _drain_job(self, name: str) -> None:
        rt = self.db.runtime_or_none(name)
        if rt is None:
            return
        flush_log = self.db.flush_logs[name]
        try:
            drain(rt, self.db.registry, flush_log, self.db.config.maintenance["max_flush_bytes"])
        except FlushError as exc:
            delay = self._backoff(flush_log.consecutive_failures)
            with self._lock:
                self._retry_at[name] = time.monotonic() + delay
            log.warning("%s; retrying in %.3fs", exc, delay)
            return
        with self._lock:
            self._retry_at.pop(name, None)
        self.wake()  # memory freed, or more may be due or frozen meanwhile

    def _backoff(self, failures: int) -> float:
        """The wait before retrying work that has failed ``failures`` times in a row."""
        return min(self.max_backoff, self.initial_backoff * (2 ** (failures - 1)))

    def _note_error(self, error: str) -> None:
        self.errors.append(error)
        self.error_count += 1

    def _storage_due(self, rt: Any, *, retries: bool = True) -> bool:
        """Whether collection ``rt`` may have storage work (merges, index builds): it flushed
        since its last storage job started, or has had none since open, or its engine says work
        is left (a turn ended), or (``retries``) the last job failed and its back-off is over."""
        retry = self._storage_retry.get(rt.name)
        if retry is not None:
            return retries and time.monotonic() >= retry[1]
        flushes = self._flushes_of(rt.name)
        if flushes is None or self._storage_seen.get(rt.name) != flushes:
            return True
        try:
            return bool(rt.store.has_background_work())
        except Exception as exc:  # a third-party engine: said once; its work still runs after each flush
            error = self._failed(f"has_background_work {rt.name}", exc)
            if error is not None:
                log.error("has_background_work() of %s failed; its storage work runs only after its flushes: %s",
                          rt.name, error, exc_info=exc)
                self._note_error(f"{rt.name}: has_background_work failed: {error}")
            return False

    def _flushes_of(self, name: str) -> Optional[int]:
        """Successful flushes of ``name`` since open; None before its flush log exists."""
        flush_log = self.db.flush_logs.get(name)
        return flush_log.total if flush_log is not None else None

    def _submit_storage_work(self) -> int:
        """Start storage work for collections that may have some and have none running, while
        a storage slot is free; the search starts after the collection served last, so each gets
        its turn. Returns how many jobs started."""
        runtimes = self.db.runtimes()
        started = 0
        with self._lock:
            busy = sum(1 for f in self._storage_running.values() if not f.done())
            start = self._storage_turn
            for i in range(len(runtimes)):
                if busy >= self._storage_slots:
                    break
                at = (start + i) % len(runtimes)
                rt = runtimes[at]
                running = self._storage_running.get(rt.name)
                if (running is not None and not running.done()) or not self._storage_due(rt):
                    continue
                self._storage_seen[rt.name] = self._flushes_of(rt.name)
                self._storage_running[rt.name] = self._submit(self._storage_job, rt)
                self._storage_turn = at + 1
                busy += 1
                started += 1
        return started

    def _storage_job(self, rt: Any) -> None:
        flushes_before = self._flushes_finished()
        try:
            for result in rt.store.maintain():
                self.db.compaction_finished(rt.name, result)
            if self._flushes_finished() == flushes_before and not self._flush_running():
                self.release_heap()     # not while writes flow: the heap would grow back at once
        except Exception as exc:  # reported in stats and retried after a back-off; data is untouched
            with self._lock:
                failures = self._storage_retry.get(rt.name, (0, 0.0))[0] + 1
                delay = self._backoff(failures)
                self._storage_retry[rt.name] = (failures, time.monotonic() + delay)
            log.error("background storage work on %s failed (%d in a row); retrying in %.3gs: %s",
                      rt.name, failures, delay, exc)
            self._note_error(f"{rt.name}: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._storage_retry.pop(rt.name, None)

    def _flushes_finished(self) -> int:
        return sum(fl.total + fl.failures for fl in list(self.db.flush_logs.values()))

    def _flush_running(self) -> bool:
        with self._lock:
            return any(not f.done() for f in self._running.values())

    def release_heap(self) -> None:
        """Give the buffers that merges and index builds freed back to the OS; called after a
        storage turn during which no flush ran (so not during bursts of writes, where the
        memory would be faulted back in at once, costing ingest ~9 %), and after compact()."""
        seconds = release_free_heap()
        with self._lock:
            self.heap_releases += 1
            self.heap_release_seconds += seconds

    # -- waiting and stopping -------------------------------------------------------------------

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no flush or storage job is running and, unless paused, the policies have
        been asked since the call (so a write just made has been seen) and no collection has
        storage work waiting for a slot (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._await_tick(deadline):
                return False
            with self._lock:
                futures = [f for f in list(self._running.values()) + list(self._storage_running.values())
                           if not f.done()]
            if futures:
                wait(futures, timeout=max(0.0, deadline - time.monotonic()))
                continue
            if self._paused or self._stop.is_set():
                return True
            with self._lock:
                due = any(self._storage_due(rt, retries=False) for rt in self.db.runtimes())
            if not due:
                return True
            try:
                self._submit_storage_work()
            except _PoolShutDown:
                return True
            time.sleep(0.01)   # a maintain() that cannot run now (compact() holds it) returns at once
        return False

    def _await_tick(self, deadline: float) -> bool:
        """Wait for a whole tick that starts after this call, so work a write made due is frozen
        and submitted; True at once when paused or stopped (no tick will come), False at the
        deadline."""
        with self._ticked:
            target = self.ticks + 1
            while self._ticks_completed < target:
                if self._paused or self._stop.is_set() or not self._thread.is_alive():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wake.set()
                self._ticked.wait(min(remaining, 0.05))
        return True

    def stop(self, timeout: float) -> None:
        """Stop scheduling, let running flushes finish, ask storage work to stop early; bounded."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        for rt in self.db.runtimes():
            rt.store.stop_background()
        # a flush or compaction another process asked for (control.py) runs to its end; the
        # requests still waiting are answered that the database closed
        control_done = self._responder is None or self._responder.close(timeout)
        with self._lock:
            futures = [f for f in list(self._running.values()) + list(self._storage_running.values())]
        done, not_done = wait(futures, timeout=timeout)
        self._pool.shutdown(wait=not not_done, cancel_futures=True)
        if not_done or not control_done:
            jobs = len(not_done) + (not control_done)
            raise CloseTimeout(f"close() waited {timeout:g}s for {jobs} background flush or "
                               f"compaction job(s) and gave up; acknowledged writes remain recoverable "
                               f"from the WAL on the next open")

    def check_running(self) -> None:
        """Refuse a write when the scheduler has died (not when paused or closing): nothing would
        enforce a threshold for it. Called first by every write."""
        if self.died is not None:
            raise MaintenanceStopped(f"background maintenance of {self.db.path!r} stopped ({self.died}): "
                                     f"no flush policy is enforced, so writes are refused until the database "
                                     f"is reopened; reads and flush() still work")

    def _scheduler_state(self) -> str:
        """running, paused, stopped (by close()), or died: <the error that ended it>."""
        if self.died is not None:
            return f"died: {self.died}"
        if self._stop.is_set() or not self._thread.is_alive():
            return "stopped"
        return "paused" if self._paused else "running"

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            running = sorted(n for n, f in self._running.items() if not f.done())
            now = time.monotonic()
            backoff = {n: round(t - now, 3) for n, t in self._retry_at.items() if t > now}
            storage_backoff = {n: round(t - now, 3) for n, (_, t) in self._storage_retry.items() if t > now}
        return {"scheduler": self._scheduler_state(),
                "ticks": self.ticks, "check_interval": self.check_interval, "paused": self._paused,
                "flushing": running, "retry_in_seconds": backoff, "storage_retry_in_seconds": storage_backoff,
                "errors": list(self.errors), "error_count": self.error_count,
                "policy_failures": dict(self.policy_failures), "failing_policies": self.failing_policies(),
                "failed_ticks": self.failed_ticks,
                "heap_releases": self.heap_releases, "heap_release_seconds": self.heap_release_seconds}
