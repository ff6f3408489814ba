"""Workload files are validated like configs; the data, the write plan, recall and the A/B rule
do what the bench reports claim. Everything here runs in-process on small data."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SHARED_DATA, requires_shared_data
from proxistore.bench import (DatasetMissing, WorkloadError, compare, find_workload, load_workload, run,
                              summarise, workload_from_dict)
from proxistore.bench.ab import MIN_CHANGE, SEPARATION
from proxistore.bench.data import load_dataset, recall_at_k
from proxistore.bench.plan import live_rows, make_plan
from proxistore.errors import ConfigError

SHIPPED = ("incident", "steady", "sustained", "bulk", "real")


def write(tmp_path, text, name="w.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text) -> WorkloadError:
    path = write(tmp_path, text)
    with pytest.raises(WorkloadError) as info:
        load_workload(path)
    assert isinstance(info.value, ConfigError)          # exit code 2 in the CLI, like a config error
    assert info.value.file == str(path) and str(path) in str(info.value)
    return info.value


def parquet_file(path, n, dim, seed=0, **columns):
    vec = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)],
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim),
                             **columns}), path)
    return vec


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------

def test_an_unknown_key_names_key_and_file_and_lists_the_valid_ones(tmp_path):
    err = error_of(tmp_path, "[ingest]\nbatchsize = 100\n")
    assert err.key == "ingest.batchsize"
    for valid in ("batch_size", "writers", "upsert_share", "delete_share", "sample_interval"):
        assert valid in str(err)
    assert "filter (a table)" in str(error_of(tmp_path, "[queries]\nrate = 3\n"))


def test_an_unknown_section_or_top_level_key_lists_the_sections(tmp_path):
    err = error_of(tmp_path, "[dataset]\nvectors = 3\n")
    assert err.key == "dataset" and "[data], [ingest], [queries], [finish]" in str(err)


@pytest.mark.parametrize("text, key, words", [
    ('[queries]\nk = "ten"\n', "queries.k", "expected an integer"),
    ("[finish]\ncrash = 1\n", "finish.crash", "expected true or false"),
    ('[data]\nmetric = "hamming"\n', "data.metric", "cosine, l2, ip"),
    ("[ingest]\nwriters = 0\n", "ingest.writers", "below the minimum"),
    ("[ingest]\nupsert_share = 1.5\n", "ingest.upsert_share", "above the maximum"),
    ("[data]\n[data.vectors]\nn = 1\n", "data.vectors", "expected an integer"),
])
def test_a_wrong_type_or_value_names_key_and_file(tmp_path, text, key, words):
    err = error_of(tmp_path, text)
    assert err.key == key and words in str(err)


def test_a_bad_unit_names_the_key_and_the_accepted_units(tmp_path):
    err = error_of(tmp_path, '[ingest]\nsample_interval = "5 parsecs"\n')
    assert err.key == "ingest.sample_interval" and "unknown duration unit 'parsecs'" in str(err) and "ms" in str(err)
    assert load_workload(write(tmp_path, '[ingest]\nsample_interval = "250ms"\n')).ingest["sample_interval"] == 0.25


def test_contradictory_keys_are_an_error(tmp_path):
    err = error_of(tmp_path, "[ingest]\nupsert_share = 0.6\ndelete_share = 0.5\n")
    assert err.key == "ingest.delete_share" and "below 1" in str(err) and "key 'delete_share'" not in str(err)
    assert error_of(tmp_path, '[data]\nsource = "parquet"\n').key == "data.path"
    assert error_of(tmp_path, '[data]\nmetadata = ["colour"]\n').key == "data.metadata"
    assert error_of(tmp_path, '[queries]\nsource = "none"\nrate_during_ingest = 5\n').key == \
        "queries.rate_during_ingest"


def test_a_filter_is_checked_like_a_search_filter_and_against_the_stored_metadata(tmp_path):
    err = error_of(tmp_path, '[data]\nmetadata = ["group"]\n[queries]\nfilter = { group = { "$near" = 1 } }\n')
    assert err.key == "queries.filter" and "$near" in str(err)
    err = error_of(tmp_path, '[queries]\nfilter = { group = "a" }\n')
    assert err.key == "queries.filter" and "data.metadata" in str(err)
    ok = load_workload(write(tmp_path, '[data]\nmetadata = ["group"]\n[queries]\nfilter = { group = "a" }\n'))
    assert ok.filter == {"group": "a"}


def test_a_missing_dataset_names_the_path_resolved_from_the_workload_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", '[data]\nsource = "parquet"\npath = "../data/base.parquet"\n')
    with pytest.raises(DatasetMissing) as info:
        load_workload(path)
    expected = os.path.normpath(str(tmp_path / "data" / "base.parquet"))
    assert info.value.key == "data.path" and f"dataset not found: {expected}" in str(info.value)


def test_parquet_paths_are_relative_to_the_workload_file_not_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "wl").mkdir()
    parquet_file(tmp_path / "data" / "base.parquet", 50, 8, kind=["a", "b"] * 25)
    parquet_file(tmp_path / "data" / "q.parquet", 7, 8, seed=1)
    path = write(tmp_path / "wl", """
        [data]
        source = "parquet"
        path = "../data/base.parquet"
        vectors = 0
        metadata = ["kind"]
        [queries]
        source = "parquet"
        path = "../data/q.parquet"
        count = 0
    """)
    monkeypatch.chdir("/")
    wl = load_workload(path)
    assert wl.data["dim"] == 8 and wl.data["vectors"] == 50 and wl.queries["count"] == 7
    data = load_dataset(wl)
    assert data.ids[:2] == ["p0", "p1"] and data.metadata[1] == {"kind": "b"} and data.queries.shape == (7, 8)
    err = error_of(tmp_path, f'[data]\nsource = "parquet"\npath = "{tmp_path}/data/base.parquet"\ndim = 16\n')
    assert err.key == "data.dim" and "8-d" in str(err)
    err = error_of(tmp_path, f'[data]\nsource = "parquet"\npath = "{tmp_path}/data/base.parquet"\nvectors = 60\n')
    assert err.key == "data.vectors" and "50 rows" in str(err)


def test_shipped_workloads_validate_and_are_found_by_name(monkeypatch):
    monkeypatch.chdir("/")                       # found from the checkout, not only from the repo's cwd
    for name in SHIPPED:
        path = find_workload(name)
        assert os.path.samefile(path, REPO / "config" / "workloads" / f"{name}.toml")
        if name == "real" and not (SHARED_DATA / "base.parquet").exists():
            with pytest.raises(DatasetMissing, match="dataset not found: .*base.parquet"):
                load_workload(name)
            continue
        wl = load_workload(name)
        assert wl.description and wl.name == name
    incident = load_workload("incident")
    assert (incident.data["vectors"], incident.data["dim"], incident.ingest["batch_size"]) == (5000, 384, 100)
    assert incident.finish["crash"] is True
    assert load_workload("bulk").data["vectors"] == 200_000
    with pytest.raises(WorkloadError, match="shipped names: .*incident"):
        find_workload("no-such-workload")


# ------------------------------------------------------------------------------------------------
# data, plan, recall
# ------------------------------------------------------------------------------------------------

def small(**over):
    raw = {"data": {"vectors": 600, "dim": 16, "metadata": ["cluster", "group"], "seed": 3},
           "ingest": {"batch_size": 50, "writers": 3, "upsert_share": 0.2, "delete_share": 0.1},
           "queries": {"count": 20, "k": 5}}
    for section, values in over.items():
        raw.setdefault(section, {}).update(values)
    return workload_from_dict(raw)


def test_synthetic_data_is_seeded_normalised_for_cosine_and_holds_out_queries():
    a, b = load_dataset(small()), load_dataset(small())
    assert np.array_equal(a.vectors, b.vectors) and np.array_equal(a.queries, b.queries)
    assert np.allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert a.vectors.shape == (600, 16) and a.queries.shape == (20, 16)
    assert not any((a.vectors == q).all(axis=1).any() for q in a.queries)
    assert {m["group"] for m in a.metadata} == set("abcd") and isinstance(a.metadata[0]["cluster"], int)
    c = load_dataset(small(data={"seed": 4, "metric": "l2"}))
    assert not np.array_equal(a.vectors, c.vectors) and not np.allclose(np.linalg.norm(c.vectors, axis=1), 1.0)


def test_the_plan_mixes_writes_by_share_and_knows_the_live_rows():
    wl = small()
    data = load_dataset(wl)
    plan = make_plan(data, 50, 3, 0.2, 0.1, seed=3)
    kinds = [op.kind for ops in plan.writers for op in ops]
    assert kinds.count("insert") == 12 and kinds.count("upsert") + kinds.count("delete") == round(12 * 0.3 / 0.7)
    for ops in plan.writers:                      # nothing is upserted or deleted before it is written
        written = set()
        for op in ops:
            if op.kind == "insert":
                written |= set(op.rows.tolist())
            else:
                assert set(op.rows.tolist()) <= written
    owners = [set(r for op in ops for r in op.rows.tolist()) for ops in plan.writers]
    assert not (owners[0] & owners[1]) and not (owners[1] & owners[2])
    live = live_rows(plan, [len(ops) for ops in plan.writers])
    assert len(live) == 600 - plan.rows_by_kind["delete"]
    assert any(pool != row for row, pool in live.items())        # upserted rows point at their new vectors
    assert live_rows(plan, [0, 0, 0]) == {}


def test_recall_counts_ties_and_ignores_unknown_ids():
    vecs = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], dtype=np.float32)   # rows 0 and 1 are identical
    ids = ["a", "b", "c", "d"]
    q = np.array([[1, 0.1]], dtype=np.float32)
    assert recall_at_k([["b"]], q, ids, vecs, 1, "l2") == 1.0                # b ties with a for 1st place
    assert recall_at_k([["b", "c"]], q, ids, vecs, 2, "l2") == 0.5           # c is not in the top 2
    assert recall_at_k([["a", "zz"]], q, ids, vecs, 2, "l2") == 0.5
    mask = np.array([False, False, True, True])
    assert recall_at_k([["c", "d"]], q, ids, vecs, 2, "l2", mask) == 1.0
    assert recall_at_k([["a", "c"]], q, ids, vecs, 2, "l2", mask) == 0.5    # a is filtered out


@requires_shared_data()
def test_real_workload_runs_on_the_shared_dataset():
    wl = load_workload("real")
    raw = dict(wl.raw)                          # the same file, cut down: 3,000 rows, 40 queries
    raw["data"] = {**raw["data"], "vectors": 3000}
    raw["queries"] = {**raw["queries"], "count": 40, "rate_during_ingest": 0}
    raw["finish"] = {**raw.get("finish", {}), "final": "flush"}
    small_real = workload_from_dict(raw, source=wl.source, base_dir=wl.base_dir)
    m = summarise(run(small_real, {"flush": {"size": {"memory_flush_size_bytes": "1MB"}}}))
    assert m["write.inserted_rows"] == 3000 and m["rows.after_reopen"] == 3000 and m["rows.missing"] == 0
    assert m["search.after.count"] == 40 and m["flush.by_policy.size"] >= 1
    assert 0.9 <= m["recall.after_ingest"] <= 1.0 and 0.9 <= m["recall.after_reopen"] <= 1.0


# ------------------------------------------------------------------------------------------------
# the A/B rule
# ------------------------------------------------------------------------------------------------

def test_the_ab_rule():
    assert compare("write.rows_per_s", [100, 104, 98], [101, 99, 103]).verdict == "no difference"
    assert compare("write.rows_per_s", [100, 101, 102], [104, 105, 106]).verdict == "no difference"  # gap 2, spread 2
    gap = 2 * SEPARATION + 1
    assert compare("write.rows_per_s", [100, 101, 102], [102 + gap, 103 + gap, 104 + gap]).verdict == \
        "differs (B better)"
    assert compare("write.latency_p99_s", [0.010, 0.011, 0.010], [0.030, 0.031, 0.030]).verdict == "differs (B worse)"
    assert compare("disk.bytes", [10_000, 10_000, 10_001], [10_300, 10_300, 10_300]).verdict == "no difference"
    assert MIN_CHANGE > 0.03                      # the case above is a 3% difference
    assert compare("flush.count", [1, 1, 1], [2, 2, 2]).verdict == "no difference"    # a count's jitter
    assert compare("flush.count", [10, 7], [1, 1]).differs                 # counts compare as ratios
    assert not compare("flush.count", [70, 100], [110, 112]).differs        # 7 vs 10 is as wide as 70 vs 100
    c = compare("flush.count", [40, 44, 42], [1, 1, 1])
    assert c.differs and c.ratio == pytest.approx(1 / 42)
    assert compare("flush.by_policy.row_count", [None, None], [3, 4]).verdict == "only in B"
    assert compare("write.rows_per_s", [1.0], [9.0]).verdict.startswith("n/a")


@pytest.mark.parametrize("root", ["{tmp}/elsewhere", "../beside", "file:///{tmp}/uri"])
def test_a_storage_root_outside_the_runs_data_directory_is_refused_before_the_run(tmp_path, root):
    wl = load_workload("incident")
    (tmp_path / "work").mkdir()
    with pytest.raises(ConfigError, match="every run would share it") as e:
        run(wl, {"storage": {"root": root.format(tmp=tmp_path)}}, workdir=str(tmp_path / "work"))
    assert e.value.key == "storage.root"
    assert os.listdir(tmp_path / "work") == []          # the run's directory is removed


def test_a_storage_root_inside_the_runs_data_directory_is_measured(tmp_path):
    wl = load_workload("incident")
    m = summarise(run(wl, {"storage": {"root": "bulk"}}))
    assert m["rows.after_reopen"] == 5000 and m["rows.missing"] == 0
