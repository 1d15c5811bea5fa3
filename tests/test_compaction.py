"""Compaction, retention and the file swap: answers never change, readers never fail, miss rows or see duplicates.

Every store here is written by the real ingest pipeline into real Parquet files; results are checked with plain
DuckDB over the files (no msgtrace code) and through the views.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import msgtrace
from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.query.store import Store
from msgtrace.storage import retired
from msgtrace.storage.compactor import CompactionSettings, Compactor, retention_cutoff
from msgtrace.storage.layout import StoreLayout, day_to_date, part_day
from msgtrace.synthetic import build_workload
from tests.conftest import Server

DAY_NS = 86_400 * 10**9
MSGTRACE = str(Path(sys.executable).parent / "msgtrace")
# The workload of day d lies in the 12 hours before NOW_NS - d days. NOW_NS is 23:00 UTC today (up to 23 h ahead,
# within the partition window), so each day's traces stay within one date, today's among them, whatever the time of
# day the tests run at (at 00:15 UTC "the 12 hours before now" spans two dates).
NOW_NS = time.time_ns() // DAY_NS * DAY_NS + 23 * 3_600 * 10**9


def fill(data_dir: Path, *, days: int = 3, spans_per_day: int = 6_000, flush_every: int = 2,
         duplicate_every: int = 5) -> int:
    """Ingest ``days`` days of synthetic traces, flushing every ``flush_every`` requests (many small parts) and
    re-sending every ``duplicate_every``-th request three flushes later (duplicates the flush cannot see)."""
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    requests = 0
    for day in range(days):
        bodies = build_workload(spans_per_day, 256, seed=day, base_time_ns=NOW_NS - day * DAY_NS,
                                spread_ns=DAY_NS // 2).bodies
        for i, body in enumerate(bodies):
            ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
            requests += 1
            if requests % flush_every == 0:
                ingestor.flush()
            if i % duplicate_every == 0 and i >= 6:
                ingestor.accept(WireFormat.PROTOBUF, bodies[i - 6], time.time_ns())
    ingestor.close()
    return requests


def raw(data_dir: Path, sql: str) -> list[tuple]:
    """``sql`` over plain ``read_parquet`` of the parts a reader may see now (``files``), no msgtrace views."""
    files = [str(p) for p in retired.visible_parts(StoreLayout(data_dir))]
    con = duckdb.connect()
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    con.execute(f"CREATE VIEW files AS SELECT * FROM read_parquet([{listing}], hive_partitioning = true)")
    return con.sql(sql).fetchall()


def _rounded(value: object) -> object:
    """Sums of doubles depend on the order rows are read in: compare them to 10 significant digits."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def answers(store: Store) -> dict[str, object]:
    """Everything the views answer about the whole store, in a comparable form."""
    out: dict[str, object] = {
        "traces": store.traces(limit=100_000, sort="start_time").to_dicts(),
        "spans": store.query("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d, sum(cost) AS c "
                             "FROM spans").rows(),
    }
    for by in ("workflow", "model", "service", "name", "day"):
        out[by] = store.stats(by).to_dicts()
    return _rounded(out)  # type: ignore[return-value]


