-- span_rows(source): the rows of the relation named `source` as spans, deleted traces left out, readable times:
--   start_time / end_time  TIMESTAMP (UTC, microseconds) from the raw nanoseconds, which stay in
--                          start_time_unix_nano / end_time_unix_nano (NULL past year 2262)
--   duration_ms            end - start in milliseconds (negative when a client sent end < start)
--   is_error               status_code = 'ERROR'
-- Duplicate deliveries are kept: for a source that holds one row per span already (the rows of one compacted part).
CREATE OR REPLACE MACRO span_rows(source) AS TABLE
SELECT
    *,
    make_timestamp(TRY_CAST(start_time_unix_nano // 1000 AS BIGINT)) AS start_time,
    make_timestamp(TRY_CAST(end_time_unix_nano // 1000 AS BIGINT)) AS end_time,
    duration_ns / 1e6 AS duration_ms,
    status_code = 'ERROR' AS is_error
FROM query_table(source)
WHERE trace_id NOT IN (SELECT trace_id FROM deleted_traces);

-- deduped(source): span_rows(source) with one row per span, duplicate deliveries collapsed (the copy with the
-- latest end time, then the smallest name). Compaction keeps exactly the row this keeps, so a compacted part holds
-- one row per span (msgtrace/storage/compactor.py).
CREATE OR REPLACE MACRO deduped(source) AS TABLE
SELECT * FROM span_rows(source)
QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY end_time_unix_nano DESC, name) = 1;

-- spans: every span in the store (the Parquet parts, and inside the server the live buffer).
CREATE OR REPLACE VIEW spans AS SELECT * FROM deduped('spans_source');
