"""Sizes and durations with units, parsed one way everywhere.

Sizes: ``kB MB GB TB`` are decimal (1 kB = 1000 B), ``KiB MiB GiB TiB`` binary (1 KiB = 1024 B),
``B`` bytes; a bare integer is bytes. Durations: ``us ms s m h``; a bare number is seconds.
"""
from __future__ import annotations

import re
from typing import Union

__all__ = ["parse_size", "parse_duration", "format_size", "format_duration", "UnitError"]

_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
}
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*(-?)\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A size or duration that cannot be parsed; the message lists the accepted units."""


def parse_size(value: Union[str, int]) -> int:
    """Bytes from ``"1MB"``, ``"512MiB"``, ``"100 kB"`` or a bare integer of bytes."""
    if isinstance(value, bool):
        raise UnitError(f"a size must be an integer of bytes or a string like '1MB', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"a size cannot be negative: {value}")
        return value
    if not isinstance(value, str):
        raise UnitError(f"a size must be an integer of bytes or a string like '1MB', not {value!r}")
    m = _NUMBER_UNIT.match(value)
    if not m:
        raise UnitError(f"cannot read size {value!r}: expected a number and a unit ({_size_units()})")
    sign, number, unit = m.group(1), m.group(2), m.group(3).lower() or "b"
    if unit not in _SIZE_UNITS:
        raise UnitError(f"unknown size unit {m.group(3)!r} in {value!r}: use one of {_size_units()}")
    if sign:
        raise UnitError(f"a size cannot be negative: {value!r}")
    result = float(number) * _SIZE_UNITS[unit]
    if result != int(result):
        raise UnitError(f"size {value!r} is not a whole number of bytes")
    return int(result)


def parse_duration(value: Union[str, int, float]) -> float:
    """Seconds from ``"2ms"``, ``"30s"``, ``"5m"`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise UnitError(f"a duration must be a number of seconds or a string like '30s', not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UnitError(f"a duration cannot be negative: {value}")
        return float(value)
    if not isinstance(value, str):
        raise UnitError(f"a duration must be a number of seconds or a string like '30s', not {value!r}")
    m = _NUMBER_UNIT.match(value)
    if not m:
        raise UnitError(f"cannot read duration {value!r}: expected a number and a unit "
                        f"({', '.join(_DURATION_UNITS)})")
    sign, number, unit = m.group(1), m.group(2), m.group(3).lower() or "s"
    if unit not in _DURATION_UNITS:
        raise UnitError(f"unknown duration unit {m.group(3)!r} in {value!r}: use one of "
                        f"{', '.join(_DURATION_UNITS)}")
    if sign:
        raise UnitError(f"a duration cannot be negative: {value!r}")
    return float(number) * _DURATION_UNITS[unit]


def format_size(n: int) -> str:
    """The shortest exact decimal or binary spelling (``1MB``, ``512MiB``), else bytes."""
    if n == 0:
        return "0B"
    for unit, factor in (("TB", 1000 ** 4), ("TiB", 1024 ** 4), ("GB", 1000 ** 3), ("GiB", 1024 ** 3),
                         ("MB", 1000 ** 2), ("MiB", 1024 ** 2), ("kB", 1000), ("KiB", 1024)):
        if n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def format_duration(seconds: float) -> str:
    """A compact spelling that parses back to the same value (``2ms``, ``30s``, ``5m``)."""
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        q = seconds / factor
        if q >= 1 and abs(q - round(q)) < 1e-9:
            return f"{int(round(q))}{unit}"
    return f"{seconds}s"


def _size_units() -> str:
    return "B, kB, MB, GB, TB (decimal), KiB, MiB, GiB, TiB (binary)"
