"""``proxistore``: the command line. This module builds the parser and maps errors to exit codes.

    proxistore [--data DIR] [--config FILE] [--json] COMMAND ...

Exit codes: 0 ok; 1 runtime error (any proxistore error that is not about usage or config, such
as a locked directory, a failed flush or a corrupt WAL); 2 usage or config error (bad arguments,
:class:`~proxistore.errors.ConfigError`, :class:`~proxistore.errors.InputError`, unreadable input
files). An error prints one line on stderr; ``PROXISTORE_DEBUG=1`` adds the traceback. With
``--json`` stdout holds exactly one JSON document, also on error (``{"error": {...}}``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Any, Callable, Dict, List, Optional

from proxistore import __version__
from proxistore.errors import ConfigError, InputError, ProxistoreError

from .bench_cmd import add_bench_commands
from .common import UsageError
from .output import Output

__all__ = ["main", "build_parser", "exit_code"]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
DEBUG_ENV = "PROXISTORE_DEBUG"


def _handler(module: str, name: str) -> Callable[[argparse.Namespace, Output], int]:
    """Import the command's module only when it runs (``--help`` and ``plugins`` stay fast)."""
    def run(args: argparse.Namespace, out: Output) -> int:
        import importlib

        return getattr(importlib.import_module(f"proxistore.cli.{module}"), name)(args, out)
    run.__name__ = name
    return run


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--data/--config/--json, accepted before the command (with defaults) or after it."""
    d = (lambda value: value) if top else (lambda value: argparse.SUPPRESS)
    parser.add_argument("--data", metavar="DIR", default=d("./data"),
                        help="the database directory (default: ./data)")
    parser.add_argument("--config", metavar="FILE", default=d(None),
                        help="TOML config file (default: the built-in defaults)")
    parser.add_argument("--json", action="store_true", default=d(False),
                        help="print one JSON document on stdout instead of tables")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxistore", description="proxistore: a durable, embeddable vector store.",
        epilog="exit codes: 0 ok, 1 runtime error, 2 usage or config error; PROXISTORE_DEBUG=1 shows tracebacks")
    _global_options(parser, top=True)
    parser.add_argument("--version", action="version", version=f"proxistore {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, handler: Callable, parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(handler=handler)
        return p

    p = command("demo", "ingest the shipped sample with live flush reasons, search it, reopen it",
                _handler("demo", "cmd_demo"))
    p.add_argument("--dataset", metavar="FILE.parquet", help="Parquet file with 'id', 'vector' and optional "
                   "metadata columns (default: the shipped stdlib_minilm sample)")
    p.add_argument("--rows", type=int, metavar="N", help="ingest at most N rows (default: all)")
    p.add_argument("--batch-size", type=int, default=100, metavar="N", help="rows per insert (default 100)")
    p.add_argument("--collection", default="stdlib", metavar="NAME",
                   help="collection to (re)create (default: stdlib; an existing one is dropped first)")

    command("collections", "list collections: name, dim, metric, rows, segments",
            _handler("data", "cmd_collections"))

    p = command("insert", "insert vectors from a .npy, .parquet or .jsonl file", _handler("data", "cmd_insert"))
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("file", metavar="FILE", help=".npy (ids <prefix><row>), .parquet (id, vector, scalar "
                   "metadata columns) or .jsonl ({id, vector, metadata})")
    p.add_argument("--create", action="store_true", help="create the collection (and database) if missing")
    p.add_argument("--dim", type=int, metavar="N", help="dimension for --create (default: from the file)")
    p.add_argument("--metric", default="cosine", choices=("cosine", "l2", "ip"), help="metric for --create")
    p.add_argument("--upsert", action="store_true", help="replace existing ids instead of failing on them")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N", help="rows per write (default 1000)")
    p.add_argument("--id-prefix", default="row-", metavar="P", help="id prefix for .npy rows (default row-)")

    p = command("search", "k nearest neighbours of a vector or of a stored id", _handler("data", "cmd_search"))
    p.add_argument("collection", metavar="COLLECTION")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--vector", metavar="JSON", help="the query as a JSON array of numbers")
    q.add_argument("--from-id", metavar="ID", help="use this stored id's vector (the id itself is left out)")
    p.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    p.add_argument("--filter", metavar="JSON", help='metadata filter, e.g. \'{"module": "json"}\'')
    p.add_argument("--ef", type=int, metavar="N", help="ANN search breadth (engine-specific)")

    p = command("get", "stored records by id", _handler("data", "cmd_get"))
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = command("delete", "delete ids (unknown ids are ignored)", _handler("data", "cmd_delete"))
    p.add_argument("collection", metavar="COLLECTION")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = command("flush", "flush now and print each flush with its reason", _handler("admin", "cmd_flush"))
    p.add_argument("collection", nargs="?", metavar="COLLECTION", help="default: every collection")

    p = command("compact", "merge segments and build indexes now", _handler("admin", "cmd_compact"))
    p.add_argument("collection", nargs="?", metavar="COLLECTION", help="default: every collection")

    p = command("stats", "database or collection statistics", _handler("admin", "cmd_stats"))
    p.add_argument("collection", nargs="?", metavar="COLLECTION")
    p.add_argument("--why", nargs="?", const=True, metavar="COLLECTION",
                   help="why has COLLECTION not flushed yet: every enabled threshold and its measured value")

    cfg = sub.add_parser("config", help="check or explain a config file", description="check or explain a config file")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    for name, helptext, handler in (
            ("check", "validate FILE: exit 0 and 'ok', or 2 naming the key and file",
             _handler("config_cmd", "cmd_config_check")),
            ("explain", "every key: effective value, unit, owner, enforced threshold or not",
             _handler("config_cmd", "cmd_config_explain"))):
        p = command(name, helptext, handler, cfg_sub)
        p.add_argument("file", nargs="?", metavar="FILE", help="default: --config, else the built-in defaults")

    command("plugins", "loaded plugins: kind, package and version, hooks, config keys, errors",
            _handler("plugins_cmd", "cmd_plugins"))

    wal = sub.add_parser("wal", help="inspect or verify a data directory's WAL (read-only)",
                         description="inspect or verify a data directory's WAL (read-only)")
    wal_sub = wal.add_subparsers(dest="wal_command", metavar="ACTION", required=True)
    for name, helptext, handler in (
            ("inspect", "segments, records, rows and LSN ranges per collection",
             _handler("wal_cmd", "cmd_wal_inspect")),
            ("verify", "check every record; exit 1 with the first bad file and offset",
             _handler("wal_cmd", "cmd_wal_verify"))):
        p = command(name, helptext, handler, wal_sub)
        p.add_argument("dir", nargs="?", metavar="DIR", help="data directory (default: --data)")
    storage = sub.add_parser("storage", help="verify or repair a data directory's stored files",
                             description="verify or repair a data directory's stored files")
    storage_sub = storage.add_subparsers(dest="storage_command", metavar="ACTION", required=True)
    p = command("verify", "check every segment, deletion vector, index and manifest against its checksum; "
                "exit 1 listing the damaged files", _handler("storage_cmd", "cmd_storage_verify"), storage_sub)
    p.add_argument("dir", nargs="?", metavar="DIR", help="data directory (default: --data)")
    p = command("repair", "set damaged segments and indexes aside (their files and a list of every lost id "
                "kept in the collection's damaged/ folder) so the database opens again; needs it closed",
                _handler("storage_cmd", "cmd_storage_repair"), storage_sub)
    p.add_argument("dir", nargs="?", metavar="DIR", help="data directory (default: --data)")
    p.add_argument("--collection", action="append", metavar="NAME", help="repair only NAME (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="report what would be set aside; change nothing")
    add_bench_commands(command, _handler)  # bench, ab: see bench_cmd.py
    return parser


def exit_code(exc: BaseException) -> int:
    """2 for usage, input and config errors; 1 for everything else."""
    if isinstance(exc, (UsageError, InputError, ConfigError)):
        return EXIT_USAGE
    return EXIT_RUNTIME


def _message(exc: BaseException) -> str:
    if isinstance(exc, (ProxistoreError, UsageError)):
        text = str(exc)
    elif isinstance(exc, OSError):
        text = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    else:
        text = f"internal error: {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for the traceback)"
    context = getattr(exc, "cli_context", None)
    return " ".join(text.split()) + (f" ({context})" if context else "")


def _error_json(exc: BaseException, message: str, code: int) -> Dict[str, Any]:
    err: Dict[str, Any] = {"type": type(exc).__name__, "message": message, "exit_code": code}
    for attr in ("key", "file", "line", "offset", "plugin"):
        if getattr(exc, attr, None) is not None:
            err[attr] = getattr(exc, attr)
    return {"error": err}


def _setup_logging(debug: bool) -> None:
    """Library warnings (a torn WAL tail repaired on open...) go to stderr, one line each."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, stream=sys.stderr,
                        format="proxistore: %(levelname)s: %(message)s")


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    _setup_logging(debug)
    out = Output(json_mode=args.json)
    try:
        return args.handler(args, out)
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except BrokenPipeError:  # `proxistore search ... | head`: the reader left; not worth a message
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_RUNTIME
    except Exception as exc:
        code = exit_code(exc)
        message = _message(exc)
        if debug:
            traceback.print_exc()
        if out.json:
            out.emit(_error_json(exc, message, code))
        out.error(message)
        return code


if __name__ == "__main__":
    sys.exit(main())
