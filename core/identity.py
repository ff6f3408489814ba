"""Which database a data directory holds, and whether a config may open it.

A config can name the wrong place or the wrong plugin for data that already exists. Opening
anyway would lose data quietly: another WAL strategy would not replay the acknowledged writes in
``wal/``, and a data directory pointed at another database's ``[storage] root`` removes that
database's collections at open as leftovers of its own. So the data directory remembers what
wrote it, the storage root remembers whose it is, and :func:`check_identity` refuses, before
anything is created or removed:

- a WAL strategy or storage engine other than the recorded one while collections exist;
- a storage root marked as another database's (two data directories cannot share one);
- an unmarked storage root that holds files, unless it is the root this database recorded (or
  the database predates the marker);
- a storage root that holds nothing while the database's collections were stored elsewhere.

``proxistore.json`` (data directory): ``format_version``, ``database_id``, ``wal_strategy``,
``storage_engine``, ``storage_root`` (as configured). ``.proxistore-database.json`` (top of the
storage root, a name no collection can take): ``database_id`` and the data directory's path.
"""
from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

from .config import EffectiveConfig
from .errors import ConfigError, DataDirectoryError, StorageError
from .fileio import FileSystem
from .storage_root import KEY as ROOT_KEY, StorageRoot

__all__ = ["FORMAT_FILE", "FORMAT_VERSION", "ROOT_MARKER", "Identity", "read_identity",
           "check_identity", "claim_identity"]

log = logging.getLogger("proxistore")

FORMAT_FILE = "proxistore.json"
FORMAT_VERSION = 1
ROOT_MARKER = ".proxistore-database.json"


@dataclass(frozen=True)
class Identity:
    """What ``proxistore.json`` records. ``None`` fields: written before they were recorded."""

    database_id: Optional[str] = None
    wal_strategy: Optional[str] = None
    storage_engine: Optional[str] = None
    storage_root: Optional[str] = None


def read_identity(fs: FileSystem, data_dir: str) -> Optional[Identity]:
    """The data directory's record, or None when it holds no database yet."""
    path = os.path.join(data_dir, FORMAT_FILE)
    try:
        if not fs.exists(path):
            return None
        body = json.loads(fs.read_bytes(path))
    except (OSError, ValueError) as e:
        raise DataDirectoryError(f"cannot read {path}: {e}") from e
    if not isinstance(body, dict):
        raise DataDirectoryError(f"{path} is not a proxistore.json (a JSON object)")
    version = body.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataDirectoryError(f"{path}: data directory format {version!r} is not supported (this "
                                 f"proxistore reads format {FORMAT_VERSION}); upgrade proxistore to open it")
    return Identity(**{k: body.get(k) for k in Identity.__dataclass_fields__})


def check_identity(identity: Optional[Identity], config: EffectiveConfig, root: StorageRoot,
                   collections: List[str]) -> bool:
    """Raise ConfigError if ``config`` would open this data directory with the wrong plugins or
    the wrong storage root (see the module); else return whether the root carries this
    database's marker already. Reads only."""
    if identity is not None and collections:
        _same_plugin(identity.wal_strategy, config.wal_spec.name, "wal.strategy", "WAL strategy",
                     "would not replay the acknowledged writes in its WAL", config, collections)
        _same_plugin(identity.storage_engine, config.storage_spec.name, "storage.engine",
                     "storage engine", "would not find their stored data", config, collections)
    owner = _read_marker(root)
    ours = identity.database_id if identity is not None else None
    where = _describe(root)
    if owner is not None:
        if owner.get("database_id") != ours:
            raise ConfigError(
                f"{where} holds the storage of another database (id {owner.get('database_id')}, data "
                f"directory {owner.get('data_dir')}). Two data directories cannot share a storage root: "
                f"each would remove the other's collections; give each its own",
                key=ROOT_KEY, file=config.source)
        return True
    recorded = identity.storage_root if identity is not None else None
    moved = recorded is not None and recorded != root.uri
    if _holds_files(root):
        if identity is None or moved:
            raise ConfigError(
                f"{where} holds files that no proxistore database has claimed"
                + (f", and this database's storage was at {recorded!r}" if moved else "")
                + ". A new database needs an empty storage root; proxistore will not take over (or "
                  "remove) files it cannot tell are its own",
                key=ROOT_KEY, file=config.source)
        return False
    if moved and collections:
        raise ConfigError(
            f"{where} holds none of this database's {len(collections)} collection(s); it was last "
            f"opened with storage.root = {recorded!r}. Point storage.root there, or move the files "
            f"(with {ROOT_MARKER}) to the new root", key=ROOT_KEY, file=config.source)
    return False


