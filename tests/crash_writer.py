"""A child process for crash tests: writes deterministic batches and prints each acknowledgement.

    python crash_writer.py DB CONFIG_JSON FIRST_BATCH N_BATCHES BATCH_SIZE DIM

Batch b holds ids ``b{b}-{i}`` with vectors drawn from ``default_rng(b)``; every third batch
after the first is an upsert of the previous batch's ids, every fifth deletes two ids of batch b-1.
"""
from __future__ import annotations

import json
import sys

import numpy as np

import proxistore


def batch_content(b: int, size: int, dim: int):
    rng = np.random.default_rng(b)
    return [f"b{b}-{i}" for i in range(size)], rng.standard_normal((size, dim)).astype(np.float32)


def operation(b: int) -> str:
    if b > 0 and b % 5 == 0:
        return "delete"
    if b > 0 and b % 3 == 0:
        return "upsert"
    return "insert"


def main() -> None:
    path, config, first, n, size, dim = sys.argv[1], json.loads(sys.argv[2]), *map(int, sys.argv[3:7])
    db = proxistore.open(path, config)
    names = db.collections()
    col = db.collection("c") if "c" in names else db.create_collection("c", dim=dim, metric="l2")
    print("ready", flush=True)
    for b in range(first, first + n):
        op = operation(b)
        if op == "delete":
            prev_ids, _ = batch_content(b - 1, size, dim)
            col.delete(prev_ids[:2])
        elif op == "upsert":
            prev_ids, _ = batch_content(b - 1, size, dim)
            _, vecs = batch_content(b, size, dim)
            col.upsert(prev_ids, vecs, [{"batch": b}] * size)
        else:
            ids, vecs = batch_content(b, size, dim)
            col.insert(ids, vecs, [{"batch": b}] * size)
        print(f"ack {b}", flush=True)
    db.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
