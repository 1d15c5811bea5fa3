"""Turns a flushed range of buffered batches into Parquet parts, one per day partition, published atomically.

Each part is sorted by (trace_id, start_time) so a trace is contiguous and row-group min/max statistics on
``trace_id`` let DuckDB skip row groups in a trace lookup. zstd level 1 is the default compression, with dictionaries
on the repetitive columns only (:data:`msgtrace.schema.DICTIONARY_COLUMNS`; bytes per span in
``benchmarks/README.md``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgtrace.schema import DICTIONARY_COLUMNS, SPAN_SCHEMA
from msgtrace.storage.files import publish
from msgtrace.storage.layout import StoreLayout

_SORT = [("trace_id", "ascending"), ("start_time_unix_nano", "ascending"), ("span_id", "ascending")]


def write_parts(
    layout: StoreLayout,
    table: pa.Table,
    days: pa.Array,
    first_seq: int,
    last_seq: int,
    *,
    row_group_spans: int,
    compression_level: int,
) -> list[Path]:
    """Write ``table`` split by ``days`` as ``spans/date=…/<first>-<last>.parquet``; returns the published paths.

    Deterministic for the same input, so a replayed range overwrites its earlier, possibly partial, publication.
    """
    paths = []
    distinct = sorted(pc.unique(days).to_pylist())
    for day in distinct:
        rows = table if len(distinct) == 1 else table.filter(pc.equal(days, day))
        rows = rows.sort_by(_SORT)
        path = layout.part_path(day, first_seq, last_seq)
        publish(path, lambda tmp, rows=rows: _write(rows, tmp, row_group_spans, compression_level))
        paths.append(path)
    return paths


def _write(rows: pa.Table, path: Path, row_group_spans: int, compression_level: int) -> None:
    pq.write_table(
        rows.cast(SPAN_SCHEMA) if rows.schema != SPAN_SCHEMA else rows,
        path,
        row_group_size=row_group_spans,
        compression="zstd",
        compression_level=compression_level,
        write_statistics=True,
        use_dictionary=DICTIONARY_COLUMNS,
    )