def test_compaction_merges_each_day_drops_duplicates_and_deleted_traces_and_changes_no_answer(
        data_dir: Path) -> None:
    fill(data_dir)
    layout = StoreLayout(data_dir)
    before_files = layout.parts()
    (rows, unique), = raw(data_dir, "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM files")
    assert rows > unique, "the workload must leave duplicates in Parquet for compaction to drop"

    store = msgtrace.open(data_dir)
    victim = store.traces(limit=1, sort="spans")["trace_id"][0]
    store.delete_trace(victim)
    (victim_spans, victim_rows), = raw(
        data_dir, f"SELECT count(DISTINCT span_id), count(*) FROM files WHERE trace_id = '{victim}'")
    expected = answers(store)

    # merge_rows below target_rows: each output is merged in several trace-id pieces from staged inputs, its row
    # groups carried across pieces.
    settings = CompactionSettings(target_rows=4_000, merge_rows=1_500, row_group_rows=1_024, grace_seconds=3600,
                                  workers=2)
    report = Compactor(layout, settings).run(force=True)
    assert report.input_files == len(before_files) and report.days == 3
    # Deleted rows are dropped first (their duplicates included), then the duplicates of the rest.
    assert report.dropped_deleted == victim_rows
    assert report.dropped_duplicates == (rows - victim_rows) - (unique - victim_spans)
    assert report.output_rows == unique - victim_spans
    assert report.purged_files == 0  # inside the grace period the inputs stay on disk, hidden

    # Plain DuckDB over what a reader sees: every span once, the deleted trace gone.
    (rows_after, unique_after, victim_after), = raw(
        data_dir, f"SELECT count(*), count(DISTINCT (trace_id, span_id)), count(*) FILTER (trace_id = '{victim}') "
                  "FROM files")
    assert (rows_after, unique_after, victim_after) == (unique - victim_spans, unique - victim_spans, 0)
    # The views answer exactly what they answered before.
    store.refresh()
    assert answers(store) == expected

    visible = retired.visible_parts(layout)
    assert all(p.name.startswith("c-") for p in visible)
    by_day: dict[int, list[Path]] = {}
    for path in visible:
        by_day.setdefault(part_day(path), []).append(path)  # type: ignore[arg-type]
    for day, paths in by_day.items():
        day_rows = sum(pq.read_metadata(p).num_rows for p in paths)
        assert len(paths) == math.ceil(day_rows / settings.target_rows), day_to_date(day)
        ranges = []
        for path in sorted(paths):
            ids = pq.read_table(path, columns=["trace_id"])["trace_id"].to_pylist()
            assert ids == sorted(ids), "a compacted file is sorted by trace id"
            ranges.append((ids[0], ids[-1]))
            meta = pq.ParquetFile(path).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert sizes[:-1] == [settings.row_group_rows] * (len(sizes) - 1) and sizes[-1] <= settings.row_group_rows
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False)), "files hold disjoint id ranges"

    # Past the grace period the replaced files are deleted; the plain glob a shell user reads is then exact too.
    assert retired.purge(layout, grace_seconds=0) == len(before_files)
    assert not any(p.exists() for p in before_files)
    (glob_rows, glob_unique), = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM read_parquet('{data_dir}/spans/*/*.parquet')"
    ).fetchall()
    assert glob_rows == glob_unique == unique - victim_spans
    assert json.loads(layout.retired_path.read_text()) == {"files": []}
    # Compacting a compacted store changes nothing.
    assert Compactor(layout, settings).run(force=True).input_files == 0


@pytest.mark.parametrize("sample", [65_536, 1_000])
def test_outputs_stay_even_when_trace_ids_share_a_prefix(data_dir: Path, sample: int) -> None:
    # X-Ray-style ids begin with the time in seconds: a day's ids share their first hex digits. Ranges cut at
    # evenly spaced ids would put every span into one output (and into memory at once). The cuts are placed from
    # every id, or (sample=1,000) from the ids of every 6th input.
    fill(data_dir, days=1, spans_per_day=6_000, duplicate_every=1_000)
    layout = StoreLayout(data_dir)
    for path in layout.parts():
        table = pq.read_table(path)
        ids = pc.utf8_replace_slice(table["trace_id"], 0, 10, "6743f1a200")
        table = table.set_column(table.schema.get_field_index("trace_id"), "trace_id", ids).sort_by("trace_id")
        pq.write_table(table.drop_columns(["date"]) if "date" in table.column_names else table, path)
    (unique,), = raw(data_dir, "SELECT count(DISTINCT (trace_id, span_id)) FROM files")
    expected = answers(msgtrace.open(data_dir))

    settings = CompactionSettings(target_rows=2_000, merge_rows=700, grace_seconds=3600, cut_sample_rows=sample)
    report = Compactor(layout, settings).run(force=True)
    sizes = [pq.read_metadata(p).num_rows for p in retired.visible_parts(layout)]
    assert report.output_rows == sum(sizes) == unique
    assert len(sizes) == math.ceil(unique / settings.target_rows)
    assert max(sizes) <= settings.target_rows * 1.1, sizes  # even, give or take whole traces at the cuts
    assert answers(msgtrace.open(data_dir)) == expected


