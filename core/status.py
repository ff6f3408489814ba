"""Live status for other processes: ``proxistore stats`` of a database that another process has open.

One process at a time has a data directory open (its ``LOCK``), yet operators ask a live
database "why has this not flushed yet?", and only the process that has it open knows its
memtables. So an asking process leaves a request in ``<data>/status/`` and the open database's
maintenance scheduler answers it on its next round, within ``check_interval``, writing the
answer beside the request.

The scheduler answers rather than a thread of its own, so that an answer also shows that
background maintenance runs: the failure proxistore was built against was a background manager
that was never started and that nothing reported. A process whose scheduler is not running
does not answer, and :func:`ask` raises :class:`StatusUnanswered`, which says so.

Files (``<token>`` is ``<milliseconds since the epoch>-<pid>-<random>``; each is written under a
temporary name and renamed, so the other side never reads half a file; none is fsynced, they
describe a moment and are worthless after a crash)::

    <token>.ask       {"what": "stats" or "why", "collection": NAME or absent}
    <token>.answer    {"ok": true, "pid": ..., "result": ...} or
                      {"ok": false, "pid": ..., "error": CLASS NAME, "message": ...}
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Dict, Mapping, Optional

from . import errors
from .errors import ProxistoreError, StatusUnanswered
from .fileio import FileSystem
from .jsonable import jsonable

__all__ = ["STATUS_DIR", "StatusResponder", "ask"]

log = logging.getLogger("proxistore.status")

STATUS_DIR = "status"     # under the data directory
_ASK, _ANSWER, _TMP = ".ask", ".answer", ".tmp"
_STALE_SECONDS = 60.0     # an answer nobody collected, or a request nobody answered, after this


def _write_whole(fs: FileSystem, path: str, payload: Mapping[str, Any]) -> None:
    with fs.open(path + _TMP, "wb") as f:
        f.write(json.dumps(jsonable(payload)).encode())
    fs.rename(path + _TMP, path)


def _created_at(name: str) -> Optional[float]:
    """Seconds since the epoch from a status file's token, None for a name that is not one."""
    head = name.split("-", 1)[0]
    return int(head) / 1000 if head.isdigit() else None


class StatusResponder:
    """The open database's side: answers the requests found in ``<data>/status/``.

    ``answer`` turns a request into a JSON-able result; a :class:`ProxistoreError` it raises
    (an unknown collection...) goes back to the asker as that error."""

    def __init__(self, fs: FileSystem, data_dir: str, answer: Callable[[Mapping[str, Any]], Any]) -> None:
        self.fs = fs
        self.directory = os.path.join(data_dir, STATUS_DIR)
        self._answer = answer
        self.answered = 0

    def poll(self) -> int:
        """Answer every pending request; how many were answered. Costs one directory listing
        when there is none."""
        try:
            names = self.fs.listdir(self.directory)
        except FileNotFoundError:    # nobody has asked yet: the askers create the directory
            return 0
        done = 0
        now = time.time()
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith(_ASK):
                done += self._respond(path, path[:-len(_ASK)] + _ANSWER)
            elif (_created_at(name) or now) < now - _STALE_SECONDS:
                _unlink_if_there(self.fs, path)     # its asker gave up (or died) long ago
        self.answered += done
        return done

    def _respond(self, ask_path: str, answer_path: str) -> bool:
        reply: Dict[str, Any] = {"pid": os.getpid()}
        try:
            text = self.fs.read_bytes(ask_path)
        except FileNotFoundError:    # its asker gave up a moment ago
            return False
        try:
            reply.update(ok=True, result=self._answer(json.loads(text)))
        except ProxistoreError as exc:
            reply.update(ok=False, error=type(exc).__name__, message=_text(exc))
        except (ValueError, TypeError, AttributeError, KeyError) as exc:   # a malformed request
            reply.update(ok=False, error="ProxistoreError", message=f"bad status request {ask_path}: {exc!r}")
        _write_whole(self.fs, answer_path, reply)
        _unlink_if_there(self.fs, ask_path)
        return True


def _text(exc: BaseException) -> str:
    # KeyError subclasses (CollectionNotFound) would otherwise come back quoted
    return str(exc.args[0]) if len(exc.args) == 1 else str(exc)


def ask(fs: FileSystem, data_dir: str, request: Mapping[str, Any], timeout: float) -> Dict[str, Any]:
    """The live answer to ``request`` from the process that has ``data_dir`` open: its result
    and its ``pid``. Raises the error the answer carries (as its class in
    :mod:`proxistore.errors`), or :class:`StatusUnanswered` after ``timeout`` seconds."""
    directory = os.path.join(data_dir, STATUS_DIR)
    fs.makedirs(directory)
    token = f"{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ask_path, answer_path = os.path.join(directory, token + _ASK), os.path.join(directory, token + _ANSWER)
    _write_whole(fs, ask_path, request)
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not fs.exists(answer_path):
        if time.monotonic() > deadline:
            _unlink_if_there(fs, ask_path)   # withdrawn; the responder may be answering it right now
            if not fs.exists(answer_path):
                raise StatusUnanswered(
                    f"the process that has {data_dir!r} open (its pid is in LOCK) did not answer a status request within "
                    f"{timeout:g} s: its background maintenance is not running (or is stuck), so no "
                    f"flush policy is being enforced there")
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    reply = json.loads(fs.read_bytes(answer_path))
    fs.unlink(answer_path)
    if reply.get("ok"):
        return {"pid": reply.get("pid"), "result": reply.get("result")}
    cls = getattr(errors, str(reply.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, ProxistoreError)):
        cls = ProxistoreError
    raise cls(reply.get("message", "the process that has the database open could not answer"))


def _unlink_if_there(fs: FileSystem, path: str) -> None:
    try:
        fs.unlink(path)
    except FileNotFoundError:    # the other side removed it first
        pass
