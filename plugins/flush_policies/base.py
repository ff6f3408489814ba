"""A policy that compares one per-collection measure with one per-collection threshold."""
from __future__ import annotations

from typing import Any, List

from proxistore.contracts import (CollectionState, DatabaseState, FlushPolicy, FlushRequest,
                                  ThresholdReading)


class PerCollectionThreshold(FlushPolicy):
    """Flush every collection whose ``measure`` exceeds its ``key`` setting."""

    key: str = ""
    unit: str = ""

    def measure(self, state: DatabaseState, col: CollectionState) -> Any:  # pragma: no cover
        raise NotImplementedError

    def threshold(self, col: CollectionState) -> Any:
        return col.settings.get(self.name, self.config)[self.key]

    def crossed(self, measured: Any, threshold: Any) -> bool:
        return measured is not None and measured > threshold

    def due(self, state: DatabaseState) -> List[FlushRequest]:
        out = []
        for col in state.collections.values():
            if col.flushing or col.memtable_rows == 0:
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
