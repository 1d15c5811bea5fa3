"""The stored trace rows of compacted parts: ``trace_rows`` (``sql/20_traces.sql``) over one part at a time.

Compaction calls this for each part it writes, so a stored row is exactly the row the ``traces`` view would compute
from that part's spans: one SQL definition serves both.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from msgtrace.query.engine import QueryEngine, quote_literal
from msgtrace.storage.layout import StoreLayout


def trace_rows(layout: StoreLayout, parts: list[Path]) -> list[pa.Table]:
    """One table of trace rows per part, in order (the part's rows are already deduplicated and undeleted)."""
    engine = QueryEngine(layout.root)
    try:
        out = []
        for part in parts:
            with engine.cursor(traces=False) as cur:
                cur.execute("CREATE OR REPLACE TEMP VIEW part_source AS SELECT * FROM read_parquet("
                            f"[{quote_literal(str(part))}], hive_partitioning = true)")
                cur.execute("CREATE OR REPLACE TEMP VIEW part_spans AS SELECT * FROM deduped('part_source')")
                out.append(cur.sql("SELECT * FROM trace_rows('part_spans')").to_arrow_table())
        return out
    finally:
        engine.close()
