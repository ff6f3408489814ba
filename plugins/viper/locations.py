"""Where each id's live stored row is: one dict, so that a lookup does not scan segments.

``get``, ``existing`` and the supersede step of ``write_segment`` need, per id, the segment
that holds its live row (at most one does, see :mod:`.store`). Scanning every segment's
``row_of`` costs O(ids x segments): with ~100 small segments waiting for compaction that was
the largest part of an insert's duplicate-id check and of a flush. :class:`Locations` maps
id -> :class:`~.segment.SegmentData` of the live row (the row is ``data.row_of[id]``).

It is one mutable dict, changed only under the collection's commit lock, right after the
manifest commit that makes the change durable (so it never runs ahead of what is on disk):
a new segment's ids point to it, deleted ids are removed, a merge points its live ids to the
merged segment. A snapshot of the whole dict per commit would cost O(rows) of copying under
the GIL on every flush, so it is not copy-on-write: a reader sees, per id, the newest committed
location (or the one before, while a commit is being applied). That is what ``get`` and
``existing`` promise: the live stored version *now*. The core checks memtables before the
store, and an id is only re-stored or deleted by flushing a memtable that holds it, so a
concurrent commit never changes the answer for an id the core asks the store about. Searches
keep using snapshots.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .segment import SegmentData
from .snapshot import SegmentView

__all__ = ["Locations", "find_live"]


class Locations:
    """id -> the SegmentData holding its live stored row."""

    def __init__(self, views: Sequence[SegmentView] = ()) -> None:
        self._of: Dict[str, SegmentData] = {}
        for view in views:
            self.stored(view)

    def __len__(self) -> int:
        return len(self._of)

    def lookup(self, id_: str) -> Optional[Tuple[SegmentData, int]]:
        """``(data, row)`` of the id's live stored row, or None."""
        data = self._of.get(id_)
        if data is None:
            return None
        return data, data.row_of[id_]

    def existing(self, ids: Iterable[str]) -> set:
        return self._of.keys() & ids

    def group(self, ids: Iterable[str]) -> Dict[SegmentData, List[Tuple[str, int]]]:
        """Per segment, the ``(id, row)`` pairs of the ids in ``ids`` stored live there."""
        out: Dict[SegmentData, List[Tuple[str, int]]] = {}
        of = self._of
        for id_ in ids:
            data = of.get(id_)
            if data is not None:
                out.setdefault(data, []).append((id_, data.row_of[id_]))
        return out

    # -- changes (caller holds the commit lock and has committed the manifest) -------------------

    def stored(self, view: SegmentView, deleted: Optional[np.ndarray] = None) -> None:
        """The live rows of ``view`` (minus ``deleted``, when given) are where their ids live now."""
        data = view.data
        dead = view.deleted if deleted is None else deleted
        ids = data.ids if dead is None else data.ids[~dead]
        # one dict.update of a dict: a single C call, so a reader sees all of these ids moved or none
        self._of.update(dict.fromkeys(ids.tolist(), data))

    def removed(self, ids: Iterable[str]) -> None:
        """These ids have no live stored row any more."""
        pop = self._of.pop
        for id_ in ids:
            pop(id_, None)


def find_live(views: Sequence[SegmentView], ids: Iterable[str]) -> Dict[SegmentView, List[Tuple[str, int]]]:
    """Per view, the ``(id, row)`` pairs that are the live stored version of an id in ``ids``,
    by scanning the views (newest first). The reference that tests check :class:`Locations`
    against; the store itself uses :class:`Locations`."""
    remaining = set(ids)
    found: Dict[SegmentView, List[Tuple[str, int]]] = {}
    for view in reversed(views):
        if not remaining:
            break
        row_of = view.data.row_of
        for id_ in [i for i in remaining if i in row_of]:   # O(len(remaining)), not O(rows)
            row = row_of[id_]
            if view.is_live(row):
                found.setdefault(view, []).append((id_, row))
                remaining.discard(id_)
    return found
