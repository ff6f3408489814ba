"""The built-in flush policies: size, global_memory, time, wal_size and manual.

Each policy declares exactly the keys it enforces; the core refuses any other key under its
``[flush.NAME]`` section, and any section of a policy that is not enabled.
"""
from __future__ import annotations

from typing import List

from proxistore.hookspecs import hookimpl
from proxistore.specs import FlushPolicySpec

from .global_memory import GLOBAL_MEMORY_KEYS, GlobalMemoryPolicy
from .manual import ManualPolicy
from .size import SIZE_KEYS, SizePolicy
from .time_age import TIME_KEYS, TimePolicy
from .wal_size import WAL_SIZE_KEYS, WalSizePolicy

__all__ = ["SizePolicy", "GlobalMemoryPolicy", "TimePolicy", "WalSizePolicy", "ManualPolicy"]


@hookimpl
def proxistore_flush_policies() -> List[FlushPolicySpec]:
    return [
        FlushPolicySpec("size", SizePolicy, SIZE_KEYS,
                        "flushes a collection whose memtable exceeds memory_flush_size_bytes"),
        FlushPolicySpec("global_memory", GlobalMemoryPolicy, GLOBAL_MEMORY_KEYS,
                        "flushes the largest memtables when all together exceed global_flush_threshold; "
                        "makes writers wait at global_memory_limit"),
        FlushPolicySpec("time", TimePolicy, TIME_KEYS,
                        "flushes data that has waited longer than max_unflushed_age"),
        FlushPolicySpec("wal_size", WalSizePolicy, WAL_SIZE_KEYS,
                        "flushes a collection whose WAL exceeds max_wal_bytes so it can be truncated"),
        FlushPolicySpec("manual", ManualPolicy, (),
                        "answers db.flush() and `proxistore flush`"),
    ]
