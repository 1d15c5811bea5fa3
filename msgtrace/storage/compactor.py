"""Compaction: merge the many small parts a day accumulates into few large ones laid out for trace lookup.

Flushes publish a part every few seconds, per day, so a day ends with hundreds of small files and every query pays
for opening each. The compactor, run in the background by the server (and by ``msgtrace compact``), rewrites them:

- **What is merged (per day).** *Tiered* while a day still receives spans: parts are grouped in size classes
  (``base_rows × fanout^k``); ``fanout`` parts of one class merge into one of the next. *Settled* once a day has had
  no new part for ``settle_seconds``: all its parts merge into the final layout. *Deletes*: a day holding spans of a
  deleted trace (a tombstone, :mod:`msgtrace.storage.deletes`) is merged at once, which drops them physically.
  Bound on files per day under continuous ingest: at most ``fanout − 1`` parts per size class below
  ``target_rows / 2`` (``ceil(log_fanout(target_rows / 2 / base_rows))`` classes: 2 with the defaults, so ≤ 14
  files) plus one file per ``target_rows / 2`` spans; a settled day has ``ceil(spans / target_rows)`` files.
- **Layout.** Outputs hold disjoint trace-id ranges (the merged rows are split at evenly spaced ids into files of at
  most ``target_rows``, which also bounds memory: ~2.2 KB of Arrow per span), sorted by ``(trace_id, start, span_id)``
  in row groups of ``row_group_rows`` with min/max statistics and a Bloom filter on ``trace_id``. A lookup skips
  every other file by its statistics, and inside the candidate file all row groups but one by min/max; the Bloom
  filter rejects the candidate row group of files that do not hold the trace (measured in ``benchmarks/README.md``).
- **What is dropped.** Rows of deleted traces, and duplicate deliveries of a span: one row per ``(trace_id,
  span_id)``, the one the ``spans`` view would keep (latest end time, then name).
- **Swap.** Outputs are published atomically, then the inputs are retired and deleted after a grace period
  (:mod:`msgtrace.storage.retired`), so running queries never fail, miss rows or see duplicates.

Flushed parts whose WAL range is past the checkpoint are never touched: a replay after a crash may rewrite them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgtrace.schema import SPAN_SCHEMA
from msgtrace.storage import retired
from msgtrace.storage.files import publish
from msgtrace.storage.layout import (
    COMPACTED_PREFIX,
    StoreLayout,
    date_to_day,
    day_to_date,
    part_day,
    part_range,
)

_ID_SPACE = 16**32
DICTIONARY_COLUMNS = ["name", "kind", "status_code", "status_message", "service_name", "scope_name", "scope_version",
                      "operation", "provider", "model", "user_id", "session_id", "agent_name", "tool_name",
                      "workflow_name", "trace_state", "resource_schema_url", "scope_schema_url"]
Progress = Callable[[int], None]  # called with the number of input spans just merged


@dataclass(frozen=True)
class CompactionSettings:
    target_rows: int = 125_000
    fanout: int = 8
    base_rows: int = 4_096
    settle_seconds: float = 600.0
    grace_seconds: float = 600.0
    row_group_rows: int = 8_192
    compression_level: int = 3
    workers: int = 1  # 2 measured ~25 % faster on 2 cores, at ~1.2 GB peak instead of ~0.7 GB


@dataclass(frozen=True)
class Part:
    path: Path
    day: int
    rows: int
    mtime: float

    @property
    def compacted(self) -> bool:
        return self.path.name.startswith(COMPACTED_PREFIX)


@dataclass(frozen=True)
class DayPlan:
    day: int
    inputs: tuple[Part, ...]

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.inputs)


@dataclass
class CompactionReport:
    days: int = 0
    input_files: int = 0
    output_files: int = 0
    input_rows: int = 0
    output_rows: int = 0
    dropped_duplicates: int = 0
    dropped_deleted: int = 0
    purged_files: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def add(self, other: CompactionReport) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class PruneReport:
    days: list[str]
    files: int
    spans: int
    purged_files: int


def retention_cutoff(retention_days: int, today: dt.date | None = None) -> dt.date:
    """The first UTC day kept when keeping today and the ``retention_days`` previous days."""
    today = dt.datetime.now(dt.UTC).date() if today is None else today
    return today - dt.timedelta(days=retention_days)


class Compactor:
    """Compacts one data directory; the caller holds the directory's lock (one writer)."""

    def __init__(self, layout: StoreLayout, settings: CompactionSettings | None = None,
                 checkpoint: Callable[[], int] | None = None) -> None:
        self.layout = layout
        self.settings = settings or CompactionSettings()
        self._checkpoint = checkpoint or self._read_checkpoint
        self._rows: dict[Path, int] = {}  # footers read once per part: parts never change under one name
        self._clean: dict[Path, str] = {}  # part → newest tombstone file it is known to hold no deleted trace of
        self._lock = threading.Lock()  # one compaction at a time (background thread vs. an explicit call)
        self.last: CompactionReport | None = None
        self.totals = CompactionReport()

    def _read_checkpoint(self) -> int:
        try:
            return int((self.layout.wal_dir / "checkpoint").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    # --- planning -------------------------------------------------------------------------------------------
    def parts(self) -> list[Part]:
        """The visible parts the compactor may rewrite."""
        checkpoint = self._checkpoint()
        out = []
        for path in retired.visible_parts(self.layout):
            wal_range = part_range(path)
            if wal_range is not None and wal_range[1] > checkpoint:
                continue  # not yet covered by the checkpoint: a replay may still rewrite it
            day = part_day(path)
            if day is None:
                continue
            try:
                st = path.stat()
                rows = self._rows.get(path)
                if rows is None:
                    rows = self._rows[path] = pq.read_metadata(path).num_rows
            except FileNotFoundError:
                continue
            out.append(Part(path, day, rows, st.st_mtime))
        return out

    def plan(self, *, force: bool = False, now: float | None = None) -> list[DayPlan]:
        """What to merge now. ``force`` treats every day as settled (``msgtrace compact``)."""
        now = time.time() if now is None else now
        s = self.settings
        by_day: dict[int, list[Part]] = {}
        for part in self.parts():
            by_day.setdefault(part.day, []).append(part)
        deleted_days = self._days_with_deleted(by_day)
        plans = []
        for day, parts in sorted(by_day.items()):
            rows = sum(p.rows for p in parts)
            final_files = max(1, math.ceil(rows / s.target_rows))
            settled = force or now - max(p.mtime for p in parts) >= s.settle_seconds
            unfinished = len(parts) > final_files or not all(p.compacted for p in parts)
            if day in deleted_days or (settled and unfinished):  # the whole day, into its final layout
                plans.append(DayPlan(day, tuple(parts)))
            elif (group := self._tier_group(parts)) is not None:
                plans.append(DayPlan(day, group))
        return plans

    def _tier_group(self, parts: list[Part]) -> tuple[Part, ...] | None:
        s = self.settings
        classes: dict[int, list[Part]] = {}
        for part in parts:
            if part.rows >= s.target_rows // 2:
                continue  # finished
            k = max(0, int(math.log(max(part.rows, 1) / s.base_rows, s.fanout))) if part.rows > s.base_rows else 0
            classes.setdefault(k, []).append(part)
        for k in sorted(classes):
            if len(classes[k]) >= s.fanout:
                return tuple(sorted(classes[k], key=lambda p: p.path.name))
        return None

    def _days_with_deleted(self, by_day: dict[int, list[Part]]) -> set[int]:
        tombstones = self.layout.delete_files()
        if not tombstones:
            return set()
        newest = tombstones[-1].name
        unchecked = [p for parts in by_day.values() for p in parts if self._clean.get(p.path) != newest]
        if not unchecked:
            return set()
        deleted = self.deleted_ids()
        days = set()
        for part in unchecked:
            try:
                ids = pq.read_table(part.path, columns=["trace_id"])["trace_id"]
            except FileNotFoundError:
                continue
            if pc.any(pc.is_in(ids, value_set=deleted)).as_py():
                days.add(part.day)
            else:
                self._clean[part.path] = newest
        return days

    def deleted_ids(self) -> pa.Array:
        files = self.layout.delete_files()
        if not files:
            return pa.array([], pa.string())
        ids = pa.concat_arrays([pq.read_table(f, columns=["trace_id"])["trace_id"].combine_chunks() for f in files])
        return pc.unique(ids)

    # --- retention ------------------------------------------------------------------------------------------
    def prune(self, before: dt.date) -> PruneReport:
        """Drop every day partition before ``before``: its parts are retired at once (gone from every view) and
        deleted after the grace period, with the day's directory."""
        with self._lock:
            cutoff = date_to_day(before)
            doomed = [p for p in self.parts() if p.day < cutoff]
            retired.retire(self.layout, [p.path for p in doomed])
            for part in doomed:
                self._rows.pop(part.path, None)
            purged = retired.purge(self.layout, self.settings.grace_seconds)
            days = sorted({day_to_date(p.day).isoformat() for p in doomed})
            return PruneReport(days, len(doomed), sum(p.rows for p in doomed), purged)

    # --- running --------------------------------------------------------------------------------------------
    def run(self, *, force: bool = False, progress: Progress | None = None,
            plans: list[DayPlan] | None = None) -> CompactionReport:
        """Plan (unless ``plans`` is given), merge, retire the inputs, and purge retired files past the grace."""
        with self._lock:
            started = time.monotonic()
            report = CompactionReport()
            plans = self.plan(force=force) if plans is None else plans
            if plans:
                self._run_plans(plans, report, progress)
            report.purged_files = retired.purge(self.layout, self.settings.grace_seconds)
            report.seconds = time.monotonic() - started
            self.last = report
            self.totals.add(report)
            return report

    def _run_plans(self, plans: list[DayPlan], report: CompactionReport, progress: Progress | None) -> None:
        """Merge every plan's trace-id buckets on ``workers`` threads (Arrow and Parquet release the GIL), store the
        outputs' trace rows, then swap all outputs in and all inputs out at once (:mod:`msgtrace.storage.retired`)."""
        s = self.settings
        retired.drop_pending(self.layout)  # outputs of a compaction that failed before its swap
        deleted = self.deleted_ids()
        stamp = time.time_ns()
        tasks = []
        for plan in plans:
            buckets = max(1, math.ceil(plan.rows / s.target_rows))
            bounds = [None] + [f"{i * _ID_SPACE // buckets:032x}" for i in range(1, buckets)] + [None]
            for i in range(buckets):
                tasks.append((plan, self.layout.compacted_path(plan.day, stamp, i), bounds[i], bounds[i + 1]))
        retired.add_pending(self.layout, [t[1] for t in tasks])
        outputs: list[Path] = []
        guard = threading.Lock()

        def merge(task: tuple[DayPlan, Path, str | None, str | None]) -> None:
            plan, path, low, high = task
            paths = [str(p.path) for p in plan.inputs]
            table, order, read_rows, n_deleted, n_dupes = _merge(_read(paths, low, high), deleted)
            if len(order):
                publish(path, lambda tmp, t=table, o=order: _write(t, o, tmp, s))
            with guard:
                report.dropped_deleted += n_deleted
                report.dropped_duplicates += n_dupes
                report.output_rows += len(order)
                if len(order):
                    self._rows[path] = len(order)
                    outputs.append(path)
            del table, order
            if progress is not None:
                progress(read_rows)

        workers = max(1, min(s.workers, len(tasks)))
        if workers == 1:
            for task in tasks:
                merge(task)
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="msgtrace-compact") as pool:
                for future in [pool.submit(merge, task) for task in tasks]:
                    future.result()
        inputs = [p.path for plan in plans for p in plan.inputs]
        outputs.sort()
        self._summarize(outputs, inputs)
        # The outputs and their trace rows are durable; one atomic write now shows them and hides the inputs.
        retired.swap(self.layout, outputs, inputs)
        for plan in plans:
            for part in plan.inputs:
                self._rows.pop(part.path, None)
                self._clean.pop(part.path, None)
        report.days += len(plans)
        report.input_files += len(inputs)
        report.input_rows += sum(plan.rows for plan in plans)
        report.output_files += len(outputs)

    def _summarize(self, outputs: list[Path], inputs: list[Path]) -> None:
        """Store the trace rows of each output (``traces/date=…/<output name>``).

        A trace that also has spans in another compacted part staying visible (or in another output) is *shared*:
        its row is computed from the spans of every such part and stored flagged, with the compaction's time, in
        this output's rows; the traces view takes the newest flagged row of a shared trace (sql/25_traces.sql).
        """
        # The query layer owns the SQL that defines a trace row.
        from msgtrace.query.summaries import trace_rows

        if not outputs:
            return
        stamp = time.time_ns()
        gone = set(inputs)
        others = [p for p in retired.visible_parts(self.layout) if p not in gone
                  and (summary := self.layout.summary_path(p)) is not None and summary.exists()]
        holders = outputs + others
        ids = [pc.unique(pq.read_table(o, columns=["trace_id"])["trace_id"]) for o in outputs] + [
            pq.read_table(self.layout.summary_path(o), columns=["trace_id"])["trace_id"] for o in others]
        # Each part holds a trace at most once, so an id seen twice has spans in two parts.
        flat = pa.chunked_array([c for i in ids for c in pa.chunked_array(i).chunks], pa.string())
        counts = pc.value_counts(flat)
        shared = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        mine_ids = pa.chunked_array([c for i in ids[:len(outputs)] for c in pa.chunked_array(i).chunks], pa.string())
        shared = shared.filter(pc.is_in(shared, value_set=mine_ids))  # those older parts share were done before
        complete = None
        if len(shared):
            parts_of = [holders[i] for i, col in enumerate(ids) if pc.any(pc.is_in(col, value_set=shared)).as_py()]
            (complete,) = trace_rows(self.layout, [parts_of], only=shared.to_pylist())
        del ids, flat, counts, mine_ids
        tables = trace_rows(self.layout, [[p] for p in outputs])  # one at a time
        for path, table in zip(outputs, tables, strict=True):
            flags = pc.is_in(table["trace_id"], value_set=shared)
            if complete is not None and pc.any(flags).as_py():
                mine = complete.filter(pc.is_in(complete["trace_id"], value_set=table["trace_id"]))
                table = pa.concat_tables([table.filter(pc.invert(flags)), mine.select(table.column_names)])
                flags = pc.is_in(table["trace_id"], value_set=shared)
            table = table.append_column("shared", flags)
            table = table.append_column("computed_at", pa.array([stamp] * table.num_rows, pa.int64()))
            table = table.append_column("part", pa.array([retired.relative(self.layout, path)] * table.num_rows,
                                                         pa.string()))
            # Shared rows first (row-group statistics on `shared` then skip the rest when they are looked up),
            # then by start time (a time filter skips row groups).
            table = table.sort_by([("shared", "descending"), ("start_time_unix_nano", "ascending"),
                                   ("trace_id", "ascending")])
            target = self.layout.summary_path(path)
            assert target is not None
            publish(target, lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=16_384, compression="zstd",
                                                                compression_level=3, write_statistics=True))


