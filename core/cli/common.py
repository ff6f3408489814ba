"""What the command modules share: the usage error, opening the database, and the flush recorder.

Why: every command that touches data opens the database the same way (same ``--data`` and
``--config``, same refusal to create a directory by accident) and reports the flushes that
happened while it ran, whichever policy triggered them.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import threading
from typing import Any, Dict, List, Optional

import proxistore
from proxistore.identity import FORMAT_FILE
from proxistore.registry import build_registry

__all__ = ["UsageError", "FlushRecorder", "open_database", "parse_json_option", "database_exists"]


class UsageError(Exception):
    """The command line asks for something impossible (bad JSON, missing file...): exit 2."""


class FlushRecorder:
    """An observer plugin that records every flush finished while the CLI has a database open.

    Flushes run on background worker threads; the hook only queues the event, and the command
    prints it from the main thread (``drain``) so output never interleaves with a progress bar.
    """

    def __init__(self) -> None:
        self.__name__ = "proxistore-cli"  # the name the registry shows for this observer
        self._queue: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._lock = threading.Lock()
        self.seen: List[Dict[str, Any]] = []

    @proxistore.hookimpl
    def proxistore_flush_finished(self, event: Any) -> None:
        self._queue.put(event.to_dict())

    def drain(self) -> List[Dict[str, Any]]:
        """The flushes finished since the last drain, oldest first (also kept in ``seen``)."""
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self.seen.extend(out)
        return out


def database_exists(path: str) -> bool:
    return os.path.isfile(os.path.join(path, FORMAT_FILE))


def open_database(args: argparse.Namespace, *, create: bool = False,
                  recorder: Optional[FlushRecorder] = None) -> proxistore.Database:
    """Open ``--data`` with ``--config``; refuses a directory that is not a database unless ``create``.

    Why refuse: ``proxistore.open`` creates the directory, so a typo in ``--data`` would
    otherwise leave an empty database behind and report "no collections".
    """
    if not create and not database_exists(args.data):
        raise UsageError(f"no proxistore database in {args.data!r} (no {FORMAT_FILE}); pass --data DIR, "
                         f"or create one with `proxistore insert --create` or `proxistore demo`")
    registry = build_registry(extra_plugins=(recorder,) if recorder is not None else ())
    return proxistore.open(args.data, args.config, registry=registry)


def parse_json_option(text: str, option: str, expect: type) -> Any:
    """``text`` parsed as JSON of type ``expect``; a clear usage error naming ``option`` otherwise."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option} is not valid JSON: {exc}") from None
    if not isinstance(value, expect):
        raise UsageError(f"{option} must be a JSON {_json_kind(expect)}, got {type(value).__name__}")
    return value


def _json_kind(t: type) -> str:
    return {list: "array", dict: "object"}.get(t, t.__name__)
