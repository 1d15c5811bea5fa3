"""Which copy of a span survives when it was delivered more than once.

The spans view keeps, per ``(trace_id, span_id)``, the copy with the latest end time, then the smallest name
(``deduped`` in ``sql/10_spans.sql``). A flush and a compaction drop the other copies by the same rule, here, so that
the files hold the row the views show.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

KEY_COLUMNS = ["trace_id", "span_id", "end_time_unix_nano", "name"]
_ORDER = [("trace_id", "ascending"), ("span_id", "ascending"), ("end_time_unix_nano", "descending"),
          ("name", "ascending")]


def kept_copies(rows: pa.Table) -> pa.Table:
    """One row of ``rows`` (which hold :data:`KEY_COLUMNS`, and any others) per span: the copy the spans view keeps,
    in (trace_id, span_id) order. The sort is stable, so of two copies alike in end and name the earlier row stays."""
    if rows.num_rows < 2:
        return rows
    rows = rows.take(pc.sort_indices(rows, _ORDER))
    tid, sid = rows["trace_id"].combine_chunks(), rows["span_id"].combine_chunks()
    n = rows.num_rows
    first = pc.or_(pc.not_equal(tid.slice(1), tid.slice(0, n - 1)), pc.not_equal(sid.slice(1), sid.slice(0, n - 1)))
    return rows.filter(pa.concat_arrays([pa.array([True]), pc.fill_null(first, True)]))
