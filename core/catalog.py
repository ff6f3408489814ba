"""The durable list of collections: creating and dropping one is atomic across a crash.

Each collection has ``collections/<name>/collection.json``. Creation builds it under a temporary
name, has the WAL and the storage engine create their parts, then renames it into place and fsyncs
the directory: that rename is the commit point. Dropping renames it aside first (the commit point),
then deletes the parts. On open, anything half-created or half-dropped is finished or removed.
"""
from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, TypeVar

from .contracts import CollectionInfo
from .errors import DataDirectoryError
from .fileio import FileSystem

__all__ = ["Catalog", "CATALOG_DIR", "collection_file", "committed_names"]

F = TypeVar("F", bound=Callable[..., Any])


def _io(fn: F) -> F:
    """Report an OSError of a catalog step as a DataDirectoryError naming the step and collection."""
    @functools.wraps(fn)
    def wrapper(self: "Catalog", name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, name, *args, **kwargs)
        except OSError as e:
            step = fn.__name__.replace("_", " ")
            raise DataDirectoryError(f"catalog {step} of collection {name!r} in {self.root} failed: {e}") from e
    return wrapper  # type: ignore[return-value]

CATALOG_DIR = "collections"     # under the data directory
_INFO = "collection.json"
_CREATING = ".creating-"
_DROPPING = ".dropping-"
FORMAT_VERSION = 1


def collection_file(catalog_root: str, name: str, filename: str) -> str:
    """Where the core keeps a file of its own with ``name``'s record (it is dropped with it)."""
    return os.path.join(catalog_root, name, filename)


def committed_names(fs: FileSystem, root: str) -> List[str]:
    """The collections whose creation reached the commit point (none when ``root`` is missing)."""
    if not fs.isdir(root):
        return []
    return [n for n in fs.listdir(root) if not n.startswith(".")]


class Catalog:
    def __init__(self, fs: FileSystem, root: str) -> None:
        self.fs = fs
        self.root = root
        fs.makedirs_durable(root, within=os.path.dirname(os.path.abspath(root)))

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def names(self) -> List[str]:
        return committed_names(self.fs, self.root)

    def committed(self, name: str) -> bool:
        """Whether ``name``'s record is in place (its creation reached the commit point)."""
        return self.fs.exists(self._path(name))

    @_io
    def load(self, name: str) -> CollectionInfo:
        path = os.path.join(self._path(name), _INFO)
        with open(path, "rb") as f:
            data = f.read()
        try:
            d = json.loads(data)
            version = d.get("format_version")
            info = CollectionInfo(name=d["name"], dim=d["dim"], metric=d["metric"],
                                  overrides=d.get("overrides", {}), created_at=d.get("created_at", 0.0))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataDirectoryError(f"{path} is damaged ({type(e).__name__}: {e}); it is the catalog's "
                                     f"record of collection {name!r}") from e
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataDirectoryError(f"{path}: collection record format {version!r} is not supported (this "
                                     f"proxistore reads format {FORMAT_VERSION}); upgrade proxistore to open it")
        if info.name != name:
            raise DataDirectoryError(f"{path} names collection {info.name!r}, but it is the record of {name!r}")
        return info

    @_io
    def begin_create(self, name: str, dim: int, metric: str, overrides: Mapping[str, Any]) -> CollectionInfo:
        """Write the collection's record under a temporary name (not yet visible)."""
        info = CollectionInfo(name=name, dim=dim, metric=metric, overrides=dict(overrides),
                              created_at=time.time())
        tmp = self._path(_CREATING + name)
        if self.fs.exists(tmp):
            self.fs.rmtree(tmp)
        self.fs.makedirs(tmp)
        body = {"format_version": FORMAT_VERSION, "name": name, "dim": dim, "metric": metric,
                "overrides": dict(overrides), "created_at": info.created_at}
        self.fs.write_durable(os.path.join(tmp, _INFO), json.dumps(body, indent=2).encode())
        self.fs.fsync_dir(tmp)
        self.fs.fsync_dir(self.root)
        return info

    @_io
    def commit_create(self, name: str) -> None:
        self.fs.rename(self._path(_CREATING + name), self._path(name))
        self.fs.fsync_dir(self.root)

    @_io
    def begin_drop(self, name: str) -> None:
        """Make the drop durable (the collection is gone from here on); parts are deleted after."""
        aside = self._path(_DROPPING + name)
        if self.fs.exists(aside):
            self.fs.rmtree(aside)
        self.fs.rename(self._path(name), aside)
        self.fs.fsync_dir(self.root)

    @_io
    def finish_drop(self, name: str) -> None:
        aside = self._path(_DROPPING + name)
        if self.fs.exists(aside):
            self.fs.rmtree(aside)
            self.fs.fsync_dir(self.root)

    def unfinished(self) -> Dict[str, List[str]]:
        """Names of collections whose creation or drop was interrupted."""
        entries = self.fs.listdir(self.root)
        return {"creating": [e[len(_CREATING):] for e in entries if e.startswith(_CREATING)],
                "dropping": [e[len(_DROPPING):] for e in entries if e.startswith(_DROPPING)]}

    @_io
    def discard_create(self, name: str) -> None:
        tmp = self._path(_CREATING + name)
        if self.fs.exists(tmp):
            self.fs.rmtree(tmp)
            self.fs.fsync_dir(self.root)
