"""Checks on everything a caller passes in, before any of it reaches the WAL.

Each check raises an :class:`~proxistore.errors.InputError` subclass whose message names what is
wrong; a call that fails here has persisted nothing.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .distance import METRICS
from .errors import (DimensionMismatch, DuplicateId, InvalidArgument, InvalidCollectionName, InvalidId,
                     InvalidMetadata, InvalidVector)

__all__ = ["check_collection_name", "check_dim", "check_metric", "check_ids", "check_vectors",
           "check_metadata", "check_k", "check_queries", "METADATA_TYPES"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Metadata value types and their names; int and float values may share a key ("number").
METADATA_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def check_collection_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
    return name


def check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InvalidArgument(f"dim must be a positive integer, got {dim!r}")
    return int(dim)


def check_metric(metric: Any) -> str:
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}: choose one of {', '.join(METRICS)}")
    return metric


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_ids(ids: Any) -> List[str]:
    if isinstance(ids, (str, bytes)):
        raise InvalidId("ids must be a sequence of strings, not a single string; wrap it in a list")
    try:
        out = list(ids)
    except TypeError:
        raise InvalidId(f"ids must be a sequence of strings, got {type(ids).__name__}") from None
    if set(map(type, out)) - {str}:       # else a loop in C has checked every type
        for i, id_ in enumerate(out):
            if not isinstance(id_, str):
                raise InvalidId(f"ids[{i}] is {type(id_).__name__} {id_!r}; ids must be strings")
    unique = set(out)
    if "" in unique:
        raise InvalidId(f"ids[{out.index('')}] is empty; ids must be non-empty strings")
    if len(unique) != len(out):
        seen, dups = set(), []
        for id_ in out:
            if id_ in seen and id_ not in dups:
                dups.append(id_)
            seen.add(id_)
        raise DuplicateId(f"ids repeat within one batch: {dups[:5]}{' ...' if len(dups) > 5 else ''}")
    return out


def _as_float_matrix(data: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise InvalidVector(f"{what} are not a numeric array: {exc}") from None
    if arr.dtype.kind == "f":    # the usual case, decided without np.issubdtype (5 µs a query)
        return arr
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidVector(f"{what} must be numeric, got an array of {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating) or arr.dtype == bool:
        raise InvalidVector(f"{what} must be real numbers, got {arr.dtype}")
    return arr


def check_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """A C-contiguous float32 ``(n, dim)`` copy of ``vectors``, all finite."""
    arr = _as_float_matrix(vectors, "vectors")
    if arr.ndim == 1:
        if n == 1 and arr.shape[0] == dim:
            arr = arr.reshape(1, dim)
        else:
            raise InvalidVector(f"vectors is 1-d with {arr.shape[0]} values for {n} ids; pass an "
                                f"({n}, {dim}) array")
    if arr.ndim != 2:
        raise InvalidVector(f"vectors must be a 2-d (n, dim) array, got {arr.ndim} dimensions")
    if arr.shape[0] != n:
        raise InvalidId(f"{n} ids but {arr.shape[0]} vectors; they must have the same length")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"vectors have dimension {arr.shape[1]}, the collection has {dim}")
    out = np.array(arr, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(out).all():
        bad = int(np.argwhere(~np.isfinite(out))[0][0])
        raise InvalidVector(f"vector {bad} contains NaN or infinity"
                            + (" (or a value too large for float32)" if np.isfinite(arr).all() else ""))
    return out


def check_queries(queries: Any, dim: int) -> np.ndarray:
    """Queries as a float32 ``(m, dim)`` array; a 1-d query becomes one row."""
    arr = _as_float_matrix(queries, "queries")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidVector(f"queries must be 1-d or 2-d, got {arr.ndim} dimensions")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"query has dimension {arr.shape[1]}, the collection has {dim}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise InvalidVector("query contains NaN or infinity")
    return out


def check_metadata(metadata: Any, n: int, types: Mapping[str, str]) -> Optional[List[Optional[Dict[str, Any]]]]:
    """Metadata as ``n`` dicts (or None) of scalar values whose types agree with ``types``.

    Normalised as storage keeps it: null values are dropped and an empty dict becomes None, so a
    record reads the same before and after a flush.

    ``types`` (key -> type name already used in the collection) is not modified.
    """
    if metadata is None:
        return None
    if isinstance(metadata, Mapping) or isinstance(metadata, (str, bytes)):
        raise InvalidMetadata("metadata must be a list with one dict per id, not a single "
                              f"{type(metadata).__name__}")
    try:
        rows = list(metadata)
    except TypeError:
        raise InvalidMetadata(f"metadata must be a list of dicts, got {type(metadata).__name__}") from None
    if len(rows) != n:
        raise InvalidMetadata(f"{len(rows)} metadata entries for {n} ids; they must have the same length")
    seen: Dict[str, str] = {}
    checked: set = set()     # (key, type name) pairs already found valid in this call
    out: List[Optional[Dict[str, Any]]] = []
    for i, row in enumerate(rows):
        if row is None:
            out.append(None)
            continue
        if type(row) is not dict and not isinstance(row, Mapping):
            raise InvalidMetadata(f"metadata[{i}] is {type(row).__name__}; each entry must be a dict or None")
        clean = dict(row)    # a copy: the caller may change its dict after the call
        for key, value in row.items():
            vtype = type(value)
            if (key, vtype) in checked:
                if vtype is float and not math.isfinite(value):
                    raise InvalidMetadata(f"metadata[{i}][{key!r}] = {value!r} is not JSON-serialisable")
                continue
            if not isinstance(key, str) or not key:
                raise InvalidMetadata(f"metadata[{i}] has key {key!r}; keys must be non-empty strings")
            if value is None:
                del clean[key]   # a null value and an absent key are the same thing in storage
                continue
            tname = _value_type(i, key, value)
            known = types.get(key) or seen.get(key)
            if known is not None and not _compatible(known, tname):
                raise InvalidMetadata(f"metadata[{i}][{key!r}] is {tname}, but key {key!r} holds {known} "
                                      f"values in this collection")
            seen.setdefault(key, tname)
            checked.add((key, vtype))
        out.append(clean or None)
    return out


def _value_type(i: int, key: str, value: Any) -> str:
    """The metadata type name of ``metadata[i][key]``; InvalidMetadata for anything else."""
    tname = METADATA_TYPES.get(type(value))
    if tname is None:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InvalidMetadata(f"metadata[{i}][{key!r}] = {value!r} is not JSON-serialisable") from None
        raise InvalidMetadata(f"metadata[{i}][{key!r}] is a {type(value).__name__}; values must be "
                              f"str, int, float, bool or None")
    if tname == "float" and not math.isfinite(value):
        raise InvalidMetadata(f"metadata[{i}][{key!r}] = {value!r} is not JSON-serialisable")
    return tname


def _compatible(a: str, b: str) -> bool:
    return a == b or {a, b} == {"int", "float"}
