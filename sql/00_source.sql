-- spans_source: the raw rows. For the DuckDB shell: the Parquet files under the directory named by
--     SET VARIABLE msgtrace_data_dir = '/path/to/store';
-- msgtrace's own query engine replaces this view per query with the files it sees (plus, inside the server,
-- the spans still in memory), so this file is only read by a shell user.
CREATE OR REPLACE VIEW spans_source AS
SELECT *
FROM read_parquet(getvariable('msgtrace_data_dir') || '/spans/*/*.parquet', hive_partitioning = true);