def claim_identity(fs: FileSystem, data_dir: str, config: EffectiveConfig, root: StorageRoot,
                   collections: List[str]) -> Identity:
    """Check (again: call it holding the data directory's lock), then record the data directory's
    identity and mark the storage root as this database's. Returns the identity recorded."""
    known = read_identity(fs, data_dir)
    marked = check_identity(known, config, root, collections)
    database_id = (known.database_id if known is not None else None) or uuid.uuid4().hex
    identity = Identity(database_id, config.wal_spec.name, config.storage_spec.name, root.uri)
    if known != identity:
        if known is not None and known.storage_root not in (None, root.uri):
            log.info("data directory %s: storage.root changed from %r to %r (the new root carries this "
                     "database's marker)", data_dir, known.storage_root, root.uri)
        body = {"format_version": FORMAT_VERSION, **asdict(identity)}
        fs.write_atomic(os.path.join(data_dir, FORMAT_FILE), json.dumps(body, indent=2).encode())
    if not marked:
        _write_marker(root, {"database_id": database_id, "data_dir": os.path.abspath(data_dir)})
        owner = _read_marker(root)
        if owner is None or owner.get("database_id") != database_id:    # another database, meanwhile
            raise ConfigError(f"{_describe(root)} was claimed by another database (id "
                              f"{owner and owner.get('database_id')}) while this one opened",
                              key=ROOT_KEY, file=config.source)
    return identity


def _same_plugin(recorded: Optional[str], configured: str, key: str, what: str, loss: str,
                 config: EffectiveConfig, collections: List[str]) -> None:
    if recorded is not None and recorded != configured:
        raise ConfigError(
            f"this data directory was written by {what} {recorded!r}; the config names {configured!r}, "
            f"which {loss} (collections: {', '.join(sorted(collections))}). Use {key} = {recorded!r} "
            f"for this data directory", key=key, file=config.source)


def _describe(root: StorageRoot) -> str:
    return f"storage root {root.uri or root.path!r}"


def _marker_path(root: StorageRoot) -> str:
    return os.path.join(root.path, ROOT_MARKER)


def _read_marker(root: StorageRoot) -> Optional[Dict[str, Any]]:
    path = _marker_path(root)
    try:
        if not root.fs.exists(path):
            return None
        body = json.loads(root.fs.read_bytes(path))
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e}") from e
    except ValueError as e:
        raise StorageError(f"{path} is damaged ({e}); it says which database owns this storage root. "
                           f"If it is this one's, remove the file and open again") from e
    return body if isinstance(body, dict) else {}


def _write_marker(root: StorageRoot, body: Dict[str, Any]) -> None:
    path = _marker_path(root)
    data = json.dumps(body, indent=2).encode()
    try:
        root.fs.makedirs_durable(root.path)
        if root.fs.atomic_rename:
            root.fs.write_atomic(path, data)
        else:
            root.fs.write_durable(path, data)     # an object appears whole or not at all
    except OSError as e:
        raise StorageError(f"cannot write {path}: {e}") from e


def _holds_files(root: StorageRoot) -> bool:
    try:
        return root.fs.isdir(root.path) and any(n != ROOT_MARKER for n in root.fs.listdir(root.path))
    except OSError as e:
        raise StorageError(f"cannot list {_describe(root)}: {e}") from e
