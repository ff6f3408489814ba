"""``proxistore storage verify [DIR]``: read back every stored file and check it (read-only).

Segments, deletion vectors, indexes and manifests carry checksums that an open or a search checks
only when it meets a file; this checks them all now, as a scrub, so that damage is found before a
query needs the data. It reads the storage root the database records (``proxistore.json``; else
``--config``'s ``[storage] root``) with the viper engine's own checker, never opens the database,
and works beside a process that has it open. A collection of the catalog that the storage root
does not hold is damage too. Exit 1 lists every damaged file.
"""
from __future__ import annotations

import argparse
import os

from proxistore.catalog import CATALOG_DIR, committed_names
from proxistore.config import load_config
from proxistore.fileio import default_filesystem
from proxistore.identity import read_identity
from proxistore.storage_root import resolve_storage_root

from .common import UsageError, database_exists
from .output import Output, fmt_bytes

__all__ = ["cmd_storage_verify"]


def cmd_storage_verify(args: argparse.Namespace, out: Output) -> int:
    from proxistore.plugins.viper.verify import verify_storage

    data = args.dir if args.dir is not None else args.data
    if not database_exists(data):
        raise UsageError(f"no proxistore database in {data!r} (DIR must be a proxistore data directory)")
    fs = default_filesystem()
    config = load_config(args.config)
    identity = read_identity(fs, data)
    engine = (identity and identity.storage_engine) or config.storage_spec.name
    if engine != "viper":
        raise UsageError(f"storage verify checks the viper engine's files; {data!r} is stored by {engine!r}")
    configured = identity.storage_root if identity and identity.storage_root is not None else config.storage_root
    root = resolve_storage_root(configured, data, fs, source=config.source)
    result = verify_storage(root.path, root.fs)
    for name in sorted(set(committed_names(fs, os.path.join(data, CATALOG_DIR))) - set(result.names)):
        result.missing(name, "in the catalog, but the storage root holds no manifest for it: the database "
                             "would not open")

    def render() -> None:
        summary = (f"{result.collections} collection(s), {result.segments} segment(s), {result.rows} rows "
                   f"({result.live_rows} live), {result.indexes} index(es), {fmt_bytes(result.bytes)}")
        if result.ok:
            out.print(f"ok: {summary} in {root.uri or root.path}")
        else:
            out.print(f"DAMAGED: {len(result.problems)} file problem(s); checked {summary} in {root.uri or root.path}")
            out.table(["collection", "file", "problem"], [[p.collection, p.file, p.reason] for p in result.problems],
                      nowrap=("file",))
        if result.unreferenced:
            out.print(f"{len(result.unreferenced)} file(s) no manifest references (removed at the next open): "
                      f"{', '.join(result.unreferenced)}")
    out.emit(result.to_dict(), render)
    if not result.ok:
        first = result.problems[0]
        out.error(f"storage damaged: {first.file}: {first.reason}")
        return 1
    return 0
