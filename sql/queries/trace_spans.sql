-- trace_spans: every span of one trace, in start order (GET /api/v1/traces/{id}, Store.trace()).
SELECT * FROM spans WHERE trace_id = lower($trace_id) ORDER BY start_time_unix_nano, span_id
