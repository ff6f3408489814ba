"""Child processes of benchmarks/peers.py (not run by hand).

  _peer_child.py write SYSTEM PATH VECTORS.npy
      create the store at PATH and insert the rows of VECTORS.npy in batches of 1,000 (ids are
      row numbers), printing ``ack N`` (N = batch number from 0) after each insert call returns;
      the parent SIGKILLs this process part-way through.
  _peer_child.py reopen SYSTEM PATH QUERY.npy
      after the imports, time from opening the existing store at PATH to the first answer of a
      search for the query; print {"open_to_first_search_s": ...} as JSON.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from peers import ADAPTERS, BATCH, K, import_system


def main(argv: list) -> int:
    mode, system, path, file = argv
    import_system(system)
    ad = ADAPTERS[system]()
    if mode == "write":
        vectors = np.load(file)
        ad.create(path)
        print("ready", flush=True)
        for b, s in enumerate(range(0, len(vectors), BATCH)):
            ad.insert(np.arange(s, min(len(vectors), s + BATCH)), vectors[s:s + BATCH])
            print(f"ack {b}", flush=True)
        ad.close()
        return 0
    if mode == "reopen":
        q = np.load(file)[0]
        t = time.perf_counter()
        ad.open(path)
        hits = ad.search(q, K)
        elapsed = time.perf_counter() - t
        ad.close()
        print(json.dumps({"open_to_first_search_s": elapsed, "hits": len(hits)}), flush=True)
        return 0
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
