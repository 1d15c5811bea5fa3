"""The views (through the Python API) against an independent computation, on a store built by the real ingest
pipeline: the three captured client requests plus ≥ 100,000 generated spans over 7 days (many workflows, models,
services and errors), with duplicate deliveries across flushes and traces whose root arrives late or never.

The expected values are computed here in plain Python from the raw Parquet rows (read with plain DuckDB), never
from msgtrace's SQL.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import msgtrace
from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.query.engine import QueryEngine, QueryError, QueryTimeout
from msgtrace.query.store import InvalidArgument, Store, TraceNotFound
from msgtrace.schema import SPAN_SCHEMA
from msgtrace.storage.compactor import CompactionSettings, Compactor
from msgtrace.storage.layout import StoreLayout, part_range
from msgtrace.storage.retired import visible_parts
from msgtrace.synthetic import build_workload
from tests.conftest import CAPTURES, capture, parquet_glob

DAY_NS = 86_400 * 10**9
SPANS = 100_352  # 196 requests of 512


def _late_and_rootless(now: int) -> tuple[bytes, bytes, bytes]:
    """A trace whose root arrives in a later request, and a trace whose root never arrives."""
    late = ExportTraceServiceRequest()
    scope = late.resource_spans.add().scope_spans.add()
    trace, root = bytes.fromhex("aa" * 16), bytes.fromhex("a1" * 8)
    for i in range(3):
        child = scope.spans.add()
        child.trace_id, child.span_id, child.parent_span_id = trace, bytes([0xA2, i + 1]) + bytes(6), root
        child.name, child.start_time_unix_nano, child.end_time_unix_nano = f"step-{i}", now + i, now + i + 10
    root_req = ExportTraceServiceRequest()
    span = root_req.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = trace, root, "late_root_flow"
    span.start_time_unix_nano, span.end_time_unix_nano = now - 5, now + 100
    kv = span.attributes.add()
    kv.key, kv.value.string_value = "workflow.name", "late_workflow"
    rootless = ExportTraceServiceRequest()
    scope = rootless.resource_spans.add().scope_spans.add()
    for i in range(2):
        orphan = scope.spans.add()
        orphan.trace_id, orphan.span_id = bytes.fromhex("bb" * 16), bytes([0xB2, i + 1]) + bytes(6)
        orphan.parent_span_id, orphan.name = bytes.fromhex("b1" * 8), f"orphan-{i}"
        orphan.start_time_unix_nano, orphan.end_time_unix_nano = now + 10 * i, now + 10 * i + 5
    return late.SerializeToString(), root_req.SerializeToString(), rootless.SerializeToString()


def _across_midnight(now: int) -> bytes:
    """A trace whose root starts just before a UTC midnight and whose child starts just after: two day partitions,
    so after compaction two compacted parts each hold part of it."""
    midnight = (now // DAY_NS - 2) * DAY_NS
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    trace = bytes.fromhex("cc" * 16)
    for i, (start, parent) in enumerate(((midnight - 500_000_000, b""), (midnight + 500_000_000, b"\xc1" * 8))):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.parent_span_id = trace, bytes([0xC1 + i]) * 8, parent
        span.name, span.start_time_unix_nano, span.end_time_unix_nano = f"midnight-{i}", start, start + 900_000_000
        kv = span.attributes.add()
        kv.key, kv.value.int_value = "gen_ai.usage.input_tokens", 100 + i
    return request.SerializeToString()


@pytest.fixture(scope="module", params=["flushed", "compacted"])
def store_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store as flushed (many small parts), or compacted half-way: the workload and part of the odd traces
    compacted (trace rows stored per part), then late spans, duplicates of compacted spans and the rest flushed on
    top, so the traces view mixes stored rows with traces it must recompute."""
    data_dir = tmp_path_factory.mktemp("query") / "data"
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    now = time.time_ns()
    workload = build_workload(SPANS, 512, seed=11, base_time_ns=now, spread_ns=7 * DAY_NS)
    for body in workload.bodies:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
        if ingestor.buffer.total_bytes > 32 * 1024 * 1024:  # keep under the 503 budget (96 MiB)
            ingestor.flush()
    late, root, rootless = _late_and_rootless(now - DAY_NS)
    ingestor.accept(WireFormat.PROTOBUF, late, now)
    ingestor.accept(WireFormat.PROTOBUF, _across_midnight(now), now)
    ingestor.flush()
    if request.param == "compacted":
        ingestor.close()
        Compactor(StoreLayout(data_dir), CompactionSettings(target_rows=20_000, grace_seconds=0)).run(force=True)
        ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
        ingestor.start()
    for name in CAPTURES:
        ingestor.accept(WireFormat.PROTOBUF, capture(name)[2], now)
    ingestor.accept(WireFormat.PROTOBUF, rootless, now)
    ingestor.flush()
    ingestor.accept(WireFormat.PROTOBUF, root, now)  # the root, one flush later
    ingestor.flush()
    # Duplicate deliveries far apart (beyond the flush-time collapse window): only the views collapse them.
    for body in workload.bodies[:3]:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
        ingestor.flush()
    ingestor.close()
    return data_dir


