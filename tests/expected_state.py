"""The expected-state model of crash_writer.py: what a reopened database must contain."""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from crash_writer import batch_content, operation


def expected_after(acked_through: int, size: int, dim: int) -> Dict[str, Tuple[np.ndarray, int]]:
    """id -> (vector, batch that wrote it) after batches 0..acked_through, applied in order."""
    state: Dict[str, Tuple[np.ndarray, int]] = {}
    for b in range(acked_through + 1):
        apply(state, b, size, dim)
    return state


def apply(state: Dict[str, Tuple[np.ndarray, int]], b: int, size: int, dim: int) -> None:
    op = operation(b)
    if op == "delete":
        prev_ids, _ = batch_content(b - 1, size, dim)
        for id_ in prev_ids[:2]:
            state.pop(id_, None)
    elif op == "upsert":
        prev_ids, _ = batch_content(b - 1, size, dim)
        _, vecs = batch_content(b, size, dim)
        for id_, v in zip(prev_ids, vecs):
            state[id_] = (v, b)
    else:
        ids, vecs = batch_content(b, size, dim)
        for id_, v in zip(ids, vecs):
            state[id_] = (v, b)


def check_database(col, acked: int, size: int, dim: int) -> Optional[int]:
    """Assert the collection holds batches 0..acked, plus possibly the in-flight batch acked+1
    whole (never part of it). Returns the last batch found applied."""
    base = expected_after(acked, size, dim)
    with_next = dict(base)
    apply(with_next, acked + 1, size, dim)
    for candidate, last in ((base, acked), (with_next, acked + 1)):
        if _matches(col, candidate):
            return last
    raise AssertionError(f"database matches neither batches 0..{acked} nor 0..{acked + 1}: "
                         f"count={col.count()}, expected {len(base)} or {len(with_next)}")


def _matches(col, state) -> bool:
    if col.count() != len(state):
        return False
    ids = sorted(state)
    for id_, rec in zip(ids, col.get(ids)):
        if rec is None or not np.array_equal(rec.vector, state[id_][0]):
            return False
        if rec.metadata != {"batch": state[id_][1]}:
            return False
    return True  # count equal and every expected id live and exact: nothing else is live
