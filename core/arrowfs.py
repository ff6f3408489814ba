"""The FileSystem seam over a ``pyarrow.fs`` filesystem: the storage engine on an object store.

The durable primitives of :class:`~proxistore.fileio.FileSystem` map onto an object store so:

- **A file's bytes are durable when its handle is closed.** Writes are buffered in memory and
  the whole object is written (one PUT, or a multipart upload completed) by ``close()``; the
  object appears whole or not at all, and is durable once ``close()`` returns. A writer whose
  ``with`` block raises publishes nothing.
- ``fsync`` has nothing more to do: nothing is durable before ``close()``, everything is after,
  and every writer of the storage engine closes its files before it commits a manifest.
- ``fsync_dir`` is a no-op: an object store has no directory entries to make durable (a PUT
  that returned is listed).
- ``rename`` is a copy and a delete, **not atomic**: :attr:`atomic_rename` is False, and the
  viper manifest commit does not use it here (it writes versioned manifests, see
  :mod:`proxistore.plugins.viper.manifest`).

Appending to or rewriting part of an existing object is not supported (modes ``ab``, ``r+b``):
the storage engine writes every file once, whole. The WAL needs both, and real fsyncs, so it
stays on the local data directory.

Paths are those of the pyarrow filesystem (for S3: ``bucket/prefix/...``, no scheme).
"""
from __future__ import annotations

import io
from typing import Any, List, Optional

import pyarrow as pa
import pyarrow.fs as pafs

from .fileio import FileHandle, FileSystem

__all__ = ["ArrowFileSystem"]


class _Upload(io.BytesIO):
    """The write buffer of one object; its content is written by :meth:`ArrowFileSystem._close`."""


class ArrowFileSystem(FileSystem):
    """A :class:`FileSystem` over ``pyarrow_fs`` (S3, GCS, HDFS, ... as ``FileSystem.from_uri`` makes them)."""

    local = False
    atomic_rename = False

    def __init__(self, pyarrow_fs: pafs.FileSystem, uri: str = "") -> None:
        self._fs = pyarrow_fs
        self.uri = uri

    def __repr__(self) -> str:
        return f"ArrowFileSystem({self.uri or self._fs.type_name!r})"

    @property
    def pyarrow_fs(self) -> pafs.FileSystem:
        return self._fs

    # -- files ----------------------------------------------------------------------------------

    def open(self, path: str, mode: str) -> FileHandle:
        """``wb``: a new object, written on close; ``rb``: the object's bytes (read whole: the
        engine's files are written once and read whole)."""
        if mode == "wb":
            return FileHandle(self, path, _Upload())
        if mode == "rb":
            return FileHandle(self, path, io.BytesIO(self.read_bytes(path)))
        raise ValueError(f"{path}: mode {mode!r} is not supported on an object store "
                         f"(files are written once, whole: 'wb', or read: 'rb')")

    def read_bytes(self, path: str) -> bytes:
        with self._fs.open_input_stream(path) as f:
            return f.readall()

    def read_immutable(self, path: str) -> bytes:
        return self.read_bytes(path)

    def _fsync(self, handle: FileHandle) -> None:
        """Nothing to do before close: the object is written, durably, by :meth:`_close`."""
        if handle.raw.closed:
            raise ValueError(f"{handle.path}: fsync of a closed file")

    def _truncate(self, handle: FileHandle, size: int) -> None:
        raise ValueError(f"{handle.path}: truncate is not supported on an object store")

    def _close(self, handle: FileHandle) -> None:
        raw = handle.raw
        if raw.closed:
            return
        if not isinstance(raw, _Upload):
            raw.close()
            return
        try:
            with self._fs.open_output_stream(handle.path) as out:   # raises OSError on failure
                out.write(raw.getbuffer())
        finally:
            raw.close()

    def _discard(self, handle: FileHandle) -> None:
        handle.raw.close()     # a failed writer's buffer is dropped: nothing is published

    # -- names ----------------------------------------------------------------------------------

    def fsync_dir(self, path: str) -> None:
        """No directory entries to make durable on an object store."""

    def rename(self, src: str, dst: str) -> None:
        """Copy and delete: NOT atomic (see :attr:`atomic_rename`)."""
        self._fs.move(src, dst)

    def unlink(self, path: str) -> None:
        self._fs.delete_file(path)     # FileNotFoundError when missing, like os.unlink

    def makedirs(self, path: str) -> None:
        self._fs.create_dir(path, recursive=True)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Not offered: replacing an object in place is not atomic on every object store. Write
        a new object instead (as viper's versioned manifests do)."""
        raise NotImplementedError(f"{path}: no atomic replace on an object store; write a new object")

    def makedirs_durable(self, path: str, within: Optional[str] = None) -> None:
        """Create ``path``: a directory (marker) is listed once created; nothing to fsync."""
        self.makedirs(path)

    def rmtree(self, path: str) -> None:
        self._fs.delete_dir(path)

    def listdir(self, path: str) -> List[str]:
        infos = self._fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(info.base_name for info in infos)

    def exists(self, path: str) -> bool:
        return self._info(path).type != pafs.FileType.NotFound

    def isdir(self, path: str) -> bool:
        return self._info(path).type == pafs.FileType.Directory

    def size(self, path: str) -> int:
        info = self._info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(2, "No such file", path)
        return int(info.size)

    def _info(self, path: str) -> Any:
        try:
            return self._fs.get_file_info(path)
        except pa.ArrowInvalid as e:
            raise OSError(f"{path}: {e}") from e
