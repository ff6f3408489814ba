"""Size-tiered compaction: which segments to merge, and how a merge is written.

Tiers (F = ``compaction_min_segments``, B = ``compaction_base_rows``, T =
``compaction_target_rows``), by live rows n: tier 0 is n < B, tier j >= 1 is
B*F^(j-1) <= n < B*F^j. Segments with n >= T are *full* and not merged by size.

:func:`plan_size_tiered` (background maintenance) returns the first of, in order:

1. segments with no live rows left (dropped, nothing is written);
2. the smallest tier holding at least F segments (all of them are merged; F segments of tier j
   add up to tier j + 1 or more, so every merge climbs);
3. one segment whose deleted fraction reached ``compaction_deleted_fraction`` (rewritten).

Run to a fixed point, no tier below T holds F segments, so live segments number at most
``(F - 1) * (1 + ceil(log_F(T / B))) + floor(N / T)`` (:func:`~.config.segment_bound`).

:func:`plan_full` (``compact()``) packs every non-full segment, and every segment with deleted
rows, into groups of about T live rows, oldest first.

:func:`merge` writes the merged segment (live rows only: deleted and superseded rows are
dropped) and, when it is big enough, its index. When the biggest input already has a current
HNSW or flat index and no deleted rows, the merged index starts from a copy of that index and
only the other inputs' rows are added (their rows come first in the merged segment).
"""
from __future__ import annotations

import os
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem

from . import parquet
from .config import ViperSettings
from .index import AnnIndex, build_index, load_index, prepare
from .manifest import IndexRef, SegmentEntry
from .segment import SegmentData
from .snapshot import SegmentView

__all__ = ["tier_of", "plan_size_tiered", "plan_full", "MergeOutput", "merge", "index_is_current"]


def tier_of(live_rows: int, base_rows: int, fanin: int) -> int:
    """The size tier of a segment with ``live_rows`` live rows."""
    tier, limit = 0, base_rows
    while live_rows >= limit:
        tier += 1
        limit *= fanin
    return tier


def plan_size_tiered(views: Sequence[SegmentView], s: ViperSettings) -> Optional[Tuple[List[SegmentView], str]]:
    """The next merge background maintenance should run (segments, reason), or None."""
    dead = [v for v in views if v.entry.live_rows == 0]
    if dead:
        return dead, f"{len(dead)} segment(s) with every row deleted or superseded"
    tiers: Dict[int, List[SegmentView]] = defaultdict(list)
    for v in views:
        if v.entry.live_rows < s.compaction_target_rows:
            tiers[tier_of(v.entry.live_rows, s.compaction_base_rows, s.compaction_min_segments)].append(v)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= s.compaction_min_segments:
            return tiers[tier], (f"size tier {tier} holds {len(tiers[tier])} segments "
                                 f"(compaction_min_segments={s.compaction_min_segments})")
    for v in views:
        e = v.entry
        if e.deleted and e.deleted / e.rows >= s.compaction_deleted_fraction:
            return [v], (f"{e.name}: deleted fraction {e.deleted / e.rows:.3f} >= "
                         f"compaction_deleted_fraction={s.compaction_deleted_fraction}")
    return None


def plan_full(views: Sequence[SegmentView], s: ViperSettings) -> List[List[SegmentView]]:
    """Groups for a manual compaction: non-full or partly deleted segments, packed to ~T rows."""
    groups: List[List[SegmentView]] = []
    current: List[SegmentView] = []
    rows = 0
    for v in views:
        if v.entry.live_rows >= s.compaction_target_rows and not v.entry.deleted:
            continue
        current.append(v)
        rows += v.entry.live_rows
        if rows >= s.compaction_target_rows:
            groups.append(current)
            current, rows = [], 0
    if current:
        groups.append(current)
    return [g for g in groups if len(g) > 1 or g[0].entry.deleted]


def index_is_current(ref: IndexRef, s: ViperSettings) -> bool:
    """Whether an index was built as the settings ask (else maintenance builds it again).
    Under ``index_backend = "auto"`` the library does not matter: an index of the right kind
    and parameters is kept, so choosing ``auto`` rebuilds nothing."""
    params = tuple(sorted(s.index_params().items()))
    if s.index_backend == "auto":
        return (ref.kind, tuple(sorted(ref.params.items()))) == (s.index, params)
    return ref.signature() == (s.index, s.index_backend, params)


@dataclass
class MergeOutput:
    """A merged segment written to disk but not yet committed."""

    entry: Optional[SegmentEntry]            # None when no input row was live
    data: Optional[SegmentData]
    index: Optional[AnnIndex]
    positions: Dict[str, np.ndarray]         # input name -> merged row of each input row (-1: dropped)
    base_deleted: Dict[str, Optional[np.ndarray]]   # input deletion vectors the merge saw
    rows_in: int = 0
    files: List[str] = field(default_factory=list)
    phases: Dict[str, float] = field(default_factory=dict)
    reused_index: bool = False


