"""The contracts between the core and its plugins.

A WAL strategy, a storage engine and a flush policy are classes implementing the abstract bases
below; they receive their parsed config section and (for the WAL and storage) the core's
:class:`~proxistore.fileio.FileSystem` seam, through which all their durable I/O must go.

The core guarantees to plugins:
- ``CollectionWal.append`` is called under the collection's write lock, in LSN order;
  ``CollectionWal.sync`` is called outside it, concurrently from many writer threads.
- ``CollectionStore.write_segment`` is called by one flush at a time per collection, with rows
  whose LSNs are all above the store's ``flushed_lsn``.
- Reads (``search``, ``get``, ``existing``, ``count``) may run concurrently with everything.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .fileio import FileSystem

__all__ = [
    "OP_INSERT", "OP_UPSERT", "OP_DELETE", "OPS",
    "WalBatch", "TornTail", "RecoveryReport", "CollectionWal", "WalStrategy",
    "CollectionInfo", "SegmentRows", "SegmentWriteResult", "SearchHits", "StoredRecord",
    "CompactionResult", "CollectionStore", "StorageEngine",
    "CollectionState", "DatabaseState", "FlushRequest", "ThresholdReading", "WriteLimit",
    "FlushPolicy",
]

OP_INSERT = "insert"
OP_UPSERT = "upsert"
OP_DELETE = "delete"
OPS = (OP_INSERT, OP_UPSERT, OP_DELETE)


# --------------------------------------------------------------------------------------------
# Write-ahead log
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WalBatch:
    """One acknowledged-or-not write batch. Row ``i`` has LSN ``first_lsn + i``.

    ``vectors`` is a C-contiguous float32 ``(n, dim)`` array (``None`` for deletes);
    ``metadata`` is a list of ``n`` dicts or ``None`` (``None`` for deletes or no metadata).
    """

    op: str
    first_lsn: int
    ids: Sequence[str]
    vectors: Optional[np.ndarray] = None
    metadata: Optional[Sequence[Optional[Mapping[str, Any]]]] = None
    timestamp: float = 0.0

    @property
    def last_lsn(self) -> int:
        return self.first_lsn + len(self.ids) - 1

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TornTail:
    """A partial record at the end of a WAL file, truncated on open."""

    file: str
    offset: int
    bytes_dropped: int


@dataclass
class RecoveryReport:
    """What a WAL replay found: filled in by ``CollectionWal.replay``."""

    batches: int = 0
    rows: int = 0
    skipped_batches: int = 0          # records at or below the flushed LSN
    torn_tails: List[TornTail] = field(default_factory=list)
    set_aside: List[str] = field(default_factory=list)   # files moved aside (point-in-time recovery)
    set_aside_bytes: int = 0
    seconds: float = 0.0


class CollectionWal(abc.ABC):
    """The write-ahead log of one collection."""

    recovery: RecoveryReport

    @abc.abstractmethod
    def replay(self, after_lsn: int) -> Iterator[WalBatch]:
        """Yield every intact batch with LSNs above ``after_lsn``, oldest first.

        Called once, on open, before any append; repairs a torn tail and fills ``recovery``.
        Raises :class:`~proxistore.errors.WalCorruption` for corruption before the tail.
        """

    @abc.abstractmethod
    def append(self, batch: WalBatch) -> Any:
        """Write ``batch`` as one record; return a token for :meth:`sync`. Not yet durable."""

    @abc.abstractmethod
    def sync(self, token: Any) -> None:
        """Return once the record of ``token`` is durable per the configured sync mode."""

    @abc.abstractmethod
    def rotate(self) -> None:
        """Close the active segment so that everything appended so far is in closed segments."""

    def prepare_rotation(self) -> None:
        """Called by the core after each :meth:`rotate`, outside its locks and off the write
        path (appends go on meanwhile): do ahead what the first appends after rotations would
        otherwise do, such as creating segment files. Optional; must not raise."""

    @abc.abstractmethod
    def checkpoint(self, flushed_lsn: int) -> int:
        """Delete closed segments whose records are all ``<= flushed_lsn``; return bytes freed."""

    @abc.abstractmethod
    def size_bytes(self) -> int:
        """Bytes of WAL on disk for this collection."""

    @abc.abstractmethod
    def stats(self) -> Dict[str, Any]:
        """At least: bytes, segments, records, append_seconds, fsync_seconds, fsyncs."""

    @abc.abstractmethod
    def close(self) -> None:
        """Sync what is pending and release files."""


class WalStrategy(abc.ABC):
    """A WAL implementation; ``root`` is the directory it owns (one subdirectory per collection)."""

    def __init__(self, config: Mapping[str, Any], *, fs: FileSystem, root: str) -> None:
        self.config = dict(config)
        self.fs = fs
        self.root = root

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Reject contradictory values in the parsed section (raise ConfigError with ``key``)."""

    @abc.abstractmethod
    def create_collection(self, name: str) -> None:
        """Durably create the (empty) log of a new collection."""

    @abc.abstractmethod
    def open_collection(self, name: str) -> CollectionWal:
        """Open an existing collection's log."""

    @abc.abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection's log (missing is not an error)."""

    @abc.abstractmethod
    def list_collections(self) -> List[str]:
        """Names of the collections that have a log on disk."""

    def close(self) -> None:
        """Release strategy-wide resources (background sync threads, ...)."""


