"""Workload files: what ``proxistore bench`` and ``proxistore ab`` run, declared and validated.

A workload is a TOML file of four sections (``[data]``, ``[ingest]``, ``[queries]``,
``[finish]``) and an optional top-level ``description``. Every key is declared once as a
:class:`~proxistore.specs.ConfigKey` and validated by the same machinery as a database config
(:func:`proxistore.config.parse_section`): an unknown key lists the valid ones, a wrong type or a
bad unit names the key and the file. Relative paths in a workload are resolved against the
workload file's directory, so ``config/workloads/real.toml`` can point at
``../../../shared/data/stdlib_minilm/base.parquet`` wherever it is run from; a missing data file
is a :class:`DatasetMissing` error that names the path it looked for.

``--workload`` takes a path, or a bare name such as ``incident`` that is looked up as
``NAME.toml`` in ``./config/workloads/`` and then among the shipped workloads: the
``config/workloads/`` of the checkout proxistore is imported from, which the wheel installs as
``proxistore/workloads/`` (see :func:`find_workload`). ``real`` needs the dataset beside the
checkout; installed, it names the path it did not find.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from ..config import parse_section, read_toml
from ..errors import ConfigError, InvalidFilter
from ..specs import ComponentSpec, ConfigKey

__all__ = ["Workload", "WorkloadError", "DatasetMissing", "SECTIONS", "load_workload", "workload_from_dict",
           "find_workload", "workload_dirs", "SYNTHETIC_METADATA"]

#: Metadata fields synthetic data can carry: its cluster number and a group "a".."d" (row % 4).
SYNTHETIC_METADATA = ("cluster", "group")


class WorkloadError(ConfigError):
    """A workload file is invalid; the message names the key and the file (exit code 2)."""


class DatasetMissing(WorkloadError):
    """A data or query file named by a workload does not exist; the message names the path."""


class _DataChecks:
    @staticmethod
    def validate_config(v: Dict[str, Any]) -> None:
        if v["source"] == "parquet" and not v["path"]:
            raise ConfigError('source = "parquet" needs path = "FILE.parquet"', key="path")
        if v["source"] == "synthetic" and v["vectors"] < 1:
            raise ConfigError("synthetic data needs vectors >= 1 (0 means 'every row' only for a Parquet file)",
                              key="vectors")
        for name in v["metadata"] if v["source"] == "synthetic" else ():
            if name not in SYNTHETIC_METADATA:
                raise ConfigError(f"synthetic data has no metadata field {name!r}; it has: "
                                  f"{', '.join(SYNTHETIC_METADATA)}", key="metadata")


class _IngestChecks:
    @staticmethod
    def validate_config(v: Dict[str, Any]) -> None:
        if v["upsert_share"] + v["delete_share"] >= 1.0:
            raise ConfigError(f"upsert_share + delete_share must be below 1 (got {v['upsert_share']:g} + "
                              f"{v['delete_share']:g}); the rest of the batches are inserts", key="delete_share")


class _QueryChecks:
    @staticmethod
    def validate_config(v: Dict[str, Any]) -> None:
        if v["source"] == "parquet" and not v["path"]:
            raise ConfigError('source = "parquet" needs path = "FILE.parquet"', key="path")
        if v["source"] == "none" and v["rate_during_ingest"] > 0:
            raise ConfigError('queries during ingest need queries: source is "none"', key="rate_during_ingest")


DATA_KEYS = (
    ConfigKey("source", "choice", "synthetic", "Where the vectors come from: seeded clustered vectors, or a "
              "Parquet file with an 'id' and a 'vector' column.", choices=("synthetic", "parquet")),
    ConfigKey("path", "str", "", "The Parquet file (source = \"parquet\"), relative to this workload file."),
    ConfigKey("vectors", "int", 10_000, "Vectors to ingest; 0 takes every row of the Parquet file (less "
              "the held-out queries).", unit="vectors"),
    ConfigKey("dim", "int", 0, "Dimension; 0 = the Parquet file's, or 384 for synthetic data. Checked against "
              "the file.", unit="floats", maximum=65_536),
    ConfigKey("metric", "choice", "cosine", "Distance of the collection (and of the exact ground truth).",
              choices=("cosine", "l2", "ip")),
    ConfigKey("seed", "int", 42, "Seed of the synthetic data, the held-out queries and the write plan."),
    ConfigKey("clusters", "int", 32, "Synthetic data: number of Gaussian clusters.", minimum=1),
    ConfigKey("cluster_spread", "float", 0.25, "Synthetic data: standard deviation of points around their "
              "centre, relative to that of the centres."),
    ConfigKey("metadata", "str_list", [], "Metadata fields stored with every vector: for synthetic data "
              "'cluster' and/or 'group'; for a Parquet file, scalar column names."),
)
INGEST_KEYS = (
    ConfigKey("batch_size", "int", 100, "Rows per write call (insert, upsert or delete).", unit="rows", minimum=1),
    ConfigKey("writers", "int", 1, "Writer threads; each owns a disjoint share of the ids.", unit="threads",
              minimum=1, maximum=64),
    ConfigKey("upsert_share", "float", 0.0, "Share of write batches that upsert (re-embed) ids the same "
              "writer wrote before.", maximum=1.0),
    ConfigKey("delete_share", "float", 0.0, "Share of write batches that delete ids the same writer wrote "
              "before.", maximum=1.0),
    ConfigKey("sample_interval", "duration", 0.05, "How often a sampler thread reads db.stats() for memtable "
              "bytes, WAL bytes and segments over time (one read costs a few ms).", unit="seconds",
              minimum=0.005),
)
QUERY_KEYS = (
    ConfigKey("source", "choice", "holdout", "Queries held out of the data (never ingested), read from a "
              "Parquet file with a 'vector' column, or none.", choices=("holdout", "parquet", "none")),
    ConfigKey("path", "str", "", "The Parquet file of queries (source = \"parquet\"), relative to this file."),
    ConfigKey("count", "int", 100, "Queries: held out of the data, or the first rows of the file "
              "(0 = every row of the file).", unit="queries"),
    ConfigKey("k", "int", 10, "Neighbours per search; recall is recall@k.", minimum=1, maximum=10_000),
    ConfigKey("ef", "int", 0, "ANN search breadth passed to search(); 0 = the engine's default."),
    ConfigKey("rate_during_ingest", "float", 0.0, "Searches per second issued by one query thread while "
              "the writers run; 0 = none.", unit="queries/s", maximum=100_000.0),
)
FINISH_KEYS = (
    ConfigKey("final", "choice", "none", "After the last acknowledgement: nothing, db.flush(), or db.flush() "
              "then db.compact().", choices=("none", "flush", "compact")),
    ConfigKey("settle", "bool", True, "Wait for background flushes and compactions (db.wait_idle) before "
              "the after-ingest searches and the end."),
    ConfigKey("crash", "bool", False, "true: run the ingest in a child process killed with SIGKILL at the end, "
              "then reopen; false: close, then reopen."),
)
#: The sections of a workload file, as component specs so that ``parse_section`` validates them.
SECTIONS: Dict[str, ComponentSpec] = {
    "data": ComponentSpec("data", _DataChecks, DATA_KEYS, "the vectors to ingest"),
    "ingest": ComponentSpec("ingest", _IngestChecks, INGEST_KEYS, "how they are written"),
    "queries": ComponentSpec("queries", _QueryChecks, QUERY_KEYS, "searches during and after ingest"),
    "finish": ComponentSpec("finish", None, FINISH_KEYS, "what happens after the last write"),
}
TOP_KEYS = ("description",)


@dataclass
class Workload:
    """A validated workload: its parsed sections, resolved paths and the file it came from."""

    name: str
    source: str
    description: str
    data: Dict[str, Any]
    ingest: Dict[str, Any]
    queries: Dict[str, Any]
    finish: Dict[str, Any]
    filter: Optional[Dict[str, Any]] = None
    #: the file's raw tables and its directory: enough to rebuild this workload in a child process
    raw: Dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."
    #: rows in the Parquet data file (None for synthetic data)
    file_rows: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "source": self.source, "description": self.description, "data": self.data,
                "ingest": self.ingest, "queries": {**self.queries, "filter": self.filter}, "finish": self.finish}


# ------------------------------------------------------------------------------------------------
# finding and loading
# ------------------------------------------------------------------------------------------------

def workload_dirs() -> List[Path]:
    """Where a bare workload name is looked up: ./config/workloads, then the shipped ones (the
    checkout's config/workloads, which an installed wheel carries as proxistore/workloads)."""
    here = Path.cwd() / "config" / "workloads"
    dirs = [here]
    for shipped in (Path(__file__).resolve().parents[2] / "config" / "workloads",
                    Path(__file__).resolve().parents[1] / "workloads"):
        if shipped.is_dir() and all(shipped.resolve() != d.resolve() for d in dirs):
            dirs.append(shipped)
    return dirs


def find_workload(spec: Union[str, "os.PathLike[str]"]) -> str:
    """The file for ``spec``: an existing path, or a bare name found in :func:`workload_dirs`."""
    text = os.fspath(spec)
    if os.path.exists(text) or os.sep in text or "/" in text or text.endswith(".toml"):
        if not os.path.isfile(text):
            raise WorkloadError("workload file not found", file=text)
        return text
    for d in workload_dirs():
        candidate = d / f"{text}.toml"
        if candidate.is_file():
            return str(candidate)
    names = sorted({p.stem for d in workload_dirs() if d.is_dir() for p in d.glob("*.toml")})
    raise WorkloadError(f"no workload named {text!r} in {', '.join(str(d) for d in workload_dirs())}; "
                        f"shipped names: {', '.join(names) or '(none found)'}; or pass a path to a .toml file")


def load_workload(spec: Union[str, "os.PathLike[str]"]) -> Workload:
    """Read and validate a workload file (a path, or a name; see :func:`find_workload`)."""
    path = find_workload(spec)
    raw = read_toml(path)
    return workload_from_dict(raw, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def workload_from_dict(raw: Mapping[str, Any], *, source: str = "<dict>", base_dir: str = ".") -> Workload:
    """Validate the tables of a workload file; relative paths are taken from ``base_dir``."""
    raw = copy.deepcopy(dict(raw))
    valid = ", ".join(list(TOP_KEYS) + [f"[{s}]" for s in SECTIONS])
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise WorkloadError("expected a table (section)", key=key, file=source)
        elif key not in TOP_KEYS:
            raise WorkloadError(f"unknown key; a workload file takes: {valid}", key=key, file=source)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise WorkloadError(f"expected a string, got {type(description).__name__}", key="description", file=source)
    parsed: Dict[str, Dict[str, Any]] = {}
    query_filter = None
    for name, spec in SECTIONS.items():
        given = dict(raw.get(name, {}))
        if name == "queries" and "filter" in given:
            query_filter = given.pop("filter")
        try:
            parsed[name] = parse_section(spec, given, name, source)
        except ConfigError as exc:
            raise _as_workload_error(exc, name) from None
    stem = Path(source).stem if source != "<dict>" else "workload"
    wl = Workload(name=stem, source=source, description=description, data=parsed["data"],
                  ingest=parsed["ingest"], queries=parsed["queries"], finish=parsed["finish"],
                  raw=raw, base_dir=os.path.abspath(base_dir))
    _check_files(wl)
    if query_filter is not None:
        wl.filter = _check_filter(query_filter, wl)
    return wl


def _as_workload_error(exc: ConfigError, section: str) -> WorkloadError:
    """``exc`` as a :class:`WorkloadError` with the same key, file and message; the valid keys of
    ``[queries]`` also list ``filter``, which is checked on its own (it is a table, not a value)."""
    message = _strip_where(str(exc), exc)
    if section == "queries" and message.startswith("unknown key"):
        message += ", filter (a table)"
    return WorkloadError(message, key=exc.key, file=exc.file)


def _strip_where(text: str, exc: ConfigError) -> str:
    """The message of ``exc`` without the "file, key 'x': " prefix ConfigError adds."""
    where = []
    if exc.file:
        where.append(str(exc.file))
    if exc.key:
        where.append(f"key '{exc.key}'")
    prefix = ", ".join(where) + ": "
    text = text[len(prefix):] if text.startswith(prefix) else text
    # parse_section wraps a validator's ConfigError whole, so its own "key 'x': " comes along
    inner = f"key '{exc.key.rsplit('.', 1)[-1]}': " if exc.key else ""
    return text[len(inner):] if inner and text.startswith(inner) else text


def resolve(wl: Workload, path: str) -> str:
    """A path from the workload, absolute: relative ones are taken from the workload's directory."""
    expanded = os.path.expanduser(path)
    return os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(wl.base_dir, expanded))


def _parquet_shape(path: str, key: str, wl: Workload, need_id: bool) -> Tuple[int, Optional[int], List[str]]:
    """(rows, dim or None, column names) of a Parquet file, or a clear error naming key and path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise DatasetMissing(f"dataset not found: {path}", key=key, file=wl.source)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise WorkloadError(f"{path} is not a readable Parquet file: {exc}", key=key, file=wl.source) from None
    schema = pf.schema_arrow
    need = ["id", "vector"] if need_id else ["vector"]
    missing = [c for c in need if c not in schema.names]
    if missing:
        raise WorkloadError(f"{path} has no column {' or '.join(map(repr, missing))} (it has: "
                            f"{', '.join(schema.names)})", key=key, file=wl.source)
    vt = schema.field("vector").type
    if not (pa.types.is_list(vt) or pa.types.is_large_list(vt) or pa.types.is_fixed_size_list(vt)):
        raise WorkloadError(f"{path}: column 'vector' must be a list of numbers, got {vt}", key=key, file=wl.source)
    dim = vt.list_size if pa.types.is_fixed_size_list(vt) else None
    return pf.metadata.num_rows, dim, list(schema.names)


def _check_files(wl: Workload) -> None:
    d, q = wl.data, wl.queries
    holdout = q["count"] if q["source"] == "holdout" else 0
    if q["source"] == "holdout" and q["count"] < 1:
        raise WorkloadError("held-out queries need count >= 1", key="queries.count", file=wl.source)
    if d["source"] == "parquet":
        d["path"] = resolve(wl, d["path"])
        rows, dim, columns = _parquet_shape(d["path"], "data.path", wl, need_id=True)
        wl.file_rows = rows
        if dim is not None:
            if d["dim"] and d["dim"] != dim:
                raise WorkloadError(f"dim = {d['dim']} but {d['path']} holds {dim}-d vectors", key="data.dim",
                                    file=wl.source)
            d["dim"] = dim
        elif not d["dim"]:
            raise WorkloadError(f"{d['path']} has variable-length vectors: set dim", key="data.dim", file=wl.source)
        for name in d["metadata"]:
            if name not in columns or name in ("id", "vector"):
                raise WorkloadError(f"{d['path']} has no metadata column {name!r} (columns: "
                                    f"{', '.join(c for c in columns if c not in ('id', 'vector'))})",
                                    key="data.metadata", file=wl.source)
        available = rows - holdout
        if d["vectors"] == 0:
            d["vectors"] = available
        if d["vectors"] < 1 or d["vectors"] > available:
            raise WorkloadError(f"vectors = {d['vectors']} but {d['path']} has {rows} rows"
                                + (f", {holdout} of them held out as queries" if holdout else ""),
                                key="data.vectors", file=wl.source)
    elif not d["dim"]:
        d["dim"] = 384
    if q["source"] == "parquet":
        q["path"] = resolve(wl, q["path"])
        rows, dim, _ = _parquet_shape(q["path"], "queries.path", wl, need_id=False)
        if dim is not None and dim != d["dim"]:
            raise WorkloadError(f"{q['path']} holds {dim}-d queries but the data is {d['dim']}-d",
                                key="queries.path", file=wl.source)
        if q["count"] > rows:
            raise WorkloadError(f"count = {q['count']} but {q['path']} has {rows} rows", key="queries.count",
                                file=wl.source)
        q["count"] = q["count"] or rows
    if q["source"] == "none":
        q["count"] = 0


def _check_filter(spec: Any, wl: Workload) -> Dict[str, Any]:
    from ..filters import compile_filter

    if not isinstance(spec, Mapping):
        raise WorkloadError(f"expected a table such as {{ group = \"a\" }}, got {type(spec).__name__}",
                            key="queries.filter", file=wl.source)
    try:
        compiled = compile_filter(dict(spec))
    except InvalidFilter as exc:
        raise WorkloadError(str(exc), key="queries.filter", file=wl.source) from None
    missing = sorted(set(compiled.keys) - set(wl.data["metadata"]))
    if missing:
        raise WorkloadError(f"the filter reads {', '.join(map(repr, missing))}, which data.metadata does not "
                            f"store (it stores: {', '.join(wl.data['metadata']) or 'nothing'})",
                            key="queries.filter", file=wl.source)
    return dict(spec)
