"""Checking a value against the Parquet Bloom filter of a column chunk, without DuckDB.

Compacted parts carry a split-block Bloom filter on ``trace_id`` in every row group (``compactor._parquet_options``).
DuckDB uses it to skip row groups, but asking DuckDB costs ~0.3 ms per file plus ~0.6 ms a query, most of a trace
lookup's search for its parts (benchmarks/README.md). pyarrow exposes where each filter lies but does not evaluate
it, so this module does, after the Parquet format's definition (``BloomFilter.md`` of apache/parquet-format):

- the hash of a value is XXH64 (seed 0) of its plain encoding; for a string, its UTF-8 bytes alone;
- the filter is a bitset of ``num_bytes / 32`` blocks of eight 32-bit little-endian words; the upper 32 bits of the
  hash pick the block (``(upper * blocks) >> 32``), the lower 32 bits ``key`` set one bit in each word:
  bit ``(key * SALT[i] mod 2^32) >> 27`` of word ``i``;
- on disk the bitset follows a Thrift (compact protocol) ``BloomFilterHeader`` whose first field is ``num_bytes``.

A filter says "absent" only for values never added; "maybe" is wrong about 1 % of the time (the fpp the compactor
asks for), which only costs reading a row group that turns out not to hold the trace.
"""

from __future__ import annotations

import struct

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
SALT = (0x47B6137B, 0x44974D91, 0x8824AD5B, 0xA2B7289D, 0x705495C7, 0x2DF1424B, 0x9EFC4947, 0x5C6BFB31)
_BLOCK = struct.Struct("<8I")


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _round(acc: int, lane: int) -> int:
    return _rotl((acc + lane * _P2) & _MASK, 31) * _P1 & _MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 of ``data`` (the xxHash specification, 64-bit variant)."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _MASK, (seed + _P2) & _MASK, seed, (seed - _P1) & _MASK]
        while i + 32 <= n:
            lanes = struct.unpack_from("<4Q", data, i)
            v = [_round(acc, lane) for acc, lane in zip(v, lanes, strict=True)]
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _MASK
        for acc in v:
            h = ((h ^ _round(0, acc)) * _P1 + _P4) & _MASK
    else:
        h = (seed + _P5) & _MASK
    h = (h + n) & _MASK
    while i + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * _P1 + _P4) & _MASK
        i += 8
    if i + 4 <= n:
        h ^= struct.unpack_from("<I", data, i)[0] * _P1 & _MASK
        h = (_rotl(h, 23) * _P2 + _P3) & _MASK
        i += 4
    while i < n:
        h ^= data[i] * _P5 & _MASK
        h = _rotl(h, 11) * _P1 & _MASK
        i += 1
    h ^= h >> 33
    h = h * _P2 & _MASK
    h ^= h >> 29
    h = h * _P3 & _MASK
    return h ^ (h >> 32)


def bitset(filter_bytes: bytes) -> bytes | None:
    """The bitset of a serialized filter (header and bitset, as ``bloom_filter_offset/length`` locate them), or
    None when the header is not the one expected (the caller then treats the row group as a maybe)."""
    # Field 1 of the header, num_bytes: field-header byte 0x15 (delta 1, type i32), then a zigzag varint.
    if len(filter_bytes) < 2 or filter_bytes[0] != 0x15:
        return None
    value, shift, i = 0, 0, 1
    while i < len(filter_bytes) and shift < 35:
        byte = filter_bytes[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    num_bytes = (value >> 1) ^ -(value & 1)
    if num_bytes <= 0 or num_bytes % 32 or num_bytes > len(filter_bytes) - i:
        return None
    return filter_bytes[len(filter_bytes) - num_bytes:]


def may_contain(bits: bytes, value: bytes) -> bool:
    """Whether a value whose plain encoding is ``value`` may be in the filter with bitset ``bits``."""
    h = xxh64(value)
    blocks = len(bits) // 32
    key = h & 0xFFFFFFFF
    words = _BLOCK.unpack_from(bits, ((h >> 32) * blocks >> 32) * 32)
    return all(word >> ((key * salt & 0xFFFFFFFF) >> 27) & 1 for word, salt in zip(words, SALT, strict=True))