# --------------------------------------------------------------------------------------------
# Storage engine
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CollectionInfo:
    """What the core persists about a collection; passed to the storage engine."""

    name: str
    dim: int
    metric: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


@dataclass(frozen=True)
class SegmentRows:
    """The content of a frozen memtable handed to ``write_segment`` (or of several queued ones,
    merged by the core into one flush: the same shape, see ``proxistore.flush.merged_rows``).

    ``ids``/``vectors``/``lsns``/``metadata`` are the live rows (newest version of each id);
    ``deleted_ids``/``deleted_lsns`` are tombstones that hide older stored versions.
    ``max_lsn`` becomes the store's ``flushed_lsn``.

    The rows are handed over: the core makes them for the call and never changes them after
    it, so an engine may keep the arrays (say, as the new segment's cached vectors) without
    copying.
    """

    ids: Sequence[str]
    vectors: np.ndarray
    lsns: np.ndarray
    metadata: Sequence[Optional[Mapping[str, Any]]]
    deleted_ids: Sequence[str]
    deleted_lsns: np.ndarray
    max_lsn: int


@dataclass
class SegmentWriteResult:
    """What a flush wrote: the new segment's name (``None`` when only deletes), rows, bytes and
    the seconds spent in each phase it performed (``write``, ``index``, ``manifest``, ...)."""

    segment: Optional[str]
    rows: int
    bytes: int
    phases: Dict[str, float] = field(default_factory=dict)


@dataclass
class SearchHits:
    """Top-k results for ``m`` queries: arrays of shape ``(m, k)``, best first.

    Missing results are padded with id ``None``, distance ``inf`` and LSN ``-1``. ``metadata``
    (per query, per hit) is only set by :meth:`CollectionStore.search_with_metadata` of an
    engine that reads it along with the hits.
    """

    ids: np.ndarray        # object
    distances: np.ndarray  # float32
    lsns: np.ndarray       # int64
    metadata: Optional[List[List[Optional[Mapping[str, Any]]]]] = None

    @classmethod
    def empty(cls, m: int, k: int) -> "SearchHits":
        return cls(np.full((m, k), None, dtype=object), np.full((m, k), np.inf, dtype=np.float32),
                   np.full((m, k), -1, dtype=np.int64))


@dataclass(frozen=True)
class StoredRecord:
    id: str
    vector: np.ndarray
    metadata: Optional[Mapping[str, Any]]
    lsn: int


@dataclass
class CompactionResult:
    segments_in: int
    segments_out: int
    rows_in: int
    rows_out: int
    seconds: float
    reason: str = ""


