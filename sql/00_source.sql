-- spans_source: the raw rows. For the DuckDB shell: the Parquet files under the directory named by
--     SET VARIABLE msgtrace_data_dir = '/path/to/store';
-- less the parts compaction or retention has retired, or is still writing (listed in retired.json; see
-- msgtrace/storage/retired.py). msgtrace's own query engine binds the sources per query to the files it sees (plus,
-- inside the server, the spans still in memory), so this file and 99_shell.sql are only read by a shell user.
CREATE OR REPLACE VIEW retired_parts AS
SELECT getvariable('msgtrace_data_dir') || '/' || path AS filename
FROM (SELECT unnest(list_concat([f.path FOR f IN coalesce(files, [])], coalesce(pending, []))) AS path
      FROM read_json(getvariable('msgtrace_data_dir') || '/retired.json',
                     columns = {files: 'STRUCT(path VARCHAR, retired_at DOUBLE)[]', pending: 'VARCHAR[]'}));

CREATE OR REPLACE VIEW part_rows AS
SELECT *
FROM read_parquet(getvariable('msgtrace_data_dir') || '/spans/*/*.parquet', hive_partitioning = true,
                  filename = true)
WHERE filename NOT IN (SELECT filename FROM retired_parts);

CREATE OR REPLACE VIEW spans_source AS SELECT * EXCLUDE (filename) FROM part_rows;