def test_the_compacted_store_stores_trace_rows_and_recomputes_the_rest(request: pytest.FixtureRequest,
                                                                        store_dir: Path) -> None:
    layout = StoreLayout(store_dir)
    if request.node.callspec.params["store_dir"] == "flushed":
        assert all(part_range(p) is not None for p in layout.parts())  # many small flushed parts, nothing stored
        assert not list(layout.summaries_dir.glob("*/*.parquet"))
        return
    rows = duckdb.connect().sql(f"SELECT trace_id, shared FROM read_parquet('{layout.summaries_dir}/*/*.parquet')"
                                ).to_arrow_table().to_pylist()
    assert len(rows) > 10_000
    shared = {r["trace_id"] for r in rows if r["shared"]}
    assert "cc" * 16 in shared  # the trace across midnight (the workload may hold more such traces)
    per_trace = defaultdict(int)
    for r in rows:
        per_trace[r["trace_id"]] += 1
    # A trace is flagged exactly when it has stored rows in two parts (and the later part flagged it).
    assert shared == {t for t, n in per_trace.items() if n > 1}
@pytest.fixture(scope="module")
def raw(store_dir: Path) -> list[dict]:
    """Every stored row, duplicates included, straight from the Parquet files."""
    return duckdb.connect().sql(
        "SELECT trace_id, span_id, parent_span_id, name, status_code, service_name, workflow_name, model,"
        " input_tokens, output_tokens, total_tokens, cost, user_id, session_id, start_time_unix_nano,"
        " end_time_unix_nano FROM read_parquet(?)", params=[parquet_glob(store_dir)]
    ).to_arrow_table().to_pylist()


@pytest.fixture(scope="module")
def spans(raw: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["trace_id"], r["span_id"]): r for r in raw}


