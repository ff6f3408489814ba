"""The config keys of the ``avro`` WAL strategy (``[wal.avro]``) and their parsed form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Tuple

from proxistore.errors import ConfigError
from proxistore.specs import ConfigKey

__all__ = ["SYNC_MODES", "RECOVERY_MODES", "KEYS", "Settings"]

SYNC_MODES = ("always", "group", "interval", "none")
RECOVERY_MODES = ("strict", "point_in_time")

KEYS: Tuple[ConfigKey, ...] = (
    ConfigKey(
        name="sync_mode", kind="choice", default="group", choices=SYNC_MODES,
        help="When an acknowledged batch is on disk. always: fsync before every ack. group: "
             "concurrent writers share one fsync, still before each ack. interval: a background "
             "thread fsyncs every sync_interval; a power loss can lose up to that much "
             "acknowledged data (a process crash loses none). none: never fsync records (tests "
             "and bulk loads; close() still fsyncs)."),
    ConfigKey(
        name="group_commit_window", kind="duration", default=0.001, unit="seconds", maximum=1.0,
        help="sync_mode=group: how long the syncer thread may wait for more concurrent writers to "
             "join its fsync. It only waits while the previous group had several writers, and "
             "stops as soon as as many records are pending, so a lone writer never waits."),
    ConfigKey(
        name="sync_interval", kind="duration", default=0.1, unit="seconds", minimum=0.001,
        help="sync_mode=interval: the fsync period, which is also the loss window on power "
             "failure. Must be > 0."),
    ConfigKey(
        name="segment_size", kind="size", default=16_000_000, unit="bytes", minimum=1,
        threshold=True,
        help="Rotate to a new segment file when the next record would take the active one past "
             "this size (a single larger record gets a segment of its own). 16MB keeps replay of "
             "the unflushed tail well under a second, makes checkpoint free space in fine steps "
             "(WAL on disk stays near unflushed bytes + one segment), and keeps the file count "
             "low (about ten 1,000 x 384-d batches per segment)."),
    ConfigKey(
        name="recovery_mode", kind="choice", default="strict", choices=RECOVERY_MODES,
        help="What replay does with a bad record before the tail. strict: refuse to open "
             "(WalCorruption naming file and offset). point_in_time: recover up to the last good "
             "record and move everything after it aside to .corrupt files (reported)."),
)

_DEFAULTS = {k.name: k.default for k in KEYS}


@dataclass(frozen=True)
class Settings:
    """The parsed, checked ``[wal.avro]`` section."""

    sync_mode: str
    group_commit_window: float
    sync_interval: float
    segment_size: int
    recovery_mode: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Settings":
        """Defaults for missing keys; :class:`ConfigError` naming the key for anything wrong."""
        unknown = sorted(set(config) - set(_DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; valid keys: {sorted(_DEFAULTS)}",
                              key=f"wal.avro.{unknown[0]}")
        values = {**_DEFAULTS, **config}
        for key, choices in (("sync_mode", SYNC_MODES), ("recovery_mode", RECOVERY_MODES)):
            if values[key] not in choices:
                raise ConfigError(f"must be one of {list(choices)}, not {values[key]!r}",
                                  key=f"wal.avro.{key}")
        for key in ("group_commit_window", "sync_interval", "segment_size"):
            v = values[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"must be a non-negative number, not {v!r}",
                                  key=f"wal.avro.{key}")
        if values["segment_size"] < 1 or values["sync_interval"] <= 0:
            raise ConfigError("segment_size and sync_interval must be > 0",
                              key="wal.avro.segment_size" if values["segment_size"] < 1
                              else "wal.avro.sync_interval")
        return cls(sync_mode=values["sync_mode"],
                   group_commit_window=float(values["group_commit_window"]),
                   sync_interval=float(values["sync_interval"]),
                   segment_size=int(values["segment_size"]),
                   recovery_mode=values["recovery_mode"])
