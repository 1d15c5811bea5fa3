"""The stored trace rows of compacted parts: ``trace_rows`` (``sql/20_traces.sql``) over given parts.

Compaction calls this for each part it writes, so a stored row is exactly the row the ``traces`` view would compute
from those spans: one SQL definition serves both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from msgtrace.query.engine import QueryEngine, quote_literal
from msgtrace.storage.layout import StoreLayout


def trace_rows(layout: StoreLayout, groups: list[list[Path]], only: list[str] | None = None) -> Iterator[pa.Table]:
    """One table of trace rows per group of parts, in order, each computed when asked for (so only one is in
    memory at a time): every trace of the group's spans (duplicates collapsed, deleted traces left out), or only
    the traces ``only`` names."""
    # Bounded, so that compaction's peak memory stays the merge's own (DuckDB spills past it: nothing fails).
    engine = QueryEngine(layout.root, memory_limit="256MB")
    try:
        for parts in groups:
            with engine.cursor(traces=False) as cur:
                files = ", ".join(quote_literal(str(p)) for p in parts)
                where = ""
                if only is not None:
                    cur.register("only_ids", pa.table({"trace_id": pa.array(only, pa.string())}))
                    where = " WHERE trace_id IN (SELECT trace_id FROM only_ids)"
                cur.execute(f"CREATE OR REPLACE TEMP VIEW part_source AS SELECT * FROM read_parquet([{files}], "
                            f"hive_partitioning = true){where}")
                cur.execute("CREATE OR REPLACE TEMP VIEW part_spans AS SELECT * FROM deduped('part_source')")
                yield cur.sql("SELECT * FROM trace_rows('part_spans')").to_arrow_table()
    finally:
        engine.close()
