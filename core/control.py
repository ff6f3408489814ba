"""Requests from other processes to the one that has the database open: live ``stats`` and
``why``, ``flush`` and ``compact``, and a collection's ``get``, ``search``, ``count`` and
``delete``.

One process at a time has a data directory open (its ``LOCK``), yet an operator asks a live
database "why has this not flushed yet?" or tells it to flush now, and only the process that
has it open can answer or act. So the ``proxistore`` command leaves a request in
``<data>/control/``. The open database's maintenance scheduler takes it on its next round
(within ``check_interval``). It answers the reads in that round. ``flush``, ``compact`` and
``delete`` run on a thread of their own, one at a time, so a long one (or a write waiting for
memory at the limit, which only the scheduler can free) does not hold up the flush policies.
The answer is written beside the request.

The scheduler takes the requests rather than a thread of its own, so that taking one also shows
that background maintenance runs. The failure proxistore was built against was a background
manager that was never started and that nothing reported. A process whose scheduler is not
running leaves requests untaken, and :func:`ask` raises :class:`HolderUnresponsive`.

Files (``<token>`` is ``<milliseconds since the epoch>-<pid>-<random>``). Each is written under
a temporary name and renamed, so the other side never reads half a file. None is fsynced: they
describe a moment and are worthless after a crash::

    <token>.ask       {"what": "stats" | "why" | "flush" | "compact", "collection": NAME (optional)}
                      {"what": "get" | "delete", "collection": NAME, "ids": [...]}
                      {"what": "search", "collection": NAME, "vector": [...], "k": K,
                       "filter": {...} | null, "ef": N | null}
                      {"what": "count", "collection": NAME}
    <token>.taken     the request, renamed by the scheduler that took it (an asker that gives
                      up removes its .ask; whichever rename or unlink comes first wins)
    <token>.answer    {"ok": true, "pid": ..., "result": ...} or
                      {"ok": false, "pid": ..., "error": CLASS NAME, "message": ...}
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional

from . import errors
from .errors import DatabaseClosed, HolderUnresponsive, ProxistoreError
from .fileio import FileSystem
from .jsonable import jsonable
from .lock import holder_pid

__all__ = ["CONTROL_DIR", "ControlResponder", "ask"]

log = logging.getLogger("proxistore.control")

CONTROL_DIR = "control"    # under the data directory
_ASK, _TAKEN, _ANSWER, _TMP = ".ask", ".taken", ".answer", ".tmp"
_STALE_SECONDS = 60.0      # an answer nobody collected, or a request nobody took, after this


def _write_whole(fs: FileSystem, path: str, payload: Mapping[str, Any]) -> None:
    with fs.open(path + _TMP, "wb") as f:
        f.write(json.dumps(jsonable(payload)).encode())
    fs.rename(path + _TMP, path)


def _unlink_if_there(fs: FileSystem, path: str) -> bool:
    """Remove ``path``; False if the other side removed or renamed it first."""
    try:
        fs.unlink(path)
        return True
    except FileNotFoundError:
        return False


_CLOSED = {"ok": False, "error": DatabaseClosed.__name__, "message": "the database was closed before this request ran"}


def _created_at(name: str) -> Optional[float]:
    """Seconds since the epoch from a control file's token, None for a name that is not one."""
    head = name.split("-", 1)[0]
    return int(head) / 1000 if head.isdigit() else None


def _text(exc: BaseException) -> str:
    # KeyError subclasses (CollectionNotFound) would otherwise come back quoted
    return str(exc.args[0]) if len(exc.args) == 1 else str(exc)


