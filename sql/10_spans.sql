-- spans: one row per span, duplicate deliveries collapsed, with readable times.
--   start_time / end_time  TIMESTAMP (UTC, microseconds) from the raw nanoseconds, which stay in
--                          start_time_unix_nano / end_time_unix_nano (NULL past year 2262)
--   duration_ms            end - start in milliseconds (negative when a client sent end < start)
--   is_error               status_code = 'ERROR'
-- Deleted traces (tombstones in deleted_traces) are left out, whichever part or buffer their spans are in.
CREATE OR REPLACE VIEW spans AS
SELECT
    *,
    make_timestamp(TRY_CAST(start_time_unix_nano // 1000 AS BIGINT)) AS start_time,
    make_timestamp(TRY_CAST(end_time_unix_nano // 1000 AS BIGINT)) AS end_time,
    duration_ns / 1e6 AS duration_ms,
    status_code = 'ERROR' AS is_error
FROM spans_source
WHERE trace_id NOT IN (SELECT trace_id FROM deleted_traces)
QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY end_time_unix_nano DESC, name) = 1;
