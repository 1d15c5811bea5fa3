-- stats(dimension, since, until): aggregates grouped by one dimension, over [since, until) (NULL: unbounded).
--   dimension = 'workflow' | 'day'            one row per workflow / UTC day, counting traces (runs)
--   dimension = 'model' | 'service' | 'name'  one row per model / service / span name, counting spans
-- count, errors, error_rate, p50/p95/p99 duration (ms), input/output/total tokens, cost.
-- A negative duration (a client clock sent an end before the start; stored raw) is counted but left out of the
-- percentiles: it is no duration at all, and one -300 ms span made a name's p50 negative.
CREATE OR REPLACE MACRO stats(dimension, since, until) AS TABLE
WITH
    runs AS (
        SELECT CASE dimension WHEN 'workflow' THEN workflow ELSE CAST(CAST(start_time AS DATE) AS VARCHAR) END AS key,
               status = 'ERROR' AS is_error, CASE WHEN duration_ms >= 0 THEN duration_ms END AS duration_ms,
               input_tokens, output_tokens, total_tokens, cost
        FROM traces
        WHERE dimension IN ('workflow', 'day')
          AND (since IS NULL OR start_time >= CAST(since AS TIMESTAMP))
          AND (until IS NULL OR start_time < CAST(until AS TIMESTAMP))
    ),
    calls AS (
        SELECT CASE dimension WHEN 'model' THEN model WHEN 'service' THEN service_name ELSE name END AS key,
               is_error, CASE WHEN duration_ms >= 0 THEN duration_ms END AS duration_ms,
               input_tokens, output_tokens, total_tokens, cost
        FROM spans
        WHERE dimension IN ('model', 'service', 'name')
          AND (dimension <> 'model' OR model IS NOT NULL)
          AND (since IS NULL OR start_time >= CAST(since AS TIMESTAMP))
          AND (until IS NULL OR start_time < CAST(until AS TIMESTAMP))
    ),
    rows AS (SELECT * FROM runs UNION ALL SELECT * FROM calls)
SELECT
    key,
    count(*) AS count,
    count(*) FILTER (WHERE is_error) AS errors,
    count(*) FILTER (WHERE is_error) / count(*) AS error_rate,
    quantile_cont(duration_ms, 0.5) AS p50_ms,
    quantile_cont(duration_ms, 0.95) AS p95_ms,
    quantile_cont(duration_ms, 0.99) AS p99_ms,
    CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
    CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
    CAST(sum(total_tokens) AS BIGINT) AS total_tokens,
    sum(cost) AS cost
FROM rows
GROUP BY key
ORDER BY count DESC, key;
