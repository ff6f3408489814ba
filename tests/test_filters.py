"""proxistore.filters: every operator against a brute-force Python reference, and its errors."""
from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pyarrow as pa
import pytest

from proxistore.errors import FilterTypeError, InvalidFilter, InvalidMetadata
from proxistore.filters import MetadataFilter, compile_filter, metadata_table

# -- the reference: the documented semantics, one record at a time, in plain Python ------------


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cmp(op: str, have: Any, want: Any) -> bool:
    if have is None:
        return False
    if op == "$eq":
        return have == want
    if op == "$ne":
        return have != want
    if op == "$in":
        return have in want
    if op == "$nin":
        return have not in want
    return {"$lt": have < want, "$lte": have <= want, "$gt": have > want, "$gte": have >= want}[op]


def ref_match(spec: Mapping[str, Any], rec: Optional[Mapping[str, Any]]) -> bool:
    rec = rec or {}
    for key, value in spec.items():
        if key == "$and":
            ok = all(ref_match(s, rec) for s in value)
        elif key == "$or":
            ok = any(ref_match(s, rec) for s in value)
        elif key == "$not":
            ok = not ref_match(value, rec)
        elif isinstance(value, Mapping):
            ok = ref_field(key, value, rec)
        else:
            ok = _cmp("$eq", rec.get(key), value)
        if not ok:
            return False
    return True


def ref_field(key: str, ops: Mapping[str, Any], rec: Mapping[str, Any]) -> bool:
    for op, operand in ops.items():
        if op == "$exists":
            ok = (rec.get(key) is not None) == operand
        elif op == "$not":
            inner = operand if isinstance(operand, Mapping) else {"$eq": operand}
            ok = not ref_field(key, inner, rec)
        else:
            ok = _cmp(op, rec.get(key), operand)
        if not ok:
            return False
    return True


def records(n: int = 300, seed: int = 0) -> List[Optional[Dict[str, Any]]]:
    rnd = random.Random(seed)
    out: List[Optional[Dict[str, Any]]] = []
    for i in range(n):
        if i % 37 == 0:
            out.append(None)
            continue
        rec: Dict[str, Any] = {}
        if rnd.random() < 0.85:
            rec["module"] = rnd.choice(["json", "torch", "re", "os", "numpy"])
        if rnd.random() < 0.9:
            rec["n"] = rnd.randint(-5, 20)
        if rnd.random() < 0.8:
            rec["score"] = round(rnd.uniform(-1, 1), 2) if i % 5 else rnd.randint(-1, 1)   # int + float
        if rnd.random() < 0.7:
            rec["flag"] = rnd.random() < 0.5
        out.append(rec)
    return out


RECORDS = records()
TABLE = metadata_table(RECORDS)


def check(spec: Mapping[str, Any], recs=RECORDS, table=None) -> np.ndarray:
    table = TABLE if table is None else table
    got = compile_filter(spec).mask(table)
    want = np.array([ref_match(spec, r) for r in recs], dtype=bool)
    assert got.dtype == bool and got.shape == (len(recs),)
    assert (got == want).all(), (spec, np.flatnonzero(got != want)[:5])
    return got


# -- operators ----------------------------------------------------------------------------------

SINGLE = [
    {"module": "json"}, {"module": {"$eq": "torch"}}, {"module": {"$ne": "torch"}},
    {"module": {"$in": ["json", "re"]}}, {"module": {"$nin": ["json", "re"]}},
    {"module": {"$lt": "os"}}, {"module": {"$lte": "os"}}, {"module": {"$gt": "os"}},
    {"module": {"$gte": "os"}},
    {"n": 3}, {"n": {"$ne": 3}}, {"n": {"$in": [1, 2, 3]}}, {"n": {"$nin": [1, 2, 3]}},
    {"n": {"$lt": 4}}, {"n": {"$lte": 4}}, {"n": {"$gt": 4}}, {"n": {"$gte": 4}},
    {"n": {"$gt": 2.5}}, {"n": {"$in": [2.0, 7]}}, {"n": 3.0},
    {"score": {"$lt": 0}}, {"score": {"$gte": 0.5}}, {"score": 1}, {"score": {"$in": [0, 1, -1]}},
    {"flag": True}, {"flag": {"$ne": True}}, {"flag": {"$in": [False]}}, {"flag": {"$nin": [True]}},
    {"module": {"$exists": True}}, {"module": {"$exists": False}},
    {"absent": {"$exists": False}}, {"absent": {"$exists": True}},
]


