"""``time``: data that has waited in a memtable longer than ``max_unflushed_age`` is flushed."""
from __future__ import annotations

from typing import Optional

from proxistore.contracts import CollectionState, DatabaseState
from proxistore.specs import ConfigKey

from .base import PerCollectionThreshold

TIME_KEYS = (
    ConfigKey("max_unflushed_age", "duration", 300.0,
              "Age of the oldest unflushed write above which its collection is flushed, however small.",
              unit="seconds", minimum=0.001, threshold=True, per_collection=True),
)


class TimePolicy(PerCollectionThreshold):
    key = "max_unflushed_age"
    unit = "seconds"

    def measure(self, state: DatabaseState, col: CollectionState) -> Optional[float]:
        return col.oldest_unflushed_age