@pytest.fixture(scope="module")
def by_trace(spans: dict[tuple[str, str], dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for row in spans.values():
        out[row["trace_id"]].append(row)
    return out


@pytest.fixture(scope="module")
def store(store_dir: Path) -> Store:
    return msgtrace.open(store_dir)


def _root(rows: list[dict]) -> dict:
    ids = {r["span_id"] for r in rows}
    roots = [r for r in rows if r["parent_span_id"] is None or r["parent_span_id"] not in ids]
    return sorted(roots, key=lambda r: (r["parent_span_id"] is not None, r["start_time_unix_nano"], r["span_id"]))[0]


def _expected_trace(rows: list[dict]) -> dict:
    root = _root(rows)

    def total(field: str):  # type: ignore[no-untyped-def]
        values = [r[field] for r in rows if r[field] is not None]
        return sum(values) if values else None

    return {
        "span_count": len(rows),
        "error_count": sum(r["status_code"] == "ERROR" for r in rows),
        "root_name": root["name"],
        "workflow": root["workflow_name"] or root["name"],
        "service_name": root["service_name"],
        "input_tokens": total("input_tokens"),
        "output_tokens": total("output_tokens"),
        "cost": total("cost"),
        "duration_ms": (max(r["end_time_unix_nano"] for r in rows) - min(r["start_time_unix_nano"] for r in rows)) / 1e6,
    }


def test_the_store_is_big_and_varied(raw: list[dict], spans: dict, by_trace: dict) -> None:
    assert len(spans) >= 100_000
    assert len(raw) > len(spans)  # the duplicate deliveries are physically there
    days = {dt.datetime.fromtimestamp(r["start_time_unix_nano"] / 1e9, dt.UTC).date() for r in spans.values()}
    assert len(days) >= 7
    assert len({r["workflow_name"] for r in spans.values()}) >= 5
    assert len({r["model"] for r in spans.values()}) >= 5
    assert len({r["service_name"] for r in spans.values()}) >= 5
    assert sum(r["status_code"] == "ERROR" for r in spans.values()) > 1000


def test_spans_view_collapses_duplicates(store: Store, spans: dict) -> None:
    row = store.query("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans").rows()[0]
    assert row["n"] == row["d"] == len(spans)
    assert store.spans().select("span_id").collect().height == len(spans)


def test_traces_view_matches_independent_computation(store: Store, by_trace: dict) -> None:
    rows = {r["trace_id"]: r for r in store.query("SELECT * FROM traces", max_rows=10**6).rows()}
    assert set(rows) == set(by_trace)
    for trace_id in random.Random(1).sample(sorted(by_trace), 400) + ["aa" * 16, "bb" * 16,
                                                                       "2696f4701a86a3602fc274ae431deec3",
                                                                       "4bf92f3577b34da6a3ce929d0e0e4736"]:
        expected, got = _expected_trace(by_trace[trace_id]), rows[trace_id]
        for field, value in expected.items():
            if isinstance(value, float):
                assert got[field] == pytest.approx(value, rel=1e-9), (trace_id, field)
            else:
                assert got[field] == value, (trace_id, field)


def test_root_arriving_late_or_never(store: Store) -> None:
    late = store.trace_summary("aa" * 16)
    assert (late["root_name"], late["workflow"], late["span_count"]) == ("late_root_flow", "late_workflow", 4)
    rootless = store.trace_summary("bb" * 16)
    assert rootless["root_name"] == "orphan-0" and rootless["span_count"] == 2
    tree = store.tree("bb" * 16).to_dicts()
    assert [(r["name"], r["depth"], r["orphan"]) for r in tree] == [("orphan-0", 0, True), ("orphan-1", 1, True)]


def _expected_tree(rows: list[dict]) -> list[tuple[str, int]]:
    """Depth-first, siblings by start time; orphans (parent not stored) under the root."""
    root = _root(rows)
    ids = {r["span_id"] for r in rows}
    children: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r is root:
            continue
        parent = r["parent_span_id"] if r["parent_span_id"] in ids else root["span_id"]
        children[parent].append(r)
    out: list[tuple[str, int]] = []

    def walk(node: dict, depth: int) -> None:
        out.append((node["span_id"], depth))
        for child in sorted(children[node["span_id"]], key=lambda c: (c["start_time_unix_nano"], c["span_id"])):
            walk(child, depth + 1)

    walk(root, 0)
    return out


def test_span_tree_order_and_depth(store: Store, by_trace: dict) -> None:
    sample = random.Random(2).sample(sorted(t for t, rows in by_trace.items() if len(rows) > 3), 60)
    for trace_id in [*sample, "2696f4701a86a3602fc274ae431deec3", "aa" * 16]:
        tree = store.tree(trace_id).to_dicts()
        assert [(r["span_id"], r["depth"]) for r in tree] == _expected_tree(by_trace[trace_id]), trace_id
        assert [r["position"] for r in tree] == list(range(len(tree)))
        seen = set()
        for r in tree:  # parents before children
            assert r["parent_id"] is None or r["parent_id"] in seen
            seen.add(r["span_id"])


def test_remote_parent_root_is_marked(store: Store) -> None:
    tree = store.tree("4bf92f3577b34da6a3ce929d0e0e4736").to_dicts()
    assert [(r["name"], r["depth"], r["orphan"]) for r in tree] == [("incoming_request_flow", 0, True),
                                                                     ("handler", 1, False)]


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


@pytest.mark.parametrize("by", ["workflow", "model", "service", "name", "day"])
def test_stats_match_independent_computation(store: Store, spans: dict, by_trace: dict, by: str) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    if by in ("workflow", "day"):
        for rows in by_trace.values():
            t = _expected_trace(rows)
            start = min(r["start_time_unix_nano"] for r in rows)
            key = t["workflow"] if by == "workflow" else \
                dt.datetime.fromtimestamp(start // 10**9, dt.UTC).date().isoformat()
            groups[key].append({"error": t["error_count"] > 0, "duration_ms": t["duration_ms"],
                                "input_tokens": t["input_tokens"], "cost": t["cost"]})
    else:
        column = {"model": "model", "service": "service_name", "name": "name"}[by]
        for r in spans.values():
            if by == "model" and r["model"] is None:
                continue
            groups[r[column]].append({"error": r["status_code"] == "ERROR",
                                      "duration_ms": (r["end_time_unix_nano"] - r["start_time_unix_nano"]) / 1e6,
                                      "input_tokens": r["input_tokens"], "cost": r["cost"]})
    got = {r[by]: r for r in store.stats(by).to_dicts()}
    assert set(got) == set(groups)
    for key, items in groups.items():
        row = got[key]
        assert row["count"] == len(items), key
        assert row["errors"] == sum(i["error"] for i in items), key
        durations = [i["duration_ms"] for i in items]
        for q, field in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            assert row[field] == pytest.approx(_quantile(durations, q), rel=1e-6, abs=1e-6), (key, field)
        tokens = [i["input_tokens"] for i in items if i["input_tokens"] is not None]
        assert row["input_tokens"] == (sum(tokens) if tokens else None), key
        costs = [i["cost"] for i in items if i["cost"] is not None]
        assert row["cost"] == (pytest.approx(sum(costs)) if costs else None), key


def test_stats_time_window(store: Store, by_trace: dict) -> None:
    until = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    since = until - dt.timedelta(days=3)
    lo, hi = since.timestamp() * 1e9, until.timestamp() * 1e9
    expected = sum(lo <= min(r["start_time_unix_nano"] for r in rows) < hi for rows in by_trace.values())
    got = store.stats("workflow", since=since, until=until)
    assert got["count"].sum() == expected > 0


def _filter_expected(by_trace: dict, keep) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(t for t, rows in by_trace.items() if keep(rows, _expected_trace(rows)))


def test_trace_list_filters(store: Store, by_trace: dict, spans: dict) -> None:
    user = next(r["user_id"] for r in spans.values() if r["user_id"])
    model = next(r["model"] for r in spans.values() if r["model"])
    service = next(r["service_name"] for r in spans.values() if r["model"])
    cases = {
        "service": ({"service": service}, lambda rows, t: any(r["service_name"] == service for r in rows)),
        "workflow": ({"workflow": "late_workflow"}, lambda rows, t: t["workflow"] == "late_workflow"),
        "model": ({"model": model}, lambda rows, t: any(r["model"] == model for r in rows)),
        "status": ({"status": "error"}, lambda rows, t: t["error_count"] > 0),
        "duration": ({"min_duration_ms": 2000, "max_duration_ms": 3000},
                     lambda rows, t: 2000 <= t["duration_ms"] <= 3000),
        "user": ({"user_id": user}, lambda rows, t: (_root(rows)["user_id"] or next(
            (r["user_id"] for r in rows if r["user_id"]), None)) == user),
    }
    for name, (filters, keep) in cases.items():
        expected = _filter_expected(by_trace, keep)
        got = store.traces(**filters, limit=100_000)["trace_id"].to_list()
        assert sorted(got) == expected and expected, name


def test_trace_list_pages_and_sorts(store: Store, by_trace: dict) -> None:
    newest = sorted(by_trace, key=lambda t: (-min(r["start_time_unix_nano"] for r in by_trace[t]), t))
    pages = [store.traces(limit=25, offset=o)["trace_id"].to_list() for o in (0, 25, 50)]
    assert pages[0] + pages[1] + pages[2] == newest[:75]
    costly = store.traces(sort="cost", limit=5).to_dicts()
    assert [c["cost"] for c in costly] == sorted((c["cost"] for c in costly), reverse=True)
    top = max((t for t in by_trace.values()), key=lambda rows: _expected_trace(rows)["cost"] or 0)
    assert costly[0]["trace_id"] == top[0]["trace_id"]


def test_attribute_filter(store: Store) -> None:
    assert store.traces(attribute="user.id=user-42")["trace_id"].to_list() == ["2696f4701a86a3602fc274ae431deec3"]
    assert store.traces(attribute=("gen_ai.request.max_tokens", "256"))["trace_id"].to_list() \
        == ["2696f4701a86a3602fc274ae431deec3"]
    assert store.traces(attribute="service.name=msgflux-fixture").height == 23


def test_trace_detail_and_errors(store: Store, by_trace: dict) -> None:
    trace_id = "2696F4701A86A3602FC274AE431DEEC3"
    detail = store.trace(trace_id)
    assert sorted(detail["span_id"]) == sorted(r["span_id"] for r in by_trace[trace_id.lower()])
    with pytest.raises(TraceNotFound):
        store.trace("0" * 32)
    for bad in ("xyz", "0" * 33, "' OR 1=1 --", ""):
        with pytest.raises(InvalidArgument):
            store.trace(bad)
    with pytest.raises(InvalidArgument):
        store.stats("color")
    with pytest.raises(InvalidArgument):
        store.traces(since="last tuesday")


def test_live_buffer_is_queryable_before_any_flush(tmp_path: Path) -> None:
    ingestor = Ingestor(IngestConfig(data_dir=tmp_path / "live", flush_interval=3600))
    ingestor.start()
    try:
        store = Store(ingestor.config.data_dir, live=ingestor.live_table)
        assert store.traces().height == 0
        ingestor.accept(WireFormat.PROTOBUF, capture("msgtrace_sdk_activated")[2], time.time_ns())
        assert not list((tmp_path / "live").glob("spans/*/*.parquet"))
        assert store.trace("2696f4701a86a3602fc274ae431deec3").height == 11
        ingestor.flush()  # now in Parquet, and no longer in the buffer: still once
        assert store.trace("2696f4701a86a3602fc274ae431deec3").height == 11
        ingestor.accept(WireFormat.PROTOBUF, capture("msgtrace_sdk_activated")[2], time.time_ns())
        assert store.traces().height == 3  # in the buffer and in Parquet at once: still once
        store.close()
    finally:
        ingestor.close()


def test_query_limits(store: Store) -> None:
    result = store.query("SELECT * FROM range(100)", max_rows=10)
    assert result.truncated and result.table.num_rows == 10

    started = time.monotonic()
    with pytest.raises(QueryTimeout):
        store.engine.run("SELECT count(*) FROM range(1000000000000)", timeout=0.5)
    assert time.monotonic() - started < 3


def test_first_page_reads_the_newest_files_first_and_matches_the_whole_store(tmp_path: Path) -> None:
    """The default trace list (newest first) is answered from the summary files with the newest traces, widening
    until the answer is the whole store's (Engine.run_newest_first). Here 7 days compacted into many files, and a
    trace starting in year 2200 that was received (and so partitioned) 5 days ago: it sits in an old day's file,
    yet is the newest trace. Every page and filter must equal plain DuckDB over the raw spans."""
    data_dir = tmp_path / "data"
    now = time.time_ns()
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    for body in build_workload(20_480, 512, seed=5, base_time_ns=now, spread_ns=7 * DAY_NS).bodies:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
    future = ExportTraceServiceRequest()
    span = future.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex("f2" * 16), bytes.fromhex("f3" * 8), "from_the_future"
    span.start_time_unix_nano = int(dt.datetime(2200, 1, 1, tzinfo=dt.UTC).timestamp()) * 10**9
    span.end_time_unix_nano = span.start_time_unix_nano + 10**9
    ingestor.accept(WireFormat.PROTOBUF, future.SerializeToString(), now - 5 * DAY_NS)
    ingestor.flush()
    ingestor.close()
    Compactor(StoreLayout(data_dir), CompactionSettings(target_rows=1_000, grace_seconds=0)).run(force=True)
    summaries = list(StoreLayout(data_dir).summaries_dir.glob("*/*.parquet"))
    assert len(summaries) > 16, len(summaries)  # more than the first two windows (4, 16 files)

    raw = duckdb.connect().sql(
        f"SELECT trace_id, min(start_time_unix_nano) AS start, max(status_code = 'ERROR') AS error "
        f"FROM read_parquet('{parquet_glob(data_dir)}') GROUP BY trace_id").fetchall()
    newest = [t for t, _, _ in sorted(raw, key=lambda r: (-r[1], r[0]))]
    failed = [t for t, _, _ in sorted((r for r in raw if r[2]), key=lambda r: (-r[1], r[0]))]
    assert newest[0] == "f2" * 16
    with msgtrace.open(data_dir) as store:
        for offset in (0, 50, 2_000):
            assert store.traces(limit=50, offset=offset)["trace_id"].to_list() == newest[offset:offset + 50]
        # A filter few traces pass: the windows hold too few of them, so the answer is the whole store's.
        assert store.traces(status="ERROR", limit=50)["trace_id"].to_list() == failed[:50]
        assert store.traces(limit=10_000)["trace_id"].to_list() == newest[:10_000]

    # The widening tries share one time limit: three tries of 0.4 s each (4, 16, then all files, for traces that
    # started over 5 days ago, which the newest files do not hold) are stopped at 1 s instead of each having 1 s.
    cut = now - 5 * DAY_NS
    old = [t for t, start, _ in sorted(raw, key=lambda r: (-r[1], r[0])) if start < cut]
    slow = ("SELECT trace_id, start_time FROM traces, (SELECT pause_s(0.4) AS p) WHERE p > 0 AND start_time < $cut "
            "ORDER BY start_time DESC, trace_id LIMIT $limit")
    params = {"cut": dt.datetime.fromtimestamp(cut / 1e9, dt.UTC).replace(tzinfo=None), "limit": 50}
    with Store(data_dir, timeout=1.0) as store:
        store.engine._db.create_function("pause_s", lambda s: (time.sleep(s), s)[1], ["DOUBLE"], "DOUBLE",
                                         side_effects=True)
        started = time.monotonic()
        with pytest.raises(QueryTimeout, match="longer than 1 s"):
            store.engine.run_newest_first(slow, params, limit=50)
        assert time.monotonic() - started < 1.5  # (an interrupt waits for the pause under way: up to 0.4 s)
        store.engine.timeout = 2.0  # with time for all three, the answer is the whole store's
        assert store.engine.run_newest_first(slow, params, limit=50).table["trace_id"].to_pylist() == old[:50]


def test_a_trace_lookup_probes_only_the_parts_that_may_hold_it(tmp_path: Path) -> None:
    """A one-trace query first rules out the compacted parts whose row-group trace-id ranges miss the id (a
    compacted day holds disjoint ranges: about one part a day is left), then probes those and every flushed part.
    Whatever holds the trace is among them, and the answer equals plain DuckDB over the raw files."""
    data_dir = tmp_path / "data"
    now = time.time_ns()
    bodies = build_workload(20_480, 512, seed=9, base_time_ns=now, spread_ns=7 * DAY_NS).bodies
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    for body in bodies:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
    ingestor.flush()
    ingestor.close()
    Compactor(StoreLayout(data_dir), CompactionSettings(target_rows=1_000, grace_seconds=0)).run(force=True)
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    ingestor.accept(WireFormat.PROTOBUF, bodies[7], now)  # a late duplicate delivery: flushed parts on top
    ingestor.flush()
    ingestor.close()

    with msgtrace.open(data_dir) as store:
        engine = store.engine
        parts = visible_parts(engine.layout)
        compacted = {p for p in parts if p.name.startswith("c-")}
        flushed = set(parts) - compacted
        days = len({p.parent for p in compacted})
        assert flushed and len(compacted) > 2 * days, (len(compacted), days)
        listing = ", ".join(f"'{p}'" for p in parts)
        holders: dict[str, set[str]] = defaultdict(set)
        rows: dict[str, set[str]] = defaultdict(set)
        for trace_id, span_id, filename in duckdb.sql(
                f"SELECT trace_id, span_id, filename FROM read_parquet([{listing}], filename = true)").fetchall():
            holders[trace_id].add(filename)
            rows[trace_id].add(span_id)
        probed = []
        for trace_id in random.Random(4).sample(sorted(holders), 100):
            candidates = engine._candidates(parts, trace_id)
            assert holders[trace_id] <= {str(p) for p in candidates}
            assert flushed <= set(candidates)
            probed.append(len(compacted & set(candidates)))
            assert set(store.trace(trace_id)["span_id"]) == rows[trace_id]
        assert sum(probed) / len(probed) <= days + 1, probed


def test_one_trace_read_from_compacted_row_groups_equals_the_raw_rows(tmp_path: Path) -> None:
    """A one-trace query reads compacted parts with pyarrow, from only the row groups their trace-id ranges and
    Bloom filters leave, beside the flushed parts and the live buffer that DuckDB reads. Every column of every span
    equals plain DuckDB over the raw files plus the buffered rows, duplicate deliveries collapsed to the copy with
    the latest end (then the smallest name), and a trace whose spans lie in two days comes back whole. Rows of one
    compacted part alone skip the spans view's window (the part holds one row per span); rows of two parts do not
    (the same span can lie in two days' parts)."""
    data_dir = tmp_path / "data"
    now = time.time_ns()
    bodies = build_workload(8_192, 512, seed=3, base_time_ns=now, spread_ns=3 * DAY_NS).bodies
    two_days, again = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    # day-0's span again, started a day later (a client bug), in a later flush (a flush keeps the first copy of a
    # span it holds twice): one copy in each day's compacted part, and the later one wins
    for i, start, name in ((0, now - DAY_NS, "day-0"), (1, now, "day-1"), (0, now, "day-0-again")):
        request = again if name == "day-0-again" else two_days
        span = (request.resource_spans or [request.resource_spans.add()])[0]
        span = (span.scope_spans or [span.scope_spans.add()])[0].spans.add()
        span.trace_id, span.span_id, span.name = bytes.fromhex("cd" * 16), bytes([0xC1, i + 1]) + bytes(6), name
        span.start_time_unix_nano, span.end_time_unix_nano = start, start + 1_000
        for key, field, value in (("s", "string_value", "x"), ("i", "int_value", 7), ("d", "double_value", 0.5),
                                  ("b", "bytes_value", b"\x00\xff")):
            kv = span.attributes.add()
            kv.key = key
            setattr(kv.value, field, value)
        span.events.add(name="evt", time_unix_nano=start + 5).attributes.add(key="k").value.bool_value = True
    config = IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0)
    ingestor = Ingestor(config)
    ingestor.start()
    for body in [*bodies, two_days.SerializeToString()]:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
    ingestor.flush()
    ingestor.close()
    ingestor = Ingestor(config)
    ingestor.start()
    ingestor.accept(WireFormat.PROTOBUF, again.SerializeToString(), now)
    ingestor.flush()
    ingestor.close()
    Compactor(StoreLayout(data_dir), CompactionSettings(target_rows=1_000, row_group_rows=256, grace_seconds=0)
              ).run(force=True)

    def redelivered(body: bytes, end_shift: int, name: str) -> tuple[bytes, str]:
        """The request again, its first span ending later under another name (that copy must win)."""
        request = ExportTraceServiceRequest.FromString(body)
        span = request.resource_spans[0].scope_spans[0].spans[0]
        span.end_time_unix_nano += end_shift
        span.name = name
        return request.SerializeToString(), span.trace_id.hex()

    flushed_body, flushed_trace = redelivered(bodies[3], 1_000, "redelivered-flushed")
    live_body, live_trace = redelivered(bodies[5], 2_000, "redelivered-live")
    ingestor = Ingestor(config)
    ingestor.start()
    try:
        ingestor.accept(WireFormat.PROTOBUF, flushed_body, now)
        ingestor.flush()
        ingestor.accept(WireFormat.PROTOBUF, live_body, now)  # stays in the buffer: the live source
        live = ingestor.live_table()
        assert live is not None and live.num_rows
        parts = visible_parts(StoreLayout(data_dir))
        assert any(not p.name.startswith("c-") for p in parts)
        con = duckdb.connect()
        con.register("live", live)
        files = con.sql(f"SELECT * FROM read_parquet([{', '.join(repr(str(p)) for p in parts)}], "
                        "hive_partitioning = true, filename = true)").to_arrow_table()
        buffered = con.sql("SELECT * FROM live").to_arrow_table()
        columns = buffered.schema.names + ["date"]
        by_trace: dict[str, list[dict]] = defaultdict(list)
        holders: dict[str, set[str]] = defaultdict(set)
        for row in files.to_pylist():
            holders[row["trace_id"]].add(row.pop("filename"))
            by_trace[row["trace_id"]].append(row)
        picks = random.Random(11).sample(sorted(by_trace), 40) + ["cd" * 16, flushed_trace, live_trace]

        def expected(rows: list[dict]) -> list[dict]:
            kept: dict[str, dict] = {}
            for row in rows:
                best = kept.get(row["span_id"])
                if best is None or (row["end_time_unix_nano"], best["name"]) > (best["end_time_unix_nano"],
                                                                                 row["name"]):
                    kept[row["span_id"]] = row
            return sorted(kept.values(), key=lambda r: r["span_id"])

        # With the live buffer (as in the server), then without it (the CLI and Python API on the files).
        for live_source, extra in ((ingestor.live_table, buffered.to_pylist()), (None, [])):
            with Store(data_dir, live=live_source) as store:
                engine = store.engine
                read_by_pyarrow = fast = 0
                for trace_id in picks:
                    want = expected(by_trace[trace_id] + [r for r in extra if r["trace_id"] == trace_id])
                    got = sorted(store.trace_result(trace_id).table.select(columns).to_pylist(),
                                 key=lambda r: r["span_id"])
                    assert got == want, trace_id
                    read_by_pyarrow += bool(engine._holders(visible_parts(engine.layout), trace_id).groups)
                    # Rows of one compacted part alone (one row per span) are bound to `spans` without the window.
                    with engine.cursor(trace_id=trace_id, traces=False) as cur:
                        plain = cur.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'spans' "
                                            "AND temporary").fetchall()[0][0]
                    one_part = len(holders[trace_id]) == 1 and Path(*holders[trace_id]).name.startswith("c-")
                    assert plain == (one_part and live_source is None), trace_id  # live rows may duplicate any
                    fast += plain
                assert read_by_pyarrow == len(picks)  # every trace has compacted spans: pyarrow read each
                if live_source is None:  # (most sampled traces lie in one part: the shortcut is taken at all)
                    assert fast >= 30
                live_names = {r["name"] for r in store.trace_result(live_trace).table.to_pylist()}
                assert ("redelivered-live" in live_names) == (live_source is not None)
                flushed_names = {r["name"] for r in store.trace_result(flushed_trace).table.to_pylist()}
                assert "redelivered-flushed" in flushed_names
                names = [r["name"] for r in store.trace_result("cd" * 16).table.to_pylist()]
                assert names == ["day-0-again", "day-1"]
    finally:
        ingestor.close()


def test_a_trace_in_an_unsorted_row_group_is_read_whole(tmp_path: Path) -> None:
    """Compacted parts are sorted by trace id, so a one-trace read slices the trace's rows out of its row group;
    were a row group not sorted, every row of the trace must still come back (and no other)."""
    day = tmp_path / "spans" / "date=2026-12-01"
    day.mkdir(parents=True)
    part = day / "c-00000000000000000001-0000.parquet"
    ids = ["aa" * 16, "bb" * 16, "aa" * 16, "cc" * 16, "aa" * 16]
    rows = {name: [None] * len(ids) for name in SPAN_SCHEMA.names}
    rows.update(trace_id=ids, span_id=[f"{i:016x}" for i in range(len(ids))], name=[f"s{i}" for i in range(len(ids))])
    pq.write_table(pa.table(rows, schema=SPAN_SCHEMA), part)
    engine = QueryEngine(tmp_path)
    try:
        footer = engine._candidates([part], "aa" * 16)[part]
        assert footer is not None
        for trace_id, expected in (("aa" * 16, ["s0", "s2", "s4"]), ("bb" * 16, ["s1"]), ("dd" * 16, [])):
            got, sources, unread = engine._trace_rows({part: (footer, [0])}, trace_id)
            assert not unread
            assert sources == (1 if expected else 0)
            assert got.column("name").to_pylist() == expected
            assert set(got.column("trace_id").to_pylist()) <= {trace_id}
            assert got.column("date").to_pylist() == [dt.date(2026, 12, 1)] * len(expected)
    finally:
        engine.close()


def test_a_damaged_row_group_fails_the_lookup_with_a_clear_error(tmp_path: Path) -> None:
    """A compacted part with a damaged row group: a lookup of a trace in that row group fails with the query error
    DuckDB raises, naming the file (pyarrow's read error is not let through: the API would answer it as an
    internal error), and a trace in another row group of the same part is still answered."""
    data_dir = tmp_path / "data"
    now = time.time_ns()
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, compaction_interval=0))
    ingestor.start()
    for body in build_workload(4_096, 512, seed=1, base_time_ns=now, spread_ns=10**9).bodies:
        ingestor.accept(WireFormat.PROTOBUF, body, now)
    ingestor.flush()
    ingestor.close()
    Compactor(StoreLayout(data_dir), CompactionSettings(grace_seconds=0, row_group_rows=512)).run(force=True)
    part = next(p for p in visible_parts(StoreLayout(data_dir)) if p.name.startswith("c-"))
    metadata = pq.read_metadata(part)
    assert metadata.num_row_groups >= 3
    ids = pq.read_table(part, columns=["trace_id"]).column(0).to_pylist()
    bounds = [sum(metadata.row_group(g).num_rows for g in range(k)) for k in range(metadata.num_row_groups + 1)]
    damaged, intact = ids[bounds[1] + bounds[2] >> 1], ids[bounds[-2] + bounds[-1] >> 1]  # rows of groups 1 and last
    assert damaged not in ids[:bounds[1]] + ids[bounds[2]:] and intact not in ids[:bounds[-2]]
    group = metadata.row_group(1)
    chunk = next(group.column(i) for i in range(group.num_columns)
                 if group.column(i).path_in_schema.startswith("attributes"))
    with open(part, "r+b") as file:
        file.seek(chunk.data_page_offset + 40)
        file.write(bytes(range(64)))
    with Store(data_dir) as store:
        with pytest.raises(QueryError, match=re.escape(part.name)):
            store.trace(damaged)
        assert set(store.trace(intact)["trace_id"]) == {intact}


def test_a_query_past_the_memory_limit_spills_outside_the_working_directory(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB spills to ``.tmp`` in the working directory unless told otherwise: a killed server or compaction left
    GBs there. The engine's spill directory is its own, under the system's temp directory, and gone once closed."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    engine = QueryEngine(tmp_path / "store", memory_limit="64MB", threads=1)
    try:
        with engine.unbound_cursor() as cur:
            spill = Path(cur.sql("SELECT current_setting('temp_directory')").fetchall()[0][0])
            # ~6M rows of 32-byte strings sorted: several times the limit, so DuckDB must spill.
            assert cur.sql("SELECT count(*) FROM (SELECT md5(range::VARCHAR) AS h FROM range(6000000) ORDER BY h)"
                           ).fetchall() == [(6_000_000,)]
            assert spill.is_dir() and spill.parent == Path(tempfile.gettempdir())
            assert list(cwd.iterdir()) == []
    finally:
        engine.close()
    assert not spill.exists()
    assert list(cwd.iterdir()) == []
