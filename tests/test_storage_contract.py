"""The shipped storage-engine conformance suite, run against viper in several configurations."""
from __future__ import annotations

from proxistore.plugins.viper import ViperEngine
from proxistore.testing.storage import StorageEngineContract

# Small thresholds so that indexes are built and the filtered ANN path is taken on small data.
_INDEXED = {"indexing_threshold": 32, "filter_exact_max_rows": 8, "compaction_base_rows": 16}


class TestViperDefaultConfig(StorageEngineContract):
    """Defaults: test-sized segments stay below indexing_threshold, so every search is exact."""

    engine_factory = ViperEngine
    config = {}


class TestViperFaissHnsw(StorageEngineContract):
    engine_factory = ViperEngine
    config = dict(_INDEXED)


class TestViperHnswlib(StorageEngineContract):
    engine_factory = ViperEngine
    config = dict(_INDEXED, index_backend="hnswlib")


class TestViperFaissIvf(StorageEngineContract):
    engine_factory = ViperEngine
    config = dict(_INDEXED, index="ivf", ivf_nprobe=1000)


class TestViperFaissFlat(StorageEngineContract):
    engine_factory = ViperEngine
    config = dict(_INDEXED, index="flat", auto_compaction=False)
