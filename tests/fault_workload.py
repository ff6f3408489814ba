"""The workload of the fault-injection sweeps, its expected-state model, and the checks.

A workload is a list of :class:`Step` s (create a collection, insert, upsert, delete, flush,
compact) run in order through the public API on a database opened over a
:class:`~proxistore.testing.faultfs.FaultInjectingFileSystem`. :func:`run_steps` records which
steps were acknowledged (returned) and which one failed. :func:`check_recovered` then opens what
survived and asserts: every acknowledged write is there, a step that failed or was in flight is
there whole or not at all (never part of a batch), nothing else is there, vectors and metadata
are exact, searches return exactly what a brute-force search of the model returns, and after a
flush, close and reopen (storage alone, WAL checkpointed) the same holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

import proxistore
from proxistore.errors import ProxistoreError

DIM = 8
State = Dict[str, Dict[str, Tuple[np.ndarray, dict]]]      # collection -> id -> (vector, metadata)


@dataclass
class Step:
    kind: str                                  # create | insert | upsert | delete | flush | compact
    collection: str
    ids: List[str] = field(default_factory=list)
    vectors: Optional[np.ndarray] = None
    metadata: List[dict] = field(default_factory=list)

    @property
    def writes(self) -> bool:
        return self.kind in ("create", "insert", "upsert", "delete")

    def describe(self) -> str:
        return f"{self.kind} {self.collection}" + (f" ({len(self.ids)} ids from {self.ids[0]})" if self.ids else "")


def plan(batches: int = 12, rows: int = 6, seed: int = 0, second_collection_at: int = 5) -> List[Step]:
    """Create ``c``; write ``batches`` batches (inserts; every third an upsert of the previous
    batch, every fourth a delete of two of its ids); flush after every third batch and compact
    after every sixth; create ``d`` part-way and write to it too."""
    rng = np.random.default_rng(seed)
    steps = [Step("create", "c")]
    prev: Dict[str, List[str]] = {}
    for b in range(batches):
        col = "d" if (b >= second_collection_at and b % 2 == 1) else "c"
        if b == second_collection_at:
            steps.append(Step("create", "d"))
        vecs = rng.standard_normal((rows, DIM)).astype(np.float32)
        if b % 4 == 3 and col in prev:
            steps.append(Step("delete", col, ids=prev[col][:2]))
        elif b % 3 == 2 and col in prev:
            steps.append(Step("upsert", col, ids=list(prev[col]), vectors=vecs,
                              metadata=[{"b": b, "u": True}] * len(prev[col])))
        else:
            ids = [f"{col}{b}-{i}" for i in range(rows)]
            steps.append(Step("insert", col, ids=ids, vectors=vecs, metadata=[{"b": b}] * rows))
            prev[col] = ids
        if b % 3 == 2:
            steps.append(Step("flush", col))
        if b % 6 == 5:
            steps.append(Step("compact", col))
    return steps


def apply(state: State, step: Step) -> None:
    if step.kind == "create":
        state.setdefault(step.collection, {})
    elif step.kind in ("insert", "upsert"):
        col = state[step.collection]
        for id_, v, m in zip(step.ids, step.vectors, step.metadata):
            col[id_] = (v, m)
    elif step.kind == "delete":
        for id_ in step.ids:
            state[step.collection].pop(id_, None)


def expected(steps: List[Step], upto: int) -> State:
    """The state after steps[0:upto]."""
    state: State = {}
    for step in steps[:upto]:
        apply(state, step)
    return state


def perform(db, step: Step) -> None:
    if step.kind == "create":
        db.create_collection(step.collection, dim=DIM, metric="l2")
    elif step.kind == "insert":
        db.collection(step.collection).insert(step.ids, step.vectors, step.metadata)
    elif step.kind == "upsert":
        db.collection(step.collection).upsert(step.ids, step.vectors, step.metadata)
    elif step.kind == "delete":
        db.collection(step.collection).delete(step.ids)
    elif step.kind == "flush":
        db.flush(step.collection)
    elif step.kind == "compact":
        db.compact(step.collection)


@dataclass
class Outcome:
    acked: int = 0                            # steps[0:acked] returned
    failed: Optional[int] = None              # the index of the step that raised, if any
    error: Optional[BaseException] = None
    ack_times: List[float] = field(default_factory=list)


def run_steps(db, steps: List[Step], *, pause: float = 0.0, stop_on_error: bool = True) -> Outcome:
    """Run ``steps`` in order; stop at the first that raises a proxistore or OS error.

    Any other exception is a defect (an unclear error) and propagates."""
    out = Outcome()
    for i, step in enumerate(steps):
        try:
            perform(db, step)
        except (ProxistoreError, OSError) as exc:
            out.failed, out.error = i, exc
            if stop_on_error:
                return out
            continue
        out.acked = i + 1
        out.ack_times.append(time.monotonic())
        if pause:
            time.sleep(pause)
    return out


# -- checks ----------------------------------------------------------------------------------

def universe(steps: List[Step]) -> Dict[str, List[str]]:
    """Every id the steps write, per collection."""
    ids: Dict[str, List[str]] = {}
    for step in steps:
        seen = ids.setdefault(step.collection, [])
        seen.extend(i for i in step.ids if i not in seen)
    return ids


def snapshot(db, steps: List[Step]) -> State:
    """What the database holds of the ids the steps write, through the public API; asserts that
    ``count()`` agrees (so nothing else is live)."""
    state: State = {}
    known = universe(steps)
    for name in db.collections():
        col = db.collection(name)
        ids = known.get(name, [])
        state[name] = {id_: (np.asarray(rec.vector), rec.metadata)
                       for id_, rec in zip(ids, col.get(ids)) if rec is not None}
        assert col.count() == len(state[name]), \
            f"{name}: count() {col.count()} but {len(state[name])} of the workload's ids are live"
    return state


def same_state(got: State, want: State) -> Optional[str]:
    """None when equal, else what differs."""
    if sorted(got) != sorted(want):
        return f"collections {sorted(got)} != {sorted(want)}"
    for name in want:
        g, w = got[name], want[name]
        if sorted(g) != sorted(w):
            missing = sorted(set(w) - set(g))[:5]
            extra = sorted(set(g) - set(w))[:5]
            return f"{name}: {len(g)} ids vs {len(w)} expected; missing {missing}, unexpected {extra}"
        for id_, (v, m) in w.items():
            if not np.array_equal(g[id_][0], v):
                return f"{name}/{id_}: vector differs"
            if (g[id_][1] or {}) != m:
                return f"{name}/{id_}: metadata {g[id_][1]} != {m}"
    return None


def matching_prefix(got: State, steps: List[Step], candidates: List[int]) -> Optional[int]:
    """The first ``n`` in ``candidates`` such that ``got`` equals the state after steps[0:n]."""
    for n in candidates:
        if same_state(got, expected(steps, n)) is None:
            return n
    return None


def check_searches(db, state: State, k: int = 4) -> None:
    """Each collection's search for a few stored vectors returns the brute-force top-k."""
    for name, rows in state.items():
        if not rows:
            continue
        ids = sorted(rows)
        mat = np.stack([rows[i][0] for i in ids])
        for probe in ids[:: max(1, len(ids) // 3)]:
            d = ((mat - rows[probe][0]) ** 2).sum(axis=1)
            want = [ids[j] for j in np.argsort(d, kind="stable")[:k]]
            got = [h.id for h in db.collection(name).search(rows[probe][0], k=k)]
            assert got == want, f"search in {name} for {probe}: {got} != exact {want}"


def per_collection_prefix(got: State, steps: List[Step], upto: int) -> Optional[Dict[str, int]]:
    """For each collection, the largest ``n <= upto`` such that the collection in ``got`` equals
    its state after its own steps among steps[0:n] (each collection has its own log, so under
    ``interval`` each loses a suffix of its own writes); None when some collection matches none."""
    found: Dict[str, int] = {}
    for name in universe(steps):
        own = [i for i, s in enumerate(steps[:upto]) if s.collection == name and s.writes]
        for n in [upto] + [i for i in reversed(own)] + [0]:
            state: State = {}
            for s in steps[:n]:
                if s.collection == name:
                    apply(state, s)
            if (name in got) == (name in state) and (name not in got or
                                                     same_state({name: got[name]}, {name: state[name]}) is None):
                found[name] = n
                break
        else:
            return None
    return found


def check_recovered(path: str, steps: List[Step], candidates: List[int], config: dict, *,
                    per_collection: bool = False):
    """Open ``path``, find which of the ``candidates`` prefixes of ``steps`` it holds (assert one
    does), check searches, then flush, close and reopen and check again (storage alone). Returns
    the prefix length found; with ``per_collection``, a prefix per collection (no longer than
    ``max(candidates)``) as a dict."""
    with proxistore.open(path, config) as db:
        got = snapshot(db, steps)
        if per_collection:
            n = per_collection_prefix(got, steps, max(candidates))
            if n is None:
                raise AssertionError(f"a collection matches no prefix of its own writes: {got.keys()}")
        else:
            n = matching_prefix(got, steps, candidates)
            if n is None:
                diffs = "; ".join(f"after {c} steps: {same_state(got, expected(steps, c))}" for c in candidates)
                raise AssertionError(f"recovered state matches no allowed prefix ({diffs})")
        check_searches(db, got)
        db.flush()
    with proxistore.open(path, config) as db:
        again = snapshot(db, steps)
        diff = same_state(again, got)
        assert diff is None, f"after flush, close and reopen: {diff}"
        for name in db.collections():
            wal = db.stats()["collections"][name]["wal"]
            assert wal["records"] == 0, f"{name}: WAL still holds {wal['records']} records after a flush"
        check_searches(db, again)
    return n
