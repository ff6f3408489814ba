"""Metadata filters: compiled once, evaluated on a pyarrow table of metadata columns.

A filter is a mapping in a small Mongo-like language::

    {"module": "json"}                                   # plain value means $eq
    {"n_chars": {"$gte": 100, "$lt": 200}}               # several operators on one key: all must hold
    {"$or": [{"kind": "class"}, {"module": {"$in": ["json", "re"]}}]}
    {"$not": {"module": "torch"}}
    {"author": {"$exists": False}}

Operators: ``$eq $ne $in $nin $lt $lte $gt $gte $exists`` on a key, and ``$and $or $not`` to
combine filters. Several keys in one mapping are combined with AND; ``{}`` matches every row.

:func:`compile_filter` validates the whole spec before any data is touched: an unknown operator
or a malformed operand raises :class:`~proxistore.errors.InvalidFilter` naming it.

Evaluation is table-based so that every data source (the memtable, each storage segment) runs
the same code: :meth:`MetadataFilter.mask` takes a :class:`pyarrow.Table` whose columns are
metadata keys (one row per record, ``null`` where a record has no value for the key) and
returns a numpy bool array, computed with pyarrow compute. :func:`metadata_table` builds such a
table from a list of metadata dicts with the column types the storage engine uses.

Semantics, on a row where the key has no value (absent from the table, or null in that row):
``$eq $ne $in $nin $lt $lte $gt $gte`` are false (so ``$ne``/``$nin`` match only rows that *have*
the key with another value), ``$exists: true`` is false and ``$exists: false`` is true.
``$not`` is the plain complement of the filter it wraps (it does match rows without the key).

Types: a string column compares only with strings, a bool column only with bools, an int or
float column with ints and floats (compared as numbers). Comparing a column with a value of
another type raises :class:`~proxistore.errors.FilterTypeError` naming the key; ranges
(``$lt`` ...) take numbers or strings, never bools.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import FilterTypeError, InvalidFilter, InvalidMetadata

__all__ = ["MetadataFilter", "compile_filter", "metadata_table", "value_kind", "column_kind",
           "FIELD_OPERATORS", "LOGICAL_OPERATORS"]

FIELD_OPERATORS = ("$eq", "$ne", "$in", "$nin", "$lt", "$lte", "$gt", "$gte", "$exists", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_RANGE = {"$lt": pc.less, "$lte": pc.less_equal, "$gt": pc.greater, "$gte": pc.greater_equal}
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def value_kind(value: Any) -> str:
    """The metadata type name of a Python scalar: ``str``, ``int``, ``float`` or ``bool``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    raise TypeError(f"not a metadata scalar: {value!r}")


def column_kind(dtype: pa.DataType) -> str:
    """The metadata type name of a pyarrow column type (``null`` for an all-null column)."""
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "str"
    if pa.types.is_null(dtype):
        return "null"
    return str(dtype)


_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def metadata_table(records: Sequence[Optional[Mapping[str, Any]]],
                   types: Optional[Mapping[str, str]] = None) -> pa.Table:
    """One row per record, one typed nullable column per key (str/int64/float64/bool).

    ``types`` may force a key's type (e.g. ``float`` for a key that also holds ints). A key
    holding ints and floats becomes float64; any other mix raises ``InvalidMetadata``. ``None``
    values and records are nulls. This is the table :meth:`MetadataFilter.mask` expects.
    """
    kinds: Dict[str, str] = dict(types or {})
    for rec in records:
        if not rec:
            continue
        for key, value in rec.items():
            if value is None:
                continue
            try:
                kind = value_kind(value)
            except TypeError:
                raise InvalidMetadata(f"metadata key {key!r}: {value!r} is not a str, int, float or bool") from None
            seen = kinds.get(key)
            if seen is None or seen == kind:
                kinds[key] = kind
            elif {seen, kind} == {"int", "float"}:
                kinds[key] = "float"
            else:
                raise InvalidMetadata(f"metadata key {key!r} holds both {seen} and {kind} values")
    columns = {}
    for key, kind in kinds.items():
        values = [None if not rec else rec.get(key) for rec in records]
        if kind == "float":
            values = [None if v is None else float(v) for v in values]
        columns[key] = pa.array(values, type=_ARROW_TYPES[kind])
    if not columns:
        return pa.table({"__rows": pa.nulls(len(records))}).drop_columns(["__rows"])
    return pa.table(columns)


# --------------------------------------------------------------------------------------------
# compiled nodes
# --------------------------------------------------------------------------------------------

class _Node:
    def eval(self, table: pa.Table) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def keys(self) -> Iterable[str]:
        return ()


class _All(_Node):
    def eval(self, table: pa.Table) -> np.ndarray:
        return np.ones(table.num_rows, dtype=bool)


