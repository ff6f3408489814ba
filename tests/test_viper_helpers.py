"""Helpers shared by the viper test modules (this module holds no tests).

The file systems here are real implementations of the FileSystem contract (subclasses of the
local one), not mocks: one records every operation, one fails a chosen operation like a full
disk would.
"""
from __future__ import annotations

import os
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from proxistore.contracts import CollectionInfo
from proxistore.fileio import FileHandle, FileSystem, LocalFileSystem
from proxistore.plugins.viper import ViperCollection, ViperEngine
from proxistore.testing.storage import make_rows

__all__ = ["make_rows", "open_store", "reopen", "RecordingFileSystem", "FailingFileSystem",
           "vectors", "ids", "collection_dir"]


class RecordingFileSystem(LocalFileSystem):
    """The local file system, recording ``(operation, path)`` for every durable operation."""

    def __init__(self) -> None:
        self.ops: List[Tuple[str, str]] = []
        #: the content of every manifest temp file written, in order
        self.manifests: List[bytes] = []

    def _write(self, handle: FileHandle, data: Any) -> int:
        if handle.path.endswith("MANIFEST.json.tmp"):
            self.manifests.append(bytes(data))
        return super()._write(handle, data)

    def open(self, path: str, mode: str) -> FileHandle:
        if any(c in mode for c in "wax+"):
            self.ops.append(("open_write", os.path.abspath(path)))
        return super().open(path, mode)

    def _fsync(self, handle: FileHandle) -> None:
        super()._fsync(handle)
        self.ops.append(("fsync", os.path.abspath(handle.path)))

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        self.ops.append(("fsync_dir", os.path.abspath(path)))

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        self.ops.append(("rename", os.path.abspath(dst)))

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.ops.append(("unlink", os.path.abspath(path)))


class FailingFileSystem(LocalFileSystem):
    """The local file system, raising OSError for operations where ``fail(op, path)`` is true."""

    def __init__(self, fail: Callable[[str, str], bool]) -> None:
        self.fail = fail

    def _check(self, op: str, path: str) -> None:
        if self.fail(op, os.path.basename(path)):
            raise OSError(28, f"No space left on device (injected: {op} {path})")

    def open(self, path: str, mode: str) -> FileHandle:
        if "w" in mode:
            self._check("open_write", path)
        return super().open(path, mode)

    def rename(self, src: str, dst: str) -> None:
        self._check("rename", dst)
        super().rename(src, dst)

    def fsync_dir(self, path: str) -> None:
        self._check("fsync_dir", path)
        super().fsync_dir(path)


def vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def ids(n: int, start: int = 0, prefix: str = "id") -> List[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


def collection_dir(root: Any, name: str = "c") -> str:
    return os.path.join(str(root), name)


def open_store(root: Any, *, dim: int = 8, metric: str = "l2", name: str = "c",
               fs: Optional[FileSystem] = None, create: bool = True, **config: Any
               ) -> Tuple[ViperEngine, ViperCollection]:
    """An engine on ``root`` (real files) and the opened collection ``name``."""
    engine = ViperEngine(config, fs=fs or LocalFileSystem(), root=str(root))
    info = CollectionInfo(name=name, dim=dim, metric=metric)
    if create:
        engine.create_collection(info)
    return engine, engine.open_collection(info, config)


def reopen(root: Any, **kw: Any) -> Tuple[ViperEngine, ViperCollection]:
    return open_store(root, create=False, **kw)
