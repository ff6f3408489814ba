"""``proxistore storage verify|repair [DIR]``: check every stored file; set damaged ones aside.

Segments, deletion vectors, indexes and manifests carry checksums that an open or a search checks
only when it meets a file; ``verify`` checks them all now, as a scrub, so that damage is found
before a query needs the data. It reads the storage root the database records
(``proxistore.json``; else ``--config``'s ``[storage] root``) with the viper engine's own checker,
never opens the database, and works beside a process that has it open. A collection of the
catalog that the storage root does not hold is damage too. Exit 1 lists every damaged file.

``repair`` takes the database's lock (it commits manifests), sets each damaged segment aside with
a list of the rows lost (see ``plugins/viper/repair.py``), and verifies what it repaired. Exit 0
when what it was asked to repair verifies clean; 1 when damage remains (a damaged manifest, which
it does not rebuild) or, with ``--dry-run``, when there is damage to repair.
"""
from __future__ import annotations

import argparse
import os

from proxistore.catalog import CATALOG_DIR, committed_names
from proxistore.config import load_config
from proxistore.fileio import default_filesystem
from proxistore.identity import read_identity
from proxistore.lock import DirectoryLock
from proxistore.storage_root import resolve_storage_root

from .common import UsageError, database_exists
from .output import Output, fmt_bytes

__all__ = ["cmd_storage_verify", "cmd_storage_repair"]


def _viper_root(args: argparse.Namespace, action: str):
    """``(data directory, storage root)`` of the database ``args`` name, which viper must store."""
    data = args.dir if args.dir is not None else args.data
    if not database_exists(data):
        raise UsageError(f"no proxistore database in {data!r} (DIR must be a proxistore data directory)")
    fs = default_filesystem()
    config = load_config(args.config)
    identity = read_identity(fs, data)
    engine = (identity and identity.storage_engine) or config.storage_spec.name
    if engine != "viper":
        raise UsageError(f"storage {action} works on the viper engine's files; {data!r} is stored by {engine!r}")
    configured = identity.storage_root if identity and identity.storage_root is not None else config.storage_root
    return data, resolve_storage_root(configured, data, fs, source=config.source)


def cmd_storage_verify(args: argparse.Namespace, out: Output) -> int:
    from proxistore.plugins.viper.verify import verify_storage

    data, root = _viper_root(args, "verify")
    fs = default_filesystem()
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
        out.error(f"storage damaged: {first.file}: {first.reason} (`proxistore storage repair --dry-run` "
                  f"shows what a repair would set aside and lose)")
        return 1
    return 0


def cmd_storage_repair(args: argparse.Namespace, out: Output) -> int:
    from proxistore.plugins.viper.repair import repair_storage
    from proxistore.plugins.viper.verify import verify_storage

    data, root = _viper_root(args, "repair")
    unknown = sorted(set(args.collection or ()) - set(_names(root)))
    if unknown:
        raise UsageError(f"no collection {', '.join(map(repr, unknown))} in {root.uri or root.path}")
    lock = None if args.dry_run else DirectoryLock(data)    # repair commits manifests: no one else may
    try:
        result = repair_storage(root.path, root.fs, collections=args.collection, apply=not args.dry_run)
        after = verify_storage(root.path, root.fs, collections=args.collection) if result.applied else None
    finally:
        if lock is not None:
            lock.release()
    remaining = after.problems if after else []

    def render() -> None:
        verb = "set aside" if result.applied else "would set aside"
        if not result.set_aside and not result.unrepairable:
            out.print(f"ok: nothing to repair in {result.collections} collection(s) in {root.uri or root.path}")
        for s in result.set_aside:
            if s.what == "index":
                out.print(f"{s.collection}: {verb} the index of {s.segment} ({'; '.join(s.reasons)}); "
                          f"maintenance builds it again")
                continue
            ids = ("ids unreadable" if s.lost_ids is None else
                   f"ids: {', '.join(s.lost_ids[:10])}{' ...' if len(s.lost_ids) > 10 else ''}"
                   f"{'' if s.lost_ids_exact else ' (some may have been deleted already)'}")
            out.print(f"{s.collection}: {verb} {s.segment} ({'; '.join(s.reasons)}): {s.lost_rows} row(s) lost, "
                      f"LSNs {s.min_lsn}..{s.max_lsn}; {ids}")
        if result.applied and result.set_aside:
            out.print(f"the damaged files and REPAIR.json (every lost id) are in each collection's "
                      f"{', '.join(sorted({s.moved_to for s in result.set_aside}))}")
        for p in result.unrepairable:
            out.print(f"{p.collection}: NOT repaired: {p.reason}")
        if after is not None:
            out.print("verify after repair: " + ("ok" if not remaining else f"{len(remaining)} problem(s) remain"))
    out.emit({**result.to_dict(), "verified_after": None if after is None else not remaining}, render)
    if result.unrepairable or remaining:
        first = result.unrepairable[0] if result.unrepairable else remaining[0]
        out.error(f"storage still damaged: {first.file}: {first.reason}")
        return 1
    if not result.applied and result.set_aside:
        out.error(f"storage damaged: a repair would lose {result.lost_rows} row(s); run it without --dry-run "
                  f"(with the database closed) to set the damage aside")
        return 1
    return 0


def _names(root) -> list:
    return sorted(root.fs.listdir(root.path)) if root.fs.isdir(root.path) else []
