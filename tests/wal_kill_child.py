"""Child process of the WAL kill test: appends and syncs batches until it is SIGKILLed.

    python wal_kill_child.py ROOT SYNC_MODE NEXT_LSN FLUSHED_LSN THREADS SEED

Prints ``READY`` once the log is open, ``ACK first last`` after each batch's ``sync`` returned,
and ``FLUSH lsn`` before each checkpoint (as the core records a flush before checkpointing).
Thread 0 plays the flusher: every few acknowledgements it rotates (under the append lock, as the
core does at flush start), prepares spare segments (outside the lock, as the core does right
after), prints FLUSH and checkpoints. A small segment_size makes rotation by
size frequent too. Batch contents are ``make_batch(op(first_lsn), first_lsn, n)``.
"""
from __future__ import annotations

import random
import sys
import threading

from proxistore.contracts import OP_DELETE, OP_INSERT, OP_UPSERT
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy
from proxistore.testing.wal import make_batch

OPS = (OP_INSERT, OP_UPSERT, OP_DELETE)
DIM = 16
SEGMENT_SIZE = 24_000


def op_for(first_lsn: int) -> str:
    return OPS[first_lsn % 3]


def main() -> None:
    root, mode = sys.argv[1], sys.argv[2]
    next_lsn, flushed, threads, seed = map(int, sys.argv[3:7])
    strategy = AvroWalStrategy({"sync_mode": mode, "segment_size": SEGMENT_SIZE},
                               fs=LocalFileSystem(), root=root)
    if "c" not in strategy.list_collections():
        strategy.create_collection("c")
    wal = strategy.open_collection("c")
    for _ in wal.replay(flushed):
        pass
    lock = threading.Lock()
    out = threading.Lock()
    state = {"next": next_lsn}
    print("READY", flush=True)

    def emit(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def writer(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        acked = 0
        while True:
            with lock:
                first = state["next"]
                batch = make_batch(op_for(first), first, rng.randint(1, 12), DIM)
                state["next"] = batch.last_lsn + 1
                token = wal.append(batch)
            wal.sync(token)
            emit(f"ACK {batch.first_lsn} {batch.last_lsn}")
            acked += 1
            if k == 0 and acked % 7 == 0:
                with lock:
                    wal.rotate()
                wal.prepare_rotation()   # outside the lock, as the core does: other writers append meanwhile
                emit(f"FLUSH {batch.last_lsn}")
                wal.checkpoint(batch.last_lsn)

    pool = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


if __name__ == "__main__":
    main()