class ControlResponder:
    """The open database's side: takes and answers the requests in ``<data>/control/``.

    ``answer`` turns a request into a JSON-able result. A :class:`ProxistoreError` it raises
    (an unknown collection...) goes back to the asker as that error. Requests whose ``what`` is
    in ``run_apart`` are answered on a thread of their own, one at a time, in the order taken."""

    def __init__(self, fs: FileSystem, data_dir: str, answer: Callable[[Mapping[str, Any]], Any],
                 run_apart: Collection[str] = ()) -> None:
        self.fs = fs
        self.directory = os.path.join(data_dir, CONTROL_DIR)
        self._answer = answer
        self._run_apart = frozenset(run_apart)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: List[Future] = []

    def poll(self) -> int:
        """Take every waiting request; how many were taken. Costs one directory listing when
        there is none. Called by the maintenance scheduler on its rounds."""
        try:
            names = self.fs.listdir(self.directory)
        except FileNotFoundError:    # nobody has asked yet: the askers create the directory
            return 0
        taken = 0
        now = time.time()
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith(_ASK):
                taken += self._take(path[:-len(_ASK)])
            elif (_created_at(name) or now) < now - _STALE_SECONDS:
                _unlink_if_there(self.fs, path)     # its asker gave up (or died) long ago
        return taken

    def _take(self, base: str) -> bool:
        try:
            self.fs.rename(base + _ASK, base + _TAKEN)
        except FileNotFoundError:    # its asker gave up a moment ago
            return False
        try:
            request = json.loads(self.fs.read_bytes(base + _TAKEN))
            apart = request["what"] in self._run_apart
        except (ValueError, TypeError, KeyError) as exc:
            self._finish(base, {"ok": False, "error": "ProxistoreError",
                                "message": f"bad control request {base + _ASK}: {exc!r}"})
            return True
        if not apart:
            self._finish(base, self._reply(request))
            return True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxistore-control")
        try:
            future = self._executor.submit(self._reply, request)
        except RuntimeError:     # close() has begun
            self._finish(base, _CLOSED)
            return True
        future.add_done_callback(lambda f: self._finish(base, _CLOSED if f.cancelled() else f.result()))
        self._pending = [f for f in self._pending if not f.done()] + [future]
        return True

    def _reply(self, request: Mapping[str, Any]) -> Dict[str, Any]:
        try:
            return {"ok": True, "result": self._answer(request)}
        except ProxistoreError as exc:
            return {"ok": False, "error": type(exc).__name__, "message": _text(exc)}
        except Exception as exc:  # the asker hears of any failure, and the log has the traceback
            log.exception("control request %r failed", request)
            return {"ok": False, "error": "ProxistoreError", "message": f"{type(exc).__name__}: {exc}"}

    def _finish(self, base: str, reply: Dict[str, Any]) -> None:
        try:
            _write_whole(self.fs, base + _ANSWER, {"pid": os.getpid(), **reply})
            _unlink_if_there(self.fs, base + _TAKEN)
        except OSError as exc:   # control files are not the data: the asker times out
            log.warning("could not answer control request %s: %s", base, exc)

    def close(self, timeout: float) -> bool:
        """Cancel the requests not started (their askers hear that the database closed) and wait
        up to ``timeout`` seconds for the one running; False if it is still running."""
        if self._executor is None:
            return True
        self._executor.shutdown(wait=False, cancel_futures=True)
        _, not_done = wait(self._pending, timeout=timeout)
        return not not_done


def _holder_alive(data_dir: str) -> bool:
    """Whether the process named in ``LOCK`` still exists (True when that cannot be told)."""
    pid = holder_pid(data_dir)
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # it exists, under another user
        return True
    return True


def ask(fs: FileSystem, data_dir: str, request: Mapping[str, Any], take_timeout: float,
        answer_timeout: Optional[float] = None) -> Dict[str, Any]:
    """The answer to ``request`` from the process that has ``data_dir`` open: ``{"pid": ...,
    "result": ...}``.

    Raises :class:`HolderUnresponsive` when the request is not taken within ``take_timeout``
    seconds (the request is withdrawn), when the holder exits before answering, or when the
    answer takes longer than ``answer_timeout`` (None: as long as the holder lives). An error
    the answer carries is raised as its class in :mod:`proxistore.errors`."""
    directory = os.path.join(data_dir, CONTROL_DIR)
    fs.makedirs(directory)
    token = f"{int(time.time() * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    base = os.path.join(directory, token)
    _write_whole(fs, base + _ASK, request)
    started = time.monotonic()
    delay = 0.002
    while fs.exists(base + _ASK):
        if time.monotonic() - started > take_timeout and _unlink_if_there(fs, base + _ASK):
            raise HolderUnresponsive(
                f"the process that has {data_dir!r} open (its pid is in LOCK) did not take a request "
                f"within {take_timeout:g} s: its background maintenance is not running (or is stuck), "
                f"so no flush policy is being enforced there")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    taken_at = time.monotonic()
    while not fs.exists(base + _ANSWER):
        if answer_timeout is not None and time.monotonic() - taken_at > answer_timeout:
            raise HolderUnresponsive(f"the process that has {data_dir!r} open took the {request['what']} "
                                     f"request but did not answer within {answer_timeout:g} s")
        if not _holder_alive(data_dir) and not fs.exists(base + _ANSWER):
            raise HolderUnresponsive(f"the process that had {data_dir!r} open exited before answering "
                                     f"the {request['what']} request")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    reply = json.loads(fs.read_bytes(base + _ANSWER))
    fs.unlink(base + _ANSWER)
    if reply.get("ok"):
        return {"pid": reply.get("pid"), "result": reply.get("result")}
    cls = getattr(errors, str(reply.get("error")), None)
    if not (isinstance(cls, type) and issubclass(cls, ProxistoreError)):
        cls = ProxistoreError
    raise cls(reply.get("message", "the process that has the database open could not answer"))