@pytest.mark.parametrize("spec", SINGLE, ids=[str(s) for s in SINGLE])
def test_each_operator_matches_the_brute_force_reference(spec):
    check(spec)


COMBINED = [
    {"module": "json", "n": {"$gt": 2}},
    {"n": {"$gte": 0, "$lt": 10}},
    {"$and": [{"module": {"$in": ["json", "torch"]}}, {"flag": False}]},
    {"$or": [{"module": "re"}, {"n": {"$lt": 0}}, {"flag": {"$exists": False}}]},
    {"$not": {"module": "torch"}},
    {"$not": {"$or": [{"n": 1}, {"n": 2}]}},
    {"module": {"$not": {"$in": ["json", "os"]}}},
    {"n": {"$not": 3}},
    {"$or": [{"$and": [{"n": {"$gt": 5}}, {"score": {"$lt": 0}}]}, {"$not": {"flag": True}}]},
    {},
]


@pytest.mark.parametrize("spec", COMBINED, ids=[str(s) for s in COMBINED])
def test_combinations_match_the_brute_force_reference(spec):
    check(spec)


def test_random_filters_match_the_brute_force_reference():
    rnd = random.Random(7)
    leaves = SINGLE

    def gen(depth: int) -> Dict[str, Any]:
        if depth == 0 or rnd.random() < 0.4:
            return rnd.choice(leaves)
        op = rnd.choice(["$and", "$or", "$not"])
        if op == "$not":
            return {"$not": gen(depth - 1)}
        return {op: [gen(depth - 1) for _ in range(rnd.randint(1, 3))]}

    for _ in range(150):
        check(gen(3))


def test_a_key_absent_from_the_table_matches_nothing_except_exists_false():
    for spec in ({"nokey": 1}, {"nokey": {"$ne": 1}}, {"nokey": {"$nin": [1]}}, {"nokey": {"$lt": "z"}},
                 {"nokey": {"$in": ["a"]}}, {"nokey": {"$exists": True}}):
        assert not check(spec).any(), spec
    assert check({"nokey": {"$exists": False}}).all()


def test_ne_and_nin_do_not_match_rows_without_the_key_but_not_does():
    recs = [{"a": 1}, {"a": 2}, {}, None]
    table = metadata_table(recs)
    assert check({"a": {"$ne": 1}}, recs, table).tolist() == [False, True, False, False]
    assert check({"a": {"$nin": [1]}}, recs, table).tolist() == [False, True, False, False]
    assert check({"$not": {"a": 1}}, recs, table).tolist() == [False, True, True, True]


def test_empty_in_matches_nothing_and_empty_nin_matches_rows_with_the_key():
    assert not check({"n": {"$in": []}}).any()
    assert (check({"n": {"$nin": []}}) == np.array([r is not None and r.get("n") is not None for r in RECORDS])).all()


def test_int_and_float_columns_compare_as_numbers():
    table = pa.table({"i": pa.array([1, 2, 3], pa.int32()), "f": pa.array([1.0, 2.5, None])})
    f = compile_filter
    assert f({"i": 2.0}).mask(table).tolist() == [False, True, False]
    assert f({"i": {"$gt": 1.5}}).mask(table).tolist() == [False, True, True]
    assert f({"f": 1}).mask(table).tolist() == [True, False, False]
    assert f({"f": {"$in": [2.5, 3]}}).mask(table).tolist() == [False, True, False]


def test_mask_of_an_empty_table_is_empty():
    assert compile_filter({"a": 1}).mask(pa.table({"a": pa.array([], pa.int64())})).shape == (0,)
    assert compile_filter({}).mask(metadata_table([])).shape == (0,)


def test_an_all_null_column_matches_nothing_without_a_type_error():
    table = pa.table({"a": pa.nulls(3)})
    assert not compile_filter({"a": "x"}).mask(table).any()
    assert compile_filter({"a": {"$exists": False}}).mask(table).all()


