"""The stored trace rows of compacted parts: ``trace_rows`` (``sql/20_traces.sql``) over given spans.

Compaction calls this for each part it writes, so a stored row is exactly the row the ``traces`` view would compute
from those spans: one SQL definition serves both.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgtrace.query.engine import QueryEngine, _Footer, quote_literal
from msgtrace.storage.layout import StoreLayout, day_to_date, part_day


class TraceRows:
    """Computes trace rows with one DuckDB database for the whole compaction; safe to call from several threads
    (each call has its own cursor). Close it when done."""

    def __init__(self, layout: StoreLayout) -> None:
        # Bounded, so that compaction's peak memory stays the merge's own (DuckDB spills past it: nothing fails).
        self._engine = QueryEngine(layout.root, memory_limit="256MB")

    def close(self) -> None:
        self._engine.close()

    def of_table(self, spans: pa.Table, date: dt.date) -> pa.Table:
        """The trace rows of ``spans``: the rows of one day's compacted part (without the ``date`` partition
        column), read in place from memory, so the part being written need not be read back from disk. They hold
        no duplicate and no deleted trace already, so the spans view's deduplication is skipped (~40 % of the
        time); the rows are the ones it would give. No snapshot of the store is bound: listing its parts cost
        ~100 ms per call on a store of 2,640 parts, and this runs once per piece of every output."""
        with self._engine.unbound_cursor() as cur:
            cur.register("part_rows", spans)
            cur.execute("CREATE OR REPLACE TEMP VIEW part_spans AS "
                        f"SELECT *, DATE {quote_literal(date.isoformat())} AS date FROM part_rows")
            return cur.sql("SELECT * FROM trace_rows('part_spans')").to_arrow_table()

    def of_parts(self, holding: dict[Path, pa.Array]) -> pa.Table:
        """The trace rows of the traces named in ``holding``, from their spans in all its parts taken together
        (duplicates collapsed, deleted traces left out). ``holding``, not empty, maps each compacted part to the
        ids of those traces it holds.

        Of each part only the row groups whose trace-id ranges hold those ids are read, and only the columns that
        are not nested (a trace row is made of those). Compaction asks this for the traces it finds in more than
        one part: at 10M spans ~130 traces that cross midnight, in 87 parts, where letting DuckDB scan those parts
        for them took 2.2 s and ~420 MB at the end of the compaction."""
        tables = []
        for part, ids in holding.items():
            wanted = pc.unique(ids)
            footer = _Footer.read(str(part))
            with pq.ParquetFile(part, metadata=None if footer is None else footer.metadata) as file:
                groups = (sorted({g for trace_id in wanted.to_pylist() for g in footer.groups(trace_id)})
                          if footer is not None else list(range(file.num_row_groups)))
                columns = [f.name for f in file.schema_arrow if not pa.types.is_nested(f.type)]
                rows = file.read_row_groups(groups, columns=columns, use_threads=False)
            rows = rows.filter(pc.is_in(rows["trace_id"], value_set=wanted))
            day = part_day(part)
            date = None if day is None else day_to_date(day)
            tables.append(rows.append_column("date", pa.array([date] * rows.num_rows, pa.date32())))
        spans = pa.concat_tables(tables, promote_options="default")
        with self._engine.cursor(traces=False) as cur:
            cur.register("part_rows", spans)
            cur.execute("CREATE OR REPLACE TEMP VIEW part_spans AS SELECT * FROM deduped('part_rows')")
            return cur.sql("SELECT * FROM trace_rows('part_spans')").to_arrow_table()
