"""A policy that compares one per-collection measure with one per-collection threshold.

Measures of the active memtable (size, age) may fire while an earlier flush of the same collection
is still running: the core freezes the active memtable and queues it. Measures that the running
flush will bring down (WAL bytes) wait for it (``skip_flushing``).
"""
from __future__ import annotations

from typing import Any, List

from proxistore.contracts import (CollectionState, DatabaseState, FlushPolicy, FlushRequest,
                                  ThresholdReading)


class PerCollectionThreshold(FlushPolicy):
    """Flush every collection whose ``measure`` exceeds its ``key`` setting."""

    key: str = ""
    unit: str = ""
    #: skip collections with a flush under way (for measures that flush will bring down)
    skip_flushing: bool = False

    def measure(self, state: DatabaseState, col: CollectionState) -> Any:  # pragma: no cover
        raise NotImplementedError

    def threshold(self, col: CollectionState) -> Any:
        return col.settings.get(self.name, self.config)[self.key]

    def crossed(self, measured: Any, threshold: Any) -> bool:
        return measured is not None and measured > threshold

    def due(self, state: DatabaseState) -> List[FlushRequest]:
        out = []
        for col in state.collections.values():
            if col.memtable_rows == 0 or (self.skip_flushing and col.flushing):
                continue
            measured, threshold = self.measure(state, col), self.threshold(col)
            if self.crossed(measured, threshold):
                out.append(FlushRequest(col.name, self.name, self.key, threshold, measured))
        return out

    def readings(self, state: DatabaseState, collection: str) -> List[ThresholdReading]:
        col = state.collections[collection]
        measured, threshold = self.measure(state, col), self.threshold(col)
        return [ThresholdReading(self.name, self.key, threshold, measured, self.unit,
                                 self.crossed(measured, threshold) and col.memtable_rows > 0)]
