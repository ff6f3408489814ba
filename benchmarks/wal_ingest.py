"""WAL ingest and replay benchmark (issue 3, item 8): three ratios against raw baselines
measured in the same run, round-robin, so that machine noise hits both sides alike.

  (a) acknowledged 384-d inserts in batches of 1,000 under sync_mode=always
      vs plain file writes of the same bytes with one fsync per batch          (goal >= 0.6x)
  (b) batches of 1 from 8 writer threads under sync_mode=group
      vs one writer under sync_mode=always                                     (goal >= 3x)
  (c) replay (CRC check + decode into WalBatch) of the segments written in (a)
      vs a plain fastavro.reader pass over the same files                      (goal >= 0.7x)

Usage: python benchmarks/wal_ingest.py [--rounds 5] [--batches 20] [--small 400] [--dir DIR]
       python benchmarks/wal_ingest.py --quick        # a smoke run of a few seconds

Prints, per comparison, the median ratio with its min..max over rounds, and the median rates.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from typing import Callable, Dict, List, Tuple

import fastavro
import numpy as np

from proxistore.contracts import OP_INSERT, WalBatch
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy

DIM = 384
BIG = 1000


def open_wal(root: str, **config):
    s = AvroWalStrategy(config, fs=LocalFileSystem(), root=root)
    s.create_collection("c")
    wal = s.open_collection("c")
    list(wal.replay(0))
    return s, wal


def make_batches(count: int, rows: int, seed: int) -> List[WalBatch]:
    rng = np.random.default_rng(seed)
    out, lsn = [], 1
    for _ in range(count):
        vecs = rng.standard_normal((rows, DIM)).astype(np.float32)
        out.append(WalBatch(OP_INSERT, lsn, [f"doc-{lsn + i:09d}" for i in range(rows)], vecs,
                            None, time.time()))
        lsn += rows
    return out


# -- (a) ------------------------------------------------------------------------------------

def wal_always(root: str, batches: List[WalBatch]) -> Tuple[float, int]:
    """Rows/s of append+sync under always; also the bytes written per batch."""
    s, wal = open_wal(root, sync_mode="always")
    t0 = time.perf_counter()
    for b in batches:
        wal.sync(wal.append(b))
    dt = time.perf_counter() - t0
    per_batch = wal.stats()["bytes_appended"] // len(batches)
    wal.close()
    s.close()
    return len(batches) * len(batches[0]) / dt, per_batch


def raw_writes(root: str, batches: List[WalBatch], nbytes: int) -> float:
    """Rows/s of writing ``nbytes`` per batch (its vectors, then its ids and padding) to a plain
    file with one fsync per batch."""
    payloads = []
    for b in batches:
        vec = memoryview(b.vectors).cast("B")
        extra = ("\n".join(b.ids)).encode()
        payloads.append((vec, (extra * 2)[:max(0, nbytes - len(vec))]))
    path = os.path.join(root, "raw.bin")
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for vec, extra in payloads:
            f.write(vec)
            f.write(extra)
            f.flush()
            os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    return len(batches) * len(batches[0]) / dt


# -- (b) ------------------------------------------------------------------------------------

def small_writers(root: str, mode: str, threads: int, per_thread: int) -> Tuple[float, float]:
    """Acknowledged batches/s of 1-row batches from ``threads`` writers (core-like lock), and
    the mean fsync latency in ms (the ratio (b) is bounded by it: with fast fsyncs the
    per-batch CPU cost of the writers dominates)."""
    s, wal = open_wal(root, sync_mode=mode)
    vec = np.random.default_rng(1).standard_normal((1, DIM)).astype(np.float32)
    lock = threading.Lock()
    lsn = [1]
    start = threading.Barrier(threads + 1)

    def writer() -> None:
        start.wait()
        for _ in range(per_thread):
            with lock:
                token = wal.append(WalBatch(OP_INSERT, lsn[0], [f"d{lsn[0]}"], vec, None, 1.0))
                lsn[0] += 1
            wal.sync(token)

    pool = [threading.Thread(target=writer) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    dt = time.perf_counter() - t0
    stats = wal.stats()
    wal.close()
    s.close()
    return threads * per_thread / dt, stats["fsync_seconds"] / max(1, stats["fsyncs"]) * 1e3


# -- (c) ------------------------------------------------------------------------------------

def replay_rate(root: str) -> float:
    s = AvroWalStrategy({}, fs=LocalFileSystem(), root=root)
    wal = s.open_collection("c")
    t0 = time.perf_counter()
    rows = sum(len(b) for b in wal.replay(0))
    dt = time.perf_counter() - t0
    wal.close()
    s.close()
    return rows / dt


def fastavro_rate(root: str) -> float:
    d = os.path.join(root, "c")
    t0 = time.perf_counter()
    rows = 0
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            for rec in fastavro.reader(f):
                rows += len(rec["ids"])
    dt = time.perf_counter() - t0
    return rows / dt


def summarise(name: str, goal: float, ratios: List[float], rates: Dict[str, List[float]],
              unit: str) -> None:
    med = statistics.median(ratios)
    verdict = "meets" if med >= goal else "BELOW"
    print(f"{name}: median {med:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}, "
          f"{len(ratios)} rounds); goal >= {goal}x: {verdict}")
    for label, values in rates.items():
        print(f"    {label:<34} median {statistics.median(values):>12,.0f} {unit} "
              f"(min {min(values):,.0f}, max {max(values):,.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=20, help="1,000-row batches per run of (a)")
    ap.add_argument("--small", type=int, default=400, help="1-row batches per writer in (b)")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="3 rounds, small sizes")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.batches, args.small = 3, 8, 150
    base = tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir)
    batches = make_batches(args.batches, BIG, seed=0)
    print(f"proxistore WAL benchmark: {args.rounds} rounds, (a) {args.batches} x {BIG} x {DIM}-d, "
          f"(b) 8 x {args.small} vs 1 x {args.small * 2} single-row batches; in {base}")
    a: Dict[str, List[float]] = {"wal always (rows/s)": [], "raw write+fsync (rows/s)": []}
    b: Dict[str, List[float]] = {"group, 8 writers (batches/s)": [],
                                 "always, 1 writer (batches/s)": []}
    c: Dict[str, List[float]] = {"wal replay (rows/s)": [], "fastavro.reader (rows/s)": []}
    ra: List[float] = []
    rb: List[float] = []
    rc: List[float] = []
    fsync_latency: List[float] = []
    try:
        for r in range(args.rounds):
            run: Callable[[str], str] = lambda tag: tempfile.mkdtemp(prefix=f"{tag}{r}-", dir=base)
            wal_dir = run("a")
            wal_rate, nbytes = wal_always(wal_dir, batches)
            raw_rate = raw_writes(run("raw"), batches, nbytes)
            a["wal always (rows/s)"].append(wal_rate)
            a["raw write+fsync (rows/s)"].append(raw_rate)
            ra.append(wal_rate / raw_rate)
            first = (replay_rate, fastavro_rate) if r % 2 == 0 else (fastavro_rate, replay_rate)
            rates = {f: f(wal_dir) for f in first}
            c["wal replay (rows/s)"].append(rates[replay_rate])
            c["fastavro.reader (rows/s)"].append(rates[fastavro_rate])
            rc.append(rates[replay_rate] / rates[fastavro_rate])
            g, _ = small_writers(run("g"), "group", 8, args.small)
            one, fsync_ms = small_writers(run("s"), "always", 1, args.small * 2)
            b["group, 8 writers (batches/s)"].append(g)
            b["always, 1 writer (batches/s)"].append(one)
            fsync_latency.append(fsync_ms)
            rb.append(g / one)
            for d in os.listdir(base):
                shutil.rmtree(os.path.join(base, d))
        summarise("(a) always ingest vs raw write+fsync", 0.6, ra, a, "rows/s")
        summarise("(b) group x8 vs always x1", 3.0, rb, b, "batches/s")
        print(f"    fsync latency of a small write (always, 1 writer): median "
              f"{statistics.median(fsync_latency):.3f} ms")
        summarise("(c) replay vs fastavro.reader", 0.7, rc, c, "rows/s")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
