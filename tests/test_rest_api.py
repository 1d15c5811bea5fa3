"""The read side of the REST API (/api/v1/traces, /traces/{id}, /traces/{id}/tree, /stats) against the real server.

One server is loaded with the three captured client requests and a generated workload (20,480 spans over 3 days),
stopped (which flushes everything to Parquet) and started again on the same directory. Every answer is compared with
an independent computation: SQL written here from the raw Parquet columns with plain DuckDB (never msgtrace's
views or sql/ files), or Python over rows read that way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.synthetic import build_workload
from tests.conftest import CAPTURES, Server, capture, parquet_glob

DAY_NS = 86_400 * 10**9
NESTED = "2696f4701a86a3602fc274ae431deec3"  # msgtrace SDK: 11 spans, 3 levels
REMOTE_PARENT = "4bf92f3577b34da6a3ce929d0e0e4736"  # its root's parent lives in another service
ONE_SPAN = "25ebe95aa397fa53837ef4296788d5e1"  # a msgflux module: a single-span trace
PROTOBUF = {"content-type": "application/x-protobuf"}
ANY_QUERY = {"403", "500", "503", "504"}  # Host check, store failure, query slots busy, time limit
ERROR_CODES = {"/api/v1/traces": {"400", "422"} | ANY_QUERY, "/api/v1/traces/{trace_id}": {"400", "404"} | ANY_QUERY,
               "/api/v1/traces/{trace_id}/tree": {"400", "404"} | ANY_QUERY, "/api/v1/stats": {"400", "422"} | ANY_QUERY}

# --- the independent computation ---------------------------------------------------------------------------------
# s: spans, one per (trace_id, span_id); root: the span without a stored parent (parentless first, then earliest);
# t: one row per trace.
BASE = """
WITH s AS (
    SELECT * FROM read_parquet($glob, hive_partitioning = true)
    QUALIFY row_number() OVER (PARTITION BY trace_id, span_id ORDER BY end_time_unix_nano DESC) = 1
),
root AS (
    SELECT c.* FROM s AS c
    WHERE c.parent_span_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM s AS p WHERE p.trace_id = c.trace_id AND p.span_id = c.parent_span_id)
    QUALIFY row_number() OVER (PARTITION BY c.trace_id
                               ORDER BY c.parent_span_id IS NULL DESC, c.start_time_unix_nano, c.span_id) = 1
),
agg AS (
    SELECT trace_id, CAST(min(start_time_unix_nano) AS BIGINT) AS start_ns,
           CAST(max(end_time_unix_nano) AS BIGINT) AS end_ns, count(*) AS span_count,
           count(*) FILTER (WHERE status_code = 'ERROR') AS error_count, sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens, sum(total_tokens) AS total_tokens, sum(cost) AS cost,
           max(user_id) AS any_user, max(session_id) AS any_session
    FROM s GROUP BY trace_id
),
t AS (
    SELECT agg.*, (end_ns - start_ns) / 1e6 AS duration_ms, start_ns // 1000 AS start_us,
           coalesce(root.attributes['workflow.name'].str, root.attributes['msgflux.workflow.name'].str, root.name)
               AS workflow,
           coalesce(root.user_id, agg.any_user) AS user_id, coalesce(root.session_id, agg.any_session) AS session_id,
           CASE WHEN error_count > 0 THEN 'ERROR' ELSE 'OK' END AS status
    FROM agg JOIN root USING (trace_id)
)
"""


def sql(data_dir: Path, query: str, **params: Any) -> list[tuple]:
    """A query over the raw Parquet files, on a fresh DuckDB connection."""
    return duckdb.connect().execute(query, {"glob": parquet_glob(data_dir), **params}).fetchall()


def scalar(data_dir: Path, query: str, **params: Any) -> Any:
    (row,) = sql(data_dir, query, **params)
    return row[0]


def iso(us: int) -> str:
    return (dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expected_ids(data_dir: Path, where: str = "true", order: str = "start_us DESC", **params: Any) -> list[str]:
    return [r[0] for r in sql(data_dir, f"{BASE} SELECT trace_id FROM t WHERE {where} ORDER BY {order}, trace_id",
                              **params)]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("rest") / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    server.start()
    try:
        for name in CAPTURES:
            path, headers, body, _ = capture(name)
            assert server.post(path, body, headers).status_code == 200
        workload = build_workload(20_000, 512, seed=7, spread_ns=3 * DAY_NS)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for body in workload.bodies:
                assert client.post("/v1/traces", content=body, headers=PROTOBUF).status_code == 200
    finally:
        assert server.stop() == 0  # flushes everything: the Parquet files are now complete
    server.start()
    yield server
    if server.proc is not None:
        server.stop()


@pytest.fixture(scope="module")
def client(loaded: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=loaded.url, timeout=30) as c:
        yield c


def get_ok(client: httpx.Client, path: str, **params: Any) -> dict:
    response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def all_pages(client: httpx.Client, limit: int, **params: Any) -> list[dict]:
    rows, offset = [], 0
    while True:
        page = get_ok(client, "/api/v1/traces", limit=limit, offset=offset, **params)
        assert (page["limit"], page["offset"], page["count"]) == (limit, offset, len(page["traces"]))
        rows += page["traces"]
        if page["next_offset"] is None:
            assert page["count"] < limit
            return rows
        assert page["count"] == limit and page["next_offset"] == offset + limit
        offset = page["next_offset"]


# --- GET /api/v1/traces ------------------------------------------------------------------------------------------
def test_list_rows_match(loaded: Server, client: httpx.Client) -> None:
    page = get_ok(client, "/api/v1/traces", limit=200)
    assert page["count"] == 200 and page["next_offset"] == 200
    expected = {r[0]: r for r in sql(loaded.data_dir, f"""{BASE}
        SELECT trace_id, start_us, end_ns // 1000, duration_ms, span_count, error_count, status, workflow,
               total_tokens, cost, user_id, session_id FROM t""")}
    assert [t["trace_id"] for t in page["traces"]] == expected_ids(loaded.data_dir)[:200]
    for row in page["traces"]:
        _, start_us, end_us, duration, spans, errors, status, workflow, tokens, cost, user, session = \
            expected[row["trace_id"]]
        assert (row["start_time"], row["end_time"]) == (iso(start_us), iso(end_us))
        assert row["duration_ms"] == pytest.approx(duration)
        assert (row["span_count"], row["error_count"], row["status"], row["workflow"]) == (spans, errors, status,
                                                                                           workflow)
        assert (row["total_tokens"], row["user_id"], row["session_id"]) == (tokens, user, session)
        assert row["cost"] == pytest.approx(cost)


def test_list_filters(loaded: Server, client: httpx.Client) -> None:
    d = loaded.data_dir
    workflow = scalar(d, f"{BASE} SELECT workflow FROM t GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")
    model = scalar(d, f"{BASE} SELECT model FROM s WHERE model IS NOT NULL GROUP BY 1 ORDER BY count(*), 1 LIMIT 1")
    service = scalar(d, f"{BASE} SELECT service_name FROM s GROUP BY 1 ORDER BY count(*), 1 LIMIT 1 OFFSET 2")
    user = scalar(d, f"{BASE} SELECT user_id FROM t WHERE user_id IS NOT NULL GROUP BY 1 "
                     "ORDER BY count(*) DESC, 1 LIMIT 1")
    session = "sess-7f3a"
    common = scalar(d, f"{BASE} SELECT model FROM s WHERE model IS NOT NULL GROUP BY 1 "
                       "ORDER BY count(*) DESC, 1 LIMIT 1")
    (p30, p80), = sql(d, f"{BASE} SELECT quantile_disc(duration_ms, 0.3), quantile_disc(duration_ms, 0.8) FROM t")
    in_spans = "trace_id IN (SELECT trace_id FROM s WHERE {})".format
    cases: list[tuple[dict, str, dict]] = [
        ({"workflow": workflow}, "workflow = $v", {"v": workflow}),
        ({"model": model}, in_spans("model = $v"), {"v": model}),
        ({"service": service}, in_spans("service_name = $v"), {"v": service}),
        ({"user_id": user}, "user_id = $v", {"v": user}),
        ({"session_id": session}, "session_id = $v", {"v": session}),
        ({"status": "ERROR"}, "status = 'ERROR'", {}),
        ({"status": "ok"}, "status = 'OK'", {}),
        ({"min_duration_ms": p80}, "duration_ms >= $v", {"v": p80}),
        ({"max_duration_ms": p30}, "duration_ms <= $v", {"v": p30}),
        ({"min_duration_ms": p30, "max_duration_ms": p80, "status": "OK"},
         "duration_ms BETWEEN $v AND $w AND status = 'OK'", {"v": p30, "w": p80}),
        ({"attribute": "gen_ai.request.model=" + model}, in_spans("attributes['gen_ai.request.model'].str = $v"),
         {"v": model}),
        ({"attribute": "user.id=user-42"}, in_spans("attributes['user.id'].str = 'user-42'"), {}),
        ({"attribute": "gen_ai.usage.input_tokens=120"},
         in_spans("attributes['gen_ai.usage.input_tokens'].int = 120"), {}),
        ({"attribute": "custom.bool=true"}, in_spans("attributes['custom.bool'].bool"), {}),
        ({"attribute": "service.name=" + service},  # a resource attribute
         in_spans("resource_attributes['service.name'].str = $v"), {"v": service}),
        ({"workflow": workflow, "model": common}, "workflow = $w AND " + in_spans("model = $v"),
         {"v": common, "w": workflow}),
    ]
    total = sql(d, f"{BASE} SELECT count(*) FROM t")[0][0]
    for params, where, binds in cases:
        expected = expected_ids(d, where, **binds)
        assert 0 < len(expected) < total, params
        got = all_pages(client, 1000, **params)
        assert [t["trace_id"] for t in got] == expected, params


def test_list_time_range(loaded: Server, client: httpx.Client) -> None:
    starts = sorted(r[0] for r in sql(loaded.data_dir, f"{BASE} SELECT start_us FROM t"))
    since, until = starts[400], starts[1100]  # exact start times: since is inclusive, until exclusive
    expected = expected_ids(loaded.data_dir, "start_us >= $a AND start_us < $b", a=since, b=until)
    assert len(expected) >= 650
    got = get_ok(client, "/api/v1/traces", limit=1000, since=iso(since), until=iso(until))
    assert [t["trace_id"] for t in got["traces"]] == expected
    # the same instants written with an offset, and a bare date
    plus2 = (dt.datetime(1970, 1, 1, 2) + dt.timedelta(microseconds=since)).strftime("%Y-%m-%dT%H:%M:%S.%f+02:00")
    got = get_ok(client, "/api/v1/traces", limit=1000, since=plus2, until=iso(until))
    assert [t["trace_id"] for t in got["traces"]] == expected
    day = iso(starts[len(starts) // 2])[:10]
    day_us = int((dt.datetime.fromisoformat(day) - dt.datetime(1970, 1, 1)).total_seconds()) * 10**6
    got = all_pages(client, 1000, since=day)
    assert [t["trace_id"] for t in got] == expected_ids(loaded.data_dir, "start_us >= $a", a=day_us)


@pytest.mark.parametrize("sort, column", [("start_time", "start_us"), ("duration", "duration_ms"),
                                          ("spans", "span_count"), ("errors", "error_count"),
                                          ("tokens", "total_tokens"), ("cost", "cost")])
@pytest.mark.parametrize("order", ["desc", "asc"])
def test_list_sort(loaded: Server, client: httpx.Client, sort: str, column: str, order: str) -> None:
    got = get_ok(client, "/api/v1/traces", sort=sort, order=order, limit=300)["traces"]
    if sort == "cost":  # float sums may differ in the last bit between engines: compare values, not tie order
        expected = dict(sql(loaded.data_dir, f"{BASE} SELECT trace_id, cost FROM t"))
        costs = [t["cost"] for t in got]
        assert costs == pytest.approx([expected[t["trace_id"]] for t in got])
        want = sorted((c for c in expected.values() if c is not None), reverse=order == "desc")[:300]
        assert costs == pytest.approx(want)
        return
    expected = expected_ids(loaded.data_dir, order=f"{column} {order} NULLS LAST")
    assert [t["trace_id"] for t in got] == expected[:300]


def test_list_pagination(loaded: Server, client: httpx.Client) -> None:
    expected = expected_ids(loaded.data_dir, "status = 'ERROR'", order="duration_ms ASC")
    assert len(expected) > 200
    got = all_pages(client, 97, status="ERROR", sort="duration", order="asc")
    assert [t["trace_id"] for t in got] == expected
    everything = all_pages(client, 1000)
    assert [t["trace_id"] for t in everything] == expected_ids(loaded.data_dir)
    past = get_ok(client, "/api/v1/traces", offset=10**6)
    assert (past["traces"], past["count"], past["next_offset"]) == ([], 0, None)


# --- GET /api/v1/traces/{id} -------------------------------------------------------------------------------------
def test_trace_detail(loaded: Server, client: httpx.Client) -> None:
    body = get_ok(client, f"/api/v1/traces/{NESTED.upper()}")
    rows = sql(loaded.data_dir, f"{BASE} SELECT span_id, name, start_time_unix_nano, status_code FROM s "
                                "WHERE trace_id = $id ORDER BY start_time_unix_nano, span_id", id=NESTED)
    spans = body["spans"]
    assert [(s["span_id"], s["name"], s["start_time_unix_nano"], s["status_code"]) for s in spans] == rows
    assert body["truncated"] is False
    summary = body["trace"]
    (span_count, error_count, workflow, start_us, total), = sql(
        loaded.data_dir, f"{BASE} SELECT span_count, error_count, workflow, start_us, total_tokens FROM t "
                         "WHERE trace_id = $id", id=NESTED)
    assert summary["trace_id"] == NESTED
    assert (summary["span_count"], summary["error_count"], summary["workflow"]) == (span_count, error_count, workflow)
    assert (summary["start_time"], summary["total_tokens"], summary["status"]) == (iso(start_us), total, "ERROR")
    dt.date.fromisoformat(summary["date"])  # the partition day, an ISO date

    # attributes, events, links: the documented {key: {"type", "value"}} shape
    by_name = {s["name"]: s for s in spans}
    root = by_name["support_request_flow"]
    attrs = root["attributes"]
    assert attrs["workflow.name"] == {"type": "string", "value": "support_request_flow"}
    assert attrs["request.bytes_payload"] == {"type": "bytes", "value": "eyJyYXciOnRydWV9"}
    assert attrs["request.meta"] == {"type": "kvlist", "value": {"tenant": "acme", "tier": 2}}
    assert root["resource_attributes"]["service.name"] == {"type": "string", "value": "msgtrace-sdk-fixture"}
    assert [e["name"] for e in root["events"]] == ["gen_ai.flow.step", "gen_ai.flow.reasoning",
                                                   "gen_ai.flow.complete"]
    assert root["events"][0]["attributes"]["step_number"] == {"type": "int", "value": 1}
    assert root["links"] == []
    assert root["start_time"] == iso(root["start_time_unix_nano"] // 1000)
    everything = {k: v for s in spans for k, v in s["attributes"].items()}
    assert everything["custom.bytes_binary"] == {"type": "bytes", "value": "AP/+gA=="}
    assert everything["gen_ai.response.finish_reasons"] == {"type": "array", "value": ["stop"]}
    assert len(everything["custom.big_text"]["value"]) == 120_000
    chat = by_name["chat gpt-fake"]
    assert (chat["model"], chat["input_tokens"], chat["output_tokens"]) == ("gpt-fake", 120, 30)


def test_trace_detail_of_workload_traces(loaded: Server, client: httpx.Client) -> None:
    ids = expected_ids(loaded.data_dir, order="span_count DESC")[:3] + expected_ids(loaded.data_dir)[-2:]
    for trace_id in ids:
        expected = {r[0] for r in sql(loaded.data_dir, f"{BASE} SELECT span_id FROM s WHERE trace_id = $id",
                                      id=trace_id)}
        body = get_ok(client, f"/api/v1/traces/{trace_id}")
        assert {s["span_id"] for s in body["spans"]} == expected
        assert len(body["spans"]) == len(expected) == body["trace"]["span_count"]


# --- GET /api/v1/traces/{id}/tree --------------------------------------------------------------------------------
def expected_tree(data_dir: Path, trace_id: str) -> list[tuple[str, int, str | None, bool]]:
    """(span_id, depth, tree parent, orphan) in depth-first order, siblings by start time, computed in Python."""
    rows = sql(data_dir, f"{BASE} SELECT span_id, parent_span_id, start_time_unix_nano FROM s WHERE trace_id = $id",
               id=trace_id)
    ids = {r[0] for r in rows}
    (root_id,), = sql(data_dir, f"{BASE} SELECT span_id FROM root WHERE trace_id = $id", id=trace_id)
    children: dict[str, list[tuple[int, str]]] = defaultdict(list)
    orphan = {}
    for span_id, parent, start in rows:
        if span_id == root_id:
            continue
        attach = parent if parent in ids else root_id
        orphan[span_id] = parent not in ids
        children[attach].append((start, span_id))
    root_parent = next(r[1] for r in rows if r[0] == root_id)
    out = []

    def walk(span_id: str, depth: int, parent: str | None, is_orphan: bool) -> None:
        out.append((span_id, depth, parent, is_orphan))
        for _, child in sorted(children[span_id]):
            walk(child, depth + 1, span_id, orphan[child])

    walk(root_id, 0, None, root_parent is not None)
    return out


@pytest.mark.parametrize("trace_id", [NESTED, REMOTE_PARENT, ONE_SPAN, "bbb8c980c00d9f77f1c3777d45eb4e95"])
def test_tree(loaded: Server, client: httpx.Client, trace_id: str) -> None:
    body = get_ok(client, f"/api/v1/traces/{trace_id}/tree")
    assert body["trace_id"] == trace_id
    got = [(s["span_id"], s["depth"], s["parent_id"], s["orphan"]) for s in body["spans"]]
    assert got == expected_tree(loaded.data_dir, trace_id)
    assert [s["position"] for s in body["spans"]] == list(range(len(got)))
    seen: dict[str, int] = {}
    for span in body["spans"]:  # parents before children, one level deeper
        if span["parent_id"] is not None:
            assert seen[span["parent_id"]] == span["depth"] - 1
        seen[span["span_id"]] = span["depth"]
        assert "attributes" in span and "events" in span
    if trace_id == NESTED:
        assert max(seen.values()) == 2 and not any(s["orphan"] for s in body["spans"])
    if trace_id == REMOTE_PARENT:
        assert [(s["name"], s["depth"], s["orphan"]) for s in body["spans"]] == [
            ("incoming_request_flow", 0, True), ("handler", 1, False)]
    if trace_id == ONE_SPAN:
        assert len(got) == 1 and got[0][1:] == (0, None, False)


def test_tree_of_workload_traces(loaded: Server, client: httpx.Client) -> None:
    for trace_id in expected_ids(loaded.data_dir, order="span_count DESC")[:5]:
        body = get_ok(client, f"/api/v1/traces/{trace_id}/tree")
        got = [(s["span_id"], s["depth"], s["parent_id"], s["orphan"]) for s in body["spans"]]
        assert got == expected_tree(loaded.data_dir, trace_id)


# --- GET /api/v1/stats -------------------------------------------------------------------------------------------
STATS_SQL = {
    "workflow": ("t", "workflow", "status = 'ERROR'", "duration_ms", "start_us"),
    "day": ("t", "strftime(make_timestamp(start_us), '%Y-%m-%d')", "status = 'ERROR'", "duration_ms", "start_us"),
    "model": ("s", "model", "status_code = 'ERROR'", "duration_ns / 1e6", "start_time_unix_nano // 1000"),
    "service": ("s", "service_name", "status_code = 'ERROR'", "duration_ns / 1e6", "start_time_unix_nano // 1000"),
    "name": ("s", "name", "status_code = 'ERROR'", "duration_ns / 1e6", "start_time_unix_nano // 1000"),
}


def expected_stats(data_dir: Path, by: str, since_us: int | None = None, until_us: int | None = None) -> list[tuple]:
    source, key, is_error, duration, start = STATS_SQL[by]
    where = "model IS NOT NULL" if by == "model" else "true"
    return sql(data_dir, f"""{BASE}
        SELECT {key} AS k, count(*) AS n, count(*) FILTER (WHERE {is_error}),
               count(*) FILTER (WHERE {is_error}) / count(*), quantile_cont({duration}, 0.5),
               quantile_cont({duration}, 0.95), quantile_cont({duration}, 0.99), sum(input_tokens),
               sum(output_tokens), sum(total_tokens), sum(cost)
        FROM {source}
        WHERE {where} AND ($a IS NULL OR {start} >= $a) AND ($b IS NULL OR {start} < $b)
        GROUP BY k ORDER BY n DESC, k NULLS LAST""", a=since_us, b=until_us)


@pytest.mark.parametrize("by", list(STATS_SQL))
def test_stats(loaded: Server, client: httpx.Client, by: str) -> None:
    starts = sorted(r[0] for r in sql(loaded.data_dir, f"{BASE} SELECT start_us FROM t"))
    since, until = starts[300], starts[1500]
    for params, bounds in (({}, (None, None)), ({"since": iso(since), "until": iso(until)}, (since, until))):
        body = get_ok(client, "/api/v1/stats", by=by, **params)
        assert body["by"] == by and body["truncated"] is False
        expected = expected_stats(loaded.data_dir, by, *bounds)
        assert len(body["rows"]) == len(expected) > 1
        for row, want in zip(body["rows"], expected, strict=True):
            assert list(row) == [by, "count", "errors", "error_rate", "p50_ms", "p95_ms", "p99_ms", "input_tokens",
                                 "output_tokens", "total_tokens", "cost"]
            assert (row[by], row["count"], row["errors"]) == want[:3]
            for got, exp in zip(list(row.values())[3:], want[3:], strict=True):
                if exp is None:  # no tokens or cost in this group (pytest >= 9.2 refuses approx(None))
                    assert got is None, (by, row[by])
                else:
                    assert got == pytest.approx(exp, rel=1e-9, abs=1e-9), (by, row[by])


# --- errors ------------------------------------------------------------------------------------------------------
def assert_error(response: httpx.Response, status: int, code: str, *, says: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "code", "message"}
    assert (body["error"]["status"], body["error"]["code"]) == (status, code)
    assert says in body["error"]["message"]


def test_unknown_trace_is_404(client: httpx.Client) -> None:
    for suffix in ("", "/tree"):
        assert_error(client.get(f"/api/v1/traces/{'0' * 32}{suffix}"), 404, "not_found", says="0" * 32)


@pytest.mark.parametrize("bad", ["xyz", "a" * 33, "a" * 31, "g" * 32, NESTED[:-1] + " ",
                                 "2696f4701a86a360' OR '1'='1' --", "'; DROP TABLE spans; --",
                                 "2696f4701a86a3602fc274ae431deec3%"])
def test_malformed_trace_id_is_400(client: httpx.Client, bad: str) -> None:
    quoted = urllib.parse.quote(bad, safe="")
    for suffix in ("", "/tree"):
        assert_error(client.get(f"/api/v1/traces/{quoted}{suffix}"), 400, "bad_request", says="32 hexadecimal")


@pytest.mark.parametrize("path, params, status, says", [
    ("/api/v1/stats", {"by": "color"}, 400, "by must be one of"),
    ("/api/v1/stats", {"by": "day", "since": "last tuesday"}, 400, "since"),
    ("/api/v1/stats", {"until": "2026-13-45"}, 400, "until"),
    ("/api/v1/traces", {"since": "yesterday"}, 400, "since"),
    ("/api/v1/traces", {"until": "1e9"}, 400, "until"),
    ("/api/v1/traces", {"sort": "name"}, 400, "sort must be one of"),
    ("/api/v1/traces", {"order": "sideways"}, 400, "order must be"),
    ("/api/v1/traces", {"status": "MAYBE"}, 400, "status must be"),
    ("/api/v1/traces", {"attribute": "no-equals-sign"}, 400, "key=value"),
    ("/api/v1/traces", {"limit": 0}, 422, "limit"),
    ("/api/v1/traces", {"limit": 1001}, 422, "limit"),
    ("/api/v1/traces", {"offset": -1}, 422, "offset"),
    ("/api/v1/traces", {"limit": "many"}, 422, "limit"),
    ("/api/v1/traces", {"min_duration_ms": "nan"}, 422, "min_duration_ms"),
])
def test_bad_parameters(client: httpx.Client, path: str, params: dict, status: int, says: str) -> None:
    code = {400: "bad_request", 422: "invalid_parameter"}[status]
    assert_error(client.get(path, params=params), status, code, says=says)


def test_health_and_ingest_paths_unaffected(loaded: Server, client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    path, headers, body, _ = capture("msgflux_agent")  # POST /api/v1/traces/export still reaches the receiver
    assert loaded.post(path, body, headers).status_code == 200
    # The OTLP path takes POST only: other methods are a 405 naming it, not a malformed trace id "export" (400).
    for method in ("GET", "DELETE", "PUT"):
        response = client.request(method, "/api/v1/traces/export")
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"
    response = client.request("OPTIONS", f"/api/v1/traces/{NESTED}")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "DELETE, GET"  # every method of the path, not only the first route's


# --- live buffer, odd values -------------------------------------------------------------------------------------
def _odd_request(trace_id: bytes) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "odd-values"
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = trace_id, bytes.fromhex("0102030405060708"), "odd"
    span.start_time_unix_nano = 1_795_542_279_123_456_789
    span.end_time_unix_nano = span.start_time_unix_nano + 5_000_000
    for key, value in (("x.nan", math.nan), ("x.inf", math.inf), ("x.neg_inf", -math.inf),
                       ("gen_ai.usage.cost", math.nan)):
        kv = span.attributes.add()
        kv.key, kv.value.double_value = key, value
    kv = span.attributes.add()
    kv.key, kv.value.bytes_value = "x.bytes", b"\x00\xff"
    kv = span.attributes.add()
    kv.key = "x.list"
    for v in (1.5, math.nan):
        kv.value.array_value.values.add().double_value = v
    kv = span.attributes.add()
    kv.key = "x.empty"
    event = span.events.add()
    event.name, event.time_unix_nano = "e", span.start_time_unix_nano + 1
    kv = event.attributes.add()
    kv.key, kv.value.double_value = "e.inf", math.inf
    return request.SerializeToString()


def test_queryable_right_after_ingest_and_odd_values(tmp_path: Path) -> None:
    """With flushes an hour apart, the spans are only in the live buffer; they must be readable at once."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "3600"})
    server.start()
    try:
        path, headers, body, summary = capture("msgtrace_sdk_activated")
        assert server.post(path, body, headers).status_code == 200
        response = httpx.get(f"{server.url}/api/v1/traces/{NESTED}", timeout=30)
        assert response.status_code == 200, response.text
        assert list(data_dir.glob("spans/*/*.parquet")) == []  # nothing flushed: served from the buffer
        want = sorted(s["span_id"] for s in summary["spans"] if s["trace_id"] == NESTED)
        assert sorted(s["span_id"] for s in response.json()["spans"]) == want
        tree = httpx.get(f"{server.url}/api/v1/traces/{REMOTE_PARENT}/tree", timeout=30).json()
        assert [(s["depth"], s["orphan"]) for s in tree["spans"]] == [(0, True), (1, False)]

        trace_id = bytes.fromhex("0badc0de" * 4)
        assert server.post("/v1/traces", _odd_request(trace_id), PROTOBUF).status_code == 200
        response = httpx.get(f"{server.url}/api/v1/traces/{trace_id.hex()}", timeout=30)
        assert response.status_code == 200, response.text
        json.loads(response.text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
        (span,) = response.json()["spans"]
        attrs = span["attributes"]
        assert attrs["x.nan"] == {"type": "double", "value": "NaN"}
        assert attrs["x.inf"] == {"type": "double", "value": "Infinity"}
        assert attrs["x.neg_inf"] == {"type": "double", "value": "-Infinity"}
        assert attrs["x.bytes"] == {"type": "bytes", "value": "AP8="}
        assert attrs["x.list"]["type"] == "array" and attrs["x.list"]["value"][0] == 1.5
        assert attrs["x.empty"] == {"type": "empty", "value": None}
        assert span["events"][0]["attributes"]["e.inf"] == {"type": "double", "value": "Infinity"}
        assert span["start_time"] == "2026-11-24T17:44:39.123456Z"
        assert span["start_time_unix_nano"] == 1_795_542_279_123_456_789
        assert span["cost"] is None or math.isfinite(span["cost"])
        listed = httpx.get(f"{server.url}/api/v1/traces", params={"service": "odd-values"}, timeout=30).json()
        assert [t["trace_id"] for t in listed["traces"]] == [trace_id.hex()]
        stats = httpx.get(f"{server.url}/api/v1/stats", params={"by": "service"}, timeout=30)
        assert stats.status_code == 200 and "odd-values" in {r["service"] for r in stats.json()["rows"]}
    finally:
        server.stop()


def test_query_timeout_is_504(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = Server(data_dir, env={"MSGTRACE_QUERY_TIMEOUT": "0.0001"})
    server.start()
    try:
        path, headers, body, _ = capture("msgtrace_sdk_activated")
        assert server.post(path, body, headers).status_code == 200
        statuses = []
        for _ in range(6):  # the recursive tree query takes well over 0.1 ms; allow for the odd fast one
            response = httpx.get(f"{server.url}/api/v1/traces/{NESTED}/tree", timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 504:
                assert_error(response, 504, "timeout", says="stopped")
        assert set(statuses) <= {200, 504} and statuses.count(504) >= 3, statuses
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        server.stop()


def test_json_rows_encoding() -> None:
    from msgtrace.schema import ATTRIBUTES
    from msgtrace.server.query_api import json_rows

    attr = {"type": "double", "str": None, "bool": None, "int": None, "double": math.nan, "bytes": None, "json": None}
    table = pa.table({
        "t_ns": pa.array([1_795_542_279_123_456_789, None], pa.timestamp("ns")),
        "t_us": pa.array([1_795_542_279_123_456, 0], pa.timestamp("us")),
        "d": pa.array([dt.date(2026, 11, 24), None], pa.date32()),
        "x": pa.array([math.inf, 1.5]),
        "b": pa.array([b"\x00", None], pa.binary()),
        "m": pa.array([[("k", attr)], []], ATTRIBUTES),
        "j": pa.array([[("k", {**attr, "type": "kvlist", "double": None, "json": '{"a": NaN, "b": [1]}'})], None],
                      ATTRIBUTES),
    })
    rows = json_rows(table)
    assert rows[0] == {"t_ns": "2026-11-24T17:44:39.123456Z", "t_us": "2026-11-24T17:44:39.123456Z",
                       "d": "2026-11-24", "x": None, "b": "AA==", "m": {"k": {"type": "double", "value": "NaN"}},
                       "j": {"k": {"type": "kvlist", "value": {"a": "NaN", "b": [1]}}}}
    assert rows[1] == {"t_ns": None, "t_us": "1970-01-01T00:00:00.000000Z", "d": None, "x": 1.5, "b": None, "m": {},
                       "j": None}
    json.dumps(rows, allow_nan=False)


# --- OpenAPI -----------------------------------------------------------------------------------------------------
def test_openapi_documents_every_endpoint(client: httpx.Client) -> None:
    spec = get_ok(client, "/openapi.json")
    for path, codes in ERROR_CODES.items():
        operation = spec["paths"][path]["get"]
        assert operation["summary"] and operation["description"]
        assert codes <= set(operation["responses"]), path
        for code in codes:
            example = operation["responses"][code]["content"]["application/json"]["example"]
            assert set(example["error"]) == {"status", "code", "message"}
        for param in operation.get("parameters", []):
            assert param.get("description"), (path, param["name"])
    names = {p["name"] for p in spec["paths"]["/api/v1/traces"]["get"]["parameters"]}
    assert names == {"since", "until", "service", "workflow", "status", "min_duration_ms", "max_duration_ms", "model",
                     "user_id", "session_id", "attribute", "sort", "order", "limit", "offset"}
    assert {"400", "404"} <= set(spec["paths"]["/api/v1/traces/{trace_id}"]["delete"]["responses"])
    assert client.get("/docs").status_code == 200

