"""The ``avro`` WAL strategy: one directory of Avro segments per collection under ``root``."""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Dict, List, Mapping, Optional

from proxistore.contracts import WalStrategy
from proxistore.errors import CollectionExists, CollectionNotFound, InvalidCollectionName, WalError
from proxistore.fileio import FileSystem

from .collection import AvroCollectionWal
from .format import SEGMENT_RE
from .settings import Settings

__all__ = ["AvroWalStrategy"]

log = logging.getLogger("proxistore.wal")

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class AvroWalStrategy(WalStrategy):
    """Avro container segments per collection, CRC per batch, four sync modes.

    ``config`` holds parsed ``[wal.avro]`` values (missing keys take their defaults). Under
    ``sync_mode="interval"`` one background thread fsyncs every open collection's log every
    ``sync_interval``; :meth:`close` stops it.
    """

    def __init__(self, config: Mapping[str, Any], *, fs: FileSystem, root: str) -> None:
        self.settings = Settings.from_config(config)
        super().__init__({**config, **self.settings.__dict__}, fs=fs, root=root)
        self._open: Dict[str, AvroCollectionWal] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._syncer: Optional[threading.Thread] = None

    def _dir(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidCollectionName(
                f"invalid collection name {name!r}: use [A-Za-z0-9_-]{{1,64}}")
        return os.path.join(self.root, name)

    def create_collection(self, name: str) -> None:
        """Durably create the empty log directory (every new directory's parent is fsynced)."""
        d = self._dir(name)
        if self.fs.isdir(d) and any(SEGMENT_RE.match(n) for n in self.fs.listdir(d)):
            raise CollectionExists(f"a WAL for collection {name!r} already exists in {d}")
        try:
            self.fs.makedirs_durable(d, within=os.path.dirname(os.path.abspath(self.root)))
        except OSError as e:
            raise WalError(f"cannot create the WAL directory {d}: {e}") from e

    def open_collection(self, name: str) -> AvroCollectionWal:
        """Open a collection's log; call ``replay`` on it before the first append."""
        d = self._dir(name)
        if not self.fs.isdir(d):
            raise CollectionNotFound(f"no WAL for collection {name!r} under {self.root}")
        with self._lock:
            if name in self._open:
                raise WalError(f"the WAL of collection {name!r} is already open")
            wal = AvroCollectionWal(fs=self.fs, dirpath=d, name=name, settings=self.settings,
                                    on_close=self._forget)
            self._open[name] = wal
            if self.settings.sync_mode == "interval" and self._syncer is None:
                self._stop = threading.Event()
                self._syncer = threading.Thread(target=self._sync_loop, args=(self._stop,),
                                                daemon=True, name="proxistore-wal-interval-sync")
                self._syncer.start()
        return wal

    def _forget(self, wal: AvroCollectionWal) -> None:
        with self._lock:
            if self._open.get(wal.name) is wal:
                del self._open[wal.name]

    def _sync_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.sync_interval):
            with self._lock:
                wals = list(self._open.values())
            for wal in wals:
                wal.background_sync()

    def drop_collection(self, name: str) -> None:
        """Close (if open) and delete the collection's log; missing is not an error."""
        d = self._dir(name)
        with self._lock:
            wal = self._open.pop(name, None)
        if wal is not None:
            wal.close()
        if self.fs.exists(d):
            try:
                self.fs.rmtree(d)
                self.fs.fsync_dir(self.root)
            except OSError as e:
                raise WalError(f"cannot delete the WAL directory {d}: {e}") from e

    def list_collections(self) -> List[str]:
        if not self.fs.isdir(self.root):
            return []
        return [n for n in self.fs.listdir(self.root)
                if _NAME_RE.match(n) and self.fs.isdir(os.path.join(self.root, n))]

    def close(self) -> None:
        """Stop the interval thread and close every open log (the first error is raised after
        all were closed)."""
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        with self._lock:
            wals = list(self._open.values())
        first: Optional[WalError] = None
        for wal in wals:
            try:
                wal.close()
            except WalError as e:
                first = first or e
        if first is not None:
            raise first