def _no_columns(rows: int) -> pa.Table:
    """A table of ``rows`` rows and no columns (pyarrow's take/concat would lose the count)."""
    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def _reusable_base(views: Sequence[SegmentView], s: ViperSettings) -> Optional[SegmentView]:
    if s.index not in ("hnsw", "flat"):
        return None
    best = max(views, key=lambda v: v.entry.rows)
    ref = best.entry.index
    if best.entry.deleted or ref is None or not index_is_current(ref, s):
        return None
    return best


def _load_copy(view: SegmentView, directory: str, fs: FileSystem) -> Optional[AnnIndex]:
    """A private copy of a segment's index, read from its file through ``fs`` (None if unusable)."""
    ref = view.entry.index
    path = os.path.join(directory, ref.file)
    try:
        data = fs.read_immutable(path)
    except OSError:
        return None
    if len(data) != ref.bytes or zlib.crc32(data) != ref.crc32:
        return None
    try:
        index = load_index(data, path if fs.local else None, ref.kind, ref.backend, ref.params, view.data.metric,
                           view.data.dim, view.data.n)
    except (RuntimeError, ValueError, MemoryError):
        return None
    return index if index.ntotal == view.data.n else None


def merge(views: Sequence[SegmentView], s: ViperSettings, *, fs: FileSystem, directory: str, dim: int,
          metric: str, alloc: Callable[[], int], write: Callable[[str, object], int],
          write_index: Callable[[str, AnnIndex], IndexRef],
          cancel: Optional[Callable[[], bool]] = None, with_index: bool = True) -> MergeOutput:
    """Write the merge of ``views`` (their live rows) as a new segment, with its index when
    ``with_index`` and it has at least ``indexing_threshold`` rows."""
    phases: Dict[str, float] = {}
    t = time.perf_counter()
    base = _reusable_base(views, s) if len(views) > 1 and with_index else None
    ordered = ([base] if base else []) + [v for v in views if v is not base]
    ids, vecs, lsns, metas = [], [], [], []
    positions: Dict[str, np.ndarray] = {}
    offset = 0
    for v in ordered:
        live = v.live_positions()
        pos = np.full(v.data.n, -1, dtype=np.int64)
        pos[live] = np.arange(offset, offset + len(live))
        positions[v.entry.name] = pos
        offset += len(live)
        if len(live):
            ids.append(v.data.ids[live])
            vecs.append(v.data.vectors()[live])
            lsns.append(v.data.lsns[live])
            metas.append(v.data.meta.take(pa.array(live)) if v.data.meta.num_columns
                         else _no_columns(len(live)))
    out = MergeOutput(None, None, None, positions, {v.entry.name: v.deleted for v in views},
                      rows_in=sum(v.entry.rows for v in views))
    if offset == 0:
        return out
    all_ids = np.concatenate(ids)
    vectors = np.ascontiguousarray(np.concatenate(vecs), dtype=np.float32)
    all_lsns = np.concatenate(lsns)
    meta = parquet.unify(metas) if any(m.num_columns for m in metas) else None
    table = parquet.build_table(all_ids.tolist(), vectors, all_lsns, meta, dim)
    name = f"seg-{alloc():08d}"
    file = name + ".parquet"
    phases["read_merge"] = time.perf_counter() - t

    def write_segment_file() -> Tuple[int, float]:
        started = time.perf_counter()
        size = write(file, parquet.encode(table))
        return size, time.perf_counter() - started

    # The Parquet file is encoded and written (fsync included) while the index builds: both
    # release the GIL, and the build is what the merge waits for.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="viper-merge-write") as pool:
        pending = pool.submit(write_segment_file)
        index = None
        if with_index and offset >= s.indexing_threshold:
            t = time.perf_counter()
            prepared = prepare(vectors, metric)
            index = _load_copy(base, directory, fs) if base is not None else None
            if index is not None:
                index.add(prepared[base.data.n:], cancel)
                out.reused_index = True
            else:
                index = build_index(s.index, s.build_backend, s.index_params(), prepared, metric, cancel)
            phases["index_build"] = time.perf_counter() - t
        nbytes, phases["write"] = pending.result()
    out.files.append(file)
    data = SegmentData(name, os.path.join(directory, file), dim, metric, all_ids, all_lsns,
                       parquet.metadata_of(table), vectors=vectors, fs=fs)
    entry = SegmentEntry(name=name, file=file, rows=offset, bytes=nbytes,
                         min_lsn=int(all_lsns.min()), max_lsn=int(all_lsns.max()))
    if index is not None:
        t = time.perf_counter()
        ref = write_index(name, index)
        out.files.append(ref.file)
        phases["index_write"] = time.perf_counter() - t
        entry = replace(entry, index=ref)
        data.set_index(ref, index)
        out.index = index
    if len(data.ids) != entry.rows:
        raise StorageError(f"{name}: merged {len(data.ids)} rows, expected {entry.rows}")
    out.entry, out.data, out.phases = entry, data, phases
    return out
