"""Reading vectors for ``proxistore insert`` (and ``demo --dataset``) from .npy, .parquet and .jsonl.

Each reader streams fixed-size batches so that a file larger than memory can be loaded, and
reports a malformed file as a :class:`~proxistore.cli.common.UsageError` naming the file and the
place (column, line) at fault, before that batch reaches the database.

- ``.npy``: a 2-d numeric array; ids are ``<id-prefix><row>`` (``row-0``, ``row-1``, ...).
- ``.parquet``: an ``id`` column (string or integer), a ``vector`` column (list or
  fixed_size_list of numbers); every other column of a scalar type (string, integer, float,
  bool) becomes metadata. Nulls (and float NaN) are left out of a row's metadata.
- ``.jsonl``: one object per line, ``{"id": str, "vector": [numbers], "metadata": {...}}``
  (``metadata`` optional).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .common import UsageError

__all__ = ["Batch", "Source", "open_source", "parquet_vectors", "parquet_metadata_columns",
           "rows_metadata"]

SUFFIXES = (".npy", ".parquet", ".jsonl")


@dataclass
class Batch:
    ids: List[str]
    vectors: np.ndarray
    metadata: Optional[List[Optional[Dict[str, Any]]]]


class Source:
    """A file of vectors: its row count (if known without reading it), dimension, and batches."""

    path: str
    rows: Optional[int]
    dim: Optional[int]
    skipped_columns: List[str]

    def batches(self, size: int) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError


def open_source(path: str, id_prefix: str = "row-") -> Source:
    """The reader for ``path``, chosen by its suffix."""
    if not os.path.isfile(path):
        raise UsageError(f"input file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        return NpySource(path, id_prefix)
    if suffix == ".parquet":
        return ParquetSource(path)
    if suffix == ".jsonl":
        return JsonlSource(path)
    raise UsageError(f"cannot read {path!r}: the file must end in one of {', '.join(SUFFIXES)}")


# ------------------------------------------------------------------------------------------------
# .npy
# ------------------------------------------------------------------------------------------------

class NpySource(Source):
    def __init__(self, path: str, id_prefix: str) -> None:
        self.path = path
        self.id_prefix = id_prefix
        self.skipped_columns = []
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UsageError(f"{path}: not a readable .npy array: {exc}") from None
        if self.array.ndim != 2:
            raise UsageError(f"{path}: expected a 2-d array (rows, dim), got shape {self.array.shape}")
        if not np.issubdtype(self.array.dtype, np.number):
            raise UsageError(f"{path}: expected numbers, got dtype {self.array.dtype}")
        self.rows, self.dim = int(self.array.shape[0]), int(self.array.shape[1])

    def batches(self, size: int) -> Iterator[Batch]:
        for start in range(0, self.rows, size):
            stop = min(self.rows, start + size)
            ids = [f"{self.id_prefix}{i}" for i in range(start, stop)]
            yield Batch(ids, np.asarray(self.array[start:stop]), None)


# ------------------------------------------------------------------------------------------------
# .parquet
# ------------------------------------------------------------------------------------------------

def parquet_metadata_columns(schema: Any) -> Tuple[List[str], List[str]]:
    """(columns that become metadata, columns skipped because they are not scalars)."""
    import pyarrow as pa

    keep, skip = [], []
    for field in schema:
        if field.name in ("id", "vector"):
            continue
        t = field.type
        if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t)):
            keep.append(field.name)
        else:
            skip.append(field.name)
    return keep, skip


def _check_columns(path: str, schema: Any) -> None:
    import pyarrow as pa

    names = set(schema.names)
    missing = [c for c in ("id", "vector") if c not in names]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)}; a Parquet input needs "
                         f"'id' and 'vector' (columns: {', '.join(schema.names)})")
    vt = schema.field("vector").type
    if not (pa.types.is_list(vt) or pa.types.is_large_list(vt) or pa.types.is_fixed_size_list(vt)) \
            or not (pa.types.is_floating(vt.value_type) or pa.types.is_integer(vt.value_type)):
        raise UsageError(f"{path}: column 'vector' must be a list of numbers, got {vt}")
    it = schema.field("id").type
    if not (pa.types.is_string(it) or pa.types.is_large_string(it) or pa.types.is_integer(it)):
        raise UsageError(f"{path}: column 'id' must hold strings or integers, got {it}")


def parquet_vectors(column: Any, where: str) -> np.ndarray:
    """A list column as a float32 ``(n, dim)`` array; every row must have the same length."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(col)
    if col.null_count:
        raise UsageError(f"{where}: column 'vector' has {col.null_count} null row(s)")
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
    else:
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        dim = int(lengths[0])
        if (lengths != dim).any():
            bad = int(np.argmax(lengths != dim))
            raise UsageError(f"{where}: vector of row {bad} has {int(lengths[bad])} values, row 0 has {dim}")
    values = col.flatten()
    if values.null_count:
        raise UsageError(f"{where}: column 'vector' contains null values")
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)


