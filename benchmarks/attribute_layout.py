"""What the attribute maps cost, and what a narrower physical layout for them would save.

    python benchmarks/attribute_layout.py --data-dir /tmp/q1m     # a compacted store (query.py --compact makes one)

Today every attribute map (span, resource, scope, event, link) is a ``MAP<VARCHAR, attr_value>`` whose value struct
has seven typed children (``msgtrace.schema``): 5 maps x 8 leaves, 81 Parquet leaf columns in all. The lookup and
compaction figures that miss their targets are dominated by those leaves (``benchmarks/README.md``). This script
takes the largest compacted part of a store and measures, for the layout of today and for the same rows with each
map stored as one JSON text column (``{"key": {"type": …, "str": …}, …}``, events and links keeping their lists):

- bytes per span, Parquet encode and decode time per span (pyarrow, the compactor's writer options);
- one trace's lookup in DuckDB (``SELECT *`` over the file, warm): raw, and with the JSON turned back into the
  documented ``MAP`` form by ``from_json``, as a view would have to;
- the decoder side: building the span batch's attribute columns (``AttrSink.build``) against building one JSON
  text per attribute set from the same decoded values (msgspec).

It only measures; nothing in the store changes.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from msgtrace.ingest import batch
from msgtrace.ingest.decode import WireFormat, decode_request
from msgtrace.ingest.truncation import Truncator
from msgtrace.schema import DICTIONARY_COLUMNS
from msgtrace.storage.compactor import CompactionSettings, _parquet_options
from msgtrace.storage.layout import COMPACTED_PREFIX
from msgtrace.synthetic import build_workload

AT = "MAP(VARCHAR, STRUCT(type VARCHAR, str VARCHAR, bool BOOLEAN, int BIGINT, double DOUBLE, bytes BLOB, json VARCHAR))"
EVENT_FIELDS = "time_unix_nano := e.time_unix_nano, name := e.name, dropped_attributes_count := e.dropped_attributes_count"
LINK_FIELDS = ("trace_id := l.trace_id, span_id := l.span_id, trace_state := l.trace_state, flags := l.flags, "
               "dropped_attributes_count := l.dropped_attributes_count")


def to_text(source: str) -> str:
    """SQL turning every map of ``source`` into JSON text."""
    return (f"SELECT * REPLACE (to_json(attributes)::VARCHAR AS attributes, "
            f"to_json(resource_attributes)::VARCHAR AS resource_attributes, "
            f"to_json(scope_attributes)::VARCHAR AS scope_attributes, "
            f"[struct_pack({EVENT_FIELDS}, attributes := to_json(e.attributes)::VARCHAR) FOR e IN events] AS events, "
            f"[struct_pack({LINK_FIELDS}, attributes := to_json(l.attributes)::VARCHAR) FOR l IN links] AS links) "
            f"FROM {source}")


def to_maps(source: str) -> str:
    """SQL turning the JSON text of ``source`` back into the documented MAP form."""
    m = f"'\"{AT}\"'"
    return (f"SELECT * REPLACE (from_json(attributes, {m}) AS attributes, "
            f"from_json(resource_attributes, {m}) AS resource_attributes, "
            f"from_json(scope_attributes, {m}) AS scope_attributes, "
            f"[struct_pack({EVENT_FIELDS}, attributes := from_json(e.attributes, {m})) FOR e IN events] AS events, "
            f"[struct_pack({LINK_FIELDS}, attributes := from_json(l.attributes, {m})) FOR l IN links] AS links) "
            f"FROM {source}")


def best(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def write(table: pa.Table, path: Path, dictionary: list[str]) -> None:
    options = dict(_parquet_options(CompactionSettings()), use_dictionary=dictionary)
    rows = CompactionSettings().row_group_rows
    with pq.ParquetWriter(path, table.schema, **options) as writer:
        for start in range(0, table.num_rows, rows):
            writer.write_table(table.slice(start, rows), row_group_size=rows)


def decoder_side(spans: int) -> tuple[float, float]:
    """µs per span to build the attribute columns as maps, and as one JSON text per attribute set."""
    sinks: list[batch.AttrSink] = []
    build = batch.AttrSink.build

    def keep(self: batch.AttrSink, cut: Truncator) -> pa.MapArray:
        sinks.append(self)
        return build(self, cut)

    batch.AttrSink.build = keep  # type: ignore[method-assign]
    try:
        for body in build_workload(spans, 512, seed=3, base_time_ns=time.time_ns()).bodies:
            decode_request(WireFormat.PROTOBUF, body, time.time_ns(), 1 << 20)
    finally:
        batch.AttrSink.build = build  # type: ignore[method-assign]
    encode = msgspec.json.Encoder().encode

    def as_maps() -> None:
        for sink in sinks:
            build(sink, Truncator(1 << 20))

    def as_text() -> None:
        for sink in sinks:
            texts, offsets, keys, types, values = [], sink.offsets, sink.keys, sink.types, sink.values
            for i in range(len(offsets) - 1):
                one = {}
                for j in range(offsets[i], offsets[i + 1]):
                    value = values[j]
                    one[keys[j]] = (types[j], base64.b64encode(value).decode() if types[j] == "bytes" else value)
                texts.append(encode(one))
            pa.array(texts, pa.binary())

    return best(as_maps) / spans * 1e6, best(as_text) / spans * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="a compacted store")
    parser.add_argument("--lookups", type=int, default=60)
    parser.add_argument("--decoder-spans", type=int, default=20_480)
    args = parser.parse_args()

    parts = [p for p in args.data_dir.glob("spans/*/*.parquet") if p.name.startswith(COMPACTED_PREFIX)]
    if not parts:
        parser.error(f"no compacted part under {args.data_dir}: run `msgtrace compact` on it first")
    source = max(parts, key=lambda p: p.stat().st_size)
    today = pq.read_table(source)
    con = duckdb.connect()
    con.execute("SET GLOBAL parquet_metadata_cache = true")
    con.register("today", today)
    text = con.sql(to_text("today")).to_arrow_table()
    ids = today.column("trace_id").unique().to_pylist()
    ids = ids[::max(1, len(ids) // args.lookups)][:args.lookups]
    n = today.num_rows
    print(f"== {source} ({n:,} spans)")
    print(f"  {'layout':<22} {'leaves':>6} {'bytes/span':>10} {'encode µs':>10} {'decode µs':>10} {'lookup ms':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        layouts = [("maps (today)", today, DICTIONARY_COLUMNS, None),
                   ("JSON text per map", text, [*DICTIONARY_COLUMNS, "resource_attributes", "scope_attributes"],
                    to_maps)]
        for label, table, dictionary, back in layouts:
            path = Path(tmp) / "part.parquet"
            encode = best(lambda t=table, p=path, d=dictionary: write(t, p, d))
            decode = best(lambda p=path: pq.read_table(p))
            scan = f"read_parquet('{path}')"
            sql = f"SELECT * FROM ({back(scan) if back else 'SELECT * FROM ' + scan}) WHERE trace_id = $id"
            con.sql(sql, params={"id": ids[0]}).to_arrow_table()
            lookups = []
            for trace_id in ids:
                started = time.perf_counter()
                con.sql(sql, params={"id": trace_id}).to_arrow_table()
                lookups.append((time.perf_counter() - started) * 1000)
            leaves = len(pq.ParquetFile(path).schema)
            print(f"  {label:<22} {leaves:>6} {path.stat().st_size / n:>10.1f} {encode / n * 1e6:>10.2f} "
                  f"{decode / n * 1e6:>10.2f} {statistics.median(lookups):>10.1f}")
    maps_us, text_us = decoder_side(args.decoder_spans)
    print(f"  decoder, attribute columns of a span batch: maps {maps_us:.2f} µs/span, JSON text {text_us:.2f} µs/span")


if __name__ == "__main__":
    main()
