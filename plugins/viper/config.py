"""VIPER's config keys (declared once, as :class:`~proxistore.specs.ConfigKey`) and their parsed form.

The core validates ``[storage.viper]`` against :data:`CONFIG_KEYS` and passes parsed values; a
collection's overrides (``create_collection(..., config=...)``) may set any key marked
``per_collection``. :class:`ViperSettings` is what the engine's code reads: every key declared
here is read somewhere, and a key not declared here is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Tuple

from proxistore.errors import ConfigError
from proxistore.specs import ConfigKey

__all__ = ["CONFIG_KEYS", "ViperSettings", "segment_bound"]

_PC = dict(per_collection=True)

CONFIG_KEYS: Tuple[ConfigKey, ...] = (
    ConfigKey("index", "choice", "hnsw", choices=("hnsw", "ivf", "flat"), **_PC,
              help="ANN index built for segments of at least indexing_threshold rows: hnsw, ivf or "
                   "flat (exact, in faiss)"),
    ConfigKey("index_backend", "choice", "auto", choices=("auto", "faiss", "hnswlib"), **_PC,
              help="library that builds and searches the index: auto = hnswlib for index = \"hnsw\" "
                   "(faster unfiltered searches and builds; docs/tuning.md), faiss for ivf and flat, "
                   "and an existing index of either library is kept; hnswlib supports index = \"hnsw\" only"),
    ConfigKey("indexing_threshold", "int", 10_000, unit="rows", threshold=True, **_PC,
              help="segments with at least this many rows get an ANN index (built in the background "
                   "by maintenance, never on the flush path); smaller segments are searched exactly"),
    ConfigKey("hnsw_m", "int", 16, minimum=2, **_PC,
              help="HNSW graph degree M (links per node)"),
    ConfigKey("hnsw_ef_construction", "int", 200, minimum=1, **_PC,
              help="HNSW efConstruction: candidate list size while building"),
    ConfigKey("hnsw_ef_search", "int", 64, minimum=1, **_PC,
              help="HNSW efSearch: candidate list size while searching (search(..., ef=...) overrides "
                   "it per call; raised automatically when a filter keeps a fraction of the rows)"),
    ConfigKey("ivf_nlist", "int", 0, **_PC,
              help="IVF inverted lists per segment; 0 = automatic (4 * sqrt(rows), at most rows / 39)"),
    ConfigKey("ivf_nprobe", "int", 16, minimum=1, **_PC,
              help="IVF lists probed per query (raised automatically when a filter keeps a fraction)"),
    ConfigKey("filter_exact_max_rows", "int", 2048, unit="rows", threshold=True, **_PC,
              help="query planner: a segment where a filter keeps at most this many live rows is "
                   "searched exactly over those rows instead of through its ANN index"),
    ConfigKey("auto_compaction", "bool", True, **_PC,
              help="let background maintenance merge segments when the compaction thresholds say so "
                   "(db.compact() always works)"),
    ConfigKey("compaction_min_segments", "int", 4, minimum=2, threshold=True, **_PC,
              help="size-tiered compaction merges a size tier once it holds this many segments "
                   "(also the fan-in: tier j holds base_rows*F^(j-1) .. base_rows*F^j live rows)"),
    ConfigKey("compaction_base_rows", "int", 1024, unit="rows", minimum=1, **_PC,
              help="segments under this many live rows share the smallest size tier"),
    ConfigKey("compaction_target_rows", "int", 250_000, unit="rows", minimum=1, threshold=True, **_PC,
              help="segments with at least this many live rows are full: size-tiered merging leaves "
                   "them alone and db.compact() packs smaller ones up to about this size. Each "
                   "segment costs every query one more ANN search: at 200,000 rows, 250,000 (from "
                   "100,000) gave 1.7x the batch throughput and 0.43x the single-query latency for "
                   "1.11x the time to index (A/B in benchmarks/README.md); a merge holds its "
                   "segment's vectors and index in memory (~0.4 GB at 384-d)"),
    ConfigKey("compaction_deleted_fraction", "float", 0.2, maximum=1.0, threshold=True, **_PC,
              help="a segment whose deleted (or superseded) rows reach this fraction is rewritten "
                   "without them"),
)

_KEYS = {k.name: k for k in CONFIG_KEYS}


@dataclass(frozen=True)
class ViperSettings:
    """The parsed ``[storage.viper]`` section (one collection's effective values)."""

    index: str = "hnsw"
    index_backend: str = "auto"
    indexing_threshold: int = 10_000
    hnsw_m: int = 16
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 64
    ivf_nlist: int = 0
    ivf_nprobe: int = 16
    filter_exact_max_rows: int = 2048
    auto_compaction: bool = True
    compaction_min_segments: int = 4
    compaction_base_rows: int = 1024
    compaction_target_rows: int = 250_000
    compaction_deleted_fraction: float = 0.2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ViperSettings":
        """Defaults overlaid with ``config``; unknown keys and bad combinations are ConfigErrors."""
        unknown = sorted(set(config) - set(_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; viper keys are: "
                              f"{', '.join(sorted(_KEYS))}", key=f"storage.viper.{unknown[0]}")
        values = {k.name: k.default for k in CONFIG_KEYS}
        values.update(config)
        for name, value in values.items():
            key = _KEYS[name]
            if key.choices and value not in key.choices:
                raise ConfigError(f"must be one of {', '.join(key.choices)}, not {value!r}",
                                  key=f"storage.viper.{name}")
            if key.kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"must be a number, not {value!r}", key=f"storage.viper.{name}")
            if key.kind in ("int", "float") and key.minimum is not None and value < key.minimum:
                raise ConfigError(f"must be at least {key.minimum}, not {value!r}", key=f"storage.viper.{name}")
            if key.kind in ("int", "float") and key.maximum is not None and value > key.maximum:
                raise ConfigError(f"must be at most {key.maximum}, not {value!r}", key=f"storage.viper.{name}")
        if values["index_backend"] == "hnswlib" and values["index"] != "hnsw":
            raise ConfigError(f"index_backend \"hnswlib\" builds HNSW only, not index = {values['index']!r}",
                              key="storage.viper.index_backend")
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @property
    def build_backend(self) -> str:
        """The library new indexes are built with (``auto`` resolved for the configured index)."""
        if self.index_backend != "auto":
            return self.index_backend
        return "hnswlib" if self.index == "hnsw" else "faiss"

    def index_params(self) -> dict:
        """The build parameters of the configured index (what an index file's signature records)."""
        if self.index == "hnsw":
            return {"m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction}
        if self.index == "ivf":
            return {"nlist": self.ivf_nlist}
        return {}


def segment_bound(settings: ViperSettings, live_rows: int) -> int:
    """The most live segments size-tiered compaction leaves after ``maintain()``.

    With F = compaction_min_segments, B = compaction_base_rows, T = compaction_target_rows and
    N = live rows: each of the 1 + ceil(log_F(T / B)) tiers below T keeps at most F - 1
    segments, and segments of at least T live rows number at most floor(N / T)::

        bound = (F - 1) * (1 + ceil(log_F(T / B))) + floor(N / T)
    """
    f = settings.compaction_min_segments
    b = settings.compaction_base_rows
    t = settings.compaction_target_rows
    tiers = 1 + (max(0, math.ceil(math.log(t / b, f) - 1e-12)) if t > b else 0)
    return (f - 1) * tiers + live_rows // t
