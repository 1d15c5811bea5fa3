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
- **Layout.** Outputs hold disjoint trace-id ranges of about ``target_rows`` rows (cut at the quantiles of the
  inputs' ids), sorted by ``(trace_id, start, span_id)`` in row groups of ``row_group_rows``, with min/max statistics
  on the ids and times and a Bloom filter on ``trace_id``. A lookup rules out every other file and, inside the
  candidate file, all row groups but one by min/max; the Bloom filter rejects the candidate row group of files that
  do not hold the trace; the one row group left is all a lookup decodes (``QueryEngine._trace_rows``; measured in
  ``benchmarks/README.md``).
- **Memory.** Each output is merged in pieces of about ``merge_rows`` rows (~2.2 KB of Arrow per span, held twice
  while sorted), written into one Parquet file as they come. A day merged in several pieces first decodes each input
  once into ``staging/`` (Arrow IPC, one batch per piece), so no input is decoded once per piece.
- **What is dropped.** Rows of deleted traces, and duplicate deliveries of a span: one row per ``(trace_id,
  span_id)``, the one the ``spans`` view would keep (latest end time, then name).
- **Swap.** Outputs are published atomically, then the inputs are retired and deleted after a grace period
  (:mod:`msgtrace.storage.retired`), so running queries never fail, miss rows or see duplicates.

Flushed parts whose WAL range is past the checkpoint are never touched: a replay after a crash may rewrite them.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import itertools
import math
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from msgtrace.schema import DICTIONARY_COLUMNS, SPAN_SCHEMA
from msgtrace.storage import retired
from msgtrace.storage.duplicates import KEY_COLUMNS, kept_copies
from msgtrace.storage.files import publish
from msgtrace.storage.layout import (
    COMPACTED_PREFIX,
    StoreLayout,
    date_to_day,
    day_to_date,
    part_day,
    part_range,
)

if TYPE_CHECKING:
    from msgtrace.query.summaries import TraceRows

STATISTICS_COLUMNS = ("trace_id", "start_time_unix_nano", "end_time_unix_nano")
Progress = Callable[[int], None]  # called with the number of input spans just merged


@dataclass(frozen=True)
class CompactionSettings:
    target_rows: int = 125_000
    fanout: int = 8
    base_rows: int = 4_096
    settle_seconds: float = 600.0
    grace_seconds: float = 600.0
    # What a lookup decodes: 2,048 rows instead of 8,192 take a trace's rows from ~12 to ~4 ms (1M lookup p50 ~27 ->
    # ~19 ms) for +6.7 % bytes and +13-18 % compaction time (a fixed cost per column chunk written); 1,024 is no
    # faster in the store
    row_group_rows: int = 2_048
    # zstd level 1: 12 % less compaction CPU than level 3 for 0.7 % more bytes (1M-span store, 2026-11-25)
    compression_level: int = 1
    merge_rows: int = 32_768  # rows sorted in memory at once (~2.2 KB of Arrow each, held twice while sorting)
    cut_sample_rows: int = 65_536  # trace ids read (at least) to place a day's cuts: see _ranges
    # 2 on 2 cores: ~122,000-124,000 spans/s instead of ~71,000 at 10M, ~0.93 GB peak (2026-12-06); the server's
    # pass keeps 1 so that ingest keeps a core
    workers: int = 1


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
        # The query layer owns the SQL that defines a trace row.
        from msgtrace.query.summaries import TraceRows

        s = self.settings
        retired.drop_pending(self.layout)  # outputs of a compaction that failed before its swap
        deleted = self.deleted_ids()
        stamp = time.time_ns()
        outputs_of = [[self.layout.compacted_path(plan.day, stamp, i)
                       for i in range(max(1, math.ceil(plan.rows / s.target_rows)))] for plan in plans]
        retired.add_pending(self.layout, [path for paths in outputs_of for path in paths])
        rows_of: dict[Path, _Rows] = {}  # output → its trace rows, kept on disk until the swap
        guard = threading.Lock()
        trace_rows = TraceRows(self.layout)
        staging = self.layout.staging_dir
        shutil.rmtree(staging, ignore_errors=True)  # left by a compaction that crashed
        threads = s.workers == 1  # one merge at a time: let Parquet decode columns on all cores

        def merge(plan: DayPlan, path: Path, ranges: list[str | None], inputs: _DayInputs) -> None:
            counts = [0, 0, 0, 0]  # read, deleted, duplicates, written
            rows: list[pa.Table] = []

            def write(tmp: Path) -> None:
                with pq.ParquetWriter(tmp, SPAN_SCHEMA, **_parquet_options(s)) as writer:
                    carry = SPAN_SCHEMA.empty_table()  # rows short of a full row group, written with the next piece
                    for k, low in enumerate(ranges[:-1]):
                        table = inputs.piece(low)
                        order, n_deleted, n_dupes = _merge(table, deleted)
                        counts[0] += table.num_rows
                        counts[1] += n_deleted
                        counts[2] += n_dupes
                        columns = table.columns
                        del table  # the list is now the only reference: _take frees each input column once copied
                        table = _take(columns, order)
                        if table.num_rows:
                            rows.append(trace_rows.of_table(table, day_to_date(plan.day)))
                            counts[3] += table.num_rows
                        table = pa.concat_tables([carry, table])  # carry holds smaller trace ids
                        last = k == len(ranges) - 2
                        full = table.num_rows if last else table.num_rows // s.row_group_rows * s.row_group_rows
                        for start in range(0, full, s.row_group_rows):
                            writer.write_table(table.slice(start, min(s.row_group_rows, full - start)),
                                               row_group_size=s.row_group_rows)
                        carry = table.slice(full)
                if not counts[3]:
                    raise _NothingLeft

            with contextlib.suppress(_NothingLeft):
                publish(path, write)
            with guard:
                report.dropped_deleted += counts[1]
                report.dropped_duplicates += counts[2]
                report.output_rows += counts[3]
                if counts[3]:
                    self._rows[path] = counts[3]
                    kept = staging / "rows" / f"{path.parent.name}-{path.stem}.arrow"
                    rows_of[path] = _Rows.keep(pa.concat_tables(rows), kept)
            if progress is not None:
                progress(counts[0])

        pool = ThreadPoolExecutor(max_workers=s.workers, thread_name_prefix="msgtrace-compact") \
            if s.workers > 1 else None

        def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
            """``fn(*args)`` on the pool, or here and now without one (a future already done)."""
            if pool is not None:
                return pool.submit(fn, *args)
            done: Future[Any] = Future()
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)
            return done

        def each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
            return [f.result() for f in [submit(fn, item) for item in items]]

        try:
            # With threads, a day's outputs (2-3 at 10M spans) alone would leave a thread idle, so the next day is
            # staged while they merge: the pool runs its staging behind them. At most two days are staged at once
            # (one without threads).
            queued: list[tuple[Path, list[Future[None]]]] = []  # days merging: their staging and their merges
            for n, (plan, outputs) in enumerate(zip(plans, outputs_of, strict=True)):
                # Each output (a trace-id bucket) is merged in `pieces` trace-id ranges of about merge_rows rows,
                # one at a time. Cut here, day by day, while the pool merges the day before (all days first cost
                # 1.3 s with both cores idle at 10M spans).
                pieces = max(1, math.ceil(plan.rows / len(outputs) / s.merge_rows))
                tasks = list(zip(outputs, _ranges(plan.inputs, len(outputs), pieces, s.cut_sample_rows), strict=True))
                paths = [p.path for p in plan.inputs]
                cuts = sorted({b for _, ranges in tasks for b in ranges if b is not None})
                staged: list[_Staged] = []
                directory = staging / "inputs" / str(n)
                if cuts:
                    # Every piece of every bucket would decode each input again (a flushed part is one row group
                    # holding all trace ids): decode each once into Arrow IPC, cut at the pieces' bounds, which the
                    # pieces then read without decoding.
                    directory.mkdir(parents=True, exist_ok=True)
                    staged = each(lambda p, c=cuts, d=directory: _Staged.create(p, d, c, threads=threads), paths)
                day = _DayInputs(paths, cuts, staged, threads)
                queued.append((directory, [submit(merge, plan, path, ranges, day) for path, ranges in tasks]))
                while len(queued) > (0 if pool is None else 1):  # the day before this one is done before the next
                    _finish(*queued.pop(0))
            for directory, futures in queued:
                _finish(directory, futures)
            inputs = [p.path for plan in plans for p in plan.inputs]
            outputs = sorted(rows_of)
            # The merges are done: give their freed memory back before the trace rows are stored, or the two add up
            # to the peak (10M spans: ~1.18 GB with it kept, the merges alone stay under ~0.85 GB).
            pa.default_memory_pool().release_unused()
            self._summarize(outputs, inputs, rows_of, trace_rows, each)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            trace_rows.close()
            shutil.rmtree(staging, ignore_errors=True)
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

    def _summarize(self, outputs: list[Path], inputs: list[Path], rows_of: dict[Path, _Rows],
                   trace_rows: TraceRows, each: Callable[[Callable[[Any], Any], list[Any]], list[Any]]) -> None:
        """Store the trace rows of each output (``traces/date=…/<output name>``).

        A trace that also has spans in another compacted part staying visible (or in another output) is *shared*:
        its row is computed from the spans of every such part and stored flagged, with the compaction's time, in
        this output's rows; the traces view takes the newest flagged row of a shared trace (sql/25_traces.sql).
        """
        if not outputs:
            return
        stamp = time.time_ns()
        gone = set(inputs)
        others = [p for p in retired.visible_parts(self.layout) if p not in gone
                  and (summary := self.layout.summary_path(p)) is not None and summary.exists()]
        holders = outputs + others
        ids = [rows_of[o].ids for o in outputs] + [
            pq.read_table(self.layout.summary_path(o), columns=["trace_id"])["trace_id"] for o in others]
        # Each part holds a trace at most once, so an id seen twice has spans in two parts. Found by sorting, not by
        # hashing: pc.value_counts over the 1.1M ids of a 10M-span store took ~300 MB outside Arrow's pool, sorting
        # ~90 MB.
        flat = pa.chunked_array([c for i in ids for c in pa.chunked_array(i).chunks], pa.string()).combine_chunks()
        flat = flat.sort()
        twice = pc.unique(flat.slice(1).filter(pc.equal(flat.slice(1), flat.slice(0, max(0, len(flat) - 1)))))
        del flat
        # Of those, the ones this compaction's outputs hold (what older parts share was done before).
        shared = pc.unique(pa.concat_arrays([pc.filter(col, pc.is_in(col, value_set=twice)).combine_chunks()
                                            for col in map(pa.chunked_array, ids[:len(outputs)])]
                                           or [pa.array([], pa.string())]))
        complete = None
        if len(shared):
            holding = {holders[i]: held for i, col in enumerate(ids)
                       if len(held := pc.filter(col, pc.is_in(col, value_set=shared)))}
            complete = trace_rows.of_parts(holding)
        del ids

        def store(path: Path) -> None:
            table = rows_of[path].read()
            flags = pc.is_in(table["trace_id"], value_set=shared)
            if complete is not None and pc.any(flags).as_py():
                mine = complete.filter(pc.is_in(complete["trace_id"], value_set=table["trace_id"]))
                table = pa.concat_tables([table.filter(pc.invert(flags)), mine.select(table.column_names)])
                flags = pc.is_in(table["trace_id"], value_set=shared)
            table = table.append_column("shared", flags)
            table = table.append_column("computed_at", pa.array([stamp] * table.num_rows, pa.int64()))
            table = table.append_column("part", pa.array([retired.relative(self.layout, path)] * table.num_rows,
                                                         pa.string()))
            # Shared rows first, in row groups of their own (statistics on `shared` then let a reader of the shared
            # rows skip every other row group: with them inside a 16,384-row group, reading them decoded that whole
            # group of every file, ~150 ms at 10M spans), then by start time (a time filter skips row groups).
            table = table.sort_by([("shared", "descending"), ("start_time_unix_nano", "ascending"),
                                   ("trace_id", "ascending")])
            target = self.layout.summary_path(path)
            assert target is not None
            publish(target, lambda tmp, t=table: _write_summary(t, tmp))

        each(store, outputs)  # on the merge threads: ~20 ms an output, 91 at 10M spans
        rows_of.clear()


