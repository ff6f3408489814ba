"""One process (and one handle) per data directory, enforced by an exclusive lock file."""
from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional

from .errors import DatabaseLocked

__all__ = ["DirectoryLock", "holder_pid"]


class DirectoryLock:
    """An exclusive ``flock`` on ``<dir>/LOCK``, held until :meth:`release`.

    ``flock`` locks belong to an open file description, so a second ``open()`` of the same
    directory in the same process is refused too. The lock dies with the process (even SIGKILL).
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "LOCK")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._fd)
            self._fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = holder_pid(directory)
                raise DatabaseLocked(f"data directory {directory!r} is already open"
                                     f"{f' by process {holder}' if holder else ''}; "
                                     f"close it there first (lock file {self.path})") from None
            raise
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def holder_pid(directory: str) -> Optional[int]:
    """The process id the lock holder of ``directory`` wrote in ``LOCK``; None if unknown."""
    try:
        with open(os.path.join(directory, "LOCK")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
