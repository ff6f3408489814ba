"""Requests across processes (core/control.py): the open database's scheduler takes requests
left in <data>/control/ and answers them, and an asker hears clearly when nobody does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import proxistore
from proxistore.errors import CollectionNotFound, HolderUnresponsive, ProxistoreError
from proxistore.fileio import default_filesystem
from proxistore.control import CONTROL_DIR, ControlResponder, ask

FS = default_filesystem()


def test_the_open_database_answers_with_its_live_memtable(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.create_collection("v", dim=4).insert(["a", "b", "c"], np.eye(3, 4, dtype=np.float32))
        live = ask(FS, str(tmp_path / "d"), {"what": "why", "collection": "v"}, take_timeout=5)
        assert live["pid"] == os.getpid()
        assert live["result"]["stats"]["collections"]["v"]["memtable"]["rows"] == 3
        size = next(r for r in live["result"]["why"] if r["key"] == "memory_flush_size_bytes")
        assert size["measured"] == db.stats()["collections"]["v"]["memtable"]["bytes"]


def test_a_paused_database_still_answers_and_says_it_is_paused(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.maintenance.pause(True)
        live = ask(FS, str(tmp_path / "d"), {"what": "stats"}, take_timeout=5)
        assert live["result"]["stats"]["maintenance"]["paused"] is True


def test_an_unknown_collection_comes_back_as_collection_not_found(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.create_collection("v", dim=4)
        with pytest.raises(CollectionNotFound, match=r"no collection named 'w'.*collections: \['v'\]"):
            ask(FS, str(tmp_path / "d"), {"what": "why", "collection": "w"}, take_timeout=5)
        assert ask(FS, str(tmp_path / "d"), {"what": "stats"}, take_timeout=5)["result"]["stats"]["collections"]


def test_without_an_answer_the_asker_raises_and_takes_its_request_back(tmp_path):
    nobody = tmp_path / "d"
    nobody.mkdir()
    started = time.monotonic()
    with pytest.raises(HolderUnresponsive, match="did not take a request within 0.3 s"):
        ask(FS, str(nobody), {"what": "stats"}, take_timeout=0.3)
    assert time.monotonic() - started < 3
    assert os.listdir(nobody / CONTROL_DIR) == []


def test_a_malformed_request_gets_an_error_answer_and_the_scheduler_goes_on(tmp_path):
    d = tmp_path / "d"
    with proxistore.open(d):
        (d / CONTROL_DIR).mkdir()
        token = f"{int(time.time() * 1000)}-1-bad"
        (d / CONTROL_DIR / f"{token}.ask").write_text("{not json")
        answer = d / CONTROL_DIR / f"{token}.answer"
        deadline = time.monotonic() + 5
        while not answer.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        reply = json.loads(answer.read_text())
        assert reply["ok"] is False and "bad control request" in reply["message"]
        assert ask(FS, str(d), {"what": "stats"}, take_timeout=5)["result"]["stats"]["path"] == str(d)


def test_files_nobody_collected_are_removed_after_a_minute(tmp_path):
    status = tmp_path / CONTROL_DIR
    status.mkdir()
    old = int((time.time() - 61) * 1000)
    new = int(time.time() * 1000)
    for name in (f"{old}-1-a.answer", f"{old}-1-b.ask.tmp", f"{new}-1-c.answer"):
        (status / name).write_text("{}")
    responder = ControlResponder(FS, str(tmp_path), lambda request: {})
    assert responder.poll() == 0
    assert sorted(os.listdir(status)) == [f"{new}-1-c.answer"]


def test_a_request_withdrawn_while_the_responder_looks_is_skipped(tmp_path):
    control = tmp_path / CONTROL_DIR
    control.mkdir()
    (control / f"{int(time.time() * 1000)}-1-gone.ask").write_text('{"what": "stats"}')

    def never(request):
        raise AssertionError("answered a withdrawn request")

    class Withdrawing(type(FS)):
        def rename(self, src, dst):
            os.unlink(src)          # the asker gave up between the listing and the taking
            return super().rename(src, dst)

    assert ControlResponder(Withdrawing(), str(tmp_path), never).poll() == 0
    assert os.listdir(control) == []


def test_an_asker_hears_when_the_holder_exits_after_taking_its_request(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (tmp_path / "LOCK").write_text(dead.stdout.strip())     # a holder that has exited since
    outcome = {}

    def asking():
        try:
            ask(FS, str(tmp_path), {"what": "flush"}, take_timeout=10)
        except HolderUnresponsive as exc:
            outcome["error"] = str(exc)

    asker = threading.Thread(target=asking)
    asker.start()
    deadline = time.monotonic() + 5
    while not list((tmp_path / CONTROL_DIR).glob("*.ask")) and time.monotonic() < deadline:
        time.sleep(0.01)
    request = next((tmp_path / CONTROL_DIR).glob("*.ask"))
    request.rename(request.with_suffix(".taken"))           # taken, and never answered
    asker.join(10)
    assert "exited before answering the flush request" in outcome["error"]


def test_close_answers_the_requests_still_waiting_that_the_database_closed(tmp_path):
    control = tmp_path / CONTROL_DIR
    control.mkdir()
    release = threading.Event()

    def slow(request):
        release.wait(10)
        return {"done": request["n"]}

    responder = ControlResponder(FS, str(tmp_path), slow, run_apart=("flush",))
    now = int(time.time() * 1000)
    for n in (1, 2):
        (control / f"{now}-1-r{n}.ask").write_text(json.dumps({"what": "flush", "n": n}))
    assert responder.poll() == 2
    time.sleep(0.1)                               # r1 runs, r2 waits behind it
    assert responder.close(timeout=0.2) is False  # r1 still running
    waiting = json.loads((control / f"{now}-1-r2.answer").read_text())
    assert waiting["ok"] is False and waiting["error"] == "DatabaseClosed"
    release.set()
    deadline = time.monotonic() + 5
    while not (control / f"{now}-1-r1.answer").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads((control / f"{now}-1-r1.answer").read_text()) == {"pid": os.getpid(), "ok": True,
                                                                        "result": {"done": 1}}
    assert sorted(p.suffix for p in control.iterdir()) == [".answer", ".answer"]


def test_an_unknown_request_is_answered_with_an_error_and_the_database_stays_usable(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.create_collection("v", dim=4)
        with pytest.raises(ProxistoreError, match="unknown control request 'reboot'"):
            ask(FS, str(tmp_path / "d"), {"what": "reboot"}, take_timeout=5)
        flushed = ask(FS, str(tmp_path / "d"), {"what": "flush", "collection": "v"}, take_timeout=5)
        assert flushed["result"] == {"flushes": []}      # nothing to flush, and the thread still runs
