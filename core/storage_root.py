"""Where the storage engine keeps its files: the ``[storage] root`` key, resolved at open.

- ``""`` (the default): ``<data dir>/storage``, on the local disk, through the database's
  FileSystem (real fsyncs of files and directories; the fault injector in tests).
- A plain path (relative: to the data directory) or a ``file://`` URI: that local directory,
  through the same FileSystem.
- Any other URI that ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://bucket/prefix?...``,
  ``gs://...``, ``hdfs://...``): an :class:`~proxistore.arrowfs.ArrowFileSystem` over it.

The WAL and the catalog stay in the local data directory whatever the root: they need appends
and real fsyncs. A URI that pyarrow cannot parse, or whose scheme it does not know, is a
:class:`~proxistore.errors.ConfigError` naming ``storage.root`` and the value, raised before
anything is created.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from .arrowfs import ArrowFileSystem
from .errors import ConfigError
from .fileio import FileSystem

__all__ = ["StorageRoot", "resolve_storage_root", "DEFAULT_SUBDIR", "KEY"]

DEFAULT_SUBDIR = "storage"
KEY = "storage.root"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class StorageRoot:
    """The resolved root: the FileSystem the engine writes through and its root path there."""

    fs: FileSystem
    path: str
    uri: str          # as configured ("" for the default)

    @property
    def local(self) -> bool:
        return self.fs.local


def resolve_storage_root(value: str, data_dir: str, local_fs: FileSystem, *,
                         source: str = "<config>") -> StorageRoot:
    """Resolve the configured ``[storage] root`` for the database in ``data_dir``.

    ``local_fs`` is the database's own FileSystem, used for every local root so that local
    behaviour (and fault injection) is the same as with the default root."""
    if value == "":
        return StorageRoot(local_fs, os.path.join(data_dir, DEFAULT_SUBDIR), value)
    if value.startswith("file://"):
        path = _from_uri(value, source)[1]
        return StorageRoot(local_fs, os.path.abspath(path), value)
    if not _SCHEME.match(value) or re.match(r"^[A-Za-z]:[\\/]", value):   # a path (or C:\\...)
        return StorageRoot(local_fs, os.path.abspath(os.path.join(data_dir, value)), value)
    fs, path = _from_uri(value, source)
    if isinstance(fs, pafs.LocalFileSystem):
        return StorageRoot(local_fs, os.path.abspath(path), value)
    if not path.strip("/"):
        raise ConfigError(f"{value!r} names no bucket or directory to keep the storage under",
                          key=KEY, file=source)
    return StorageRoot(ArrowFileSystem(fs, uri=value), path.rstrip("/"), value)


def _from_uri(value: str, source: str):
    try:
        return pafs.FileSystem.from_uri(value)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
        raise ConfigError(f"{value!r} is not a storage URI pyarrow can open: {e}", key=KEY,
                          file=source) from None
    except OSError as e:     # a scheme pyarrow knows but cannot open here (hdfs without a JVM, ...)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{value!r}: pyarrow cannot open this filesystem here: {first}", key=KEY,
                          file=source) from e
