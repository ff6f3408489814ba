"""Bad input: a clear error class, nothing of the failed call persisted, the store still usable."""
from __future__ import annotations

import numpy as np
import pytest

import proxistore
from proxistore import errors

DIM = 4


@pytest.fixture
def col(db):
    c = db.create_collection("c", dim=DIM, metric="l2")
    c.insert(["a", "b"], np.eye(2, DIM, dtype=np.float32), [{"kind": "x", "n": 1}, {"kind": "y", "n": 2}])
    return c


def assert_nothing_persisted_and_usable(db, col, db_path=None):
    assert col.count() == 2
    assert sorted(r.id for r in col.get(["a", "b"]) if r) == ["a", "b"]
    col.upsert(["z"], np.ones((1, DIM), np.float32))
    assert col.count() == 3
    hits = col.search(np.ones(DIM, np.float32), k=1)
    assert hits[0].id == "z"


BAD_WRITES = [
    ("wrong dimension", lambda c: c.insert(["x"], np.ones((1, DIM + 1))), errors.DimensionMismatch, "dimension 5"),
    ("1-d input for several ids", lambda c: c.insert(["x", "y"], np.ones(DIM)), errors.InvalidVector, "1-d"),
    ("NaN", lambda c: c.insert(["x"], np.array([[np.nan, 0, 0, 0]])), errors.InvalidVector, "NaN"),
    ("infinity", lambda c: c.insert(["x"], np.array([[np.inf, 0, 0, 0]])), errors.InvalidVector, "infinity"),
    ("non-numeric vectors", lambda c: c.insert(["x"], [["a", "b", "c", "d"]]), errors.InvalidVector, "numeric"),
    ("ids and vectors of different lengths", lambda c: c.insert(["x", "y"], np.ones((3, DIM))), errors.InvalidId,
     "same length"),
    ("duplicate ids in one batch", lambda c: c.insert(["x", "x"], np.ones((2, DIM))), errors.DuplicateId, "'x'"),
    ("insert of an existing id", lambda c: c.insert(["a"], np.ones((1, DIM))), errors.DuplicateId, "upsert"),
    ("metadata not JSON-serialisable", lambda c: c.insert(["x"], np.ones((1, DIM)), [{"o": object()}]),
     errors.InvalidMetadata, "JSON"),
    ("metadata of the wrong length", lambda c: c.insert(["x"], np.ones((1, DIM)), [{}, {}]), errors.InvalidMetadata,
     "same length"),
    ("metadata type conflicting with the collection", lambda c: c.insert(["x"], np.ones((1, DIM)), [{"n": "one"}]),
     errors.InvalidMetadata, "'n'"),
    ("empty id", lambda c: c.insert([""], np.ones((1, DIM))), errors.InvalidId, "empty"),
    ("non-string id", lambda c: c.insert([7], np.ones((1, DIM))), errors.InvalidId, "strings"),
    ("a bare string as ids", lambda c: c.delete("a"), errors.InvalidId, "single string"),
]


@pytest.mark.parametrize("name,call,error,fragment", BAD_WRITES, ids=[b[0] for b in BAD_WRITES])
def test_bad_write_raises_and_persists_nothing(db_path, db, col, name, call, error, fragment):
    wal_records = db.stats()["collections"]["c"]["wal"]["records"]
    with pytest.raises(error) as e:
        call(col)
    assert isinstance(e.value, ValueError) and isinstance(e.value, errors.ProxistoreError)
    assert fragment in str(e.value)
    assert db.stats()["collections"]["c"]["wal"]["records"] == wal_records
    assert_nothing_persisted_and_usable(db, col)


def test_a_failed_batch_leaves_nothing_after_reopen(db_path):
    with proxistore.open(db_path) as db:
        c = db.create_collection("c", dim=DIM)
        c.insert(["a"], np.ones((1, DIM)))
        with pytest.raises(errors.DuplicateId):
            c.insert(["b", "a"], np.ones((2, DIM)))
    with proxistore.open(db_path) as db:
        c = db.collection("c")
        assert c.count() == 1 and c.get(["b"]) == [None]


