"""Snapshots: the immutable view of a collection that readers work on.

A :class:`Snapshot` is a committed manifest plus, per live segment, its shared content and its
deletion vector. Writers (flush, compaction, index installs) build a new snapshot under the
collection's commit lock and swap one reference; readers take the reference once and never
block, whatever commits meanwhile (copy-on-write).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .manifest import Manifest, SegmentEntry
from .segment import SegmentData

__all__ = ["SegmentView", "Snapshot"]


@dataclass(frozen=True, eq=False)
class SegmentView:
    """A segment as one snapshot sees it: its manifest entry, content and deletion vector."""

    entry: SegmentEntry
    data: SegmentData
    deleted: Optional[np.ndarray] = None   # bool per row; None = nothing deleted

    def live_mask(self) -> Tuple[np.ndarray, int]:
        """``~deleted`` (read-only) and its count of live rows, computed once per view: a
        search of a segment with deletions uses the same mask every time, and a faiss index
        keeps the bitmap it packs from it for as long as it is the one it is given."""
        cached = self.__dict__.get("_live")
        if cached is None:
            assert self.deleted is not None
            mask = ~self.deleted
            mask.flags.writeable = False
            cached = (mask, int(np.count_nonzero(mask)))
            object.__setattr__(self, "_live", cached)   # a race computes the same value twice
        return cached

    def is_live(self, row: int) -> bool:
        return self.deleted is None or not self.deleted[row]

    def live_positions(self) -> np.ndarray:
        if self.deleted is None:
            return np.arange(self.data.n, dtype=np.int64)
        return np.flatnonzero(~self.deleted)


@dataclass(frozen=True)
class Snapshot:
    """A committed manifest and the views of its segments (in manifest order)."""

    manifest: Manifest
    views: Tuple[SegmentView, ...]

    def find(self, name: str) -> Optional[SegmentView]:
        for view in self.views:
            if view.entry.name == name:
                return view
        return None
