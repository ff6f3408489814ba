"""`proxistore bench` and `proxistore ab` driven as a user drives them (a subprocess per command) on
tiny workloads: complete reports, --json, --plot, exit codes, and the A/B verdicts."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from test_cli import ENV, cli, cli_json

#: 2,000 x 32 in batches of 100 from 2 writers with upserts and deletes, searches at a rate,
#: a final flush, then SIGKILL and reopen.
TINY = """
    description = "tiny: every feature of a workload, in about a second"
    [data]
    vectors = 2000
    dim = 32
    metadata = ["group"]
    [ingest]
    batch_size = 100
    writers = 2
    upsert_share = 0.1
    delete_share = 0.05
    sample_interval = "10ms"
    [queries]
    count = 100
    k = 10
    rate_during_ingest = 200
    filter = { group = { "$in" = ["a", "b", "c"] } }
    [finish]
    final = "flush"
    crash = true
"""
EVERY_METRIC = [
    "write.rows", "write.batches", "write.inserted_rows", "write.upserted_rows", "write.deleted_rows",
    "write.errors", "write.seconds", "write.rows_per_s", "write.latency_p50_s", "write.latency_p99_s",
    "write.latency_max_s", "stall.count", "stall.seconds", "stall.timeouts", "flush.count", "flush.writes", "flush.failures",
    "flush.seconds_p50", "flush.seconds_max", "flush.rows_p50", "memtable.peak_bytes", "wal.peak_bytes",
    "wal.end_bytes", "segments.peak", "segments.end_of_ingest", "segments.final", "compactions",
    "search.ingest.count", "search.ingest.per_s", "search.ingest.p50_s", "search.ingest.p99_s",
    "search.after.count", "search.after.per_s", "search.after.p50_s", "search.after.p99_s",
    "recall.after_ingest", "recall.after_reopen", "final.seconds", "settle.seconds", "reopen.seconds",
    "rows.expected", "rows.after_reopen", "rows.missing", "disk.bytes"]
#: 10,000 x 32 in 235 batches of 50: a 10 kB memtable flushes about 60 times (the scheduler freezes
#: it a few batches after it crosses), so a few flushes more or less from timing are a small
#: share of the count. On the tiny workload the 10 kB config flushed 5 to 7 times, and that
#: spread hid the difference from the A/B rule on a busy machine.
MANY_FLUSHES = """
    description = "many small batches: a small memtable flushes often and steadily"
    [data]
    vectors = 10000
    dim = 32
    metadata = ["group"]
    [ingest]
    batch_size = 50
    writers = 2
    upsert_share = 0.1
    delete_share = 0.05
    [queries]
    count = 20
    k = 10
    [finish]
    final = "flush"
