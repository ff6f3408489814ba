"""Durable file writes of the engine, all through the core's FileSystem seam."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, List

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem

__all__ = ["write_file", "fsync_dir", "remove_files", "UncommittedFiles"]

log = logging.getLogger("proxistore.viper")


#: Files are written and fsynced in steps of this many bytes. ext4 (data=ordered) commits its
#: journal in order, so an fsync by anyone waits for the data of every file in the commit before
#: it: one 100 MB merged segment written and fsynced at once stalled the WAL's fsyncs, hence
#: acknowledged writes, for 20-40 ms. Steps of 8 MB still left the WAL's fsync at 1.0 ms mean
#: (0.4 ms with maintenance paused) and p99 writes at ~4x while flushes (1.2 MB segments, ~60/s)
#: and compactions ran (benchmarks/flush.py (1)); in steps of 256 KiB an fsync waits for about
#: 0.5 ms of someone else's data: WAL fsync 0.8 ms mean, p99 writes ~2.8x, draining the same
#: frozen memtables ~5% slower (1 MB: no better than 8 MB; 128 KiB: about as 256 KiB).
SYNC_STEP_BYTES = 256 << 10


def write_file(fs: FileSystem, directory: str, name: str, data: Any) -> int:
    """Create ``directory/name`` with ``data`` (bytes or a buffer) and fsync it (in steps of
    :data:`SYNC_STEP_BYTES`); return its size.

    The directory entry becomes durable with the caller's next :func:`fsync_dir` (one per commit).
    A write that fails removes what it wrote: retried on a full disk, it must not fill it further.
    """
    path = os.path.join(directory, name)
    view = memoryview(data).cast("B")
    try:
        with fs.open(path, "wb") as f:
            for start in range(0, max(len(view), 1), SYNC_STEP_BYTES):
                f.write(view[start:start + SYNC_STEP_BYTES])
                f.fsync()
    except OSError as e:
        remove_files(fs, directory, [name], when="after its write failed")
        raise StorageError(f"{path}: write failed: {e}") from e
    return view.nbytes


def fsync_dir(fs: FileSystem, directory: str) -> None:
    """Make the new directory entries of ``directory`` durable."""
    try:
        fs.fsync_dir(directory)
    except OSError as e:
        raise StorageError(f"{directory}: directory fsync failed: {e}") from e


def remove_files(fs: FileSystem, directory: str, names: Iterable[str], when: str = "after commit") -> List[str]:
    """Unlink files no manifest references (any more); return the ones that failed.

    A failure cannot undo what happened before (a commit, or the failure being cleaned up): it
    is logged and returned (the caller may count it) and the file is an orphan that the next
    open removes.
    """
    failed = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fs.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("viper: could not remove %s %s (removed on next open): %s", path, when, e)
            failed.append(name)
    return failed


class UncommittedFiles:
    """The files one operation writes for its manifest commit, removed if it fails before that
    commit (a retry on a full disk must not leave them to fill it further).

    Used as a context manager: :meth:`add` each name before writing it, and call
    :meth:`committing` just before the commit. A commit that fails may still have taken effect,
    so from then on the files are kept and the next open removes those no manifest references."""

    def __init__(self, fs: FileSystem, directory: str) -> None:
        self.fs = fs
        self.directory = directory
        self.names: List[str] = []
        self._committing = False

    def add(self, name: str) -> str:
        self.names.append(name)
        return name

    def committing(self) -> None:
        self._committing = True

    def __enter__(self) -> "UncommittedFiles":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not self._committing:
            remove_files(self.fs, self.directory, self.names, when="after its operation failed")
