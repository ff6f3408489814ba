"""VIPER: the built-in storage engine of proxistore.

Immutable Parquet segments (one per flush), per-segment deletion vectors, ANN indexes (faiss
HNSW/IVF/flat or hnswlib HNSW) built in the background for segments above a threshold, metadata
filters pushed into the index search, size-tiered compaction, all tied together by an atomically
committed manifest. It registers through the ``proxistore`` entry-point group like any plugin.

Modules, one concern each: ``config`` (keys, settings, the segment bound), ``manifest`` (the
commit protocol), ``parquet`` (segment files), ``deletions`` (deletion vectors), ``index``
(faiss/hnswlib indexes), ``segment`` and ``snapshot`` (what readers see), ``search`` (planner
and merge), ``compaction`` (plans and merges), ``maintenance`` (maintain/compact),
``store`` (the CollectionStore), ``engine`` (the StorageEngine), ``files`` (durable writes).

Compaction bound: with F = compaction_min_segments, B = compaction_base_rows,
T = compaction_target_rows and N live rows, after ``maintain()`` a collection has at most
``(F - 1) * (1 + ceil(log_F(T / B))) + floor(N / T)`` live segments: 17 for the defaults and
N = 200,000 (see :func:`segment_bound`).
"""
from proxistore.hookspecs import hookimpl
from proxistore.specs import StorageEngineSpec

from .config import CONFIG_KEYS, ViperSettings, segment_bound
from .engine import ViperEngine
from .store import ViperCollection

__all__ = ["ViperEngine", "ViperCollection", "ViperSettings", "CONFIG_KEYS", "segment_bound",
           "proxistore_storage_engines"]


@hookimpl
def proxistore_storage_engines():
    """Register the ``viper`` storage engine."""
    return [StorageEngineSpec(
        name="viper", factory=ViperEngine, keys=CONFIG_KEYS,
        description="Parquet segments + deletion vectors + faiss/hnswlib ANN indexes, "
                    "metadata filters, size-tiered compaction, atomic manifest")]
