"""The Bloom filter check the trace lookup uses (msgtrace.storage.bloom) against filters pyarrow's Parquet writer
wrote: it must never say "absent" for a value the writer added, and must say it for nearly all others."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from msgtrace.storage.bloom import bitset, may_contain, xxh64


def test_xxh64_matches_the_published_values() -> None:
    # The xxHash specification's sample hashes (seed 0); lengths 0, 1, 3 and 39 reach every code path (the
    # 32-byte stripes, 8-, 4- and 1-byte tails).
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"abc") == 0x44BC2CF5AD770999
    assert xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1


def test_filters_written_by_pyarrow_hold_every_value_and_few_others(tmp_path: Path) -> None:
    r = random.Random(7)
    path = tmp_path / "ids.parquet"
    groups = [[f"{r.getrandbits(128):032x}" for _ in range(n)] for n in (1, 300, 1024, 5000)]
    with pq.ParquetWriter(path, pa.schema([("trace_id", pa.string())]),
                          bloom_filter_options={"trace_id": {"ndv": 1024, "fpp": 0.01}}) as writer:
        for ids in groups:
            writer.write_table(pa.table({"trace_id": ids}), row_group_size=len(ids))
    metadata = pq.read_metadata(path)
    assert metadata.num_row_groups == len(groups)
    data = path.read_bytes()
    absent = [f"{r.getrandbits(128):032x}".encode() for _ in range(5000)]
    for group, ids in enumerate(groups):
        chunk = metadata.row_group(group).column(0)
        bits = bitset(data[chunk.bloom_filter_offset:chunk.bloom_filter_offset + chunk.bloom_filter_length])
        assert bits is not None and len(bits) % 32 == 0
        assert all(may_contain(bits, i.encode()) for i in ids)  # no false negative, ever
        if len(ids) <= 1024:  # (the 5,000-value group overfills a filter sized for 1,024: only no false negative)
            false_positives = sum(may_contain(bits, i) for i in absent) / len(absent)
            assert false_positives < 0.02, (len(ids), false_positives)  # asked for 1 %


def test_an_unexpected_header_is_a_maybe_not_an_error() -> None:
    assert bitset(b"") is None
    assert bitset(b"\x16\x80\x08" + bytes(512)) is None  # not field 1 as an i32
    assert bitset(b"\x15\x80\x08" + bytes(100)) is None  # says 512 bytes, holds fewer