class _And(_Node):
    def __init__(self, children: List[_Node]) -> None:
        self.children = children

    def eval(self, table: pa.Table) -> np.ndarray:
        out = self.children[0].eval(table)
        for child in self.children[1:]:
            out &= child.eval(table)
        return out

    def keys(self) -> Iterable[str]:
        return [k for c in self.children for k in c.keys()]


class _Or(_And):
    def eval(self, table: pa.Table) -> np.ndarray:
        out = self.children[0].eval(table)
        for child in self.children[1:]:
            out |= child.eval(table)
        return out


class _Not(_Node):
    def __init__(self, child: _Node) -> None:
        self.child = child

    def eval(self, table: pa.Table) -> np.ndarray:
        return ~self.child.eval(table)

    def keys(self) -> Iterable[str]:
        return self.child.keys()


def _to_mask(result: Union[pa.Array, pa.ChunkedArray]) -> np.ndarray:
    """A pyarrow boolean result as a numpy bool array, nulls as False."""
    filled = pc.fill_null(result, False)
    if isinstance(filled, pa.ChunkedArray):
        filled = filled.combine_chunks() if filled.num_chunks != 1 else filled.chunk(0)
    return np.array(filled.to_numpy(zero_copy_only=False), dtype=bool)


class _Field(_Node):
    """One operator on one key."""

    def __init__(self, key: str, op: str, value: Any) -> None:
        self.key = key
        self.op = op
        self.value = value

    def keys(self) -> Iterable[str]:
        return (self.key,)

    def eval(self, table: pa.Table) -> np.ndarray:
        n = table.num_rows
        if self.key not in table.column_names:
            return np.full(n, self.op == "$exists" and not self.value, dtype=bool)
        col = table.column(self.key)
        if self.op == "$exists":
            return _to_mask(pc.is_valid(col) if self.value else pc.is_null(col))
        kind = column_kind(col.type)
        if kind == "null":
            return np.zeros(n, dtype=bool)
        values = self.value if self.op in ("$in", "$nin") else [self.value]
        col, arrow_type = self._coerce(col, kind, values)
        if self.op in ("$in", "$nin"):
            value_set = pa.array(list(values), type=arrow_type)
            hit = _to_mask(pc.is_in(col, value_set=value_set))
            if self.op == "$in":
                return hit
            return ~hit & _to_mask(pc.is_valid(col))
        scalar = pa.scalar(self.value, type=arrow_type)
        if self.op == "$eq":
            return _to_mask(pc.equal(col, scalar))
        if self.op == "$ne":
            return _to_mask(pc.not_equal(col, scalar))
        return _to_mask(_RANGE[self.op](col, scalar))

    def _coerce(self, col: pa.ChunkedArray, kind: str, values: Sequence[Any]) -> Tuple[Any, pa.DataType]:
        """Check the column's type against the operand's and pick a common arrow type."""
        value_kinds = {value_kind(v) for v in values}
        numeric = {"int", "float"}
        if kind in numeric and value_kinds <= numeric:
            if kind == "float" or "float" in value_kinds:
                if kind != "float":
                    col = pc.cast(col, pa.float64())
                elif col.type != pa.float64():
                    col = pc.cast(col, pa.float64())
                return col, pa.float64()
            if col.type != pa.int64():
                col = pc.cast(col, pa.int64())
            return col, pa.int64()
        if value_kinds <= {kind} and kind in ("str", "bool"):
            if kind == "bool" and self.op in _RANGE:
                raise FilterTypeError(f"filter: {self.op} on bool metadata key {self.key!r} is not supported")
            return col, col.type
        if not value_kinds:  # empty $in / $nin: any column type will do
            return col, col.type
        shown = ", ".join(sorted(value_kinds))
        raise FilterTypeError(
            f"filter: {self.op} compares metadata key {self.key!r} ({kind} values) "
            f"with {self.value!r} ({shown})")


# --------------------------------------------------------------------------------------------
# compilation
# --------------------------------------------------------------------------------------------

def _check_scalar(key: str, op: str, value: Any, *, allow_bool: bool = True) -> Any:
    if value is None:
        raise InvalidFilter(f"filter: {op} on {key!r} takes a value, not None (use $exists)")
    try:
        kind = value_kind(value)
    except TypeError:
        raise InvalidFilter(f"filter: {op} on {key!r} takes a str, int, float or bool, not {value!r}") from None
    if kind == "bool" and not allow_bool:
        raise InvalidFilter(f"filter: {op} on {key!r} takes a number or a string, not a bool")
    if kind == "int" and not (_INT64[0] <= value <= _INT64[1]):
        raise InvalidFilter(f"filter: {op} on {key!r}: {value} does not fit in 64 bits")
    if kind == "float" and value != value:
        raise InvalidFilter(f"filter: {op} on {key!r}: NaN never matches anything")
    return value


