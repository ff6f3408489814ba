"""Everything the CLI prints goes through :class:`Output`: tables for people, JSON for scripts.

Why one place: ``--json`` must put exactly one JSON document on stdout and nothing else, progress
bars must never land on stdout, and user text (docstrings full of ``[brackets]``) must never be
read as rich markup. Keeping those rules here means no command can break them by accident.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from rich.console import Console

from ..jsonable import jsonable
from rich.table import Table
from rich.text import Text

__all__ = ["Output", "fmt_bytes", "fmt_seconds", "fmt_value", "shorten", "jsonable"]

#: Least width used when stdout is not a terminal (pipes, CI logs); a larger COLUMNS wins.
PIPE_WIDTH = 200


class Output:
    """The CLI's stdout/stderr, in table mode or JSON mode."""

    def __init__(self, json_mode: bool = False) -> None:
        self.json = json_mode
        # a pipe gets at least PIPE_WIDTH columns, so grep and logs see whole cells
        width = None if sys.stdout.isatty() else max(PIPE_WIDTH, int(os.environ.get("COLUMNS", 0) or 0))
        # file=None: rich writes to whatever sys.stdout is at print time, so a live progress bar's
        # stdout redirection shows our lines above the bar instead of tearing it.
        self.out = Console(highlight=False, width=width, emoji=False)
        self.err = Console(stderr=True, highlight=False, emoji=False)
        self._live: Optional[Console] = None  # while a progress bar is shown on this terminal

    @property
    def _screen(self) -> Console:
        """Where human output goes: stdout, or, while a progress bar is live on the same terminal,
        the bar's console, so that rich prints the line above the bar instead of through it."""
        return self._live or self.out

    # -- results -------------------------------------------------------------------------------

    def emit(self, data: Any, render: Optional[Callable[[], None]] = None) -> None:
        """The command's result: ``data`` as JSON in JSON mode, else ``render()`` (or a dump)."""
        if self.json:
            sys.stdout.write(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")
            sys.stdout.flush()
        elif render is not None:
            render()
        else:
            self.print(json.dumps(jsonable(data), indent=2))

    def print(self, *parts: Any, style: Optional[str] = None) -> None:
        """A line of human output on stdout (suppressed in JSON mode). Text is never markup."""
        if self.json:
            return
        # soft_wrap: long lines are left for the terminal to wrap, and stay whole in pipes and logs
        self._screen.print(*(p if isinstance(p, Text) else Text(str(p)) for p in parts), style=style,
                           soft_wrap=True)

    def heading(self, text: str) -> None:
        self.print(Text(text, style="bold"))

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: Optional[str] = None,
              right: Sequence[str] = (), nowrap: Sequence[str] = (), empty: str = "(none)") -> None:
        """A table of plain-text cells; ``right`` names the columns to right-align (numbers),
        ``nowrap`` the columns to keep on one line (keys, ids)."""
        if self.json:
            return
        if not rows:
            if title:
                self.heading(title)
            self.print(empty)
            return
        table = Table(title=title, title_justify="left", show_lines=False, header_style="bold",
                      title_style="bold")
        for col in columns:
            table.add_column(col, justify="right" if col in right else "left", overflow="fold",
                             no_wrap=col in nowrap)
        for row in rows:
            table.add_row(*(c if isinstance(c, Text) else Text("—" if c is None else str(c)) for c in row))
        self._screen.print(table)

    # -- diagnostics ---------------------------------------------------------------------------

    def note(self, message: str) -> None:
        """An informational line on stderr (shown in both modes; never pollutes JSON on stdout)."""
        self.err.print(Text(message), style="dim")

    def error(self, message: str) -> None:
        """The one line an error prints, on stderr."""
        self.err.print(Text(f"error: {message}"), style="red", soft_wrap=True)

    # -- progress ------------------------------------------------------------------------------

    @property
    def show_progress(self) -> bool:
        """Progress bars only for a person watching: stderr is a terminal and not ``--json``."""
        return not self.json and self.err.is_terminal

    @contextlib.contextmanager
    def progress(self, description: str, total: Optional[int], unit: str = "rows") -> Iterator["Advance"]:
        """A progress bar on stderr; yields ``advance(n)``. A no-op when not on a terminal."""
        if not self.show_progress:
            yield Advance(None, None)
            return
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        columns = [TextColumn("[progress.description]{task.description}"), BarColumn(),
                   MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.err, transient=False) as bar:
            task = bar.add_task(escape(description), total=total)
            self._live = self.err if self.out.is_terminal else None
            try:
                yield Advance(bar, task)
            finally:
                self._live = None


class Advance:
    """Moves one progress task forward; does nothing when progress is off."""

    def __init__(self, bar: Any, task: Any) -> None:
        self._bar = bar
        self._task = task

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------

def fmt_bytes(n: Optional[float]) -> str:
    """Decimal units like the config (``1.25 MB``); exact bytes under 1 kB."""
    if n is None:
        return "—"
    n = float(n)
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{int(n)} B"


def fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s != s or math.isinf(s):
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_time(epoch: Optional[float]) -> str:
    """A wall-clock moment in local time, to the second (``2026-11-24 18:03:11``)."""
    if epoch is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(epoch)))


def fmt_value(value: Any, unit: Optional[str]) -> str:
    """A threshold or measured value in its unit, for people."""
    if value is None:
        return "—"
    if unit == "bytes" and isinstance(value, (int, float)):
        return fmt_bytes(value)
    if unit == "seconds" and isinstance(value, (int, float)):
        return fmt_seconds(value)
    if isinstance(value, float):
        return f"{value:g}" + (f" {unit}" if unit else "")
    return f"{value}" + (f" {unit}" if unit else "")


def shorten(text: Any, width: int = 80) -> str:
    """One line of at most ``width`` characters (newlines collapsed, an ellipsis when cut)."""
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"

