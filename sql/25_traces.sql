-- traces: one row per trace.
--
-- Computing every trace from its spans costs a pass over all spans, so compaction stores each compacted part's
-- trace rows (trace_rows above) next to it: trace_summaries, one row per trace and part, with
--   shared  the trace also has spans in another compacted part (found when the later of the two was written)
--   part    the Parquet part the row was computed from
-- A stored row is the answer when the trace's spans are all in its part. The others, redo_ids, are computed from
-- their spans: traces with spans not compacted yet (fresh_source: flushed parts awaiting compaction, and inside the
-- server the live buffer) or in several compacted parts (shared). Their spans come from redo_source, which holds at
-- least every span of those traces (the query engine binds it to the fresh parts plus the compacted parts their
-- stored rows name; the DuckDB shell to every part).
--
-- The defaults below are empty; the engine binds each per query to a snapshot, the shell to the files.
CREATE OR REPLACE VIEW fresh_source AS SELECT * FROM spans_source WHERE false;
CREATE OR REPLACE VIEW redo_source AS SELECT * FROM spans_source;
-- (The shape is materialised as an empty table: a view over trace_rows here would nest trace_rows inside itself
-- through redo_ids, which DuckDB refuses as macro recursion.)
CREATE OR REPLACE TABLE trace_summaries_shape AS
SELECT *, false AS shared, CAST(NULL AS VARCHAR) AS part FROM trace_rows('spans') LIMIT 0;
CREATE OR REPLACE VIEW trace_summaries AS SELECT * FROM trace_summaries_shape;

CREATE OR REPLACE VIEW redo_ids AS
SELECT trace_id FROM fresh_source
UNION
SELECT trace_id FROM trace_summaries WHERE shared;

CREATE OR REPLACE VIEW redo_spans AS
SELECT * FROM deduped('redo_source') WHERE trace_id IN (SELECT trace_id FROM redo_ids);

CREATE OR REPLACE VIEW traces AS
SELECT * EXCLUDE (shared, part)
FROM trace_summaries
WHERE trace_id NOT IN (SELECT trace_id FROM redo_ids)
  AND trace_id NOT IN (SELECT trace_id FROM deleted_traces)
UNION ALL BY NAME
SELECT * FROM trace_rows('redo_spans');
