"""The write plan: which batches each writer thread sends, decided before the clock starts.

Why a plan: with several writers, upserts and deletes, the final content of the collection must
be known exactly to measure recall against exact results and to check that a reopen brings back
every acknowledged row. Each writer owns a disjoint share of the ids (the insert batches are dealt
out round-robin) and only upserts or deletes ids it inserted itself, so whatever the thread
interleaving, the live rows after the first ``n`` acknowledged batches of each writer are known:
:func:`live_rows` replays the plan up to those prefixes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .data import Dataset, perturbed

__all__ = ["Op", "Plan", "make_plan", "live_rows"]

INSERT, UPSERT, DELETE = "insert", "upsert", "delete"


@dataclass
class Op:
    """One write call: its kind, the data rows whose ids it names, and the rows of ``Plan.pool``
    holding the vectors it writes (None for a delete)."""

    kind: str
    rows: np.ndarray
    vec_rows: Optional[np.ndarray] = None


@dataclass
class Plan:
    """Per-writer lists of :class:`Op`; ``pool`` holds the data's vectors then every upsert's."""

    writers: List[List[Op]]
    pool: np.ndarray
    rows_by_kind: Dict[str, int] = field(default_factory=dict)

    @property
    def batches(self) -> int:
        return sum(len(ops) for ops in self.writers)

    @property
    def rows(self) -> int:
        return sum(self.rows_by_kind.values())


def make_plan(data: Dataset, batch_size: int, writers: int, upsert_share: float, delete_share: float,
              seed: int) -> Plan:
    """Deal the data's insert batches to ``writers`` and mix in upserts and deletes by share.

    The shares are of write batches: with ``upsert_share`` 0.2 and no deletes, 2 batches in 10 are
    upserts (of ``batch_size`` ids the writer already wrote, chosen at random) and every data row
    is still inserted once. An upsert or delete never comes before its writer's first insert.
    """
    rng = np.random.default_rng(seed + 1)
    n = len(data.ids)
    inserts = [np.arange(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    seqs: List[List[object]] = [list(inserts[w::writers]) for w in range(writers)]
    share = upsert_share + delete_share
    extra = int(round(len(inserts) * share / (1.0 - share))) if share > 0 else 0
    n_up = int(round(extra * upsert_share / share)) if share > 0 else 0
    kinds = [UPSERT] * n_up + [DELETE] * (extra - n_up)
    rng.shuffle(kinds)
    busy = [w for w in range(writers) if seqs[w]]
    for i, kind in enumerate(kinds):
        seq = seqs[busy[i % len(busy)]]
        seq.insert(int(rng.integers(1, len(seq) + 1)), kind)
    new_vectors: List[np.ndarray] = []
    next_pool = n
    out: List[List[Op]] = []
    counts = {INSERT: 0, UPSERT: 0, DELETE: 0}
    for seq in seqs:
        live: List[int] = []
        ops: List[Op] = []
        for item in seq:
            if isinstance(item, np.ndarray):
                ops.append(Op(INSERT, item, item))
                live.extend(item.tolist())
                counts[INSERT] += len(item)
                continue
            if not live:
                continue
            pick = rng.choice(len(live), size=min(batch_size, len(live)), replace=False)
            rows = np.array(sorted(live[i] for i in pick), dtype=np.int64)
            if item == UPSERT:
                new_vectors.append(perturbed(data.vectors[rows], rng, data.metric))
                ops.append(Op(UPSERT, rows, np.arange(next_pool, next_pool + len(rows))))
                next_pool += len(rows)
            else:
                ops.append(Op(DELETE, rows))
                gone = set(rows.tolist())
                live = [r for r in live if r not in gone]
            counts[str(item)] += len(rows)
        out.append(ops)
    pool = np.concatenate([data.vectors] + new_vectors) if new_vectors else data.vectors
    return Plan(out, pool, counts)


def live_rows(plan: Plan, done: Sequence[int]) -> Mapping[int, int]:
    """``data row -> pool row`` of every live id once writer ``w`` has had its first ``done[w]``
    batches acknowledged (all of them when ``done`` is the plan's lengths)."""
    live: Dict[int, int] = {}
    for ops, n in zip(plan.writers, done):
        for op in ops[:n]:
            if op.kind == DELETE:
                for r in op.rows.tolist():
                    live.pop(r, None)
            else:
                assert op.vec_rows is not None
                live.update(zip(op.rows.tolist(), op.vec_rows.tolist()))
    return dict(sorted(live.items()))
