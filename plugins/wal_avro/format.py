"""The on-disk format of the Avro WAL: schema, version, header and record encoding.

A segment is a standard Avro object container file (readable by ``fastavro.reader``) whose
every data block holds exactly one record, one write batch. We write the container header once
(with ``fastavro.writer`` and no records) and frame each block ourselves, so that the batch's
vectors go from the caller's array to the file without being copied into an encoder buffer.

The record's fields are ordered so that a reader can find the vectors without decoding them:
``first_lsn``, ``last_lsn``, ``dim`` and ``vectors`` come first (fixed for every 1.x version),
then the fields decoded by fastavro (``op``, ``ids``, ``metadata``, ``timestamp``; a minor version
may add more here), then ``crc32``: the big-endian CRC-32 of every byte of the record before it.
See ``docs/wal-format.md``.
"""
from __future__ import annotations

import io
import json
import re
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import fastavro
import numpy as np
from fastavro.read import SchemaResolutionError

from proxistore.contracts import OP_DELETE, OPS, WalBatch
from proxistore.errors import InvalidMetadata, WalError

__all__ = [
    "FORMAT_VERSION", "FORMAT_VERSION_KEY", "RECORD_SCHEMA", "MAGIC", "SYNC_SIZE",
    "SEGMENT_RE", "segment_name", "encode_long", "build_header", "EncodedRecord", "encode_record",
]

#: (major, minor) written into every segment header under ``FORMAT_VERSION_KEY``.
FORMAT_VERSION: Tuple[int, int] = (1, 0)
FORMAT_VERSION_KEY = "proxistore.format_version"
MAGIC = b"Obj\x01"
SYNC_SIZE = 16
CRC_SIZE = 4

#: Segment file names: ``wal-<10-digit sequence>.avro``; lexical order is log order.
SEGMENT_RE = re.compile(r"^wal-(\d{10})\.avro$")
CORRUPT_RE = re.compile(r"^wal-(\d{10})\.avro\.corrupt(?:\.\d+)?$")

