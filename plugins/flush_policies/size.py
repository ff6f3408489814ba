"""``size``: a collection whose memtable holds more than ``memory_flush_size_bytes`` is flushed."""
from __future__ import annotations

from proxistore.contracts import CollectionState, DatabaseState
from proxistore.specs import ConfigKey

from .base import PerCollectionThreshold

SIZE_KEYS = (
    ConfigKey("memory_flush_size_bytes", "size", 1_000_000,
              "Memtable bytes of one collection (vectors, ids, metadata, LSNs) above which it is flushed.",
              unit="bytes", minimum=1, threshold=True, per_collection=True),
)


class SizePolicy(PerCollectionThreshold):
    key = "memory_flush_size_bytes"
    unit = "bytes"

    def measure(self, state: DatabaseState, col: CollectionState) -> int:
        return col.memtable_bytes
