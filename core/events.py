"""Events the core reports to observer hooks and keeps for ``stats()``."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

from .contracts import CompactionResult, FlushRequest, RecoveryReport

__all__ = ["FlushEvent", "RecoveryEvent", "CompactionEvent"]


@dataclass
class FlushEvent:
    """One flush write: why it ran, what it wrote, and the seconds of each phase.

    ``seconds`` runs from the start of the segment write to the drop of the flushed memtable.
    The memtable was frozen earlier, when the policy fired (``phases["freeze"]``), and then
    waited ``waited_seconds`` for a flush worker (behind older frozen memtables or other work).
    When ingest outran the flushes, one write takes ``memtables`` queued memtables, all frozen by
    the same policy, into one segment: it answers that many of the policy's flushes (the count
    ``stats()`` gives per policy); ``reason`` and ``waited_seconds`` are the oldest's, and
    ``phases["freeze"]`` is the sum of their freezes.
    """

    collection: str
    reason: FlushRequest
    started_at: float
    rows: int = 0
    deletes: int = 0
    bytes: int = 0
    segment: Optional[str] = None
    flushed_lsn: int = 0
    wal_bytes_freed: int = 0
    phases: Dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    waited_seconds: float = 0.0
    error: Optional[str] = None
    checkpoint_error: Optional[str] = None
    attempt: int = 1
    memtables: int = 1

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["reason"] = {**asdict(self.reason), "text": self.reason.describe()}
        return d


@dataclass
class RecoveryEvent:
    collection: str
    report: RecoveryReport

    def to_dict(self) -> Dict[str, Any]:
        return {"collection": self.collection, **asdict(self.report)}


@dataclass
class CompactionEvent:
    """One storage compaction (a merge, an index-build run), timed by the engine."""

    collection: str
    result: CompactionResult
    finished_at: float = field(default_factory=time.time)

    def to_dict(self) -> Dict[str, Any]:
        return {"collection": self.collection, "finished_at": self.finished_at, **asdict(self.result)}
