"""An open data directory: plugins chosen by config, collections, and background maintenance.

Layout of a data directory::

    LOCK                 exclusive lock of the process that has it open
    proxistore.json      format version, database id, the WAL strategy, storage engine and storage
                         root that wrote it (identity.py: a config naming others is refused)
    collections/<name>/  the durable record of each collection (see catalog.py)
    wal/                 owned by the WAL strategy
    storage/             owned by the storage engine (or wherever ``[storage] root`` says: a local
                         directory or an object store URI, see storage_root.py)
    control/             requests of other processes (live stats, flush...) and the answers (control.py)
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from .admission import Admission
from .catalog import CATALOG_DIR, Catalog, collection_file, committed_names
from .collection import Collection
from .config import EffectiveConfig, load_config, validate_collection_overrides
from .contracts import CollectionState, CompactionResult, DatabaseState, FlushRequest
from .errors import (CollectionExists, CollectionNotFound, DataDirectoryError, DatabaseClosed,
                     PolicyNotEnabled, ProxistoreError)
from .events import CompactionEvent, RecoveryEvent
from .fileio import FileSystem, default_filesystem
from .flush import FlushLog, drain, freeze_for
from .identity import Identity, check_identity, claim_identity, read_identity
from .history import COMPACTIONS_FILE, FLUSHES_FILE, EventHistory, RecentEvents
from .jsonable import jsonable
from .lock import DirectoryLock
from .maintenance import Maintenance
from .registry import Registry, get_registry
from .runtime import CollectionRuntime
from .control import ControlResponder
from .storage_root import StorageRoot, resolve_storage_root
from .validation import check_collection_name, check_dim, check_metric

__all__ = ["Database", "open_database"]

log = logging.getLogger("proxistore")
COMPACTION_HISTORY = 20     # compactions kept per collection, in stats() and on disk


class Database:
    """Use :func:`proxistore.open`. A context manager; ``close()`` stops maintenance cleanly."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], config: Any = None, *,
                 fs: Optional[FileSystem] = None, registry: Optional[Registry] = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.fs = fs or default_filesystem()
        self.registry = registry or get_registry()
        self.config: EffectiveConfig = load_config(config, registry=self.registry)
        # Resolved before anything is created: a bad [storage] root creates no data directory.
        self.storage_root: StorageRoot = resolve_storage_root(self.config.storage_root, self.path, self.fs,
                                                              source=self.config.source)
        # Checked before anything is created: a config that would lose this directory's data
        # (another WAL or engine, another database's storage root) leaves no trace behind.
        check_identity(read_identity(self.fs, self.path), self.config, self.storage_root,
                       committed_names(self.fs, self._catalog_root))
        self._closed = True
        try:
            self.fs.makedirs_durable(self.path)
        except OSError as e:
            raise DataDirectoryError(f"cannot create the data directory {self.path}: {e}") from e
        self._lock = DirectoryLock(self.path)
        try:
            self._open()
        except OSError as e:
            self._lock.release()
            raise DataDirectoryError(f"cannot open the data directory {self.path}: {e}") from e
        except BaseException:
            self._lock.release()
            raise
        self._closed = False

    # -- opening -------------------------------------------------------------------------------

    @property
    def _catalog_root(self) -> str:
        return os.path.join(self.path, CATALOG_DIR)

    def _open(self) -> None:
        cfg = self.config
        # Again under the lock: another process may have opened the directory in between.
        self.identity: Identity = claim_identity(self.fs, self.path, cfg, self.storage_root,
                                                 committed_names(self.fs, self._catalog_root))
        self._lsn_lock = threading.Lock()
        self._next_lsn = 1
        self._ddl_lock = threading.RLock()
        self._runtimes: Dict[str, CollectionRuntime] = {}
        self.flush_logs: Dict[str, FlushLog] = {}
        self.compactions: Dict[str, RecentEvents] = {}
        self.wal = cfg.wal_spec.factory(cfg.wal, fs=self.fs, root=os.path.join(self.path, "wal"))
        root = self.storage_root
        if root.uri and root.local:        # a configured local directory: made durable up front
            root.fs.makedirs_durable(root.path)
        self.storage = cfg.storage_spec.factory(cfg.storage, fs=root.fs, root=root.path)
        self.policies = []
        for name, spec in cfg.policy_specs.items():
            policy = spec.factory(cfg.flush[name])
            policy.name = name
            self.policies.append(policy)
        limits = [p.write_limit() for p in self.policies if p.write_limit() is not None]
        limit = min(limits, key=lambda lim: lim.limit_bytes) if limits else None
        self.maintenance = Maintenance(self, self.policies, cfg.maintenance,
                                       responder=ControlResponder(self.fs, self.path, self._answer_control,
                                                                  run_apart=("flush", "compact", "delete")))
        self.admission = Admission(limit, self.total_memtable_bytes, self.maintenance.wake)
        self.catalog = Catalog(self.fs, self._catalog_root)
        self._recover_catalog()
        max_lsn = 0
        for name in self.catalog.names():
            max_lsn = max(max_lsn, self._open_collection(name))
        self._next_lsn = max_lsn + 1
        self.maintenance.start()

    def _recover_catalog(self) -> None:
        """Finish interrupted drops, undo interrupted creates, remove parts of unknown collections."""
        unfinished = self.catalog.unfinished()
        for name in unfinished["dropping"]:
            self.wal.drop_collection(name)
            self.storage.drop_collection(name)
            self.catalog.finish_drop(name)
        known = set(self.catalog.names())
        for name in unfinished["creating"]:
            if name not in known:
                self.wal.drop_collection(name)
                self.storage.drop_collection(name)
            self.catalog.discard_create(name)
        for name in set(self.wal.list_collections()) - known:
            self.wal.drop_collection(name)
        for name in set(self.storage.list_collections()) - known:
            self.storage.drop_collection(name)

    def _open_collection(self, name: str) -> int:
        info = self.catalog.load(name)
        settings = validate_collection_overrides(info.overrides, self.config, name)
        store = self.storage.open_collection(info, settings["storage"][self.config.storage_spec.name])
        wal = self.wal.open_collection(name)
        rt = CollectionRuntime(self, info, settings, wal, store)
        _, max_lsn = rt.replay()
        self._runtimes[name] = rt
        self._new_event_logs(name)
        event = RecoveryEvent(name, wal.recovery)
        rt.recovery = event.to_dict()
        if wal.recovery.torn_tails or wal.recovery.set_aside:
            log.warning("recovered %s: %s", name, rt.recovery)
        self.registry.notify("proxistore_wal_recovered", event)
        return max(max_lsn, store.flushed_lsn)

    def _new_event_logs(self, name: str) -> None:
        """The flush and compaction records of ``name``, starting from what earlier opens wrote."""
        def recent(filename: str, keep: int) -> RecentEvents:
            path = collection_file(self.catalog.root, name, filename)
            return RecentEvents(keep, EventHistory(self.fs, path, keep))
        self.flush_logs[name] = FlushLog(recent(FLUSHES_FILE, self.config.maintenance["flush_history"]))
        self.compactions[name] = recent(COMPACTIONS_FILE, COMPACTION_HISTORY)

    # -- collections -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"database {self.path!r} is closed")

    def _runtime(self, name: str) -> CollectionRuntime:
        self._check_open()
        rt = self._runtimes.get(name)
        if rt is None:
            raise CollectionNotFound(f"no collection named {name!r} in {self.path!r}; "
                                     f"collections: {sorted(self._runtimes) or 'none'}")
        return rt

    def runtime_or_none(self, name: str) -> Optional[CollectionRuntime]:
        return self._runtimes.get(name)

    def runtimes(self) -> List[CollectionRuntime]:
        return list(self._runtimes.values())

    def create_collection(self, name: str, dim: int, metric: str = "cosine",
                          config: Optional[Mapping[str, Any]] = None) -> Collection:
        """Create a collection durably (all or nothing across a crash) and return its handle.

        ``config`` overrides flush and index settings for this collection alone, in the shape of
        the database config: ``{"flush": {"size": {"memory_flush_size_bytes": "4MB"}}}``.
        """
        self._check_open()
        check_collection_name(name)
        dim = check_dim(dim)
        metric = check_metric(metric)
        overrides = dict(config or {})
        settings = validate_collection_overrides(overrides, self.config, name)
        with self._ddl_lock:
            if name in self._runtimes:
                raise CollectionExists(f"collection {name!r} already exists")
            self._remove_leftovers(name)
            info = self.catalog.begin_create(name, dim, metric, overrides)
            try:
                self.storage.create_collection(info)
                self.wal.create_collection(name)
                self.catalog.commit_create(name)
            except BaseException:
                self._undo_create(name)
                raise
            store = self.storage.open_collection(info, settings["storage"][self.config.storage_spec.name])
            rt = CollectionRuntime(self, info, settings, self.wal.open_collection(name), store)
            rt.replay()
            self._new_event_logs(name)
            self._runtimes[name] = rt
        return Collection(self, name)

    def _remove_leftovers(self, name: str) -> None:
        """Remove what an earlier, failed creation of ``name`` left (its cleanup failed too, or
        its commit reached the catalog but could not be made durable): the collection does not
        exist in this process, so nothing of it is in use."""
        if self.catalog.committed(name):
            self.catalog.begin_drop(name)
        self.wal.drop_collection(name)
        self.storage.drop_collection(name)
        self.catalog.finish_drop(name)

    def _undo_create(self, name: str) -> None:
        """Best-effort removal of a failed creation's parts; what remains is removed by the next
        creation of the name or the next open. The creation's own error is what the caller sees."""
        for undo in (self.wal.drop_collection, self.storage.drop_collection, self.catalog.discard_create):
            try:
                undo(name)
            except (ProxistoreError, OSError) as exc:
                log.warning("undoing the failed creation of collection %r: %s (removed later)", name, exc)

    def collection(self, name: str) -> Collection:
        """The handle of an existing collection."""
        self._runtime(name)
        return Collection(self, name)

    get_collection = collection

    def collections(self) -> List[str]:
        self._check_open()
        return sorted(self._runtimes)

    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its data, durably."""
        with self._ddl_lock:
            rt = self._runtime(name)
            with rt.flush_lock:
                self.catalog.begin_drop(name)
                del self._runtimes[name]
                rt.close()
                self.wal.drop_collection(name)
                self.storage.drop_collection(name)
                self.catalog.finish_drop(name)

    # -- LSNs and memory -----------------------------------------------------------------------

    def allocate_lsns(self, n: int) -> int:
        with self._lsn_lock:
            first = self._next_lsn
            self._next_lsn += n
            return first

    def total_memtable_bytes(self) -> int:
        return sum(rt.memtable_bytes()[1] for rt in list(self._runtimes.values()))

    def database_state(self) -> DatabaseState:
        now = time.monotonic()
        cols = {rt.name: rt.state(now) for rt in list(self._runtimes.values())}
        return DatabaseState(collections=cols, total_memtable_bytes=self.total_memtable_bytes(),
                             waiting_write_bytes=self.admission.waiting_bytes, now=now)

    # -- flush and compaction --------------------------------------------------------------

    def flush(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Flush one collection (or all) now; returns once data is in storage and the WAL truncated.

        Answered by the enabled policy that takes explicit requests (``manual``). Returns the
        flushes that wrote what this call asked for (a background worker may have done one of
        them while the call waited), each with its reason.
        """
        self._check_open()
        names = [self._runtime(name).name] if name is not None else self.collections()
        done = []
        for n in names:
            rt = self._runtime(n)
            state = rt.state(time.monotonic())
            request = self._explicit_request(state)
            if request is None:
                raise PolicyNotEnabled(f"no enabled flush policy answers explicit flush requests; add "
                                       f"'manual' to flush.policies (enabled: {self.config.policies})",
                                       key="flush.policies", file=self.config.source)
            frozen = freeze_for(rt, request)
            events = drain(rt, self.registry, self.flush_logs[n], self.config.maintenance["max_flush_bytes"])
            if frozen is not None and all(e is not frozen.flush_event for e in events):
                events.append(frozen.flush_event)   # a background worker flushed it meanwhile
            done += [e.to_dict() for e in events]
        return done

    def _explicit_request(self, state: CollectionState) -> Optional[FlushRequest]:
        """The first enabled policy's answer to an explicit flush request, or None; a policy
        that raises is logged and skipped, as background maintenance does."""
        for policy in self.policies:
            try:
                request = policy.request(state)
            except Exception as exc:  # third-party code: the next policy (manual) may answer
                log.error("flush policy %r failed on an explicit flush request: %s", policy.name, exc)
                continue
            if request is not None:
                return request
        return None

    def compact(self, name: Optional[str] = None) -> List[Dict[str, Any]]:
        """Compact (merge segments, build indexes) now and wait."""
        self._check_open()
        names = [self._runtime(name).name] if name is not None else self.collections()
        out = []
        for n in names:
            rt = self._runtime(n)
            result = rt.store.compact()
            if result is not None:
                out.append(self.compaction_finished(n, result).to_dict())
        self.maintenance.release_heap()
        return out

    def compaction_finished(self, name: str, result: CompactionResult) -> CompactionEvent:
        event = CompactionEvent(name, result)
        self.compactions[name].record(event.to_dict())
        self.registry.notify("proxistore_compaction_finished", event)
        return event

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until the policies have seen every write made before the call and no background
        flush or compaction is running or due; False on timeout."""
        self._check_open()
        return self.maintenance.wait_idle(timeout)

    # -- stats -----------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """Everything an operator needs, JSON-serialisable: per collection and database-wide."""
        self._check_open()
        cols = {}
        for rt in self.runtimes():
            active, total = rt.memtable_bytes()
            memtables = rt.memtables
            cols[rt.name] = {
                "dim": rt.dim, "metric": rt.metric, "rows": rt.count(),
                "memtable": {"rows": sum(len(m) for m in memtables), "bytes": total, "active_bytes": active,
                             "allocated_bytes": sum(m.allocated_bytes for m in memtables),
                             "frozen": len(memtables) - 1},
                "wal": rt.wal.stats(),
                "storage": rt.store.stats(),
                "flushes": self.flush_logs[rt.name].to_dict(),
                "compactions": self.compactions[rt.name].list()[-5:],
                "recovery": rt.recovery,
                "overrides": dict(rt.info.overrides),
            }
        return jsonable({
            "path": self.path, "config": self.config.source, "database_id": self.identity.database_id,
            "storage_root": self.storage_root.uri or self.storage_root.path,
            "wal_strategy": self.config.wal_spec.name, "storage_engine": self.config.storage_spec.name,
            "flush_policies": self.config.policies,
            "memtable_bytes": self.total_memtable_bytes(),
            "backpressure": self.admission.stats(),
            "maintenance": self.maintenance.stats(),
            "collections": cols,
        })

    def why(self, name: str) -> List[Dict[str, Any]]:
        """Every enabled policy's thresholds for ``name`` with the value each measures now.

        ``failing`` is set on the rows of a policy that raises (its readings, or the checks of
        background maintenance): its thresholds are not enforced while it does."""
        self._runtime(name)
        state = self.database_state()
        failing = self.maintenance.failing_policies()
        rows = []
        for policy in self.policies:
            try:
                readings = list(policy.readings(state, name))
                error = failing.get(policy.name)
            except Exception as exc:  # third-party code: report it in the answer, not instead of it
                readings, error = [], f"{type(exc).__name__}: {exc}"
            for r in readings:
                rows.append({"policy": r.policy, "key": r.key, "threshold": r.threshold,
                             "measured": r.measured, "unit": r.unit, "due": r.due, "failing": error})
            if not readings:
                rows.append({"policy": policy.name, "key": None, "threshold": None, "measured": None,
                             "unit": "", "due": False, "failing": error})
        return jsonable(rows)

    def _answer_control(self, request: Mapping[str, Any]) -> Dict[str, Any]:
        """What another process asked through ``control/`` while this one has the database open
        (the ``proxistore`` command): ``{"stats": ...}``, with ``"why"`` (the readings of
        :meth:`why`) when it asked why a collection has not flushed; ``{"flushes": ...}`` or
        ``{"compactions": ...}`` for a flush or a compaction (run on the control thread); a
        collection's ``get``, ``search``, ``count`` or ``delete`` (the last on the control thread:
        a write may wait for memory)."""
        what, name = request["what"], request.get("collection")
        if name is not None:
            self._runtime(name)    # CollectionNotFound names the collections that exist
        if what == "flush":
            return {"flushes": self.flush(name)}
        if what == "compact":
            return {"compactions": self.compact(name)}
        if what in _COLLECTION_REQUESTS:
            return _COLLECTION_REQUESTS[what](self.collection(name), request)
        if what not in ("stats", "why"):
            raise ValueError(f"unknown control request {what!r}")
        answer: Dict[str, Any] = {"stats": self.stats()}
        if what == "why":
            answer["why"] = self.why(name)
        return answer

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop maintenance (waiting for running flushes), close the WAL and storage, unlock."""
        if self._closed:
            return
        self._closed = True
        try:
            self.maintenance.stop(self.config.maintenance["close_timeout"])
        finally:
            errors: List[BaseException] = []
            for rt in list(self._runtimes.values()):
                try:
                    rt.close()
                except ProxistoreError as exc:
                    errors.append(exc)
            self.wal.close()
            self.storage.close()
            self._lock.release()
            if errors:
                raise errors[0]

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<proxistore.Database {self.path!r}{' closed' if self._closed else ''}>"


def open_database(path: Union[str, "os.PathLike[str]"], config: Any = None, **kwargs: Any) -> Database:
    return Database(path, config, **kwargs)


def _records(col: Collection, request: Mapping[str, Any]) -> Dict[str, Any]:
    got = col.get(request["ids"])
    return {"records": [None if r is None else {"id": r.id, "vector": r.vector, "metadata": r.metadata}
                        for r in got]}


def _hits(col: Collection, request: Mapping[str, Any]) -> Dict[str, Any]:
    hits = col.search(request["vector"], k=request["k"],
                      filter=request.get("filter"), ef=request.get("ef"))
    return {"hits": [{"id": h.id, "distance": h.distance, "metadata": h.metadata} for h in hits]}


def _delete(col: Collection, request: Mapping[str, Any]) -> Dict[str, Any]:
    return {"deleted": col.delete(request["ids"])}


#: A collection's requests from another process (``_answer_control``): what each returns.
_COLLECTION_REQUESTS = {"get": _records, "search": _hits, "delete": _delete,
                        "count": lambda col, request: {"count": col.count()}}