def _read(paths: list[str], low: str | None, high: str | None) -> pa.Table:
    """The rows of ``paths`` with ``low <= trace_id < high``.

    File by file, skipping row groups whose ``trace_id`` statistics lie outside the range: measured faster and
    leaner than a dataset scan over all the files, which reads ahead several files at once.
    """
    tables = []
    for path in paths:
        pf = pq.ParquetFile(path)
        column = pf.schema_arrow.get_field_index("trace_id")
        groups = []
        for i in range(pf.metadata.num_row_groups):
            stats = pf.metadata.row_group(i).column(column).statistics
            if stats is not None and stats.has_min_max and (
                    (high is not None and stats.min >= high) or (low is not None and stats.max < low)):
                continue
            groups.append(i)
        if not groups:
            continue
        table = pf.read_row_groups(groups)
        if low is not None or high is not None:
            ids = table["trace_id"]
            mask = None
            if low is not None:
                mask = pc.greater_equal(ids, low)
            if high is not None:
                below = pc.less(ids, high)
                mask = below if mask is None else pc.and_(mask, below)
            table = table.filter(mask)
        tables.append(table.cast(SPAN_SCHEMA) if table.schema != SPAN_SCHEMA else table)
    if not tables:
        return SPAN_SCHEMA.empty_table()
    # One chunk per column, combined column by column (each file's chunk freed as soon as it is copied): taking
    # rows from a many-chunked nested column concatenates its chunks on every call.
    columns = [pa.chunked_array([c for t in tables for c in t.column(i).chunks], SPAN_SCHEMA.field(i).type)
               for i in range(len(SPAN_SCHEMA))]
    del tables
    for i in range(len(columns)):
        columns[i] = columns[i].combine_chunks()
    return pa.Table.from_arrays(columns, schema=SPAN_SCHEMA)


