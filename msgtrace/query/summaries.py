"""The stored trace rows of compacted parts: ``trace_rows`` (``sql/20_traces.sql``) over given spans.

Compaction calls this for each part it writes, so a stored row is exactly the row the ``traces`` view would compute
from those spans: one SQL definition serves both.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa

from msgtrace.query.engine import QueryEngine, quote_literal
from msgtrace.storage.layout import StoreLayout


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

    def of_parts(self, parts: list[Path], only: pa.Array | None = None) -> pa.Table:
        """The trace rows of the spans of ``parts`` taken together (duplicates collapsed, deleted traces left out),
        or of the traces ``only`` names."""
        with self._engine.cursor(traces=False) as cur:
            files = ", ".join(quote_literal(str(p)) for p in parts)
            where = ""
            if only is not None:
                cur.register("only_ids", pa.table({"trace_id": only}))
                where = " WHERE trace_id IN (SELECT trace_id FROM only_ids)"
            cur.execute(f"CREATE OR REPLACE TEMP VIEW part_source AS SELECT * FROM read_parquet([{files}], "
                        f"hive_partitioning = true){where}")
            cur.execute("CREATE OR REPLACE TEMP VIEW part_spans AS SELECT * FROM deduped('part_source')")
            return cur.sql("SELECT * FROM trace_rows('part_spans')").to_arrow_table()