class CollectionStore(abc.ABC):
    """One collection's durable, searchable rows."""

    @property
    @abc.abstractmethod
    def flushed_lsn(self) -> int:
        """The highest LSN durably recorded (0 for a new collection)."""

    @abc.abstractmethod
    def write_segment(self, rows: SegmentRows) -> SegmentWriteResult:
        """Durably store ``rows`` (apply tombstones, supersede older versions) and record
        ``rows.max_lsn`` as ``flushed_lsn`` in one atomic manifest commit."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, *, filter: Any = None,
               ef: Optional[int] = None) -> SearchHits:
        """Top-k live rows per query (``filter`` is a :class:`proxistore.filters.MetadataFilter`)."""

    def search_with_metadata(self, queries: np.ndarray, k: int, *, filter: Any = None,
                             ef: Optional[int] = None) -> SearchHits:
        """:meth:`search`, with each hit's metadata in ``metadata`` when the engine can read it
        along (it knows where each hit is stored; :meth:`metadata` has to look every id up
        again). This default leaves ``metadata`` None and the caller uses :meth:`metadata`."""
        return self.search(queries, k, filter=filter, ef=ef)

    @abc.abstractmethod
    def get(self, ids: Sequence[str]) -> Dict[str, StoredRecord]:
        """The live stored version of each id that has one."""

    def metadata(self, ids: Sequence[str]) -> Dict[str, Optional[Mapping[str, Any]]]:
        """The metadata (None when it has none) of each id that has a live stored version.

        What ``search`` reads for its hits. This default goes through :meth:`get`; an engine
        may override it with a read that skips the vectors."""
        return {id_: rec.metadata for id_, rec in self.get(ids).items()}

    @abc.abstractmethod
    def existing(self, ids: Sequence[str]) -> set:
        """The subset of ``ids`` with a live stored version."""

    @abc.abstractmethod
    def count(self) -> int:
        """Live rows."""

    def metadata_types(self) -> Dict[str, str]:
        """Metadata key -> type name (``str``, ``int``, ``float``, ``bool``) of stored rows."""
        return {}

    def maintain(self) -> List[CompactionResult]:
        """Background work the engine's own thresholds call for (index builds, compaction).

        The core gives all collections' storage work a share of its workers in turns; an engine
        may stop after a bounded turn and report what is left through
        :meth:`has_background_work`, so that one busy collection does not keep the others
        waiting."""
        return []

    def has_background_work(self) -> bool:
        """Whether :meth:`maintain` has work left (asked between turns and by ``wait_idle``).
        False by default: the core then calls ``maintain()`` again only after a flush."""
        return False

    def compact(self) -> Optional[CompactionResult]:
        """Compact and index now, and wait."""
        return None

    def stop_background(self) -> None:
        """The database is closing: make running background work stop at its next safe point
        (abandoning uncommitted output), and return at once."""

    @abc.abstractmethod
    def stats(self) -> Dict[str, Any]:
        """At least: segments, rows, bytes."""

    def close(self) -> None:
        """Release files and indexes."""


class StorageEngine(abc.ABC):
    """A storage implementation; ``root`` is the directory it owns (one per collection)."""

    supports_ann = False
    supports_filters = True
    supports_deletes = True
    supports_compaction = False

    def __init__(self, config: Mapping[str, Any], *, fs: FileSystem, root: str) -> None:
        self.config = dict(config)
        self.fs = fs
        self.root = root

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Reject contradictory values in the parsed section (raise ConfigError with ``key``)."""

    @abc.abstractmethod
    def create_collection(self, info: CollectionInfo) -> None:
        """Durably create an empty collection (``flushed_lsn`` 0)."""

    @abc.abstractmethod
    def open_collection(self, info: CollectionInfo, config: Mapping[str, Any]) -> CollectionStore:
        """Open a collection; ``config`` is the engine section with the collection's overrides.
        Removes files the manifest does not reference (orphans of a crashed flush)."""

    @abc.abstractmethod
    def drop_collection(self, name: str) -> None:
        """Delete a collection's files (missing is not an error)."""

    @abc.abstractmethod
    def list_collections(self) -> List[str]:
        """Names of the collections with files on disk."""

    def close(self) -> None:
        """Release engine-wide resources."""


# --------------------------------------------------------------------------------------------
# Flush policies
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CollectionState:
    """What a policy may look at for one collection (a snapshot).

    ``settings[policy_name][key]`` is the effective value for this collection (its overrides
    applied on top of the database config).
    """

    name: str
    memtable_bytes: int
    memtable_rows: int
    oldest_unflushed_age: Optional[float]
    wal_bytes: int
    flushing: bool
    settings: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class DatabaseState:
    collections: Mapping[str, CollectionState]
    total_memtable_bytes: int      # active and frozen memtables of every collection
    waiting_write_bytes: int       # writes stalled at a memory limit, waiting to be accepted
    now: float


@dataclass(frozen=True)
class FlushRequest:
    """Why a collection must flush: the policy, the threshold key and value, what was measured."""

    collection: str
    policy: str
    key: Optional[str]
    threshold: Any
    measured: Any
    detail: str = ""

    def describe(self) -> str:
        if self.key is None:
            return f"{self.policy}: {self.detail or 'requested'}"
        return f"{self.policy}: {self.key}={self.threshold} crossed (measured {self.measured})" + (
            f"; {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class ThresholdReading:
    """One threshold of a policy for one collection, and the current value it measures."""

    policy: str
    key: str
    threshold: Any
    measured: Any
    unit: str
    due: bool


@dataclass(frozen=True)
class WriteLimit:
    """A hard cap the core enforces on the write path on behalf of a policy."""

    policy: str
    key: str
    limit_bytes: int
    stall_timeout: float


class FlushPolicy(abc.ABC):
    """Answers "which collections must flush now, and why"."""

    name: str = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        """Reject contradictory values in the parsed section (raise ConfigError with ``key``)."""

    @abc.abstractmethod
    def due(self, state: DatabaseState) -> List[FlushRequest]:
        """Collections that must flush now, each with the reason."""

    @abc.abstractmethod
    def readings(self, state: DatabaseState, collection: str) -> List[ThresholdReading]:
        """Every threshold this policy enforces on ``collection`` and its current measure."""

    def request(self, state: CollectionState) -> Optional[FlushRequest]:
        """Answer an explicit flush request (``db.flush()``), or ``None`` if this policy does not."""
        return None

    def write_limit(self) -> Optional[WriteLimit]:
        """A memory cap the core must enforce before accepting a write, if this policy has one."""
        return None
