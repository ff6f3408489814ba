"""Deletion vectors: which rows of an immutable segment are deleted or superseded.

In memory a deletion vector is a numpy bool array (one entry per stored row). It is never
modified in place: marking rows makes a new array, so a search holding the old one sees a
consistent snapshot. On disk it is a small file next to the segment, written durably before the
manifest that references it::

    b"PXDV" | version u8 | rows u64 | deleted u64 | bitmap (little-endian bit order) | crc32 u32

A new file (new name) is written whenever the vector changes; the old one is removed after the
manifest commit.
"""
from __future__ import annotations

import struct
import zlib
from typing import Optional

import numpy as np

from proxistore.errors import StorageError

__all__ = ["encode_deletions", "decode_deletions", "mark"]

_MAGIC = b"PXDV"
_HEADER = struct.Struct("<4sBQQ")
_VERSION = 1


def encode_deletions(deleted: np.ndarray) -> bytes:
    """The file content of a deletion vector."""
    body = _HEADER.pack(_MAGIC, _VERSION, len(deleted), int(deleted.sum())) + \
        np.packbits(deleted, bitorder="little").tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def decode_deletions(data: bytes, rows: int, where: str) -> np.ndarray:
    """Parse and verify a deletion-vector file written by :func:`encode_deletions`."""
    if len(data) < _HEADER.size + 4:
        raise StorageError(f"{where}: deletion vector truncated ({len(data)} bytes)")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise StorageError(f"{where}: deletion vector checksum mismatch")
    magic, version, n, count = _HEADER.unpack_from(body)
    if magic != _MAGIC or version != _VERSION:
        raise StorageError(f"{where}: not a deletion vector (magic {magic!r}, version {version})")
    if n != rows:
        raise StorageError(f"{where}: deletion vector covers {n} rows, segment has {rows}")
    bits = np.frombuffer(body, dtype=np.uint8, offset=_HEADER.size)
    deleted = np.unpackbits(bits, count=n, bitorder="little").astype(bool)
    if int(deleted.sum()) != count:
        raise StorageError(f"{where}: deletion vector count mismatch")
    return deleted


def mark(deleted: Optional[np.ndarray], rows: int, positions) -> np.ndarray:
    """A new deletion vector: ``deleted`` (or none) plus ``positions`` (copy-on-write)."""
    out = np.zeros(rows, dtype=bool) if deleted is None else deleted.copy()
    out[np.asarray(positions, dtype=np.int64)] = True
    return out