"""
POLICIES = ("size", "global_memory", "time", "wal_size", "manual")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    (d / "tiny.toml").write_text(textwrap.dedent(TINY))
    (d / "tiny_close.toml").write_text(textwrap.dedent(TINY).replace("crash = true", "crash = false"))
    (d / "many_flushes.toml").write_text(textwrap.dedent(MANY_FLUSHES))
    (d / "small.toml").write_text('[flush.size]\nmemory_flush_size_bytes = "10kB"\n')
    (d / "big.toml").write_text('[flush.size]\nmemory_flush_size_bytes = "10MB"\n')
    return d


def test_bench_reports_every_metric_with_sane_values_as_json_and_plots(files):
    plot = files / "tiny.png"
    report = cli_json("bench", "--config", files / "small.toml", "--workload", files / "tiny.toml", "--plot", plot)
    m = report["metrics"]
    assert not [name for name in EVERY_METRIC if name not in m]
    assert not [name for name in EVERY_METRIC if m[name] is None], "only close.seconds may be empty (crash run)"
    assert m["close.seconds"] is None and m["reopen.seconds"] > 0
    # counts match the workload: 2,000 rows in 20 insert batches; 15% of batches are upserts or deletes,
    # so 20 * 0.15 / 0.85 = 4 more batches of 100 rows: 3 upserts and 1 delete
    assert (m["write.inserted_rows"], m["write.upserted_rows"], m["write.deleted_rows"]) == (2000, 300, 100)
    assert m["write.batches"] == 24
    assert m["write.rows"] == m["write.inserted_rows"] + m["write.upserted_rows"] + m["write.deleted_rows"]
    assert m["write.errors"] == 0
    assert m["rows.expected"] == 2000 - m["write.deleted_rows"] == m["rows.after_reopen"] and m["rows.missing"] == 0
    assert m["flush.count"] == sum(m[f"flush.by_policy.{p}"] for p in POLICIES) and m["flush.failures"] == 0
    assert m["flush.by_policy.size"] >= 3                       # 10 kB memtables: many size flushes
    assert m["flush.by_policy.manual"] <= 1                     # the final flush, if anything was left
    assert any(name.startswith("flush.phase.encode.") for name in m)
    assert m["write.latency_p50_s"] <= m["write.latency_p99_s"] <= m["write.latency_max_s"] <= m["write.seconds"]
    assert m["write.rows_per_s"] == pytest.approx(m["write.rows"] / m["write.seconds"])
    assert m["search.after.count"] == 100 and m["search.ingest.count"] >= 1
    assert m["search.after.p50_s"] <= m["search.after.p99_s"]
    assert 0.0 <= m["recall.after_ingest"] <= 1.0 and 0.0 <= m["recall.after_reopen"] <= 1.0
    assert m["recall.after_ingest"] >= 0.9 and m["recall.after_reopen"] >= 0.9
    assert m["memtable.peak_bytes"] > 0 and m["wal.peak_bytes"] > 0 and m["disk.bytes"] > 0
    assert m["segments.peak"] >= m["segments.final"] >= 1 and m["stall.count"] == 0
    # the per-policy breakdown with phase timings, and the timeline the plot is drawn from
    by = {f["policy"]: f for f in report["flushes_by_policy"]}
    assert by["size"]["count"] == m["flush.by_policy.size"] and "encode" in by["size"]["phases_p50"]
    t = report["timeline"]
    assert len(t["writes"]["latency"]) == m["write.batches"] and len(t["samples"]["t"]) >= 2
    assert len(t["flushes"]) == m["flush.writes"] <= m["flush.count"]
    assert report["workload"]["finish"]["crash"] is True and report["errors"] == []
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_help_lists_bench_and_ab():
    out = cli("--help").stdout
    assert " bench " in out and " ab " in out
    usage = cli("ab", "--help").stdout
    assert "A.toml" in usage and "--repeat" in usage and "--workload" in usage and "--plot" in usage


def test_bench_prints_tables_by_default(files):
    out = cli("bench", "--workload", files / "tiny_close.toml").stdout
    for text in ("proxistore bench: workload tiny_close", "writes", "flushes by policy", "searches",
                 "recall.after_ingest", "close.seconds", "reopen.seconds", "write.latency_p99_s"):
        assert text in out


def test_bench_errors_exit_2_naming_key_and_file(files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[ingest]\nwriters = "two"\n')
    r = cli("bench", "--workload", bad, expect=2)
    assert f"{bad}, key 'ingest.writers': expected an integer" in r.stderr and "Traceback" not in r.stderr
    err = cli_json("bench", "--workload", bad, expect=2)["error"]
    assert err["key"] == "ingest.writers" and err["file"] == str(bad)
    missing = tmp_path / "missing.toml"
    missing.write_text('[data]\nsource = "parquet"\npath = "nowhere/base.parquet"\n')
    r = cli("bench", "--workload", missing, expect=2)
    assert f"dataset not found: {tmp_path / 'nowhere' / 'base.parquet'}" in r.stderr
    assert "no workload named 'nope'" in cli("bench", "--workload", "nope", expect=2).stderr
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[flush.size]\nmemory_flush_size = 3\n")
    assert "flush.size.memory_flush_size" in cli("bench", "--config", cfg, "--workload", files / "tiny.toml",
                                                  expect=2).stderr
    assert "at least 2" in cli("ab", "default", "default", "--workload", files / "tiny.toml", "--repeat", "1",
                               expect=2).stderr


def test_plot_without_matplotlib_is_a_clear_usage_error(files, tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from proxistore.cli.main import main; "
            f"sys.exit(main(['bench', '--workload', {str(files / 'tiny.toml')!r}, '--plot', "
            f"{str(tmp_path / 'x.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "--plot needs matplotlib" in r.stderr and "proxistore[plot]" in r.stderr


def test_ab_of_a_config_with_itself_finds_no_difference(files):
    report = cli_json("ab", files / "big.toml", files / "big.toml", "--workload", files / "tiny_close.toml",
                      "--repeat", "3")
    assert report["repeat"] == 3 and "differs when" in report["rule"]
    names = {c["name"] for c in report["metrics"]}
    assert not [n for n in EVERY_METRIC + ["close.seconds"] if n not in names]
    for c in report["metrics"]:
        assert len(c["a"]["values"]) == 3 and len(c["b"]["values"]) == 3
        assert c["a"]["min"] <= c["a"]["median"] <= c["a"]["max"]
    differing = {c["name"]: (c["a"]["values"], c["b"]["values"]) for c in report["metrics"]
                 if c["verdict"] != "no difference"}
    if differing:
        # A burst of another process's fsyncs can land on all three runs of one side (seen once,
        # with a crash soak running beside the suite: the manifest phase at 9 ms vs 0.8 ms). A
        # flaw of the rule or of the runner repeats; such a burst does not land on the same
        # metric twice.
        again = cli_json("ab", files / "big.toml", files / "big.toml", "--workload", files / "tiny_close.toml",
                         "--repeat", "3")
        repeated = {c["name"] for c in again["metrics"] if c["verdict"] != "no difference"} & set(differing)
        assert not repeated, {n: differing[n] for n in repeated}
    else:
        assert report["differs"] == []


def test_ab_of_really_different_configs_reports_the_flush_count_difference(files):
    plot = files / "ab.png"
    report = cli_json("ab", files / "small.toml", files / "big.toml", "--workload", files / "many_flushes.toml",
                      "--repeat", "2", "--plot", plot)
    by = {c["name"]: c for c in report["metrics"]}
    for name in ("flush.count", "flush.by_policy.size"):
        assert by[name]["verdict"] == "differs", by[name]
        assert by[name]["ratio"] is not None and by[name]["ratio"] < 0.2
    assert "flush.count" in report["differs"]
    assert by["rows.missing"]["verdict"] == "no difference" and by["write.rows"]["verdict"] == "no difference"
    assert report["a"]["config"].endswith("small.toml") and report["b"]["config"].endswith("big.toml")
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    table = cli("ab", "default", "default", "--workload", files / "tiny_close.toml", "--repeat", "2").stdout
    assert "B/A" in table and "no difference" in table and "rule: differs when" in table
