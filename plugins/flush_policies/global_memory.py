"""``global_memory``: bounds the memory of all memtables together.

``global_flush_threshold``: when memtables (plus writes waiting for memory) exceed it, the largest
collections are flushed until the rest fits. ``global_memory_limit``: a hard cap the core checks
on the write path before accepting a write; a write that would pass it waits up to
``stall_timeout`` for flushes to free memory, then fails with ``BackpressureTimeout``.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

from proxistore.contracts import DatabaseState, FlushPolicy, FlushRequest, ThresholdReading, WriteLimit
from proxistore.errors import ConfigError
from proxistore.specs import ConfigKey

GLOBAL_MEMORY_KEYS = (
    ConfigKey("global_flush_threshold", "size", 512_000_000,
              "Total memtable bytes across collections above which the largest memtables are flushed.",
              unit="bytes", minimum=1, threshold=True),
    ConfigKey("global_memory_limit", "size", 512_000_000,
              "Hard cap on total memtable bytes, checked before each write is accepted: a write that "
              "would pass it waits for flushes (up to stall_timeout), then fails.",
              unit="bytes", minimum=1, threshold=True),
    ConfigKey("stall_timeout", "duration", 30.0,
              "How long a write may wait for memory under global_memory_limit before "
              "BackpressureTimeout.", unit="seconds", minimum=0.0),
)


class GlobalMemoryPolicy(FlushPolicy):
    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> None:
        if config["global_flush_threshold"] > config["global_memory_limit"]:
            raise ConfigError(
                f"global_flush_threshold ({config['global_flush_threshold']} bytes) is above "
                f"global_memory_limit ({config['global_memory_limit']} bytes): writers would stall "
                f"before any flush is triggered", key="global_flush_threshold")

    def measure(self, state: DatabaseState) -> int:
        return state.total_memtable_bytes + state.waiting_write_bytes

    def due(self, state: DatabaseState) -> List[FlushRequest]:
        threshold = self.config["global_flush_threshold"]
        measured = self.measure(state)
        if measured <= threshold:
            return []
        out = []
        remaining = measured
        candidates = sorted((c for c in state.collections.values() if not c.flushing and c.memtable_rows),
                            key=lambda c: c.memtable_bytes, reverse=True)
        for col in candidates:
            if remaining <= threshold:
                break
            out.append(FlushRequest(col.name, self.name, "global_flush_threshold", threshold, measured,
                                    detail=f"largest memtables first; this one holds {col.memtable_bytes} bytes"))
            remaining -= col.memtable_bytes
        return out

    def readings(self, state: DatabaseState, collection: str) -> List[ThresholdReading]:
        measured = self.measure(state)
        return [
            ThresholdReading(self.name, "global_flush_threshold", self.config["global_flush_threshold"],
                             measured, "bytes", measured > self.config["global_flush_threshold"]),
            ThresholdReading(self.name, "global_memory_limit", self.config["global_memory_limit"],
                             measured, "bytes", measured >= self.config["global_memory_limit"]),
        ]

    def write_limit(self) -> Optional[WriteLimit]:
        return WriteLimit(self.name, "global_memory_limit", self.config["global_memory_limit"],
                          self.config["stall_timeout"])
