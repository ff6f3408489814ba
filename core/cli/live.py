"""A collection of a database that another process has open, read and changed through it.

One process has a data directory open at a time. While an application holds it, ``proxistore
get``, ``search``, ``collections`` and ``delete`` would otherwise fail with "already open", just
when an operator wants to look at what the application serves. :class:`LiveCollection` has the
methods of :class:`~proxistore.Collection` those commands use; each call is a request that the
holding process answers from its live state (``control.py``), so what it returns includes the
writes still in memtables. Inserts are not sent this way: their batches would travel as JSON
files through ``control/``.
"""
from __future__ import annotations

import argparse
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from proxistore.collection import Hit, Record
from proxistore.config import EffectiveConfig

from .admin import ask_holder
from .output import Output

__all__ = ["LiveCollection"]


class LiveCollection:
    """``name`` in the database at ``args.data``, as the process that has it open sees it."""

    def __init__(self, args: argparse.Namespace, cfg: EffectiveConfig, name: str, out: Output) -> None:
        self._args, self._cfg, self._out, self.name = args, cfg, out, name

    def _ask(self, what: str, **fields: Any) -> Mapping[str, Any]:
        return ask_holder(self._args, self._cfg, what, self._out, collection=self.name, **fields)

    def get(self, ids: Sequence[str]) -> List[Optional[Record]]:
        return [None if r is None else Record(r["id"], np.asarray(r["vector"], dtype=np.float32), r["metadata"])
                for r in self._ask("get", ids=list(ids))["records"]]

    def search(self, query: Any, k: int = 10, filter: Optional[Mapping[str, Any]] = None,
               ef: Optional[int] = None) -> List[Hit]:
        vector = query.tolist() if isinstance(query, np.ndarray) else query
        hits = self._ask("search", vector=vector, k=k, filter=filter, ef=ef)["hits"]
        return [Hit(h["id"], h["distance"], h["metadata"]) for h in hits]

    def count(self) -> int:
        return int(self._ask("count")["count"])

    def delete(self, ids: Sequence[str]) -> int:
        return int(self._ask("delete", ids=list(ids))["deleted"])
