-- roots(src): the root span of each trace in the relation named `src` (rows shaped like the spans view).
-- The root is the span with no parent, or whose parent is not stored (real clients send traces whose root
-- arrives late or never, or whose parent lives in another service); with several, the parentless one, then the
-- earliest.
CREATE OR REPLACE MACRO roots(src) AS TABLE
SELECT s.*
FROM query_table(src) AS s
LEFT JOIN (SELECT trace_id, span_id FROM query_table(src)) AS parent
       ON parent.trace_id = s.trace_id AND parent.span_id = s.parent_span_id
WHERE parent.span_id IS NULL
QUALIFY row_number() OVER (PARTITION BY s.trace_id
                           ORDER BY s.parent_span_id IS NULL DESC, s.start_time_unix_nano, s.span_id) = 1;

CREATE OR REPLACE VIEW trace_roots AS SELECT * FROM roots('spans');

-- trace_rows(src): one row per trace of the relation named `src`, computed from its spans.
-- workflow = the root's workflow.name, else its msgflux.workflow.name, else the root's name.
-- Compaction stores these rows for each compacted part (trace_summaries), computed by this same macro.
CREATE OR REPLACE MACRO trace_rows(src) AS TABLE
WITH agg AS (
    SELECT
        trace_id,
        min(start_time_unix_nano) AS start_time_unix_nano,
        max(end_time_unix_nano) AS end_time_unix_nano,
        count(*) AS span_count,
        count(*) FILTER (WHERE status_code = 'ERROR') AS error_count,
        CAST(sum(input_tokens) AS BIGINT) AS input_tokens,
        CAST(sum(output_tokens) AS BIGINT) AS output_tokens,
        CAST(sum(total_tokens) AS BIGINT) AS total_tokens,
        sum(cost) AS cost,
        any_value(user_id) AS any_user_id,
        any_value(session_id) AS any_session_id,
        coalesce(list_sort(list_distinct(list(model) FILTER (WHERE model IS NOT NULL))), []) AS models,
        list_sort(list_distinct(list(service_name) FILTER (WHERE service_name IS NOT NULL))) AS services,
        min(date) AS date
    FROM query_table(src)
    GROUP BY trace_id
)
SELECT
    agg.trace_id,
    make_timestamp(TRY_CAST(agg.start_time_unix_nano // 1000 AS BIGINT)) AS start_time,
    make_timestamp(TRY_CAST(agg.end_time_unix_nano // 1000 AS BIGINT)) AS end_time,
    (TRY_CAST(agg.end_time_unix_nano AS BIGINT) - TRY_CAST(agg.start_time_unix_nano AS BIGINT)) / 1e6
        AS duration_ms,
    root.span_id AS root_span_id,
    root.name AS root_name,
    coalesce(root.service_name, agg.services[1]) AS service_name,
    coalesce(root.workflow_name, root.name) AS workflow,
    agg.span_count,
    agg.error_count,
    CASE WHEN agg.error_count > 0 THEN 'ERROR' ELSE 'OK' END AS status,
    agg.input_tokens,
    agg.output_tokens,
    agg.total_tokens,
    agg.cost,
    coalesce(root.user_id, agg.any_user_id) AS user_id,
    coalesce(root.session_id, agg.any_session_id) AS session_id,
    agg.models,
    agg.services,
    agg.start_time_unix_nano,
    agg.end_time_unix_nano,
    agg.date
FROM agg
LEFT JOIN roots(src) AS root USING (trace_id);
