-- deleted_traces: trace ids hidden from every view (tombstones written under deletes/, see
-- msgtrace/storage/deletes.py). Empty here; each query binds it to the tombstone files that exist when it starts.
CREATE OR REPLACE VIEW deleted_traces AS SELECT CAST(NULL AS VARCHAR) AS trace_id WHERE false;