def _merge(table: pa.Table, deleted: pa.Array) -> tuple[pa.Table, pa.Array, int, int, int]:
    """Drop deleted traces and duplicate spans and sort for lookup: returns the rows, the order to write them in
    (duplicates left out), and how many rows were read, deleted and duplicates."""
    read_rows = table.num_rows
    n_deleted = 0
    if len(deleted) and table.num_rows:
        keep = pc.invert(pc.is_in(table["trace_id"], value_set=deleted))
        kept = table.filter(keep)
        n_deleted = table.num_rows - kept.num_rows
        table = kept
    if not table.num_rows:
        return table, pa.array([], pa.int64()), read_rows, n_deleted, 0
    # One row per (trace_id, span_id): the one the spans view keeps (latest end, then name)...
    keys = table.select(["trace_id", "span_id", "end_time_unix_nano", "name"])
    order = pc.sort_indices(keys, [("trace_id", "ascending"), ("span_id", "ascending"),
                                   ("end_time_unix_nano", "descending"), ("name", "ascending")])
    tid = keys["trace_id"].take(order).combine_chunks()
    sid = keys["span_id"].take(order).combine_chunks()
    n = len(order)
    first = pc.or_(pc.not_equal(tid.slice(1), tid.slice(0, n - 1)), pc.not_equal(sid.slice(1), sid.slice(0, n - 1)))
    first = pa.concat_arrays([pa.array([True]), pc.fill_null(first, True)])
    kept_index = order.filter(first)
    n_dupes = n - len(kept_index)
    # ...then in lookup order.
    sort_keys = table.select(["trace_id", "start_time_unix_nano", "span_id"]).take(kept_index)
    final = kept_index.take(pc.sort_indices(sort_keys, [("trace_id", "ascending"),
                                                        ("start_time_unix_nano", "ascending"),
                                                        ("span_id", "ascending")]))
    return table, final, read_rows, n_deleted, n_dupes


def _write(table: pa.Table, order: pa.Array, path: Path, s: CompactionSettings) -> None:
    """Write ``table`` in the row order ``order``, one row group at a time: the output is never whole in memory."""
    with pq.ParquetWriter(
        path,
        SPAN_SCHEMA,
        compression="zstd",
        compression_level=s.compression_level,
        write_statistics=True,
        # Dictionary-encode the repetitive columns only: for ids, times and attribute maps the writer would build a
        # dictionary per row group and throw it away (measured ~10 % of the write time).
        use_dictionary=DICTIONARY_COLUMNS,
        bloom_filter_options={"trace_id": {"ndv": s.row_group_rows // 2, "fpp": 0.01}},
    ) as writer:
        for start in range(0, len(order), s.row_group_rows):
            chunk = table.take(order.slice(start, s.row_group_rows))
            writer.write_table(chunk.cast(SPAN_SCHEMA) if chunk.schema != SPAN_SCHEMA else chunk,
                               row_group_size=s.row_group_rows)
