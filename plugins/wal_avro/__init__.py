"""The built-in ``avro`` write-ahead log: Avro container segments, one record per batch.

Registered through the ``proxistore`` entry-point group like any third-party plugin. The format
is documented in ``docs/wal-format.md``; the config keys in :data:`KEYS`.
"""
from __future__ import annotations

from typing import List

from proxistore.hookspecs import hookimpl
from proxistore.specs import WalStrategySpec

from .collection import AvroCollectionWal
from .format import FORMAT_VERSION, RECORD_SCHEMA
from .settings import KEYS, RECOVERY_MODES, SYNC_MODES, Settings
from .strategy import AvroWalStrategy
from .tools import VerifyResult, inspect_wal, verify_wal

__all__ = [
    "AvroWalStrategy", "AvroCollectionWal", "Settings", "KEYS", "SYNC_MODES", "RECOVERY_MODES",
    "FORMAT_VERSION", "RECORD_SCHEMA", "inspect_wal", "verify_wal", "VerifyResult",
    "proxistore_wal_strategies",
]


@hookimpl
def proxistore_wal_strategies() -> List[WalStrategySpec]:
    """Register the ``avro`` WAL strategy and its config keys."""
    return [WalStrategySpec(
        name="avro", factory=AvroWalStrategy, keys=KEYS,
        description="Avro container segments per collection, one CRC-checked record per batch; "
                    "sync modes always/group/interval/none; torn-tail repair and checkpointing")]
