"""The one seam through which the WAL and the storage engine touch the disk.

Every write, fsync (of files and of directories), rename, unlink and directory change of the
durable data path goes through a :class:`FileSystem`. The default, :class:`LocalFileSystem`, is the
real thing; a fault-injecting implementation (tests) subclasses it to drop unsynced data at a
simulated crash or fail the Nth operation, under the unchanged WAL and storage code.

Paths are plain strings (absolute or relative to the process's working directory).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, BinaryIO, List, Optional

__all__ = ["FileHandle", "FileSystem", "LocalFileSystem", "default_filesystem"]


class FileHandle:
    """A file opened through a :class:`FileSystem`; writes and fsyncs go back through it."""

    def __init__(self, fs: "FileSystem", path: str, raw: BinaryIO) -> None:
        self.fs = fs
        self.path = path
        self.raw = raw

    def write(self, data) -> int:
        return self.fs._write(self, data)

    def read(self, n: int = -1) -> bytes:
        return self.raw.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def truncate(self, size: int) -> None:
        self.fs._truncate(self, size)

    def flush(self) -> None:
        """Hand buffered bytes to the OS (survives a process crash, not a power loss)."""
        self.fs._flush(self)

    def fsync(self) -> None:
        """Make everything written so far durable (flushes Python's buffer first)."""
        self.fs._fsync(self)

    def close(self) -> None:
        self.fs._close(self)

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def __enter__(self) -> "FileHandle":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.fs._discard(self)


class FileSystem:
    """The contract: the operations the durable data path may perform.

    Capabilities, declared as class attributes so that callers choose a protocol, not a type:

    - ``local``: paths are paths of the local disk (pyarrow, faiss and hnswlib may open them
      directly, memory-mapped); otherwise every read goes through :meth:`read_immutable` or the
      pyarrow filesystem of :attr:`pyarrow_fs`.
    - ``atomic_rename``: :meth:`rename` replaces its target atomically, so :meth:`write_atomic`
      is an atomic replace; object stores say False (a rename there is a copy and a delete).
    """

    local = True
    atomic_rename = True

    @property
    def pyarrow_fs(self) -> Optional[Any]:
        """The ``pyarrow.fs.FileSystem`` that reads this store's files; None when ``local``."""
        return None

    def read_immutable(self, path: str) -> bytes:
        """The bytes of a file that is never changed once written (a segment, an index).

        A read changes no durable state, so on the local disk it is a plain read, outside the
        operations a fault injector counts."""
        with open(path, "rb") as f:
            return f.read()

    def open(self, path: str, mode: str) -> FileHandle:  # pragma: no cover - interface
        raise NotImplementedError

    def fsync_dir(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def unlink(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def makedirs(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def rmtree(self, path: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def listdir(self, path: str) -> List[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def read_bytes(self, path: str) -> bytes:
        with self.open(path, "rb") as f:
            return f.read()

    # -- composed operations, built only from the primitives above --------------------------

    def write_durable(self, path: str, data: bytes) -> None:
        """Write a new file and fsync it (its directory entry is made durable by the caller)."""
        with self.open(path, "wb") as f:
            f.write(data)
            f.fsync()

    def write_atomic(self, path: str, data: bytes) -> None:
        """Replace ``path`` atomically and durably: temp file, fsync, rename, fsync directory."""
        tmp = path + ".tmp"
        self.write_durable(tmp, data)
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(os.path.abspath(path)))

    def makedirs_durable(self, path: str, within: Optional[str] = None) -> None:
        """Create ``path`` (and parents) and fsync each new directory's parent.

        With ``within`` (an ancestor of ``path`` that is known to be durable), every directory
        between it and ``path`` has its parent fsynced, including those that exist already: a
        directory that an earlier, failed call created is there but may not be durable.
        """
        path = os.path.abspath(path)
        chain = []
        p = path
        top = os.path.abspath(within) if within is not None else None
        while p != top and (top is not None or not self.exists(p)):
            chain.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        self.makedirs(path)
        for d in reversed(chain):
            self.fsync_dir(os.path.dirname(d))

    # -- hooks for FileHandle (a fault injector overrides these) ----------------------------

    def _write(self, handle: FileHandle, data) -> int:
        return handle.raw.write(data)

    def _flush(self, handle: FileHandle) -> None:
        handle.raw.flush()

    def _fsync(self, handle: FileHandle) -> None:
        handle.raw.flush()
        os.fsync(handle.raw.fileno())

    def _truncate(self, handle: FileHandle, size: int) -> None:
        handle.raw.flush()
        handle.raw.truncate(size)

    def _close(self, handle: FileHandle) -> None:
        handle.raw.close()

    def _discard(self, handle: FileHandle) -> None:
        """Close a handle whose writer failed (the ``with`` block raised). Locally the same as
        :meth:`_close`; a store that publishes a file on close drops it instead."""
        self._close(handle)


class LocalFileSystem(FileSystem):
    """The real local filesystem, with real fsync of files and directories."""

    def open(self, path: str, mode: str) -> FileHandle:
        if "b" not in mode:
            raise ValueError("FileSystem.open takes binary modes only")
        return FileHandle(self, path, open(path, mode))

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path)


_DEFAULT = LocalFileSystem()


def default_filesystem() -> FileSystem:
    """The filesystem used when ``proxistore.open`` is not given one."""
    return _DEFAULT