def rows_metadata(table: Any, columns: List[str]) -> Optional[List[Optional[Dict[str, Any]]]]:
    """Per-row metadata dicts from ``columns`` of a pyarrow table (nulls and NaN left out)."""
    if not columns:
        return None
    out: List[Optional[Dict[str, Any]]] = []
    for row in table.select(columns).to_pylist():
        meta = {k: v for k, v in row.items()
                if v is not None and not (isinstance(v, float) and math.isnan(v))}
        out.append(meta or None)
    return out


class ParquetSource(Source):
    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise UsageError(f"{path}: not a readable Parquet file: {exc}") from None
        schema = self.file.schema_arrow
        _check_columns(path, schema)
        self.meta_columns, self.skipped_columns = parquet_metadata_columns(schema)
        self.rows = self.file.metadata.num_rows
        vt = schema.field("vector").type
        self.dim = vt.list_size if hasattr(vt, "list_size") else None

    def batches(self, size: int) -> Iterator[Batch]:
        start = 0
        for rb in self.file.iter_batches(batch_size=size, columns=["id", "vector"] + self.meta_columns):
            where = f"{self.path} (rows {start}..{start + rb.num_rows - 1})"
            ids_col = rb.column("id")
            if ids_col.null_count:
                raise UsageError(f"{where}: column 'id' has null values")
            ids = [str(i) for i in ids_col.to_pylist()]
            yield Batch(ids, parquet_vectors(rb.column("vector"), where), rows_metadata(rb, self.meta_columns))
            start += rb.num_rows


# ------------------------------------------------------------------------------------------------
# .jsonl
# ------------------------------------------------------------------------------------------------

class JsonlSource(Source):
    def __init__(self, path: str) -> None:
        self.path = path
        self.skipped_columns = []
        with open(path, "rb") as f:
            self.rows = sum(1 for line in f if line.strip())
        self.dim = None
        for _, first in self._records():  # the first record tells the dimension (for --create)
            self.dim = len(first["vector"])
            break

    def _records(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        path_ = self.path
        with open(path_, "r", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise UsageError(f"{path_}:{lineno}: not valid JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise UsageError(f"{path_}:{lineno}: expected an object with 'id' and 'vector'")
                unknown = sorted(set(obj) - {"id", "vector", "metadata"})
                if unknown:
                    raise UsageError(f"{path_}:{lineno}: unknown field(s) {', '.join(unknown)}; "
                                     f"put extra values under 'metadata'")
                if not isinstance(obj.get("id"), str) or not isinstance(obj.get("vector"), list):
                    raise UsageError(f"{path_}:{lineno}: needs 'id' (a string) and 'vector' (an array)")
                if "metadata" in obj and not (obj["metadata"] is None or isinstance(obj["metadata"], dict)):
                    raise UsageError(f"{path_}:{lineno}: 'metadata' must be an object")
                yield lineno, obj

    def batches(self, size: int) -> Iterator[Batch]:
        chunk: List[Tuple[int, Dict[str, Any]]] = []
        for item in self._records():
            chunk.append(item)
            if len(chunk) == size:
                yield self._batch(chunk)
                chunk = []
        if chunk:
            yield self._batch(chunk)

    def _batch(self, chunk: List[Tuple[int, Dict[str, Any]]]) -> Batch:
        if self.dim is None:
            self.dim = len(chunk[0][1]["vector"])
        for lineno, obj in chunk:
            if len(obj["vector"]) != self.dim:
                raise UsageError(f"{self.path}:{lineno}: vector has {len(obj['vector'])} values, "
                                 f"earlier lines have {self.dim}")
        for lineno, obj in chunk:
            if not all(type(v) in (int, float) for v in obj["vector"]):
                raise UsageError(f"{self.path}:{lineno}: 'vector' must hold only numbers")
        vectors = np.array([obj["vector"] for _, obj in chunk], dtype=np.float32)
        metas = [obj.get("metadata") for _, obj in chunk]
        return Batch([obj["id"] for _, obj in chunk], vectors, metas if any(m for m in metas) else None)
