"""Which in-memory memtable holds the newest row of each id, across the active and frozen ones.

Every write asks whether its ids already have a live version. Under fast ingest dozens of frozen
memtables wait for their flush, and asking each of them (newest first) cost about a tenth of an
insert of 100 rows, under the collection lock. This index answers with one dict lookup per id.

An id maps to the newest memtable that has a row for it: rows are only ever applied to the
active memtable, which is newer than every frozen one (a freeze waits for in-flight batches), so
applying a batch simply points its ids at the active memtable. When a flushed memtable is
dropped, the ids that still point at it go (their newest version is now in storage).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Set, Tuple

from .memtable import Memtable

__all__ = ["MemtableIndex"]


class MemtableIndex:
    """id -> the newest in-memory memtable with a row for it.

    Not thread-safe on its own: the runtime mutates and reads it under its collection lock."""

    def __init__(self) -> None:
        self._newest: Dict[str, Memtable] = {}

    def __len__(self) -> int:
        return len(self._newest)

    def newest(self, id_: str) -> Optional[Memtable]:
        """The newest memtable holding a row for ``id_``, or None when none does."""
        return self._newest.get(id_)

    def note_applied(self, memtable: Memtable, ids: Iterable[str]) -> None:
        """``ids`` were applied to ``memtable``, the active one (so the newest for each)."""
        self._newest.update(dict.fromkeys(ids, memtable))

    def forget(self, memtable: Memtable) -> int:
        """``memtable`` left memory (flushed and dropped): remove the ids that point at it;
        returns how many went. O(rows of the memtable)."""
        newest = self._newest
        stale = [id_ for id_ in memtable.ids() if newest.get(id_) is memtable]
        for id_ in stale:
            del newest[id_]
        return len(stale)

    def live_states(self, ids: Set[str]) -> Tuple[Dict[str, bool], Set[str]]:
        """For the ids of ``ids`` that some memtable holds: whether their newest row is live.

        Returns ``(states, unresolved)``: ``unresolved`` are ids the index points at a memtable
        that has no row for them (only after an apply failed part-way); the caller resolves
        those by asking the memtables themselves."""
        newest = self._newest
        hits = newest.keys() & ids
        if not hits:
            return {}, set()
        by_memtable: Dict[int, Tuple[Memtable, Set[str]]] = {}
        for id_ in hits:
            mt = newest[id_]
            entry = by_memtable.get(id(mt))
            if entry is None:
                by_memtable[id(mt)] = (mt, {id_})
            else:
                entry[1].add(id_)
        states: Dict[str, bool] = {}
        unresolved: Set[str] = set()
        for mt, wanted in by_memtable.values():
            found = mt.live_states(wanted)
            states.update(found)
            if len(found) < len(wanted):
                unresolved.update(wanted.difference(found))
        return states, unresolved
