"""Build the demo sample shipped inside the package: ``core/demo_data/stdlib_minilm_sample.parquet``.

Why: ``proxistore demo`` must work offline from a fresh install, so it needs real vectors with real
text in the wheel, small enough to ship (at most 10 MB). This script takes a deterministic random
sample of the stdlib_minilm base set (every column: ``id``, ``vector``, ``module``, ``kind``,
``n_chars``, ``text``), keeps the rows in their original order, and writes them with zstd.
Running it twice gives byte-identical output for the same source file.

    python scripts/make_demo_sample.py [--source base.parquet] [--rows 4500] [--seed 20240611]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(REPO, "..", "shared", "data", "stdlib_minilm", "base.parquet")
DEFAULT_OUT = os.path.join(REPO, "core", "demo_data", "stdlib_minilm_sample.parquet")
#: SHA-256 of base.parquet as published in its README; a different file still works, with a warning.
SOURCE_SHA256 = "4fc186bc6f0122ca9bf8d19e885b064666ae80ecbcdfaa397211b14ad98c1614"
MAX_BYTES = 10_000_000


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sample_table(source: str, rows: int, seed: int) -> pa.Table:
    """``rows`` rows of ``source`` chosen by a seeded RNG, in their original order."""
    table = pq.read_table(source)
    if rows > table.num_rows:
        raise SystemExit(f"asked for {rows} rows but {source} has only {table.num_rows}")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(table.num_rows, size=rows, replace=False))
    return table.take(pa.array(picked))


def write_sample(table: pa.Table, out: str, provenance: dict) -> int:
    """Write ``table`` with zstd and a provenance note in the file metadata; return its size."""
    meta = dict(table.schema.metadata or {})
    meta[b"proxistore.demo_sample"] = json.dumps(provenance, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=10_000)
    os.replace(tmp, out)
    return os.path.getsize(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="stdlib_minilm base.parquet")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the sample")
    parser.add_argument("--rows", type=int, default=4500, help="rows to sample (default 4500)")
    parser.add_argument("--seed", type=int, default=20240611, help="RNG seed (default 20240611)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="fail above this file size")
    args = parser.parse_args(argv)

    digest = sha256(args.source)
    if digest != SOURCE_SHA256:
        print(f"warning: {args.source} has SHA-256 {digest}, not the published {SOURCE_SHA256}",
              file=sys.stderr)
    table = sample_table(args.source, args.rows, args.seed)
    provenance = {"source": "stdlib_minilm/base.parquet", "source_sha256": digest,
                  "rows": table.num_rows, "seed": args.seed,
                  "method": "numpy default_rng(seed).choice(rows, replace=False), original order"}
    size = write_sample(table, args.out, provenance)
    if size > args.max_bytes:
        os.remove(args.out)
        raise SystemExit(f"sample is {size} bytes, above --max-bytes {args.max_bytes}; use fewer --rows")
    modules = table.column("module").value_counts().to_pylist()
    top = sorted(modules, key=lambda d: -d["counts"])[:5]
    print(f"wrote {args.out}: {table.num_rows} rows, {size / 1e6:.2f} MB; top modules: "
          + ", ".join(f"{d['values']} {d['counts']}" for d in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
