"""The crash soak (benchmarks/crash_soak.py): 50 real SIGKILL cycles in CI, and a checker that
is seen to catch a violated model.

``test_soak_50_kill_cycles`` runs the soak as a real subprocess: each cycle starts a writer
process, kills it with SIGKILL at a random moment and checks the reopened database against the
expected-state model. The checker tests tamper with a database the soak left and assert that
``--check-only`` reports it.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import proxistore

REPO = Path(__file__).resolve().parents[1]
SOAK = REPO / "benchmarks" / "crash_soak.py"

spec = importlib.util.spec_from_file_location("crash_soak", SOAK)
soak = importlib.util.module_from_spec(spec)
sys.modules["crash_soak"] = soak
spec.loader.exec_module(soak)


def run_soak(*args, timeout=400):
    return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_50_kill_cycles(tmp_path):
    report_path = tmp_path / "soak.json"
    started = time.monotonic()
    proc = run_soak("--cycles", "50", "--seed", "7", "--json", str(report_path), timeout=540)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["cycles"] == 50 and report["kills"] == 50, report
    assert report["failures"] == 0, report["failure_details"]
    assert report["acked_batches"] > 1000
    assert report["acked_batches_checked"] == report["acked_batches"]
    assert report["inflight_landed"] + report["inflight_absent"] > 10
    assert report["kills_before_open_returned"] + report["kills_during_check"] > 0
    for lane, s in report["lanes"].items():
        assert s["cycles"] >= 12, (lane, s)
        busy = [k for k in ("flushes", "rotations", "checkpoints", "compactions") if s[k] > 0]
        assert busy == ["flushes", "rotations", "checkpoints", "compactions"], (lane, s)
    print(f"50 kill cycles in {time.monotonic() - started:.0f} s: {report['acked_batches']} acknowledged "
          f"batches checked, in flight landed {report['inflight_landed']} / not {report['inflight_absent']}")


# -- the model --------------------------------------------------------------------------------

def test_windowed_replay_equals_full_replay():
    for t in range(2):
        full = {}
        for n in range(150):
            state = soak.thread_state(5, 1, t, n)
            assert state.keys() == full.keys(), n
            for id_, (vec, meta) in state.items():
                assert np.array_equal(vec, full[id_][0]) and meta == full[id_][1]
            nxt = dict(full)
            soak.apply_batch(nxt, soak.main_batch(5, 1, t, n))
            assert nxt.keys() | full.keys() <= set(soak.thread_window(t, n + 1)), n
            changed = nxt.keys() != full.keys() or any(not np.array_equal(nxt[i][0], full[i][0]) for i in nxt)
            assert changed, f"batch {n} leaves the state as it was: its landing could not be seen"
            full = nxt
    assert 150 < len(full) < 24 * soak.WINDOW


def test_ddl_state_follows_the_operations():
    sides = {}
    for n in range(40):
        assert {k: set(v) for k, v in soak.ddl_state(5, 1, n).items()} == sides, n
        op, name = soak.ddl_op(n)
        if op == "create":
            sides[name] = set()
        elif op == "insert":
            sides[name] = set(soak.side_rows(5, 1, name)[0])
        else:
            del sides[name]


# -- the checker catches a violated model -------------------------------------------------

@pytest.fixture(scope="module")
def soaked(tmp_path_factory):
    """A workdir after three kill cycles of lane A (seed 3: every kill comes 0.4–1 s into the load)."""
    work = tmp_path_factory.mktemp("soak") / "work"
    proc = run_soak("--cycles", "3", "--seed", "3", "--lanes", "A", "--workdir", str(work), "--keep",
                    timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    model = json.loads((work / "model.json").read_text())
    assert all(n > 8 and not maybe for n, maybe in model["model"]["A"]["threads"].values()), model
    return work


@pytest.fixture
def work(soaked, tmp_path):
    copy = tmp_path / "work"
    shutil.copytree(soaked, copy)
    model = json.loads((copy / "model.json").read_text())
    return copy, model


def tamper(work, fn):
    with proxistore.open(work / "lane-A", soak.lane_config("A")) as db:
        fn(db.collection(soak.MAIN))


def check_only(work):
    proc = run_soak("--check-only", "--workdir", str(work), "--json", "-", timeout=120)
    return proc, json.loads(proc.stdout)


def test_check_only_passes_on_an_untouched_workdir(work):
    proc, report = check_only(work[0])
    assert proc.returncode == 0 and report["failures"] == 0, proc.stderr[-3000:]


def test_checker_reports_an_acknowledged_batch_deleted_afterwards(work):
    path, model = work
    n = model["model"]["A"]["threads"]["0"][0]
    state = soak.thread_state(model["seed"], 0, 0, n)
    last = max(meta["b"] for _, meta in state.values())
    victims = sorted(id_ for id_, (_, meta) in state.items() if meta["b"] == last)
    tamper(path, lambda col: col.delete(victims))
    proc, report = check_only(path)
    assert proc.returncode == 1 and report["failures"] == 1
    text = "\n".join(report["failure_details"][0]["problems"])
    assert f"thread 0: {n} batches acknowledged" in text
    assert f"{victims[0]}: expected batch {last}, found absent" in text
    assert "FAILURE" in proc.stderr and "lane-A" in proc.stderr


def test_checker_reports_changed_metadata(work):
    path, model = work
    n = model["model"]["A"]["threads"]["2"][0]
    id_, (vec, meta) = sorted(soak.thread_state(model["seed"], 0, 2, n).items())[0]
    tamper(path, lambda col: col.upsert([id_], vec[None], [dict(meta, x=meta["x"] + 1)]))
    proc, report = check_only(path)
    assert proc.returncode == 1
    assert "metadata" in "\n".join(report["failure_details"][0]["problems"])


def test_checker_reports_a_partly_applied_in_flight_batch(work):
    path, model = work
    n = model["model"]["A"]["threads"]["1"][0]
    model["model"]["A"]["threads"]["1"] = [n, True]     # batch n was in flight at the kill
    (path / "model.json").write_text(json.dumps(model))
    op, ids, vecs, metas = soak.main_batch(model["seed"], 0, 1, n)
    half = len(ids) // 2

    def half_batch(col):
        if op == "delete":
            col.delete(ids[:half])
        else:
            getattr(col, op)(ids[:half], vecs[:half], metas[:half])
    tamper(path, half_batch)
    proc, report = check_only(path)
    assert proc.returncode == 1
    text = "\n".join(report["failure_details"][0]["problems"])
    assert f"batch {n} in flight" in text and "matches neither" in text


def test_checker_reports_a_row_outside_the_model(work):
    path, _ = work
    tamper(path, lambda col: col.insert(["t0-999999-0"], np.ones((1, soak.DIM), np.float32), [{"t": 0}]))
    proc, report = check_only(path)
    assert proc.returncode == 1
    assert "count() =" in "\n".join(report["failure_details"][0]["problems"])
