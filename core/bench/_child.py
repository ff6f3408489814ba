"""The ingest phase of a ``crash = true`` run, in its own process: ``python -m proxistore.bench._child SPEC``.

It rebuilds the workload from the spec (the same file tables give the same data and plan), runs
:func:`proxistore.bench.runner.ingest`, writes one JSON line per acknowledged batch
(``{"progress": rows}``) and then ``{"record": ...}`` on stdout, and waits with the database
still open until the parent kills it with SIGKILL. If the parent goes away first (stdin closes),
it exits without closing the database, which is a crash too.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, Dict

from ..jsonable import jsonable
from .runner import ingest, prepare
from .workload import workload_from_dict


def main(spec_text: str) -> None:
    spec: Dict[str, Any] = json.loads(spec_text)
    w = spec["workload"]
    wl = workload_from_dict(w["raw"], source=w["source"], base_dir=w["base_dir"])
    lock = threading.Lock()

    def say(msg: Dict[str, Any]) -> None:
        with lock:
            sys.stdout.write(json.dumps(jsonable(msg)) + "\n")
            sys.stdout.flush()

    data, plan = prepare(wl)
    db, record = ingest(spec["path"], wl, spec["config"], data, plan, progress=lambda n: say({"progress": n}))
    say({"record": record})
    sys.stdin.read()  # returns when the parent closes stdin or dies; the parent normally SIGKILLs first
    os._exit(3)       # never close(): leaving without a clean shutdown is the point


if __name__ == "__main__":
    main(sys.argv[1])