def test_compiled_filters_pass_through_and_record_their_keys():
    flt = compile_filter({"$or": [{"a": 1}, {"b": {"$exists": True}}], "c": 2})
    assert isinstance(flt, MetadataFilter)
    assert compile_filter(flt) is flt
    assert flt.keys == {"a", "b", "c"}


# -- type errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    {"module": 1}, {"module": {"$gt": 3}}, {"module": {"$in": [1, 2]}}, {"module": True},
    {"n": "3"}, {"n": {"$lt": "a"}}, {"n": True}, {"n": {"$in": [True]}},
    {"flag": 1}, {"flag": "yes"}, {"flag": {"$in": [1]}}, {"score": "x"},
])
def test_comparing_a_column_with_a_value_of_another_type_raises_filter_type_error(spec):
    with pytest.raises(FilterTypeError) as info:
        compile_filter(spec).mask(TABLE)
    assert next(iter(spec)) in str(info.value)
    assert isinstance(info.value, InvalidFilter) and isinstance(info.value, ValueError)


def test_a_range_on_a_bool_column_is_a_type_error():
    with pytest.raises(FilterTypeError):
        compile_filter({"flag": {"$gt": "a"}}).mask(TABLE)


# -- compile-time validation -------------------------------------------------------------------

@pytest.mark.parametrize("spec, named", [
    ({"$foo": 1}, "$foo"),
    ({"a": {"$regex": "x"}}, "$regex"),
    ({"a": {"$in": 3}}, "$in"),
    ({"a": {"$in": "abc"}}, "$in"),
    ({"a": {"$nin": None}}, "$nin"),
    ({"a": {"$in": [1, "x"]}}, "$in"),
    ({"a": {"$exists": 1}}, "$exists"),
    ({"a": None}, "$exists"),
    ({"a": {"$eq": [1, 2]}}, "$eq"),
    ({"a": {"$lt": True}}, "$lt"),
    ({"a": {"$gt": None}}, "$gt"),
    ({"a": {}}, "'a'"),
    ({"a": {"b": 1}}, "'b'"),
    ({"$and": {"a": 1}}, "$and"),
    ({"$or": []}, "$or"),
    ({"$and": [1]}, "mapping"),
    ({"$not": [{"a": 1}]}, "mapping"),
    ({"a": {"$eq": float("nan")}}, "NaN"),
    ({"a": 2 ** 70}, "64 bits"),
    ({"": 1}, "non-empty"),
    ({"a": {"$in": [{"x": 1}]}}, "$in"),
])
def test_malformed_filters_are_rejected_at_compile_time_naming_the_problem(spec, named):
    with pytest.raises(InvalidFilter) as info:
        compile_filter(spec)
    assert named in str(info.value)


def test_a_filter_must_be_a_mapping():
    for bad in (["a"], "a = 1", 3, None):
        with pytest.raises(InvalidFilter):
            compile_filter(bad)


# -- metadata_table -----------------------------------------------------------------------------

def test_metadata_table_types_each_key_and_promotes_int_with_float():
    table = metadata_table([{"s": "x", "i": 1, "f": 1, "b": True}, {"f": 2.5}, None, {}])
    assert table.num_rows == 4
    assert table.schema.field("s").type == pa.string()
    assert table.schema.field("i").type == pa.int64()
    assert table.schema.field("f").type == pa.float64()
    assert table.schema.field("b").type == pa.bool_()
    assert table.column("f").to_pylist() == [1.0, 2.5, None, None]


def test_metadata_table_rejects_a_key_with_mixed_types():
    with pytest.raises(InvalidMetadata, match="'k'"):
        metadata_table([{"k": 1}, {"k": "one"}])
    with pytest.raises(InvalidMetadata, match="'k'"):
        metadata_table([{"k": [1, 2]}])


def test_metadata_table_of_records_without_metadata_keeps_the_row_count():
    table = metadata_table([None, {}, None])
    assert table.num_rows == 3 and table.num_columns == 0
    assert compile_filter({"a": {"$exists": False}}).mask(table).tolist() == [True] * 3
