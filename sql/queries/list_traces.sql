-- list_traces: the trace list behind GET /api/v1/traces, `msgtrace list` and Store.traces().
-- Every filter is a bound parameter; NULL means "no filter". The sort column and direction are appended by the
-- engine from a fixed list ({order_by} below), never from user text.
SELECT trace_id, start_time, end_time, duration_ms, root_name, service_name, workflow, span_count, error_count,
       status, input_tokens, output_tokens, total_tokens, cost, user_id, session_id, models
FROM traces AS t
WHERE ($since IS NULL OR t.start_time >= CAST($since AS TIMESTAMP))
  AND ($until IS NULL OR t.start_time < CAST($until AS TIMESTAMP))
  AND ($service IS NULL OR t.service_name = $service OR list_contains(t.services, $service))
  AND ($workflow IS NULL OR t.workflow = $workflow)
  AND ($status IS NULL OR t.status = upper($status))
  AND ($min_duration_ms IS NULL OR t.duration_ms >= $min_duration_ms)
  AND ($max_duration_ms IS NULL OR t.duration_ms <= $max_duration_ms)
  AND ($model IS NULL OR list_contains(t.models, $model))
  AND ($user_id IS NULL OR t.user_id = $user_id)
  AND ($session_id IS NULL OR t.session_id = $session_id)
  AND ($attr_key IS NULL OR t.trace_id IN (
        SELECT trace_id FROM spans
        WHERE attr_text(attributes[$attr_key]) = $attr_value
           OR attr_text(resource_attributes[$attr_key]) = $attr_value))
ORDER BY {order_by}, trace_id
LIMIT $limit OFFSET $offset
