"""The viper storage engine: one directory per collection under the engine's root."""
from __future__ import annotations

import os
from typing import Any, List, Mapping

from proxistore.contracts import CollectionInfo, CollectionStore, StorageEngine
from proxistore.distance import METRICS
from proxistore.errors import CollectionExists, InvalidArgument, StorageError
from proxistore.fileio import FileSystem

from .config import ViperSettings
from .manifest import Manifest, commit_manifest, manifest_exists
from .store import ViperCollection

__all__ = ["ViperEngine"]


class ViperEngine(StorageEngine):
    """Parquet segments + deletion vectors + ANN indexes (faiss or hnswlib) + an atomic manifest.

    ``root/<collection>/`` holds ``MANIFEST.json`` (on an object store: versioned
    ``MANIFEST-<generation>.json``, see :mod:`.manifest`), ``seg-NNNNNNNN.parquet`` segments,
    ``seg-….NNNNNNNN.del`` deletion vectors and ``seg-….NNNNNNNN.<kind>.<backend>`` index files.
    ``root`` is a path of ``fs``: a local directory, or ``bucket/prefix`` of an object store.
    """

    supports_ann = True
    supports_filters = True
    supports_deletes = True
    supports_compaction = True

    def __init__(self, config: Mapping[str, Any], *, fs: FileSystem, root: str) -> None:
        super().__init__(config, fs=fs, root=root)
        self.settings = ViperSettings.from_config(self.config)   # fail early on a bad section

    def _dir(self, name: str) -> str:
        if not name or os.sep in name or name in (".", ".."):
            raise InvalidArgument(f"invalid collection name {name!r}")
        return os.path.join(self.root, name)

    def create_collection(self, info: CollectionInfo) -> None:
        """Durably create the directory and an empty manifest (flushed_lsn 0)."""
        if info.metric not in METRICS:
            raise InvalidArgument(f"unknown metric {info.metric!r}; choose one of {', '.join(METRICS)}")
        if int(info.dim) <= 0:
            raise InvalidArgument(f"dim must be positive, not {info.dim!r}")
        directory = self._dir(info.name)
        if manifest_exists(self.fs, directory):
            raise CollectionExists(f"collection {info.name!r} already exists in {self.root}")
        try:
            self.fs.makedirs_durable(directory, within=os.path.dirname(os.path.abspath(self.root)))
        except OSError as e:
            raise StorageError(f"{directory}: cannot create collection directory: {e}") from e
        commit_manifest(self.fs, directory, Manifest(collection=info.name, dim=int(info.dim), metric=info.metric))

    def open_collection(self, info: CollectionInfo, config: Mapping[str, Any]) -> CollectionStore:
        """Open a collection with its effective settings (engine section + its overrides);
        files the manifest does not reference are removed."""
        settings = ViperSettings.from_config({**self.config, **dict(config)})
        return ViperCollection(info, settings, fs=self.fs, directory=self._dir(info.name))

    def drop_collection(self, name: str) -> None:
        directory = self._dir(name)
        if not self.fs.exists(directory):
            return
        try:
            self.fs.rmtree(directory)
            self.fs.fsync_dir(self.root)
        except OSError as e:
            raise StorageError(f"{directory}: cannot drop collection: {e}") from e

    def list_collections(self) -> List[str]:
        if not self.fs.isdir(self.root):
            return []
        return [n for n in self.fs.listdir(self.root) if manifest_exists(self.fs, os.path.join(self.root, n))]
