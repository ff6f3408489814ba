"""The write-path check of a policy's memory cap (``global_memory_limit``).

Before a batch is accepted, its estimated memtable bytes are reserved against the cap. A batch that
would pass it wakes maintenance (whose policies see the waiting bytes) and waits for flushes to
free memory, up to the policy's ``stall_timeout``; then it fails with ``BackpressureTimeout``.
A write is never accepted past the cap.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from .contracts import WriteLimit
from .errors import BackpressureTimeout

__all__ = ["Admission"]


class Admission:
    def __init__(self, limit: Optional[WriteLimit], memtable_bytes: Callable[[], int],
                 wake: Callable[[], None]) -> None:
        self.limit = limit
        self._memtable_bytes = memtable_bytes
        self._wake = wake
        self._cond = threading.Condition()
        self._reserved = 0
        self.waiting_bytes = 0
        self.stalls = 0
        self.stall_seconds = 0.0
        self.timeouts = 0

    def admit(self, nbytes: int, collection: str) -> None:
        limit = self.limit
        if limit is None:
            return
        if nbytes > limit.limit_bytes:
            raise BackpressureTimeout(
                f"a batch of about {nbytes} bytes for {collection!r} can never fit under "
                f"{limit.key} = {limit.limit_bytes} bytes (policy {limit.policy!r}); write smaller batches")
        with self._cond:
            if self._fits(nbytes, limit):
                self._reserved += nbytes
                return
            self.stalls += 1
            started = time.monotonic()
            deadline = started + limit.stall_timeout
            self.waiting_bytes += nbytes
            try:
                while not self._fits(nbytes, limit):
                    self._wake()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.timeouts += 1
                        raise BackpressureTimeout(
                            f"write to {collection!r} waited {limit.stall_timeout:g}s for memtable memory "
                            f"under {limit.key} = {limit.limit_bytes} bytes (policy {limit.policy!r}; "
                            f"memtables hold {self._memtable_bytes()} bytes) and gave up; nothing was written")
                    self._cond.wait(min(remaining, 0.05))
                self._reserved += nbytes
            finally:
                self.waiting_bytes -= nbytes
                self.stall_seconds += time.monotonic() - started

    def _fits(self, nbytes: int, limit: WriteLimit) -> bool:
        return self._memtable_bytes() + self._reserved + nbytes <= limit.limit_bytes

    def release(self, nbytes: int) -> None:
        if self.limit is None:
            return
        with self._cond:
            self._reserved -= nbytes
            self._cond.notify_all()

    def memory_freed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> dict:
        return {"limit_bytes": self.limit.limit_bytes if self.limit else None, "stalls": self.stalls,
                "stall_seconds": round(self.stall_seconds, 6), "timeouts": self.timeouts,
                "waiting_bytes": self.waiting_bytes}