def _compile_field_ops(key: str, ops: Mapping[str, Any]) -> _Node:
    if not ops:
        raise InvalidFilter(f"filter: key {key!r} has an empty operator mapping")
    nodes: List[_Node] = []
    for op, operand in ops.items():
        if not isinstance(op, str) or not op.startswith("$"):
            raise InvalidFilter(f"filter: key {key!r}: metadata values are scalars, so {op!r} must be "
                                f"an operator (one of {', '.join(FIELD_OPERATORS)})")
        if op not in FIELD_OPERATORS:
            raise InvalidFilter(f"filter: unknown operator {op!r} on key {key!r} "
                                f"(choose one of {', '.join(FIELD_OPERATORS)})")
        if op in ("$eq", "$ne"):
            nodes.append(_Field(key, op, _check_scalar(key, op, operand)))
        elif op in _RANGE:
            nodes.append(_Field(key, op, _check_scalar(key, op, operand, allow_bool=False)))
        elif op in ("$in", "$nin"):
            if isinstance(operand, (str, bytes)) or not isinstance(operand, (list, tuple, set, frozenset)):
                raise InvalidFilter(f"filter: {op} on {key!r} takes a list of values, not {operand!r}")
            values = tuple(_check_scalar(key, op, v) for v in operand)
            kinds = {value_kind(v) for v in values}
            if len(kinds - {"int", "float"}) > 1 or (kinds & {"int", "float"} and kinds - {"int", "float"}):
                raise InvalidFilter(f"filter: {op} on {key!r} mixes value types {sorted(kinds)}")
            nodes.append(_Field(key, op, values))
        elif op == "$exists":
            if not isinstance(operand, bool):
                raise InvalidFilter(f"filter: $exists on {key!r} takes true or false, not {operand!r}")
            nodes.append(_Field(key, op, operand))
        else:  # $not on a key: complement of the operators (or plain value) it wraps
            inner = _compile_field_ops(key, operand) if isinstance(operand, Mapping) else \
                _Field(key, "$eq", _check_scalar(key, "$eq", operand))
            nodes.append(_Not(inner))
    return nodes[0] if len(nodes) == 1 else _And(nodes)


def _compile(spec: Any, where: str) -> _Node:
    if not isinstance(spec, Mapping):
        raise InvalidFilter(f"filter{where}: expected a mapping, not {type(spec).__name__} {spec!r}")
    nodes: List[_Node] = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise InvalidFilter(f"filter{where}: keys must be non-empty strings, not {key!r}")
        if key in ("$and", "$or"):
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)) or not value:
                raise InvalidFilter(f"filter{where}: {key} takes a non-empty list of filters, not {value!r}")
            children = [_compile(v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
            nodes.append(_And(children) if key == "$and" else _Or(children))
        elif key == "$not":
            nodes.append(_Not(_compile(value, f"{where}.$not")))
        elif key.startswith("$"):
            raise InvalidFilter(f"filter{where}: unknown operator {key!r} "
                                f"(choose one of {', '.join(LOGICAL_OPERATORS)} or a metadata key)")
        elif isinstance(value, Mapping):
            nodes.append(_compile_field_ops(key, value))
        else:
            nodes.append(_Field(key, "$eq", _check_scalar(key, "$eq", value)))
    if not nodes:
        return _All()
    return nodes[0] if len(nodes) == 1 else _And(nodes)


def _canonical(spec: Mapping[str, Any]) -> Optional[str]:
    """A validated spec as JSON with sorted keys (its values are str, int, float or bool, or
    subclasses that serialise as their value); None for anything JSON cannot hold."""
    try:
        return json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None


class MetadataFilter:
    """A validated filter. :meth:`mask` evaluates it on a table of metadata columns."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._node = _compile(spec, "")
        self.spec = spec
        #: the metadata keys the filter reads
        self.keys = frozenset(self._node.keys())
        #: equal only for specs that keep the same rows (a mask cache's key); None: not cacheable
        self.cache_key: Optional[str] = _canonical(spec)

    def mask(self, table: pa.Table) -> np.ndarray:
        """Rows of ``table`` (one column per metadata key) that match, as a numpy bool array.

        Raises :class:`~proxistore.errors.FilterTypeError` when an operand's type does not
        match its column's.
        """
        return self._node.eval(table)

    def __repr__(self) -> str:
        return f"MetadataFilter({self.spec!r})"


def compile_filter(spec: Union[Mapping[str, Any], MetadataFilter]) -> MetadataFilter:
    """Validate ``spec`` and return a :class:`MetadataFilter` (a compiled one passes through)."""
    if isinstance(spec, MetadataFilter):
        return spec
    return MetadataFilter(spec)