PREFIX_FIELDS: List[Dict[str, Any]] = [
    {"name": "first_lsn", "type": "long", "doc": "LSN of ids[0]; row i has first_lsn + i"},
    {"name": "last_lsn", "type": "long", "doc": "first_lsn + len(ids) - 1"},
    {"name": "dim", "type": "int", "doc": "vector dimension (0 for deletes)"},
    {"name": "vectors", "type": "bytes",
     "doc": "len(ids) * dim little-endian float32, row-major (empty for deletes)"},
]
REST_FIELDS: List[Dict[str, Any]] = [
    {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": list(OPS)}},
    {"name": "ids", "type": {"type": "array", "items": "string"}},
    {"name": "metadata", "type": ["null", "string"],
     "doc": "JSON array of len(ids) objects-or-null, or null when the batch has no metadata"},
    {"name": "timestamp", "type": "double", "doc": "seconds since the epoch, at append"},
]
CRC_FIELD: Dict[str, Any] = {
    "name": "crc32", "type": {"type": "fixed", "name": "CRC32", "size": CRC_SIZE},
    "doc": "big-endian CRC-32 (zlib) of the encoding of every field before this one",
}
RECORD_SCHEMA: Dict[str, Any] = {
    "type": "record", "name": "WalBatch", "namespace": "proxistore.wal",
    "doc": "one write batch; each container block holds exactly one record",
    "fields": PREFIX_FIELDS + REST_FIELDS + [CRC_FIELD],
}
_REST_NAME = "proxistore.wal.WalBatchRest"
_REST_SCHEMA = fastavro.parse_schema({"type": "record", "name": _REST_NAME, "fields": REST_FIELDS})
_CRC = struct.Struct(">I")
_DOUBLE = struct.Struct("<d")
#: Batches of up to this many rows have their REST_FIELDS framed here rather than by fastavro,
#: whose per-call set-up is most of the cost for one row (2.0 vs 0.6 us); tests check that
#: both give the same bytes.
_FRAME_REST_BELOW = 16
_ONE_RECORD = b"\x02"          # Avro long 1: the block's record count


def segment_name(seq: int) -> str:
    """The file name of segment number ``seq``."""
    return f"wal-{seq:010d}.avro"


def encode_long(n: int) -> bytes:
    """Avro's zig-zag varint encoding of a 64-bit signed integer."""
    return encode_longs(n)


def encode_longs(*values: int) -> bytes:
    """The Avro encodings of ``values``, one after the other (one call for a record's
    integer fields: an append of one row spent a third of its encoding time in per-field calls)."""
    out = bytearray()
    for n in values:
        n = (n << 1) ^ (n >> 63)
        while n > 0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


def build_header(sync_marker: bytes, metadata: Dict[str, str]) -> bytes:
    """The container header of a new segment (magic, metadata incl. schema, sync marker)."""
    meta = {FORMAT_VERSION_KEY: "%d.%d" % FORMAT_VERSION, **metadata}
    buf = io.BytesIO()
    fastavro.writer(buf, RECORD_SCHEMA, [], codec="null", metadata=meta, sync_marker=sync_marker)
    return buf.getvalue()


class EncodedRecord:
    """One batch encoded as an Avro block, in pieces so that nothing large is copied.

    ``head`` holds the block framing and the prefix fields, ``vectors`` is a zero-copy view of
    the batch's array, ``rest`` the fastavro-encoded fields; :meth:`tail` holds ``rest`` and the
    CRC (:meth:`crc`). ``nbytes`` counts the whole block including the 16-byte sync marker that
    the writer appends.
    """

    __slots__ = ("head", "prefix", "vectors", "rest", "nbytes", "rows")

    def __init__(self, prefix: bytes, vectors: memoryview, rest: bytes, rows: int) -> None:
        self.prefix = prefix
        self.vectors = vectors
        self.rest = rest
        self.rows = rows
        size = len(prefix) + len(vectors) + len(rest) + CRC_SIZE
        self.head = _ONE_RECORD + encode_long(size) + prefix
        self.nbytes = len(self.head) + len(vectors) + len(rest) + CRC_SIZE + SYNC_SIZE

    def crc(self) -> int:
        """CRC-32 of the record's fields before ``crc32`` (prefix, vectors, rest)."""
        return zlib.crc32(self.rest, zlib.crc32(self.vectors, zlib.crc32(self.prefix)))

    def tail(self, crc: int) -> bytes:
        """The bytes after the vectors: the remaining fields and the CRC."""
        return self.rest + _CRC.pack(crc)


def _vector_view(batch: WalBatch) -> Tuple[int, memoryview]:
    if batch.op == OP_DELETE or batch.vectors is None:
        if batch.op != OP_DELETE:
            raise WalError(f"a {batch.op} batch needs vectors")
        return 0, memoryview(b"")
    arr = np.ascontiguousarray(batch.vectors, dtype="<f4")
    if arr.ndim != 2 or arr.shape[0] != len(batch.ids):
        raise WalError(f"vectors of shape {arr.shape} do not match {len(batch.ids)} ids")
    return int(arr.shape[1]), memoryview(arr).cast("B")


def encode_record(batch: WalBatch, rest_buffer: io.BytesIO, timestamp: float) -> EncodedRecord:
    """Encode ``batch`` as one block (CRC not yet computed); ``rest_buffer`` is scratch space."""
    if batch.op not in OPS:
        raise WalError(f"unknown WAL op {batch.op!r}; expected one of {OPS}")
    n = len(batch.ids)
    if n == 0:
        raise WalError("an empty batch cannot be logged (it has no LSN)")
    dim, vec = _vector_view(batch)
    meta = None
    if batch.metadata is not None and batch.op != OP_DELETE:
        if len(batch.metadata) != n:
            raise WalError(f"{len(batch.metadata)} metadata entries for {n} ids")
        try:
            meta = json.dumps(list(batch.metadata), separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InvalidMetadata(f"metadata cannot be logged as JSON: {e}") from e
    ids = batch.ids if isinstance(batch.ids, list) else list(batch.ids)
    if n < _FRAME_REST_BELOW:
        rest = _frame_rest(batch.op, ids, meta, timestamp)
    else:
        rest_buffer.seek(0)
        rest_buffer.truncate()
        fastavro.schemaless_writer(rest_buffer, _REST_SCHEMA, {
            "op": batch.op, "ids": ids, "metadata": meta, "timestamp": timestamp})
        rest = rest_buffer.getvalue()
    prefix = encode_longs(batch.first_lsn, batch.first_lsn + n - 1, dim, len(vec))
    return EncodedRecord(prefix, vec, rest, n)


_OP_CODES = {op: encode_long(i) for i, op in enumerate(OPS)}


def _frame_rest(op: str, ids: List[str], meta: Optional[str], timestamp: float) -> bytes:
    """REST_FIELDS in Avro binary encoding, as ``fastavro.schemaless_writer`` writes them."""
    parts = [_OP_CODES[op], encode_longs(len(ids))]
    for id_ in ids:
        e = id_.encode()
        parts += (encode_longs(len(e)), e)
    if meta is None:
        parts.append(b"\x00\x00")            # end of the ids array; union branch 0 (null)
    else:
        m = meta.encode()
        parts.append(b"\x00\x02" + encode_longs(len(m)))
        parts.append(m)
    parts.append(_DOUBLE.pack(timestamp))
    return b"".join(parts)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class Short(Exception):
    """Internal: the data ended inside a structure (a torn write, if at the end of the log)."""


class Bad(Exception):
    """Internal: the bytes at an offset are not what the format allows; ``reason`` says why."""


def read_long(buf: Any, pos: int, end: int) -> Tuple[int, int]:
    """Decode an Avro long at ``pos``: :class:`Short` past ``end``, :class:`Bad` if > 10 bytes."""
    shift = 0
    acc = 0
    for i in range(10):
        if pos >= end:
            raise Short("varint runs past the end")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
    raise Bad("varint longer than 10 bytes")


def parse_version(text: str) -> Tuple[int, int]:
    """``"1.0"`` -> ``(1, 0)``; :class:`Bad` for anything else."""
    m = re.fullmatch(r"(\d{1,6})\.(\d{1,6})", text)
    if not m:
        raise Bad(f"format version {text!r} is not major.minor")
    return int(m.group(1)), int(m.group(2))


#: the fields every 1.x version starts with (names and types); crc32 is always last
_FIXED = PREFIX_FIELDS + REST_FIELDS


def _shape(field: Dict[str, Any]) -> Tuple[Any, Any]:
    return field["name"], field["type"]


_FIXED_SHAPES = [_shape(f) for f in _FIXED]


class RestDecoder:
    """Decodes the fastavro-encoded middle of records written with one writer schema."""

    _cache: Dict[str, "RestDecoder"] = {}

    def __init__(self, writer_rest: Dict[str, Any]) -> None:
        self.writer = fastavro.parse_schema(writer_rest)

    @classmethod
    def for_schema(cls, schema_json: str) -> "RestDecoder":
        """The decoder for a header's ``avro.schema`` (validated: :class:`Bad` when not ours)."""
        dec = cls._cache.get(schema_json)
        if dec is None:
            try:
                schema = json.loads(schema_json)
                fields = schema["fields"]
                if (schema.get("type") != "record" or len(fields) < len(_FIXED) + 1
                        or [_shape(f) for f in fields[:len(_FIXED)]] != _FIXED_SHAPES
                        or _shape(fields[-1]) != _shape(CRC_FIELD)):
                    raise Bad("the segment's schema is not a proxistore WAL schema")
                dec = cls({"type": "record", "name": _REST_NAME, "fields": fields[4:-1]})
            except (ValueError, KeyError, TypeError, AttributeError, IndexError,
                    fastavro.schema.SchemaParseException, fastavro.schema.UnknownType) as e:
                raise Bad(f"the segment's schema cannot be parsed: {e}") from None
            if len(cls._cache) < 64:
                cls._cache[schema_json] = dec
        return dec

    def decode(self, data: bytes) -> Dict[str, Any]:
        bio = io.BytesIO(data)
        rec = fastavro.schemaless_reader(bio, self.writer, _REST_SCHEMA)
        if bio.tell() != len(data):
            raise Bad("record has trailing bytes")
        return rec  # type: ignore[return-value]


def record_crc_ok(buf: bytes, start: int, end: int) -> bool:
    """Whether the record in ``buf[start:end]`` carries the CRC32 of its payload (False also
    for a record too short to carry one). ``zlib.crc32`` releases the GIL on large buffers, so
    a reader may run this on another thread while it decodes the previous record."""
    if end - start < CRC_SIZE + 4:
        return False
    body_end = end - CRC_SIZE
    return zlib.crc32(memoryview(buf)[start:body_end]) == _CRC.unpack_from(buf, body_end)[0]


def decode_record(buf: bytes, start: int, end: int, rest: RestDecoder,
                  decode_above: int = -1, *, crc_checked: bool = False) -> Tuple[int, int, Optional[WalBatch]]:
    """Check the CRC of the record in ``buf[start:end]`` and decode it.

    Returns ``(first_lsn, last_lsn, batch)``; ``batch`` is decoded only when
    ``last_lsn > decode_above`` (else ``None``: the CRC and the LSN fields were still checked).
    Vectors are read-only zero-copy views of ``buf``. Raises :class:`Bad`. ``crc_checked``:
    the caller has verified the CRC with :func:`record_crc_ok` (or will, before it uses the
    result).
    """
    if end - start < CRC_SIZE + 4:
        raise Bad("record too short")
    body_end = end - CRC_SIZE
    mv = memoryview(buf)
    if not crc_checked and zlib.crc32(mv[start:body_end]) != _CRC.unpack_from(buf, body_end)[0]:
        raise Bad("CRC mismatch")
    try:
        first, pos = read_long(buf, start, body_end)
        last, pos = read_long(buf, pos, body_end)
        dim, pos = read_long(buf, pos, body_end)
        vlen, pos = read_long(buf, pos, body_end)
    except Short:
        raise Bad("record fields run past the record") from None
    n = last - first + 1
    if first < 0 or n < 1 or dim < 0 or vlen != n * dim * 4 or pos + vlen > body_end:
        raise Bad("inconsistent LSN range, dimension or vector length")
    if last <= decode_above:
        return first, last, None
    try:
        fields = rest.decode(bytes(mv[pos + vlen:body_end]))
    except (ValueError, EOFError, IndexError, KeyError, TypeError, OverflowError,
            MemoryError, struct.error, SchemaResolutionError) as e:
        raise Bad(f"undecodable record: {type(e).__name__}: {e}") from None
    op, ids, meta_json = fields["op"], fields["ids"], fields["metadata"]
    if len(ids) != n or op not in OPS or (op == OP_DELETE) != (dim == 0):
        raise Bad("record fields disagree (ids, op, dim)")
    vectors = None
    if dim:
        vectors = np.frombuffer(buf, dtype="<f4", count=n * dim, offset=pos).reshape(n, dim)
    metadata = _decode_metadata(meta_json, n)
    return first, last, WalBatch(op=op, first_lsn=first, ids=ids, vectors=vectors,
                                 metadata=metadata, timestamp=fields["timestamp"])


def _decode_metadata(meta_json: Optional[str], n: int) -> Optional[Sequence[Any]]:
    if meta_json is None:
        return None
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError) as e:
        raise Bad(f"metadata is not JSON: {e}") from None
    if not isinstance(meta, list) or len(meta) != n or not all(
            m is None or isinstance(m, dict) for m in meta):
        raise Bad("metadata is not a list of objects matching the ids")
    return meta