def _finish(directory: Path, futures: list[Future[None]]) -> None:
    """Wait for a day's merges (raising what failed), then remove its staged inputs."""
    for future in futures:
        future.result()
    shutil.rmtree(directory, ignore_errors=True)


class _NothingLeft(Exception):
    """Every row of an output was a duplicate or deleted: there is no part to publish."""


def _ranges(inputs: tuple[Part, ...], buckets: int, pieces: int, sample: int) -> list[list[str | None]]:
    """Split the trace ids of ``inputs`` into ``buckets`` ranges of about equal row counts, each into ``pieces``:
    per bucket, its piece bounds (None: open). Cut at the ids' quantiles, not at evenly spaced ids: ids are not
    always uniform (X-Ray-style ids start with the time in seconds, so a day's share one prefix) and one range
    holding everything would hold everything in memory.

    The quantiles are those of the ids of every k-th input, at least ``sample`` ids: inputs are a day's flushes
    in time order, so that is a sample spread over the day, and time-prefixed ids stay even. Reading and sorting
    every id took 0.37 s a day at 10M spans (8 % of the compaction); 65,536 ids place a cut within ~0.4 % of
    its rank (two standard errors), far less than a merge piece."""
    if buckets * pieces == 1:
        return [[None, None]]
    step = max(1, sum(p.rows for p in inputs) // max(1, sample))
    ids = pa.chunked_array([pq.read_table(p.path, columns=["trace_id"])["trace_id"] for p in inputs[::step]],
                           pa.string())
    ids = ids.combine_chunks().sort()
    n = len(ids)

    def cut(rank: int) -> str:
        return ids[min(rank, n - 1)].as_py()

    out = []
    for b in range(buckets):
        low, high = b * n // buckets, (b + 1) * n // buckets
        bounds: list[str | None] = [None if b == 0 else cut(low)]
        bounds += [cut(low + k * (high - low) // pieces) for k in range(1, pieces)]
        bounds.append(None if b == buckets - 1 else cut(high))
        # A trace larger than a piece makes equal cuts: an empty range, skipped.
        out.append([x for i, x in enumerate(bounds) if i == 0 or x != bounds[i - 1] or x is None])
    return out


class _Rows:
    """The trace rows of one output, written to staging as Arrow IPC until the swap, with their ids in memory:
    at 10M spans the rows of all outputs are ~1.1M rows, too many to hold while the merges run."""

    def __init__(self, path: Path, ids: pa.Array) -> None:
        self.path = path
        self.ids = ids

    @classmethod
    def keep(cls, rows: pa.Table, path: Path) -> _Rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, rows.schema) as writer:
            writer.write_table(rows)
        return cls(path, rows["trace_id"].combine_chunks())

    def read(self) -> pa.Table:
        with pa.OSFile(str(self.path)) as source:
            return ipc.open_file(source).read_all()


class _Staged:
    """An input decoded once into an Arrow IPC file, one record batch per piece (the trace-id ranges between the
    given cuts): a piece reads its batch, a plain copy with nothing to decode (a day of 334,000 flushed spans:
    1.07 s CPU to decode once, 0.33 s to stage, 0.10 s to read back, against 1.07 s per piece reading the Parquet)."""

    def __init__(self, path: Path, batch_of: dict[int, int]) -> None:
        self.path = path
        self.batch_of = batch_of  # piece number → its batch (pieces without rows have none)

    @classmethod
    def create(cls, part: Path, directory: Path, cuts: list[str], *, threads: bool) -> _Staged:
        table = _read_part(part, threads)
        ids = table["trace_id"]
        # Parts are sorted by trace id (flushes and compactions both write them so), so each piece is a slice.
        if len(ids) > 1 and not _sorted(ids):
            table = table.sort_by("trace_id")
            ids = table["trace_id"]
        starts = [0] + [pc.sum(pc.less(ids, cut)).as_py() or 0 for cut in cuts] + [table.num_rows]
        target = directory / f"{part.parent.name}-{part.stem}.arrow"
        batch_of = {}
        with pa.OSFile(str(target), "wb") as sink, ipc.new_file(sink, SPAN_SCHEMA) as writer:
            for piece, (start, end) in enumerate(itertools.pairwise(starts)):
                if end > start:
                    batch_of[piece] = len(batch_of)
                    writer.write_table(table.slice(start, end - start), max_chunksize=end - start)  # one batch
        return cls(target, batch_of)

    def read(self, piece: int) -> pa.RecordBatch | None:
        if piece not in self.batch_of:
            return None
        # Memory-mapped: the batch's buffers are the file's pages, not a copy read into memory (the mapping
        # outlives the staged file's removal).
        with pa.memory_map(str(self.path)) as source:
            return ipc.open_file(source).get_batch(self.batch_of[piece])


class _DayInputs:
    """A day's inputs, read a piece at a time: the parts themselves when the day is merged in one piece (no
    ``cuts``), else their staged copies (:class:`_Staged`)."""

    def __init__(self, paths: list[Path], cuts: list[str], staged: list[_Staged], threads: bool) -> None:
        self.paths, self.cuts, self.staged, self.threads = paths, cuts, staged, threads

    def piece(self, low: str | None) -> pa.Table:
        """The rows of the piece starting at trace id ``low`` (None: the first), as a table of many chunks."""
        if not self.cuts:
            tables = [_read_part(p, self.threads) for p in self.paths]
        else:
            number = 0 if low is None else bisect.bisect_right(self.cuts, low)
            tables = [pa.Table.from_batches([batch]) for s in self.staged if (batch := s.read(number)) is not None]
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables) if tables else SPAN_SCHEMA.empty_table()


def _read_part(path: Path, threads: bool) -> pa.Table:
    table = pq.ParquetFile(path).read(use_threads=threads)
    return table.cast(SPAN_SCHEMA) if table.schema != SPAN_SCHEMA else table


def _sorted(ids: pa.ChunkedArray) -> bool:
    flat = ids.combine_chunks()
    return bool(pc.all(pc.less_equal(flat.slice(0, len(flat) - 1), flat.slice(1))).as_py())


def _merge(table: pa.Table, deleted: pa.Array) -> tuple[pa.Array, int, int]:
    """Which rows of ``table`` to write, in lookup order: rows of deleted traces and duplicate spans left out.
    Returns those row indices and how many rows were deleted and duplicates. Only the key columns are touched."""
    keys = table.select([*KEY_COLUMNS, "start_time_unix_nano"])
    keys = keys.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    n_deleted = 0
    if len(deleted) and keys.num_rows:
        kept = keys.filter(pc.invert(pc.is_in(keys["trace_id"], value_set=deleted)))
        n_deleted = keys.num_rows - kept.num_rows
        keys = kept
    if not keys.num_rows:
        return pa.array([], pa.int64()), n_deleted, 0
    # One row per (trace_id, span_id), the one the spans view keeps, then in lookup order.
    n = keys.num_rows
    keys = kept_copies(keys)
    order = pc.sort_indices(keys, [("trace_id", "ascending"), ("start_time_unix_nano", "ascending"),
                                   ("span_id", "ascending")])
    return keys["row"].take(order).combine_chunks(), n_deleted, n - keys.num_rows


def _take(columns: list[pa.ChunkedArray], rows: pa.Array) -> pa.Table:
    """The ``rows`` of ``columns``, in that order, one chunk per column. Column by column, each entry of
    ``columns`` replaced once copied (a Parquet input's memory goes with it), and a take from the chunks costs
    0.57 s CPU for a day of 334,000 spans against 2.1 s for combining them first."""
    for i in range(len(columns)):
        columns[i] = columns[i].take(rows)
    return pa.Table.from_arrays(columns, schema=SPAN_SCHEMA)


def _write_summary(rows: pa.Table, path: Path) -> None:
    """Write a part's trace rows, shared ones (sorted first) in separate row groups."""
    n_shared = pc.sum(rows["shared"]).as_py() or 0
    with pq.ParquetWriter(path, rows.schema, compression="zstd", compression_level=3,
                          write_statistics=True) as writer:
        for piece in (rows.slice(0, n_shared), rows.slice(n_shared)):
            if piece.num_rows:
                writer.write_table(piece, row_group_size=16_384)


def _parquet_options(s: CompactionSettings) -> dict[str, Any]:
    return {
        "compression": "zstd",
        "compression_level": s.compression_level,
        # Statistics only where they prune: the files are sorted by trace id, so any other column's min/max covers
        # (nearly) the whole day in every row group. Writing them for every column was 11 % of the encoding time.
        "write_statistics": list(STATISTICS_COLUMNS),
        "use_dictionary": DICTIONARY_COLUMNS,
        "bloom_filter_options": {"trace_id": {"ndv": s.row_group_rows // 2, "fpp": 0.01}},
    }
