"""I/O error sweep: each I/O operation of the workload fails in turn (EIO or ENOSPC, once or from
then on), under the real WAL and storage code.

The failing call raises a proxistore error to its caller (the write is then not acknowledged) or
succeeds; while the fault lasts, reads keep working and show every acknowledged write; once the
fault clears, the same step retried succeeds and the workload completes without a reopen (ingest
resumes when space returns); then the power goes, and what was made durable holds the whole
workload, searchable, with storage and WAL in agreement.
"""
from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest

import proxistore
from proxistore.errors import ProxistoreError
from proxistore.testing.faultfs import Fault, FaultInjectingFileSystem

from fault_workload import check_recovered, check_searches, expected, matching_prefix, perform, plan, snapshot
from test_fault_power_loss import count_ops, sweep_config


def run_with_fault(tmp_path, steps, config, fault: Fault, tag: str):
    """Run ``steps`` with ``fault``; at the first failure check reads, clear the fault, retry and
    finish. Returns (index of the failed step or None, the error, fs)."""
    root = tmp_path / f"db-{tag}"
    fs = FaultInjectingFileSystem(str(root), faults=[fault])
    failed, error = None, None
    try:
        db = proxistore.open(root, config, fs=fs)
    except ProxistoreError as exc:
        failed, error = -1, exc
        fs.clear_faults()
        db = proxistore.open(root, config, fs=fs)
    db.maintenance.pause(True)
    i = 0
    while i < len(steps):
        try:
            perform(db, steps[i])
        except ProxistoreError as exc:
            if failed is not None and failed != -1:
                raise AssertionError(f"step {i} ({steps[i].describe()}) failed again after the fault "
                                     f"cleared: {exc!r}") from exc
            failed, error = i, exc
            got = snapshot(db, steps)                      # reads keep working meanwhile
            assert matching_prefix(got, steps, [i, i + 1]) is not None, \
                f"while failing, reads do not show the acknowledged writes: {got.keys()}"
            check_searches(db, got)
            fs.clear_faults()
            continue                                       # retry the same step
        i += 1
    db.close()
    return failed, error, fs


def fault_points(tmp_path, sync_mode):
    steps = plan(batches=9, seed=3)
    dry = count_ops(tmp_path, sync_mode, steps)
    return steps, dry.ops


@pytest.mark.timeout(900)
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_a_failing_io_operation_never_loses_an_acknowledged_write(tmp_path, code, persistent):
    steps, total = fault_points(tmp_path, "group")
    config = sweep_config("group")
    failures = 0
    for n in range(1, total + 1):
        fault = Fault(None, nth=n, errno=code, persistent=persistent)
        failed, error, fs = run_with_fault(tmp_path, steps, config, fault, f"{n}")
        where = f"fault at operation {n} ({fs.injected[0][1:3] if fs.injected else 'not reached'})"
        if failed is not None:
            failures += 1
            assert isinstance(error, ProxistoreError), f"{where}: unclear error {error!r}"
        after = fs.image().materialize(str(tmp_path / f"after-{n}"))
        try:
            check_recovered(after, steps, [len(steps)], config)
        except AssertionError as exc:
            raise AssertionError(f"{where}, failed step {failed} ({error!r}): {exc}") from exc
        shutil.rmtree(tmp_path / f"db-{n}")
        shutil.rmtree(after)
    assert failures > total // 2, "most injected faults should reach a caller as an error"
