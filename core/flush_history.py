"""A collection's recent flushes, kept on disk so that "why did this flush?" outlives the process.

The failure this project was born from went unseen because nothing told the operator what the
flush manager did. ``stats()`` answers for the running process; this file answers after a
restart, and for ``proxistore stats`` run later from another process. It is
``collections/<name>/flushes.jsonl`` in the catalog (it goes with the collection when it is
dropped): one JSON line per flush attempt, appended when the attempt ends.

It is a record, not data: an append is not fsynced, so a power loss may take its last lines (never
a row), and a torn or unreadable line is skipped on load. The file is rewritten with the newest
``keep`` lines once it holds twice that many, so it stays small.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping

from .fileio import FileSystem
from .jsonable import jsonable

__all__ = ["FlushHistory", "HISTORY_FILE"]

HISTORY_FILE = "flushes.jsonl"


class FlushHistory:
    """The on-disk flush record of one collection (see the module docstring)."""

    def __init__(self, fs: FileSystem, path: str, keep: int) -> None:
        self.fs = fs
        self.path = path
        self.keep = keep
        self.skipped_lines = 0
        self._lines = 0
        self._rewrite = False   # the file holds a torn or foreign line: the next append replaces it

    def load(self) -> List[Dict[str, Any]]:
        """The newest ``keep`` records, oldest first; [] when there is no file yet.

        An OSError is raised to the caller, which decides whether a missing record matters."""
        if not self.fs.exists(self.path):
            return []
        records = []
        data = self.fs.read_bytes(self.path)
        lines = data.splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:      # a torn last line, or bytes that are not ours
                self.skipped_lines += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                self.skipped_lines += 1
        self._lines = len(lines)
        self._rewrite = self.skipped_lines > 0 or (data != b"" and not data.endswith(b"\n"))
        return records[-self.keep:] if self.keep else []

    def append(self, record: Mapping[str, Any], newest: List[Dict[str, Any]]) -> None:
        """Add ``record``; ``newest`` (the records kept in memory, ``record`` last) replaces the
        file's content once it has grown to twice ``keep`` lines, or when it held a torn line.
        Raises OSError."""
        if self.keep <= 0:
            return
        if self._rewrite or self._lines + 1 > 2 * self.keep:
            body = b"".join(_line(r) for r in newest[-self.keep:])
            self.fs.write_atomic(self.path, body)
            self._lines = min(len(newest), self.keep)
            self._rewrite = False
            return
        with self.fs.open(self.path, "ab") as f:
            f.write(_line(record))
        self._lines += 1


def _line(record: Mapping[str, Any]) -> bytes:
    return json.dumps(jsonable(dict(record)), separators=(",", ":")).encode() + b"\n"
