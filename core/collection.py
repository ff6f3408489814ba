"""The public handle of a collection: validates input, then hands it to the data path."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .contracts import OP_DELETE, OP_INSERT, OP_UPSERT
from .errors import InvalidArgument, InvalidVector
from .filters import compile_filter
from .validation import check_ids, check_k, check_queries, check_vectors

__all__ = ["Collection", "Hit", "Record"]


class Hit(NamedTuple):
    """One search result; lower ``distance`` is closer. Immutable; unpacks as
    ``id, distance, metadata``. A named tuple rather than a frozen dataclass because a single
    query builds k of them: 10 cost about 2 µs instead of 5."""

    id: str
    distance: float
    metadata: Optional[Mapping[str, Any]]


@dataclass(frozen=True)
class Record:
    """A stored vector with its metadata."""

    id: str
    vector: np.ndarray
    metadata: Optional[Mapping[str, Any]]


class Collection:
    """A named set of vectors of one dimension and metric, inside an open database."""

    def __init__(self, db: Any, name: str) -> None:
        self._db = db
        self.name = name

    def _rt(self):
        return self._db._runtime(self.name)

    @property
    def dim(self) -> int:
        return self._rt().dim

    @property
    def metric(self) -> str:
        return self._rt().metric

    def __repr__(self) -> str:
        return f"Collection({self.name!r})"

    # -- writes ----------------------------------------------------------------------------

    def insert(self, ids: Sequence[str], vectors: Any, metadata: Optional[Sequence[Optional[Mapping]]] = None) -> int:
        """Add new vectors; an id that already exists is an error (use :meth:`upsert`).

        Returns when the batch is durable per the WAL's sync mode and searchable.
        """
        return self._write(OP_INSERT, ids, vectors, metadata)

    def upsert(self, ids: Sequence[str], vectors: Any, metadata: Optional[Sequence[Optional[Mapping]]] = None) -> int:
        """Add vectors, replacing any existing version of the same ids."""
        return self._write(OP_UPSERT, ids, vectors, metadata)

    def delete(self, ids: Sequence[str]) -> int:
        """Remove ids (unknown ids are ignored)."""
        rt = self._rt()
        clean = check_ids(ids)
        if not clean:
            return 0
        rt.write(OP_DELETE, clean, None, None)
        return len(clean)

    def _write(self, op: str, ids: Any, vectors: Any, metadata: Any) -> int:
        rt = self._rt()
        clean = check_ids(ids)
        vecs = check_vectors(vectors, len(clean), rt.dim)
        if not clean:
            return 0
        rt.write(op, clean, vecs, metadata)
        return len(clean)

    # -- reads -----------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> List[Optional[Record]]:
        """The newest live version of each id, or None for ids unknown or deleted."""
        rt = self._rt()
        clean = list(ids) if not isinstance(ids, str) else [ids]
        check_ids(list(dict.fromkeys(clean)))
        return [None if r is None else Record(r.id, r.vector, r.metadata) for r in rt.get(clean)]

    def count(self) -> int:
        return self._rt().count()

    def search(self, query: Any, k: int = 10, filter: Optional[Mapping[str, Any]] = None,
               ef: Optional[int] = None) -> List[Hit]:
        """The k closest live vectors to one query, with their metadata."""
        rt = self._rt()
        q = check_queries(query, rt.dim)
        if len(q) != 1:
            raise InvalidVector(f"search takes one query, got {len(q)}; use search_batch")
        with_meta = bool(rt._meta_types)   # False: no row of this collection ever had metadata
        args = (q, check_k(k), compile_filter(filter) if filter else None, _check_ef(ef))
        hits = rt.search(*args, with_metadata=with_meta)
        if not with_meta and rt._meta_types and (hits.ids != None).any():  # noqa: E711 (elementwise)
            # The collection's first metadata arrived during the search (its types are noted
            # before its rows become visible): search again, reading metadata with the hits.
            with_meta = True
            hits = rt.search(*args, with_metadata=True)
        ids = hits.ids[0].tolist()
        distances = hits.distances[0].tolist()
        if not with_meta:
            metas: Sequence[Any] = [None] * len(ids)
        elif hits.metadata is not None:      # read by the store along with its hits
            metas = hits.metadata[0]
        else:
            found = [(id_, d) for id_, d in zip(ids, distances) if id_ is not None]
            ids = [id_ for id_, _ in found]
            distances = [d for _, d in found]
            metas = rt.metadata(ids) if found else []
        if None in ids:                      # fewer than k live rows: padding
            keep = [j for j, id_ in enumerate(ids) if id_ is not None]
            ids, distances, metas = ([xs[j] for j in keep] for xs in (ids, distances, metas))
        return list(map(Hit._make, zip(ids, distances, metas)))

    def search_batch(self, queries: Any, k: int = 10, filter: Optional[Mapping[str, Any]] = None,
                     ef: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Ids ``(m, k)`` (object array, None where fewer than k match) and distances ``(m, k)``."""
        rt = self._rt()
        q = check_queries(queries, rt.dim)
        hits = rt.search(q, check_k(k), compile_filter(filter) if filter else None, _check_ef(ef))
        return hits.ids, hits.distances


def _check_ef(ef: Any) -> Optional[int]:
    if ef is None:
        return None
    if isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef <= 0:
        raise InvalidArgument(f"ef must be a positive integer, got {ef!r}")
    return int(ef)
