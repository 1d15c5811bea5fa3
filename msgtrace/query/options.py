"""The fixed choices of the query surfaces (trace-list sorts, stats dimensions), importable without loading DuckDB,
so the REST docs, the CLI help and the Store share one list."""

# sort name → column of the traces view
TRACE_SORTS = {"start_time": "start_time", "duration": "duration_ms", "spans": "span_count", "errors": "error_count",
               "cost": "cost", "tokens": "total_tokens"}
STATS_DIMENSIONS = ("workflow", "model", "service", "name", "day")