def test_a_query_that_started_before_the_swap_reads_its_files_to_the_end(data_dir: Path) -> None:
    fill(data_dir, days=1)
    store = msgtrace.open(data_dir)
    cursor = store.engine.snapshot()  # bound to the small parts, as a running query is
    count_sql = "SELECT count(*) FROM spans"
    (before,), = cursor.sql(count_sql).fetchall()
    Compactor(StoreLayout(data_dir), CompactionSettings(grace_seconds=3600)).run(force=True)
    (during,), = cursor.sql(count_sql).fetchall()  # its files are retired, not deleted
    assert during == before
    cursor.close()
    assert store.query(count_sql).rows()[0]["count_star()"] == before  # a new query reads the outputs


def test_tiered_compaction_bounds_the_files_of_a_day_under_continuous_ingest(data_dir: Path) -> None:
    settings = CompactionSettings(target_rows=200_000, base_rows=256, fanout=4, settle_seconds=3600,
                                  grace_seconds=0)
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    compactor = Compactor(StoreLayout(data_dir), settings, checkpoint=lambda: ingestor.wal.checkpoint)
    bodies = build_workload(64 * 256, 256, seed=3).bodies
    most = 0
    for body in bodies:
        ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
        ingestor.flush()  # one part per request: the worst case
        compactor.run()
        most = max(most, len(retired.visible_parts(compactor.layout)))
    ingestor.close()
    # Size classes of 256·4^k spans below target/2: (fanout - 1) parts per class at most, plus finished files.
    classes = math.ceil(math.log(settings.target_rows / 2 / settings.base_rows, settings.fanout))
    assert most <= (settings.fanout - 1) * classes + 1, most
    assert compactor.totals.input_files > 32
    store = msgtrace.open(data_dir)
    (n, d), = [tuple(r.values()) for r in store.query(
        "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM spans").rows()]
    assert n == d == 64 * 256


def test_queries_never_fail_lose_or_duplicate_rows_while_compaction_and_ingest_run(data_dir: Path) -> None:
    """The issue's test: 1,000 queries from 4 threads during ingest and compaction (with deletions of the replaced
    files after a short grace period): no error, the span count never goes down, never a duplicate row."""
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=0.05, compaction_interval=0.1))
    # Small size classes and short settle/grace times, so merges, swaps and deletions all happen under the queries.
    ingestor.maintenance.compactor.settings = CompactionSettings(
        target_rows=3_000, base_rows=128, fanout=3, settle_seconds=0.3, grace_seconds=1.0)
    ingestor.start()
    bodies = build_workload(400 * 64, 64, seed=11).bodies
    stop = threading.Event()
    errors: list[BaseException] = []
    sent = [0]

    def ingest() -> None:
        try:
            for i, body in enumerate(bodies):
                if stop.is_set():
                    return
                ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
                if i % 7 == 3:  # a retried request: a duplicate delivery
                    ingestor.accept(WireFormat.PROTOBUF, bodies[i - 3], time.time_ns())
                sent[0] += 64
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    def query(results: list[tuple[int, int]]) -> None:
        store = Store(data_dir, live=ingestor.live_table)
        try:
            for _ in range(250):
                row = store.query("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans")
                results.append(tuple(row.rows()[0].values()))  # type: ignore[arg-type]
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    results: list[list[tuple[int, int]]] = [[] for _ in range(4)]
    writer = threading.Thread(target=ingest)
    readers = [threading.Thread(target=query, args=(r,)) for r in results]
    deadline = time.monotonic() + 240
    writer.start()
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=max(1.0, deadline - time.monotonic()))
    stop.set()
    writer.join(timeout=30)
    totals = ingestor.maintenance.compactor.totals
    ingestor.close()

    assert not errors, errors[:3]
    assert all(not t.is_alive() for t in readers)
    assert sum(len(r) for r in results) == 1_000
    for series in results:
        assert all(n == d for n, d in series), "a duplicate row"
        counts = [n for n, _ in series]
        assert all(a <= b for a, b in zip(counts, counts[1:], strict=False)), "the span count went down"
    assert totals.input_files > 0 and totals.purged_files > 0, "compaction and deletions ran during the queries"
    final = Store(data_dir).query("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans")
    assert tuple(final.rows()[0].values()) == (sent[0], sent[0])