@pytest.mark.parametrize("name", ["", "a/b", "../escape", "x" * 65, "sp ace", ".hidden", "é", 5])
def test_collection_names_outside_the_allowed_set_are_refused(db, db_path, name):
    with pytest.raises(errors.InvalidCollectionName):
        db.create_collection(name, dim=DIM)
    assert db.collections() == []
    assert not (db_path.parent / "escape").exists()
    assert sorted(p.name for p in (db_path / "collections").iterdir()) == []


@pytest.mark.parametrize("dim", [0, -3, 2.5, "4", True])
def test_dim_must_be_a_positive_integer(db, dim):
    with pytest.raises(errors.InvalidArgument, match="dim"):
        db.create_collection("c", dim=dim)
    assert db.collections() == []


def test_unknown_metric_is_refused(db):
    with pytest.raises(errors.InvalidArgument, match="cosine, l2, ip"):
        db.create_collection("c", dim=DIM, metric="hamming")
    assert db.collections() == []


def test_duplicate_collection_is_refused(db, col):
    with pytest.raises(errors.CollectionExists):
        db.create_collection("c", dim=DIM)
    assert col.count() == 2


def test_unknown_collection_is_refused(db):
    with pytest.raises(errors.CollectionNotFound, match="nope"):
        db.collection("nope")
    with pytest.raises(errors.CollectionNotFound):
        db.drop_collection("nope")


BAD_READS = [
    ("query of the wrong dimension", lambda c: c.search(np.ones(DIM + 2)), errors.DimensionMismatch),
    ("k = 0", lambda c: c.search(np.ones(DIM), k=0), errors.InvalidArgument),
    ("negative k", lambda c: c.search_batch(np.ones((2, DIM)), k=-1), errors.InvalidArgument),
    ("unknown filter operator", lambda c: c.search(np.ones(DIM), filter={"kind": {"$regex": "x"}}),
     errors.InvalidFilter),
    ("NaN query", lambda c: c.search(np.full(DIM, np.nan)), errors.InvalidVector),
]


@pytest.mark.parametrize("name,call,error", BAD_READS, ids=[b[0] for b in BAD_READS])
def test_bad_search_raises_a_clear_error(db, col, name, call, error):
    with pytest.raises(error):
        call(col)
    assert_nothing_persisted_and_usable(db, col)


def test_every_call_after_close_raises_database_closed(db_path):
    db = proxistore.open(db_path)
    c = db.create_collection("c", dim=DIM)
    db.close()
    calls = [lambda: c.insert(["x"], np.ones((1, DIM))), lambda: c.upsert(["x"], np.ones((1, DIM))),
             lambda: c.delete(["x"]), lambda: c.get(["x"]), lambda: c.count(), lambda: c.search(np.ones(DIM)),
             lambda: c.search_batch(np.ones((1, DIM))), lambda: db.create_collection("d", dim=2),
             lambda: db.collection("c"), lambda: db.collections(), lambda: db.flush(), lambda: db.compact(),
             lambda: db.stats(), lambda: db.drop_collection("c")]
    for call in calls:
        with pytest.raises(errors.DatabaseClosed):
            call()
    db.close()  # closing twice is harmless


def test_opening_a_directory_twice_is_refused(db_path):
    with proxistore.open(db_path):
        with pytest.raises(errors.DatabaseLocked, match="already open"):
            proxistore.open(db_path)
    proxistore.open(db_path).close()


def test_opening_a_directory_held_by_another_process_is_refused(db_path, child_env):
    import subprocess
    import sys
    code = ("import proxistore, sys, time\n"
            f"db = proxistore.open({str(db_path)!r})\n"
            "print('open', flush=True)\n"
            "sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=child_env, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(errors.DatabaseLocked, match=str(child.pid)):
            proxistore.open(db_path)
    finally:
        child.kill()
        child.wait()
    proxistore.open(db_path).close()  # the lock dies with the process
