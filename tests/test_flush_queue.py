"""When ingest outruns the flushes, frozen memtables queue up. A flush then writes the oldest of
them (frozen by one policy, up to ``maintenance.max_flush_bytes``) as one segment, and a search
over a long queue costs time in its rows, not in the square of its length; through both, the
newest version of each id wins and deleted ids stay deleted."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest

import proxistore
from proxistore.contracts import FlushRequest, SegmentRows
from proxistore.cli.admin import flush_line
from proxistore.flush import drain, merged_rows

from conftest import random_vectors

DIM = 8


def _request(policy: str) -> FlushRequest:
    return FlushRequest(collection="c", policy=policy, key=None, threshold=None, measured=None)


def _open(path, **maintenance):
    return proxistore.open(path, {"flush": {"policies": ["size", "time", "manual"]},
                                  "maintenance": maintenance})


class Model:
    """What the collection must answer: the newest vector of each live id."""

    def __init__(self):
        self.live = {}

    def apply(self, col, op, ids, vectors=None):
        if op == "insert":
            col.insert(ids, vectors)
        elif op == "upsert":
            col.upsert(ids, vectors)
        else:
            col.delete(ids)
        for i, id_ in enumerate(ids):
            if op == "delete":
                self.live.pop(id_, None)
            else:
                self.live[id_] = vectors[i]

    def check(self, col, rng, queries=20, k=5):
        assert col.count() == len(self.live)
        ids = sorted(self.live)
        got = col.get(ids)
        for id_, rec in zip(ids, got):
            assert rec is not None, id_
            np.testing.assert_array_equal(rec.vector, self.live[id_])
        matrix = np.stack([self.live[i] for i in ids])
        for q in random_vectors(rng, queries, DIM):
            d = 1 - (matrix @ q) / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
            want = [ids[j] for j in np.argsort(d, kind="stable")[:k]]
            hits = col.search(q, k=k)
            assert [h.id for h in hits] == want
            for h in hits:   # the distance is the newest version's, not an older one's
                assert h.distance == pytest.approx(d[ids.index(h.id)], abs=1e-5)


def _queue(db, col, model, rng, policies, rows=20):
    """Freeze one memtable per entry of ``policies``; each holds new rows, upserts of rows in
    older memtables, and deletes of some of them."""
    rt = db._runtime("c")
    n = len(model.live) + 1000 * len(rt.memtables)
    for p, policy in enumerate(policies):
        fresh = [f"id-{n + p * rows + i}" for i in range(rows)]
        model.apply(col, "insert", fresh, random_vectors(rng, rows, DIM))
        older = sorted(model.live)[: rows // 2]
        if older:
            model.apply(col, "upsert", older[::2], random_vectors(rng, len(older[::2]), DIM))
            model.apply(col, "delete", older[1::4])
        assert rt.freeze(_request(policy)) is not None
    return rt


@contextmanager
def queued(tmp_path, rng, policies, rows=20, **maintenance):
    """A database with maintenance paused and one frozen memtable per entry of ``policies``:
    yields (db, collection, model, runtime)."""
    with _open(tmp_path / "db", **maintenance) as db:
        db.maintenance.pause(True)
        col = db.create_collection("c", dim=DIM)
        model = Model()
        rt = _queue(db, col, model, rng, policies, rows)
        yield db, col, model, rt


def test_merged_rows_keep_the_newest_version_of_each_id_and_only_the_tombstones_still_needed():
    def rows(ids, lsns, deleted=(), deleted_lsns=()):
        return SegmentRows(ids=list(ids), vectors=np.array([[float(x)] * 2 for x in lsns], np.float32).reshape(-1, 2),
                           lsns=np.array(lsns, np.int64), metadata=[{"lsn": x} for x in lsns],
                           deleted_ids=list(deleted), deleted_lsns=np.array(deleted_lsns, np.int64),
                           max_lsn=max(list(lsns) + list(deleted_lsns)))

    oldest = rows(["a", "b", "c"], [1, 2, 3], ["x"], [4])
    middle = rows(["a", "x"], [5, 6], ["b", "y"], [7, 8])
    newest = rows(["y", "d"], [9, 10], ["c"], [11])
    out = merged_rows([oldest, middle, newest])
    got = {id_: (int(lsn), float(v[0]), meta["lsn"]) for id_, lsn, v, meta in
           zip(out.ids, out.lsns, out.vectors, out.metadata)}
    assert got == {"a": (5, 5.0, 5), "x": (6, 6.0, 6), "y": (9, 9.0, 9), "d": (10, 10.0, 10)}
    # b and c were deleted last: their tombstones hide stored versions. x and y live again, so
    # their tombstones are not needed (the live rows supersede what storage holds).
    assert dict(zip(out.deleted_ids, out.deleted_lsns.tolist())) == {"b": 7, "c": 11}
    assert out.max_lsn == 11
    assert merged_rows([oldest]) is oldest


def test_queued_memtables_frozen_by_one_policy_are_written_as_one_segment(tmp_path, rng):
    with queued(tmp_path, rng, ["size"] * 5) as (db, col, model, rt):
        events = drain(rt, db.registry, db.flush_logs["c"], max_bytes=1 << 30)
        assert [(e.memtables, e.reason.policy) for e in events] == [(5, "size")]
        assert not rt.has_frozen()
        assert db.stats()["collections"]["c"]["storage"]["segments"] == 1
        model.check(col, rng)
    with _open(tmp_path / "db") as db:       # what storage holds, with an empty WAL to replay
        assert db.stats()["collections"]["c"]["memtable"]["rows"] == 0
        model.check(db.get_collection("c"), rng)


def test_each_memtable_is_its_own_segment_when_max_flush_bytes_is_zero(tmp_path, rng):
    with queued(tmp_path, rng, ["size"] * 4) as (db, col, model, rt):
        events = drain(rt, db.registry, db.flush_logs["c"], max_bytes=0)
        assert [e.memtables for e in events] == [1, 1, 1, 1]
        model.check(col, rng)


def test_a_flush_takes_memtables_frozen_by_one_policy_and_at_most_max_flush_bytes(tmp_path, rng):
    with queued(tmp_path, rng, ["size", "size", "time", "size", "size", "size"]) as (db, col, model, rt):
        sizes = [m.nbytes for m in reversed(rt.memtables[1:])]      # oldest first
        budget = sizes[3] + sizes[4] + sizes[5] - 1                 # the last three do not fit in one
        events = drain(rt, db.registry, db.flush_logs["c"], max_bytes=budget)
        assert [(e.reason.policy, e.memtables) for e in events] == [("size", 2), ("time", 1), ("size", 2), ("size", 1)]
        assert all(e.rows > 0 for e in events)
        history = db.stats()["collections"]["c"]["flushes"]
        assert history["by_policy"] == {"size": 5, "time": 1}     # a policy's flushes: its memtables
        assert history["writes"] == 4
        assert [f["memtables"] for f in history["last"]] == [2, 1, 2, 1]
        assert "from 2 queued memtables" in flush_line(history["last"][0], {})   # proxistore stats
        assert "queued" not in flush_line(history["last"][1], {})
        model.check(col, rng)


@pytest.mark.parametrize("max_flush_bytes, expected", [("16MB", [6]), (0, [1] * 6)])
def test_background_maintenance_merges_the_queue_per_max_flush_bytes(tmp_path, rng, max_flush_bytes, expected):
    with queued(tmp_path, rng, ["size"] * 6, max_flush_bytes=max_flush_bytes) as (db, col, model, rt):
        db.maintenance.pause(False)
        db.wait_idle(timeout=30)
        assert not rt.has_frozen()
        last = db.stats()["collections"]["c"]["flushes"]["last"]
        assert [f["memtables"] for f in last] == expected
        assert all(f["reason"]["policy"] == "size" for f in last)
        model.check(col, rng)


def test_search_over_a_long_queue_finds_the_newest_version_of_each_id(tmp_path, rng):
    with queued(tmp_path, rng, ["size"] * 40, rows=10) as (db, col, model, rt):
        model.apply(col, "upsert", sorted(model.live)[::3], random_vectors(rng, len(sorted(model.live)[::3]), DIM))
        assert len(rt.memtables) == 41
        model.check(col, rng, queries=40, k=10)
        drain(rt, db.registry, db.flush_logs["c"], max_bytes=1 << 30)
        model.check(col, rng, queries=40, k=10)


def test_a_memtable_search_asks_whether_a_row_is_shadowed_only_for_its_candidates(tmp_path, rng):
    with _open(tmp_path / "db") as db:
        db.maintenance.pause(True)
        col = db.create_collection("c", dim=DIM)
        ids = [f"id-{i}" for i in range(2000)]
        vectors = random_vectors(rng, len(ids), DIM)
        col.insert(ids, vectors)
        mt = db._runtime("c").memtables[0]
        asked = []
        hidden = set(ids[::2])

        def shadowed(id_):
            asked.append(id_)
            return id_ in hidden

        hits = mt.search(vectors[:3], 10, shadowed=shadowed)
        assert len(asked) < 200                      # candidates, not the 2,000 rows
        assert all(id_ is not None and id_ not in hidden for id_ in hits.ids.ravel())
        assert hits.ids[1, 0] == ids[1]              # a row that is not shadowed is its own nearest
        assert hits.ids[0, 0] != ids[0]              # a shadowed one is not


def test_a_row_written_after_a_newer_memtable_was_searched_does_not_hide_the_older_version(tmp_path, rng):
    """A search reads memtables newest first. An upsert that lands in the active memtable after
    that part of the search must not hide the older version in a frozen memtable, or the id
    would be in neither part of the answer."""
    with _open(tmp_path / "db") as db:
        db.maintenance.pause(True)
        col = db.create_collection("c", dim=DIM)
        col.insert(["a", "b"], random_vectors(rng, 2, DIM))
        rt = db._runtime("c")
        frozen = rt.freeze(_request("size"))
        col.insert(["c"], random_vectors(rng, 1, DIM))
        active = rt.memtables[0]
        seen_before = len(active)                     # what a search of the active memtable saw
        col.upsert(["a"], random_vectors(rng, 1, DIM))  # lands after that
        assert rt._shadow_test(frozen, [(active, seen_before)])("a") is False
        assert rt._shadow_test(frozen, [(active, len(active))])("a") is True
        assert rt._shadow_test(frozen, [(active, len(active))])("b") is False
