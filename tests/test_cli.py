"""The `proxistore` command line, driven as a user drives it: a subprocess per command, against
a data directory in tmp_path, checking what it prints and how it exits (0 ok, 1 runtime error,
2 usage or config error), and that `--json` puts exactly one JSON document on stdout."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import proxistore

DIM = 8
_SCRIPT = Path(sys.executable).parent / "proxistore"
COMMAND: List[str] = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "proxistore.cli.main"]
ENV = {**os.environ, "COLUMNS": "200"}
ENV.pop("PROXISTORE_DEBUG", None)


def cli(*args, expect: int = 0, env=None) -> subprocess.CompletedProcess:
    """Run `proxistore ARGS...`; assert the exit code."""
    result = subprocess.run(COMMAND + [str(a) for a in args], capture_output=True, text=True, timeout=120,
                            env=env or ENV)
    assert result.returncode == expect, (
        f"proxistore {' '.join(map(str, args))} exited {result.returncode}, expected {expect}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
    return result


def cli_json(*args, expect: int = 0, env=None):
    """Run with --json; stdout must be exactly one JSON document."""
    return json.loads(cli("--json", *args, expect=expect, env=env).stdout)


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# input files and a loaded database, shared by the read-only tests
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    np.save(d / "vecs.npy", vectors(40, 1))
    vec = vectors(30, 2)
    pq.write_table(pa.table({
        "id": [f"p{i}" for i in range(30)],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), DIM),
        "tag": ["even" if i % 2 == 0 else "odd" for i in range(30)],
        "n": list(range(30)),
        "pair": [[i, i] for i in range(30)],          # not a scalar: skipped, with a note
    }), d / "docs.parquet")
    with open(d / "notes.jsonl", "w") as f:
        for i, v in enumerate(vectors(10, 3)):
            f.write(json.dumps({"id": f"j{i}", "vector": v.tolist(), "metadata": {"src": "jsonl", "i": i}}) + "\n")
    return {"npy": d / "vecs.npy", "parquet": d / "docs.parquet", "jsonl": d / "notes.jsonl",
            "vec_npy": np.load(d / "vecs.npy"), "vec_parquet": vec}


@pytest.fixture(scope="module")
def data(tmp_path_factory, files):
    """A database with `vecs` (.npy, cosine), `docs` (.parquet, l2) and `notes` (.jsonl)."""
    d = tmp_path_factory.mktemp("cli") / "data"
    out = cli("--data", d, "insert", "vecs", files["npy"], "--create", "--batch-size", "16").stdout
    assert "inserted 40 rows into 'vecs'" in out
    r = cli("--data", d, "insert", "docs", files["parquet"], "--create", "--metric", "l2")
    assert "inserted 30 rows" in r.stdout and "'pair' is not a scalar type" in r.stderr
    assert "━" not in r.stderr  # no progress bar when stderr is not a terminal
    assert cli_json("--data", d, "insert", "notes", files["jsonl"], "--create")["count"] == 10
    return d


# ------------------------------------------------------------------------------------------------
# parsing, usage errors and exit codes
# ------------------------------------------------------------------------------------------------

def test_help_lists_every_command():
    out = cli("--help").stdout
    for command in ("demo", "collections", "insert", "search", "get", "delete", "flush", "compact", "stats",
                    "config", "plugins", "wal"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_an_unknown_option_is_a_usage_error_with_exit_2():
    assert "unrecognized arguments" in cli("collections", "--frobnicate", expect=2).stderr


def test_a_directory_that_is_not_a_database_exits_2_and_is_not_created(tmp_path):
    missing = tmp_path / "typo"
    r = cli("--data", missing, "collections", expect=2)
    assert "no proxistore database" in r.stderr and "Traceback" not in r.stderr
    assert not missing.exists()
    err = cli_json("--data", missing, "collections", expect=2)["error"]
    assert err["type"] == "UsageError" and err["exit_code"] == 2


def test_global_options_may_follow_the_command(data):
    assert {c["name"] for c in cli_json("collections", "--data", data)} == {"vecs", "docs", "notes"}


def test_insert_into_a_database_open_elsewhere_is_a_runtime_error_with_exit_1(tmp_path, files):
    with proxistore.open(tmp_path / "held") as db:
        db.create_collection("v", dim=DIM)
        r = cli("--data", tmp_path / "held", "insert", "v", files["npy"], expect=1)
        assert db.collection("v").count() == 0
    assert "already open" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_debug_env_adds_the_traceback_to_an_error(tmp_path):
    r = cli("--data", tmp_path / "nope", "stats", expect=2, env={**ENV, "PROXISTORE_DEBUG": "1"})
    assert "Traceback" in r.stderr and "no proxistore database" in r.stderr


# ------------------------------------------------------------------------------------------------
# collections, insert, search, get, delete
# ------------------------------------------------------------------------------------------------

def test_collections_lists_dim_metric_rows_and_segments(data):
    rows = {c["name"]: c for c in cli_json("--data", data, "collections")}
    assert rows["vecs"]["dim"] == DIM and rows["vecs"]["metric"] == "cosine" and rows["vecs"]["rows"] == 40
    assert rows["docs"]["metric"] == "l2" and rows["docs"]["rows"] == 30 and rows["notes"]["rows"] == 10
    assert all("segments" in c for c in rows.values())
    table = cli("--data", data, "collections").stdout
    assert re.search(r"vecs\s.*\b8\b.*cosine.*\b40\b", table)


def test_inserting_existing_ids_exits_2_and_upsert_replaces_them(data, files):
    r = cli("--data", data, "insert", "vecs", files["npy"], expect=2)
    assert "already exist" in r.stderr and "upsert" in r.stderr
    result = cli_json("--data", data, "insert", "vecs", files["npy"], "--upsert")
    assert result["op"] == "upsert" and result["rows"] == 40 and result["count"] == 40


def test_inserting_into_a_missing_collection_without_create_exits_2(data, files):
    assert "--create" in cli("--data", data, "insert", "nothere", files["npy"], expect=2).stderr


def test_a_malformed_jsonl_line_is_named_and_earlier_batches_stay_written(tmp_path, files):
    bad = tmp_path / "bad.jsonl"
    lines = files["jsonl"].read_text().splitlines()
    bad.write_text("\n".join(lines[:6] + ["{not json"] + lines[6:]) + "\n")
    r = cli("--data", tmp_path / "d", "insert", "n", bad, "--create", "--batch-size", "3", expect=2)
    assert f"{bad}:7: not valid JSON" in r.stderr and "6 rows before the failing batch" in r.stderr
    assert cli_json("--data", tmp_path / "d", "collections")[0]["rows"] == 6


def test_an_unsupported_file_type_exits_2(data, tmp_path):
    (tmp_path / "v.csv").write_text("1,2\n")
    assert "must end in one of" in cli("--data", data, "insert", "vecs", tmp_path / "v.csv", expect=2).stderr


def test_parquet_scalar_columns_become_metadata(data):
    [rec] = cli_json("--data", data, "get", "docs", "p3")
    assert rec["found"] and rec["metadata"] == {"tag": "odd", "n": 3}


def test_search_by_vector_finds_the_stored_vector_first(data, files):
    query = files["vec_npy"][7].tolist()
    result = cli_json("--data", data, "search", "vecs", "--vector", json.dumps(query), "-k", "3")
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3]
    assert result["hits"][0]["id"] == "row-7" and result["hits"][0]["distance"] == pytest.approx(0, abs=1e-5)
    assert result["hits"][0]["distance"] <= result["hits"][1]["distance"] <= result["hits"][2]["distance"]
    table = cli("--data", data, "search", "vecs", "--vector", json.dumps(query), "-k", "3").stdout
    assert re.search(r"1 .*row-7 .*0\.0000", table)


def test_search_from_id_leaves_the_id_itself_out(data):
    hits = cli_json("--data", data, "search", "docs", "--from-id", "p4", "-k", "5")["hits"]
    assert len(hits) == 5 and "p4" not in [h["id"] for h in hits]


def test_search_filter_returns_only_matching_metadata(data):
    hits = cli_json("--data", data, "search", "docs", "--from-id", "p4", "-k", "4",
                    "--filter", '{"tag": "odd", "n": {"$lt": 20}}')["hits"]
    assert len(hits) == 4 and all(h["metadata"]["tag"] == "odd" and h["metadata"]["n"] < 20 for h in hits)


@pytest.mark.parametrize("args, message", [
    (["--vector", "[1, 2"], "--vector is not valid JSON"),
    (["--vector", "[1, 2, 3]"], "dimension 3"),
    (["--from-id", "nope"], "no id 'nope'"),
    (["--from-id", "p1", "--filter", '{"tag": {"$near": 1}}'], "unknown operator '$near'"),
])
def test_bad_search_input_exits_2_with_one_line(data, args, message):
    r = cli("--data", data, "search", "docs", *args, expect=2)
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_search_needs_exactly_one_of_vector_or_from_id(data):
    cli("--data", data, "search", "docs", expect=2)


def test_get_reports_found_and_missing_ids(data, files):
    recs = cli_json("--data", data, "get", "vecs", "row-0", "missing")
    assert recs[0]["found"] and np.allclose(recs[0]["vector"], files["vec_npy"][0])
    assert recs[1] == {"id": "missing", "found": False, "vector": None, "metadata": None}
    assert "not found" in cli("--data", data, "get", "vecs", "missing").stdout


def test_delete_counts_only_ids_that_were_live(tmp_path, files):
    d = tmp_path / "d"
    cli("--data", d, "insert", "v", files["npy"], "--create")
    result = cli_json("--data", d, "delete", "v", "row-1", "row-2", "never-there")
    assert result == {"collection": "v", "requested": 3, "deleted": 2, "count": 38}
    assert "deleted 0 of 1" in cli("--data", d, "delete", "v", "row-1").stdout
    assert cli_json("--data", d, "get", "v", "row-1")[0]["found"] is False


# ------------------------------------------------------------------------------------------------
# flush, stats, compact
# ------------------------------------------------------------------------------------------------

def test_why_flush_and_stats_tell_where_the_rows_are_and_why(tmp_path, files):
    d = tmp_path / "d"
    cli("--data", d, "insert", "v", files["npy"], "--create")
    why = cli_json("--data", d, "stats", "--why", "v")
    assert why["memtable_rows"] == 40 and why["due"] == []
    policies = {r["policy"] for r in why["readings"]}
    assert {"size", "global_memory", "time", "wal_size", "manual"} <= policies
    size = next(r for r in why["readings"] if r["key"] == "memory_flush_size_bytes")
    assert size["threshold"] == 1_000_000 and 0 < size["measured"] < 1_000_000
    text = cli("--data", d, "stats", "v", "--why").stdout
    assert "memory_flush_size_bytes" in text and "proxistore flush v" in text

    out = cli("--data", d, "flush", "v").stdout
    assert "flush v [manual: explicit flush request" in out and "40 rows" in out and "phases:" in out
    assert "nothing to flush" in cli("--data", d, "flush").stdout

    stats = cli_json("--data", d, "stats", "v")
    assert stats["rows"] == 40 and stats["memtable"]["rows"] == 0 and stats["storage"]["segments"] >= 1
    overview = cli_json("--data", d, "stats")
    assert overview["wal_strategy"] == "avro" and "v" in overview["collections"]
    assert "nothing to flush" in cli("--data", d, "stats", "--why", "v").stdout


def open_after_size_flushes(path):
    """A database whose collection ``v`` the size policy (at 20 kB) has flushed, still open."""
    db = proxistore.open(path, {"flush": {"size": {"memory_flush_size_bytes": "20kB"}}})
    db.create_collection("v", dim=DIM).insert([f"r{i}" for i in range(1000)], vectors(1000, 3))
    assert db.wait_idle(30)
    return db


def test_stats_shows_the_flushes_of_an_earlier_process_with_their_reasons(tmp_path):
    d = tmp_path / "d"
    with open_after_size_flushes(d) as db:
        written = db.stats()["collections"]["v"]["flushes"]["total"]
    assert written >= 1

    stats = cli_json("--data", d, "stats", "v")
    assert stats["flushes"]["total"] == 0            # the counters are this process's
    size = [e for e in stats["flushes"]["last"] if e["reason"]["policy"] == "size"]
    assert len(size) == written and size[0]["reason"]["key"] == "memory_flush_size_bytes"
    assert size[0]["reason"]["threshold"] == 20_000 and size[0]["segment"]
    text = cli("--data", d, "stats", "v").stdout
    assert "last flushes (recorded across restarts)" in text
    assert "size: memory_flush_size_bytes = 20.00 kB crossed" in text
    assert "size: memory_flush_size_bytes" in cli("--data", d, "stats").stdout


def test_stats_of_a_database_open_in_another_process_is_answered_by_that_process(tmp_path):
    d = tmp_path / "d"
    with open_after_size_flushes(d) as db:
        db.collection("v").insert(["late1", "late2"], vectors(2, 4))   # under the 20 kB threshold
        own = db.stats()["collections"]["v"]

        shown = cli_json("--data", d, "stats")
        assert shown["collections"]["v"]["flushes"]["total"] == own["flushes"]["total"] >= 1
        assert shown["collections"]["v"]["memtable"]["rows"] == 2
        result = cli("--data", d, "stats", "v")
        assert "size: memory_flush_size_bytes = 20.00 kB crossed" in result.stdout
        assert f"answered by process {os.getpid()}" in result.stderr

        why = cli_json("--data", d, "stats", "--why", "v")
        size = next(r for r in why["readings"] if r["key"] == "memory_flush_size_bytes")
        assert why["memtable_rows"] == 2 and not why["due"]
        assert size["measured"] == db.stats()["collections"]["v"]["memtable"]["bytes"] and not size["due"]
        assert "no collection named 'w'" in cli("--data", d, "stats", "w", expect=2).stderr
        assert "no collection named 'w'" in cli("--data", d, "stats", "--why", "w", expect=2).stderr
    assert not os.listdir(d / "control")    # every request was answered and collected


def test_flush_of_a_database_open_in_another_process_is_done_by_that_process(tmp_path):
    d = tmp_path / "d"
    with proxistore.open(d) as db:
        c = db.create_collection("v", dim=DIM)
        c.insert([f"r{i}" for i in range(50)], vectors(50, 5))     # far under the 1 MB threshold
        segments = db.stats()["collections"]["v"]["storage"]["segments"]

        result = cli("--data", d, "--json", "flush", "v")
        flushes = json.loads(result.stdout)["flushes"]
        assert [f["reason"]["policy"] for f in flushes] == ["manual"] and flushes[0]["rows"] == 50
        assert f"answered by process {os.getpid()}" in result.stderr
        st = db.stats()["collections"]["v"]
        assert st["memtable"]["rows"] == 0 and st["storage"]["segments"] == segments + 1
        assert st["flushes"]["by_policy"] == {"manual": 1}
        assert c.count() == 50
        assert "nothing to flush" in cli("--data", d, "flush", "v").stdout
        assert "no collection named 'w'" in cli("--data", d, "flush", "w", expect=2).stderr

        c.insert([f"s{i}" for i in range(50)], vectors(50, 6))
        cli("--data", d, "flush")
        compactions = cli_json("--data", d, "compact", "v")["compactions"]
        assert compactions and compactions[0]["segments_in"] == 2 and compactions[0]["rows_out"] == 100
        assert db.stats()["collections"]["v"]["storage"]["segments"] == 1 and c.count() == 100
    assert not os.listdir(d / "control")


def test_reads_and_deletes_of_a_database_open_in_another_process_are_answered_from_its_live_state(tmp_path):
    d = tmp_path / "d"
    vecs = vectors(30, 7)
    with proxistore.open(d) as db:
        c = db.create_collection("v", dim=DIM)
        c.insert([f"r{i}" for i in range(30)], vecs, metadata=[{"n": i} for i in range(30)])  # memtable only
        (row,) = cli_json("--data", d, "collections")
        assert (row["name"], row["rows"], row["memtable_rows"]) == ("v", 30, 30)

        got = cli_json("--data", d, "get", "v", "r3", "gone")
        assert [g["found"] for g in got] == [True, False] and got[0]["metadata"] == {"n": 3}
        np.testing.assert_array_equal(np.asarray(got[0]["vector"], dtype=np.float32), vecs[3])

        hits = cli_json("--data", d, "search", "v", "--vector", json.dumps(vecs[5].tolist()), "-k", "3")["hits"]
        assert [h["id"] for h in hits] == [h.id for h in c.search(vecs[5], k=3)] and hits[0]["id"] == "r5"
        near = cli_json("--data", d, "search", "v", "--from-id", "r5", "-k", "2")["hits"]
        assert "r5" not in [h["id"] for h in near] and len(near) == 2
        filtered = cli_json("--data", d, "search", "v", "--vector", json.dumps(vecs[5].tolist()),
                            "--filter", '{"n": {"$gte": 20}}')["hits"]
        assert filtered and all(h["metadata"]["n"] >= 20 for h in filtered)

        result = cli("--data", d, "delete", "v", "r1", "r2", "nope")
        assert "deleted 2 of 3 id(s)" in result.stdout and f"answered by process {os.getpid()}" in result.stderr
        assert c.get(["r1", "r2"]) == [None, None] and c.count() == 28   # acknowledged by the holder

        err = cli_json("--data", d, "search", "v", "--vector", "[1, 2]", expect=2)["error"]
        assert err["type"] == "DimensionMismatch"
        assert "no collection named 'w'" in cli("--data", d, "get", "w", "r3", expect=2).stderr
        assert c.count() == 28
    assert not os.listdir(d / "control")
    with proxistore.open(d) as db:           # the delete went through the holder's WAL
        assert db.collection("v").count() == 28 and db.collection("v").get(["r1"]) == [None]


def test_stats_of_a_database_whose_holder_does_not_answer_shows_the_recorded_flushes(tmp_path):
    d = tmp_path / "d"
    with open_after_size_flushes(d) as db:
        recorded = db.stats()["collections"]["v"]["flushes"]["last"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, proxistore; db = proxistore.open(sys.argv[1]); print('open', flush=True); sys.stdin.read()"),
        str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        os.kill(holder.pid, signal.SIGSTOP)      # a hung process: its maintenance answers nothing
        shown = cli_json("--data", d, "stats")
        assert "did not take a request" in shown["open_elsewhere"]
        assert shown["collections"]["v"]["flushes"]["last"] == json.loads(json.dumps(recorded))
        result = cli("--data", d, "stats", "v")
        assert "size: memory_flush_size_bytes = 20.00 kB crossed" in result.stdout
        assert "only the flushes and compactions recorded on disk are shown" in result.stderr
        err = cli_json("--data", d, "stats", "--why", "v", expect=1)["error"]
        assert err["type"] == "HolderUnresponsive" and "background maintenance is not running" in err["message"]
        assert cli_json("--data", d, "flush", "v", expect=1)["error"]["type"] == "HolderUnresponsive"
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.close()
        holder.wait(30)
    assert not os.listdir(d / "control")    # the untaken requests were withdrawn


def test_why_on_a_missing_collection_exits_2(data):
    assert "no collection named 'nope'" in cli("--data", data, "stats", "--why", "nope", expect=2).stderr


def test_compact_reports_what_it_did(data):
    result = cli_json("--data", data, "compact", "vecs")
    assert result["collection"] == "vecs" and isinstance(result["compactions"], list)


# ------------------------------------------------------------------------------------------------
# config, plugins
# ------------------------------------------------------------------------------------------------

def test_config_check_says_ok_or_names_the_key_and_file_with_exit_2(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[flush.size]\nmemory_flush_size_bytes = "200kB"\n')
    assert cli("config", "check", good).stdout.startswith("ok")
    bad = tmp_path / "bad.toml"
    bad.write_text('[flush]\npolicies = ["size", "manual"]\n[flush.time]\nmax_unflushed_age = "1s"\n')
    r = cli("config", "check", bad, expect=2)
    assert str(bad) in r.stderr and "flush.time" in r.stderr and "not enabled" in r.stderr
    result = cli_json("config", "check", bad, expect=2)
    assert result["ok"] is False and result["key"] == "flush.time"
    typo = tmp_path / "typo.toml"
    typo.write_text("[flush.size]\nmemory_flush_sise = 3\n")
    assert "flush.size.memory_flush_sise" in cli("config", "check", typo, expect=2).stderr


def test_config_explain_lists_every_key_with_owner_unit_and_threshold(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[flush.size]\nmemory_flush_size_bytes = "200kB"\n')
    keys = {k["key"]: k for k in cli_json("config", "explain", cfg)["keys"]}
    size = keys["flush.size.memory_flush_size_bytes"]
    assert size["value"] == 200_000 and size["unit"] == "bytes" and size["threshold"] is True
    assert "size" in size["owner"] and size["source"] == "file"
    assert keys["wal.strategy"]["owner"] == "core (proxistore)" and keys["wal.strategy"]["source"] == "default"
    table = cli("config", "explain", cfg).stdout
    assert re.search(r"flush\.size\.memory_flush_size_bytes\s.*200kB.*bytes.*flush policy 'size'.*yes", table)


def test_a_bad_config_given_to_a_data_command_exits_2(data, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[nonsense]\n")
    assert "nonsense" in cli("--data", data, "--config", cfg, "collections", expect=2).stderr


def test_plugins_lists_kinds_packages_hooks_and_keys(tmp_path):
    records = {p["name"]: p for p in cli_json("plugins")}
    assert {"wal_avro", "viper", "flush_policies"} <= set(records)
    provides = {(s["kind"], s["name"]) for p in records.values() for s in p["provides"]}
    assert {("wal", "avro"), ("storage", "viper"), ("flush", "size"), ("flush", "manual")} <= provides
    assert records["wal_avro"]["package"] == "proxistore" and records["wal_avro"]["version"] == proxistore.__version__
    assert "proxistore_wal_strategies" in records["wal_avro"]["hooks"]
    table = cli("plugins").stdout
    assert "memory_flush_size_bytes*" in table and "WAL strategy" in table


def test_a_broken_plugin_is_listed_with_its_error_and_the_rest_still_load(tmp_path):
    """A distribution whose entry point fails at import, found on PYTHONPATH like any install."""
    (tmp_path / "cli_broken_fixture.py").write_text("raise RuntimeError('boom at import')\n")
    info = tmp_path / "proxistore_cli_broken_fixture-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: proxistore-cli-broken-fixture\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[proxistore]\nbroken_fixture = cli_broken_fixture\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = cli("plugins", env=env).stdout
    assert "BROKEN broken_fixture (proxistore-cli-broken-fixture 0.0.1)" in out and "boom at import" in out
    assert "avro" in out
    broken = [p for p in cli_json("plugins", env=env) if p["error"]]
    assert [p["name"] for p in broken] == ["broken_fixture"]


# ------------------------------------------------------------------------------------------------
# wal inspect / verify
# ------------------------------------------------------------------------------------------------

def test_wal_inspect_and_verify_a_healthy_log(tmp_path, files):
    d = tmp_path / "d"
    cli("--data", d, "insert", "v", files["npy"], "--create", "--batch-size", "10")
    info = cli_json("wal", "inspect", d)
    col = info["collections"]["v"]
    assert col["records"] == 4 and col["rows"] == 40 and col["first_lsn"] == 1 and col["last_lsn"] == 40
    assert "wal-" in cli("wal", "inspect", d).stdout
    result = cli_json("wal", "verify", d)
    assert result["ok"] is True and result["rows"] == 40
    assert cli("--data", d, "wal", "verify").stdout.startswith("ok")  # DIR defaults to --data


def test_wal_verify_exits_1_naming_the_first_corrupt_offset(tmp_path, files):
    d = tmp_path / "d"
    cli("--data", d, "insert", "v", files["npy"], "--create", "--batch-size", "10")
    [segment] = sorted((d / "wal" / "v").glob("wal-*.avro"))
    raw = bytearray(segment.read_bytes())
    at = raw.find(files["vec_npy"][0].tobytes())   # inside the first record; three follow it
    assert at > 0
    raw[at + 5] ^= 0xFF
    segment.write_bytes(bytes(raw))
    r = cli("wal", "verify", d, expect=1)
    assert re.search(r"CORRUPT: first bad record in \S+wal-\d+\.avro at byte \d+", r.stdout)
    assert "CRC" in r.stderr
    result = cli_json("wal", "verify", d, expect=1)
    assert result["ok"] is False and result["first_bad_offset"] is not None and result["first_bad_offset"] < at
    assert "problem" in json.dumps(cli_json("wal", "inspect", d))  # inspect still reads, and shows it
    assert "corrupt" in cli("--data", d, "collections", expect=1).stderr.lower()


def test_wal_commands_on_a_directory_without_a_wal_exit_2(tmp_path):
    assert "no WAL directory" in cli("wal", "verify", tmp_path, expect=2).stderr


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------

def test_demo_prints_flushes_with_reasons_hits_and_everything_back_after_reopen(tmp_path):
    d = tmp_path / "demo"
    out = cli("--data", d, "demo", "--rows", "600").stdout
    # 600 rows of 384-d vectors with their text are ~1.5 MB: the 1 MB size threshold must fire
    assert re.search(r"#1 flush stdlib \[size: memory_flush_size_bytes = 1\.00 MB crossed, measured \d", out)
    assert re.search(r"-> [\d,]+ rows, segment \S+ .* in .*; phases: freeze", out)
    assert "query 1: doc-001967 [random] Normal distribution" in out
    assert re.search(r"│\s+1 │\s+0\.\d{4} │ doc-\d{6} │", out)        # a hit: rank, distance, id
    assert "WAL fsync" in out and "flushes by policy" in out
    assert re.search(r"back after reopen: 600 rows \(before close: 600\).*\(same as before close\)", out)

    # a second run replaces the first run's collection, says so, and --json is one document
    report = cli_json("--data", d, "demo", "--rows", "150")
    assert report["dropped_previous_rows"] == 600 and report["rows_ingested"] == 150
    assert report["reopen"]["count_after_reopen"] == 150 and report["reopen"]["same_top_hit"]
    assert [q["query_id"] for q in report["queries"]][:1] == ["doc-001967"]
    assert report["reopen"]["manual_flushes"][0]["reason"]["policy"] == "manual"


def test_demo_takes_another_parquet_dataset(tmp_path, files):
    r = cli("--data", tmp_path / "d", "demo", "--dataset", files["parquet"], "--collection", "mine")
    assert "dataset " + str(files["parquet"]) in r.stdout and "back after reopen: 26 rows" in r.stdout


def test_filtered_search_sees_unflushed_rows_whose_keys_the_first_row_lacks(tmp_path, files):
    d = tmp_path / "d"
    cli("--data", d, "insert", "c", files["npy"], "--create")        # no metadata
    cli("--data", d, "insert", "c", files["parquet"])               # tag / n
    hits = cli_json("--data", d, "search", "c", "--from-id", "p4", "-k", "3", "--filter", '{"tag": "odd"}')["hits"]
    assert len(hits) == 3
