-- traces: one row per trace.
--
-- Computing every trace from its spans costs a pass over all spans, so compaction stores the trace rows of each
-- compacted part (trace_rows above) next to it: trace_summaries, one row per trace and part, plus
--   shared       the trace has spans in several compacted parts; the row was computed from all of them
--   computed_at  when (ns); of a shared trace's flagged rows the newest is the answer
--   part         the Parquet part the row belongs to
-- A stored row answers for a trace unless the trace also has spans not compacted yet (fresh_source: flushed parts
-- awaiting compaction, and inside the server the live buffer): those traces, redo_ids, are computed from their
-- spans, which redo_source holds (the engine binds it to the fresh parts plus the compacted parts holding those
-- traces; the DuckDB shell to every part).
--
-- The defaults below are empty; the engine binds each per query to a snapshot, the shell to the files.
CREATE OR REPLACE VIEW fresh_source AS SELECT * FROM spans_source WHERE false;
CREATE OR REPLACE VIEW redo_source AS SELECT * FROM spans_source;
-- (The shape is materialised as an empty table: a view over trace_rows here would nest trace_rows inside itself
-- through the traces view, which DuckDB refuses as macro recursion.)
CREATE OR REPLACE TABLE trace_summaries_shape AS
SELECT *, false AS shared, CAST(0 AS BIGINT) AS computed_at, CAST(NULL AS VARCHAR) AS part
FROM trace_rows('spans') LIMIT 0;
CREATE OR REPLACE VIEW trace_summaries AS SELECT * FROM trace_summaries_shape;
-- shared_summaries: the flagged rows (compaction writes them in row groups of their own, first in each file, so
-- row-group statistics on `shared` let this skip every other row group). They are few, but lie in every file:
-- reading them cost 40-50 ms of each query at 10M spans (91 files), so the engine binds this to an in-memory copy
-- it reads once per set of summary files.
CREATE OR REPLACE VIEW shared_summaries AS SELECT * FROM trace_summaries WHERE shared;
CREATE OR REPLACE VIEW shared_traces AS SELECT DISTINCT trace_id FROM shared_summaries;

CREATE OR REPLACE VIEW redo_ids AS SELECT DISTINCT trace_id FROM fresh_source;

-- (Rows are picked before deduped() so its window runs over those traces only.)
CREATE OR REPLACE VIEW redo_rows AS
SELECT * FROM redo_source WHERE trace_id IN (SELECT trace_id FROM redo_ids);
CREATE OR REPLACE VIEW redo_spans AS SELECT * FROM deduped('redo_rows');

CREATE OR REPLACE VIEW stored_traces AS
SELECT * FROM trace_summaries WHERE NOT shared AND trace_id NOT IN (SELECT trace_id FROM shared_traces)
UNION ALL
SELECT * FROM (SELECT * FROM shared_summaries
               QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY computed_at DESC) = 1);

CREATE OR REPLACE VIEW traces AS
SELECT * EXCLUDE (shared, computed_at, part)
FROM stored_traces
WHERE trace_id NOT IN (SELECT trace_id FROM redo_ids)
  AND trace_id NOT IN (SELECT trace_id FROM deleted_traces)
UNION ALL BY NAME
SELECT * FROM trace_rows('redo_spans');
