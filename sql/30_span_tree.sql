-- span_tree(trace_id): the spans of one trace in tree order, built in SQL.
--   depth        0 for the root; spans whose parent is missing are attached under the root (depth 1, orphan)
--   parent_id    the parent in the tree (for an orphan: the root)
--   position     order of the span in a depth-first walk, siblings by start time
--   orphan       true when the span's own parent_span_id is not stored in this trace (for the root: its
--                parent lives elsewhere, e.g. in the service that called this one)
-- Spans on a parent cycle (never reachable from a root) are left out.
CREATE OR REPLACE MACRO span_tree(tid) AS TABLE
WITH RECURSIVE
    s AS (SELECT * FROM spans WHERE trace_id = lower(tid)),
    -- (roots of s, not of the trace_roots view: that would scan the trace's Parquet row group twice more)
    root AS (SELECT span_id FROM roots('s')),
    anchors AS (
        SELECT s.span_id, CAST(NULL AS VARCHAR) AS tree_parent_id, 0 AS depth, s.parent_span_id IS NOT NULL AS orphan,
               [lpad(CAST(s.start_time_unix_nano AS VARCHAR), 20, '0') || s.span_id] AS path
        FROM s JOIN root USING (span_id)
        UNION ALL
        SELECT s.span_id, root.span_id, 1, true,
               [lpad(CAST(r.start_time_unix_nano AS VARCHAR), 20, '0') || r.span_id,
                lpad(CAST(s.start_time_unix_nano AS VARCHAR), 20, '0') || s.span_id]
        FROM s CROSS JOIN root
        JOIN s AS r ON r.span_id = root.span_id
        WHERE s.span_id <> root.span_id
          AND s.parent_span_id IS DISTINCT FROM NULL
          AND s.parent_span_id NOT IN (SELECT span_id FROM s)
        UNION ALL
        SELECT s.span_id, root.span_id, 1, false,
               [lpad(CAST(r.start_time_unix_nano AS VARCHAR), 20, '0') || r.span_id,
                lpad(CAST(s.start_time_unix_nano AS VARCHAR), 20, '0') || s.span_id]
        FROM s CROSS JOIN root
        JOIN s AS r ON r.span_id = root.span_id
        WHERE s.span_id <> root.span_id AND s.parent_span_id IS NULL
    ),
    tree(span_id, tree_parent_id, depth, orphan, path) AS (
        SELECT * FROM anchors
        UNION ALL
        SELECT c.span_id, t.span_id, t.depth + 1, false,
               list_append(t.path, lpad(CAST(c.start_time_unix_nano AS VARCHAR), 20, '0') || c.span_id)
        FROM tree AS t JOIN s AS c ON c.parent_span_id = t.span_id
        WHERE t.depth < 10000
    )
SELECT s.*, tree.depth, tree.tree_parent_id AS parent_id, tree.orphan,
       row_number() OVER (ORDER BY tree.path) - 1 AS position
FROM tree JOIN s USING (span_id)
ORDER BY position;
