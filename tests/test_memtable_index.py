"""The id index over the in-memory memtables stays consistent with them (and with a model of the
collection) through insert, upsert, delete, freeze, flush of the oldest frozen memtable, drop
and reopen; and the write path's "does this id exist" answer is the same as asking every
memtable and then storage."""
from __future__ import annotations

import numpy as np
import pytest

import proxistore
from proxistore.contracts import FlushRequest
from proxistore.errors import DuplicateId
from proxistore.flush import _flush

from conftest import random_vectors

DIM = 4
UNIVERSE = [f"id-{i}" for i in range(60)]


def _request(name: str) -> FlushRequest:
    return FlushRequest(collection=name, policy="manual", key=None, threshold=None, measured=None)


def _brute_force_states(rt, ids):
    """Whether each id has a live version, asking every memtable newest first, then storage."""
    out = {}
    for id_ in ids:
        for mt in rt.memtables:
            hit = mt.lookup(id_)
            if hit is not None:
                out[id_] = hit[1]
                break
        else:
            out[id_] = id_ in rt.store.existing([id_])
    return out


def _check(rt, model):
    with rt._cond:
        for id_ in UNIVERSE:
            newest = next((mt for mt in rt.memtables if mt.lookup(id_) is not None), None)
            assert rt._index.newest(id_) is newest, id_
        held = {id_ for mt in rt.memtables for id_ in mt.ids()}
        assert len(rt._index) == len(held)
        states = rt._states(UNIVERSE)
    assert states == {i: model.get(i, False) for i in UNIVERSE}
    assert states == _brute_force_states(rt, UNIVERSE)
    assert rt.count() == sum(model.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_index_matches_memtables_and_model_through_writes_freezes_flushes_and_reopen(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "db"
    model = {}      # id -> live (the newest op was not a delete)
    db = proxistore.open(path, {"flush": {"policies": ["manual"]}})
    try:
        db.maintenance.pause(True)
        col = db.create_collection("c", dim=DIM)
        rt = db._runtime("c")
        for step in range(120):
            op = rng.choice(["insert", "upsert", "delete", "freeze", "flush_oldest", "flush_all"],
                            p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
            ids = list(dict.fromkeys(rng.choice(UNIVERSE, size=int(rng.integers(1, 8))).tolist()))
            if op == "insert":
                if any(model.get(i) for i in ids):
                    with pytest.raises(DuplicateId):
                        col.insert(ids, random_vectors(rng, len(ids), DIM))
                else:
                    col.insert(ids, random_vectors(rng, len(ids), DIM))
                    model.update(dict.fromkeys(ids, True))
            elif op == "upsert":
                col.upsert(ids, random_vectors(rng, len(ids), DIM))
                model.update(dict.fromkeys(ids, True))
            elif op == "delete":
                col.delete(ids)
                model.update(dict.fromkeys(ids, False))
            elif op == "freeze":
                rt.freeze(_request("c"))
            elif op == "flush_oldest":
                frozen = rt.frozen_for_flush(int(rng.choice([0, 1 << 30])))   # the oldest, or all
                if frozen:
                    _flush(rt, frozen, db.registry, db.flush_logs["c"])
            else:
                db.flush("c")
            _check(rt, model)
    finally:
        db.close()
    with proxistore.open(path, {"flush": {"policies": ["manual"]}}) as db:   # replay fills the index
        db.maintenance.pause(True)
        _check(db._runtime("c"), model)


def test_index_forgets_only_the_ids_whose_newest_row_was_in_the_dropped_memtable(db):
    db.maintenance.pause(True)
    col = db.create_collection("c", dim=DIM)
    rt = db._runtime("c")
    rng = np.random.default_rng(0)
    col.insert(["a", "b"], random_vectors(rng, 2, DIM))
    old = rt.freeze(_request("c"))
    col.upsert(["b"], random_vectors(rng, 1, DIM))
    _flush(rt, [old], db.registry, db.flush_logs["c"])
    assert rt._index.newest("a") is None             # flushed: storage answers for it now
    assert rt._index.newest("b") is rt.memtables[0]  # its newer row is still in memory
    with pytest.raises(DuplicateId):
        col.insert(["a"], random_vectors(rng, 1, DIM))


def test_states_ask_every_memtable_when_the_index_points_at_one_without_the_row(db):
    """After an apply that failed part-way the index may name the active memtable for an id
    whose row is only in an older one; the write path must still see that row."""
    db.maintenance.pause(True)
    col = db.create_collection("c", dim=DIM)
    rt = db._runtime("c")
    rng = np.random.default_rng(0)
    col.insert(["a"], random_vectors(rng, 1, DIM))
    rt.freeze(_request("c"))
    col.delete(["z"])                                 # the active memtable is not empty
    with rt._cond:
        rt._index.note_applied(rt.memtables[0], ["a"])   # as if an apply of "a" failed there
    with pytest.raises(DuplicateId):
        col.insert(["a"], random_vectors(rng, 1, DIM))
    with rt._cond:
        assert rt._states(["a", "z", "q"]) == {"a": True, "z": False, "q": False}
