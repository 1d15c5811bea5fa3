-- spans_source: the raw rows. For the DuckDB shell: the Parquet files under the directory named by
--     SET VARIABLE msgtrace_data_dir = '/path/to/store';
-- less the parts compaction or retention has retired (listed in retired.json until they are deleted after a grace
-- period; see msgtrace/storage/retired.py). While a compaction swaps files, a span may be in an output and in a
-- not-yet-retired input for a moment: the spans view collapses such duplicates.
-- msgtrace's own query engine replaces this view per query with the files it sees (plus, inside the server,
-- the spans still in memory), so this file is only read by a shell user.
CREATE OR REPLACE VIEW retired_parts AS
SELECT getvariable('msgtrace_data_dir') || '/' || unnest(files).path AS filename
FROM read_json(getvariable('msgtrace_data_dir') || '/retired.json',
               columns = {files: 'STRUCT(path VARCHAR, retired_at DOUBLE)[]'});

CREATE OR REPLACE VIEW spans_source AS
SELECT * EXCLUDE (filename)
FROM read_parquet(getvariable('msgtrace_data_dir') || '/spans/*/*.parquet', hive_partitioning = true,
                  filename = true)
WHERE filename NOT IN (SELECT filename FROM retired_parts);
