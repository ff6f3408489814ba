"""``wal_size``: a collection whose WAL exceeds ``max_wal_bytes`` is flushed so it can be truncated."""
from __future__ import annotations

from proxistore.contracts import CollectionState, DatabaseState
from proxistore.specs import ConfigKey

from .base import PerCollectionThreshold

WAL_SIZE_KEYS = (
    ConfigKey("max_wal_bytes", "size", 128_000_000,
              "WAL bytes on disk of one collection above which it is flushed (and its WAL checkpointed).",
              unit="bytes", minimum=1, threshold=True, per_collection=True),
)


class WalSizePolicy(PerCollectionThreshold):
    key = "max_wal_bytes"
    unit = "bytes"
    skip_flushing = True  # the running flush's checkpoint is what brings the WAL down

    def measure(self, state: DatabaseState, col: CollectionState) -> int:
        return col.wal_bytes