def test_prune_and_retention_drop_exactly_the_expired_days(data_dir: Path) -> None:
    fill(data_dir, days=6, spans_per_day=1_000, duplicate_every=1_000)
    layout = StoreLayout(data_dir)
    days = sorted({part_day(p) for p in layout.parts()})
    assert len(days) == 6
    keep_from = day_to_date(days[2])
    # A running server owns the store: the CLI says so in one line.
    server = Server(data_dir)
    server.start()
    try:
        proc = subprocess.run([MSGTRACE, "prune", "--before", keep_from.isoformat(), "--yes", "--data-dir",
                               str(data_dir)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "in use" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        server.stop()
    store = msgtrace.open(data_dir)
    expected = store.query("SELECT count(*) AS n FROM spans WHERE date >= $d", {"d": keep_from}).rows()[0]["n"]
    proc = subprocess.run([MSGTRACE, "prune", "--before", keep_from.isoformat(), "--yes", "--grace", "0",
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "dropped 2 day(s)" in proc.stdout
    remaining = store.query("SELECT min(date) AS first, count(*) AS n FROM spans").rows()[0]
    assert remaining == {"first": keep_from, "n": expected}
    assert sorted(p.name for p in layout.spans_dir.iterdir()) == [
        f"date={day_to_date(d).isoformat()}" for d in days[2:]]

    # The server's --retention-days: keep today and N previous days, in the background.
    today = day_to_date(days[-1])
    retention = (today - day_to_date(days[3])).days
    config = IngestConfig(data_dir=data_dir, compaction_interval=0.1, retention_days=retention,
                          compaction_grace_seconds=0)
    assert retention_cutoff(retention, today) == day_to_date(days[3])
    ingestor = Ingestor(config)
    ingestor.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (data_dir / "spans" / f"date={day_to_date(days[2])}").exists():
            time.sleep(0.05)
        status = ingestor.status()["compaction"]
    finally:
        ingestor.close()
    assert status["pruned_days"] == [day_to_date(days[2]).isoformat()]  # type: ignore[index]
    assert store.query("SELECT min(date) AS first FROM spans").rows()[0]["first"] == day_to_date(days[3])


def test_cli_compact_reports_and_refuses_a_store_a_server_owns(data_dir: Path) -> None:
    fill(data_dir, days=2, spans_per_day=2_000)
    files = len(StoreLayout(data_dir).parts())
    proc = subprocess.run([MSGTRACE, "compact", "--json", "--data-dir", str(data_dir)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["input_files"] == files and report["output_files"] == 2 and report["days"] == 2
    human = subprocess.run([MSGTRACE, "compact", "--grace", "0", "--data-dir", str(data_dir)], capture_output=True,
                           text=True, timeout=120)
    assert human.returncode == 0 and f"{files:,} replaced file(s) deleted" in human.stdout, human.stdout
    missing = subprocess.run([MSGTRACE, "compact", "--data-dir", str(data_dir / "nope")], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("msgtrace: error: no msgtrace store")


def test_the_server_compacts_in_the_background(data_dir: Path) -> None:
    env = {"MSGTRACE_COMPACTION_INTERVAL": "0.2", "MSGTRACE_COMPACTION_SETTLE_SECONDS": "0.5",
           "MSGTRACE_COMPACTION_GRACE_SECONDS": "0"}
    server = Server(data_dir, env=env)
    server.start()
    try:
        workload = build_workload(2_000, 250, seed=4)
        for body in workload.bodies:
            assert server.post("/v1/traces", body, {"Content-Type": "application/x-protobuf"}).status_code == 200
            time.sleep(0.25)  # one flush (0.2 s) per request: many small parts
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            compaction = server.health()["compaction"]
            parts = StoreLayout(data_dir).parts()
            if compaction["totals"]["input_files"] and all(p.name.startswith("c-") for p in parts):
                break
            time.sleep(0.1)
        assert compaction["enabled"] and compaction["errors"] == 0, compaction
        assert all(p.name.startswith("c-") for p in StoreLayout(data_dir).parts())
        # The CLI reads the compacted store while the server runs.
        listed = json.loads(subprocess.run(
            [MSGTRACE, "list", "--json", "--limit", "1000", "--data-dir", str(data_dir)], capture_output=True,
            text=True, timeout=60).stdout)
        assert sum(t["span_count"] for t in listed) == workload.total_spans
    finally:
        server.stop()
    store = msgtrace.open(data_dir)
    assert store.query("SELECT count(*) AS n FROM spans").rows()[0]["n"] == workload.total_spans

