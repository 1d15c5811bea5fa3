-- For the DuckDB shell only, after the other files: the sources of the traces view (sql/25_traces.sql) over the
-- files. The trace rows compaction stored under traces/ stand for their parts; every other part is fresh.
CREATE OR REPLACE VIEW trace_summaries AS
SELECT * EXCLUDE (filename)
FROM read_parquet(getvariable('msgtrace_data_dir') || '/traces/*/*.parquet', filename = true)
WHERE getvariable('msgtrace_data_dir') || '/' || part NOT IN (SELECT filename FROM retired_parts);

CREATE OR REPLACE VIEW fresh_source AS
SELECT * EXCLUDE (filename)
FROM part_rows
WHERE filename NOT IN (SELECT getvariable('msgtrace_data_dir') || '/' || part FROM trace_summaries);
