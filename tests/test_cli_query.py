"""The query commands (list, show, stats, sql) as a user runs them: ``python -m msgtrace <cmd> --data-dir D``.

The store is built once through the real ingest pipeline (the three captured client requests and a generated
3-day workload). Every answer is checked against SQL written here from the raw Parquet columns with plain DuckDB,
not from the views in sql/.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import CAPTURES, FIXTURES

SDK_TRACE = "2696f4701a86a3602fc274ae431deec3"  # msgtrace-sdk capture: 11 spans, one ERROR, an LLM call, tools
ORPHAN_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"  # its root's parent lives in another service
WORKLOAD_SPANS = 5_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from msgtrace.config import IngestConfig
    from msgtrace.ingest.decode import WireFormat
    from msgtrace.ingest.pipeline import Ingestor
    from msgtrace.synthetic import build_workload

    data_dir = tmp_path_factory.mktemp("cli-query") / "data"
    ingestor = Ingestor(IngestConfig(data_dir=data_dir))
    ingestor.start()
    try:
        for name in CAPTURES:
            ingestor.accept(WireFormat.PROTOBUF, (FIXTURES / f"{name}.bin").read_bytes(), time.time_ns())
        for body in build_workload(WORKLOAD_SPANS, 512, seed=3, spread_ns=3 * 86_400 * 10**9).bodies:
            ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
    finally:
        ingestor.close()
    return data_dir


def run(*args: str, data_dir: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    result = subprocess.run([sys.executable, "-m", "msgtrace", *args, *extra], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "200"})
    if ok:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    return result


def run_json(*args: str, data_dir: Path) -> Any:
    return json.loads(run(*args, "--json", data_dir=data_dir).stdout)


# --- the independent computation ----------------------------------------------------------------------------------
def raw(data_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """``sql`` over the raw span rows (as ``s``, one row per span id) of the store, in a fresh DuckDB."""
    source = str(data_dir / "spans" / "*" / "*.parquet")
    spans = (f"SELECT DISTINCT ON (trace_id, span_id) * FROM read_parquet('{source}', hive_partitioning = true) "
             "ORDER BY trace_id, span_id, end_time_unix_nano DESC")
    return duckdb.connect().execute(f"WITH s AS ({spans}) {sql}", params or []).fetchall()


# `traces`, one row per trace. Its root: the parentless span, else one whose parent is not stored (earliest first);
# its workflow: the root's workflow.name, else msgflux.workflow.name, else the root's name.
TRACES = """
, roots AS (
    SELECT s.trace_id, s.name, s.service_name,
           coalesce(s.attributes['workflow.name'].str, s.attributes['msgflux.workflow.name'].str, s.name) AS workflow,
           row_number() OVER (PARTITION BY s.trace_id ORDER BY s.parent_span_id IS NULL DESC,
                                                              s.start_time_unix_nano, s.span_id) AS rank
    FROM s LEFT JOIN s AS p ON p.trace_id = s.trace_id AND p.span_id = s.parent_span_id
    WHERE p.span_id IS NULL
), t AS (
    SELECT trace_id, min(start_time_unix_nano) AS start_ns, max(end_time_unix_nano) AS end_ns,
           count(*) AS spans, count(*) FILTER (WHERE status_code = 'ERROR') AS errors,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(total_tokens) AS total_tokens, sum(cost) AS cost
    FROM s GROUP BY trace_id
), traces AS (
    SELECT t.trace_id, t.start_ns, (t.end_ns - t.start_ns) / 1e6 AS duration_ms, r.workflow, r.service_name,
           t.spans, t.errors, t.total_tokens, t.cost
    FROM t JOIN roots AS r ON r.trace_id = t.trace_id AND r.rank = 1
)
"""


def expected_traces(data_dir: Path, where: str = "TRUE", params: list[Any] | None = None) -> dict[str, tuple]:
    return {row[0]: row for row in raw(data_dir, TRACES + f"SELECT * FROM traces WHERE {where}", params)}


def same_number(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def check_listed(listed: list[dict[str, Any]], expected: dict[str, tuple]) -> None:
    assert {t["trace_id"] for t in listed} == set(expected)
    for t in listed:
        _, start_ns, duration_ms, workflow, service, spans, errors, tokens, cost = expected[t["trace_id"]]
        assert (t["workflow"], t["service_name"], t["span_count"], t["error_count"], t["total_tokens"]) == \
            (workflow, service, spans, errors, tokens), t["trace_id"]
        assert same_number(t["cost"], cost) and same_number(t["duration_ms"], duration_ms), t["trace_id"]
        assert t["status"] == ("ERROR" if errors else "OK")
        started = dt.datetime.fromisoformat(t["start_time"].replace("Z", "+00:00"))  # ISO, UTC, µs
        assert int(started.timestamp() * 1_000_000) == start_ns // 1000


# --- list -------------------------------------------------------------------------------------------------------
def test_list_default_is_the_newest_20(store: Path) -> None:
    listed = run_json("list", data_dir=store)
    everything = expected_traces(store)
    newest = sorted(everything.values(), key=lambda r: (-r[1], r[0]))[:20]
    assert [t["trace_id"] for t in listed] == [r[0] for r in newest]
    check_listed(listed, {r[0]: r for r in newest})


def day_ns(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp()) * 10**9


@pytest.mark.parametrize("name", ["service", "status", "model", "duration", "workflow", "time", "attr", "user",
                                  "session"])
def test_list_filters_match_the_raw_rows(store: Path, name: str) -> None:
    first_day = raw(store, "SELECT min(date) FROM s WHERE service_name = 'support-agent'")[0][0]
    user, session = raw(store, "SELECT attributes['user.id'].str, attributes['session.id'].str FROM s "
                               "WHERE attributes['user.id'].str IS NOT NULL ORDER BY span_id LIMIT 1")[0]
    since, until = str(first_day + dt.timedelta(days=1)), str(first_day + dt.timedelta(days=2))
    cases: dict[str, tuple[list[str], str, list[Any]]] = {
        "service": (["--service", "research-assistant"],
                    "trace_id IN (SELECT trace_id FROM s WHERE service_name = ?)", ["research-assistant"]),
        "status": (["--status", "error"], "errors > 0", []),
        "model": (["--model", "gpt-4o"], "trace_id IN (SELECT trace_id FROM s WHERE model = ?)", ["gpt-4o"]),
        "duration": (["--min-ms", "5000", "--max-ms", "12000"], "duration_ms BETWEEN 5000 AND 12000", []),
        "workflow": (["--workflow", "refund_request"], "workflow = ?", ["refund_request"]),
        "time": (["--since", since, "--until", until], "start_ns >= ? AND start_ns < ?",
                 [day_ns(since), day_ns(until)]),
        "attr": (["--attr", "gen_ai.tool.name=web_search"],
                 "trace_id IN (SELECT trace_id FROM s WHERE attributes['gen_ai.tool.name'].str = 'web_search')",
                 []),
        "user": (["--user", user], "trace_id IN (SELECT trace_id FROM s WHERE attributes['user.id'].str = ?)",
                 [user]),
        "session": (["--session", session],
                    "trace_id IN (SELECT trace_id FROM s WHERE attributes['session.id'].str = ?)", [session]),
    }
    flags, where, params = cases[name]
    expected = expected_traces(store, where, params)
    assert expected, "the filter must select something to be a test"
    listed = run_json("list", *flags, "--limit", "100000", data_dir=store)
    check_listed(listed, expected)


def test_list_sort_paging_and_relative_since(store: Path) -> None:
    everything = expected_traces(store)
    by_duration = sorted(everything.values(), key=lambda r: (r[2], r[0]))
    listed = run_json("list", "--sort", "duration", "--asc", "--limit", "5", "--offset", "3", data_dir=store)
    assert [t["trace_id"] for t in listed] == [r[0] for r in by_duration[3:8]]
    most_spans = run_json("list", "--sort", "spans", "--limit", "1", data_dir=store)[0]
    assert most_spans["span_count"] == max(r[5] for r in everything.values())

    now = time.time_ns()
    listed = {t["trace_id"] for t in run_json("list", "--since", "2d", "--limit", "100000", data_dir=store)}
    cut = now - 2 * 86_400 * 10**9
    slack = 120 * 10**9
    assert {r[0] for r in everything.values() if r[1] >= cut + slack} <= listed
    assert listed <= {r[0] for r in everything.values() if r[1] >= cut - slack}


def test_list_table(store: Path) -> None:
    result = run("list", "--limit", "5", data_dir=store)
    lines = result.stdout.splitlines()
    for header in ("Start (UTC)", "Trace ID", "Workflow", "Service", "Spans", "Errors", "Duration", "Tokens",
                   "Cost"):
        assert header in lines[0]
    newest = sorted(expected_traces(store).values(), key=lambda r: (-r[1], r[0]))[:5]
    rows = [line for line in lines if re.search(r"\b[0-9a-f]{32}\b", line)]
    assert [re.search(r"\b[0-9a-f]{32}\b", line)[0] for line in rows] == [r[0] for r in newest]  # type: ignore[index]
    for line, r in zip(rows, newest, strict=True):
        assert r[3] in line and r[4] in line and " ms" in line
    assert "--offset 5" in result.stderr  # how to get the next page
    assert "[" not in result.stdout  # no Rich markup leaked


# --- show -------------------------------------------------------------------------------------------------------
def tree_lines(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Span"))
    rows = lines[start + 2:]  # after the header and its rule, up to the blank line before errors and details
    return rows[:rows.index("")] if "" in rows else rows


def test_show_draws_the_tree(store: Path) -> None:
    out = run("show", SDK_TRACE, data_dir=store).stdout
    header = out.splitlines()[0]
    assert SDK_TRACE in header and "support_request_flow" in header and "msgtrace-sdk-fixture" in header
    assert "11 spans" in out and "1 error" in out
    spans = raw(store, "SELECT span_id, parent_span_id, name, status_code FROM s WHERE trace_id = ?", [SDK_TRACE])
    lines = tree_lines(out)
    where: dict[str, tuple[int, int]] = {}  # span id → (line, column of its name)
    for span_id, _, name, _ in spans:
        matches = [(i, line.index(name)) for i, line in enumerate(lines)
                   if re.search(rf"(^|[\s─]){re.escape(name)}(\s|$)", line)]
        assert len(matches) == 1, (name, matches)
        where[span_id] = matches[0]
    assert len(where) == len(spans) == 11
    for span_id, parent_id, name, status in spans:
        line, column = where[span_id]
        if parent_id is None:
            assert line == 0 and column == 0
        else:  # parents before children, children indented further, siblings aligned
            parent_line, parent_column = where[parent_id]
            assert line > parent_line and column > parent_column, name
            for other_id, other_parent, _, _ in spans:
                if other_parent == parent_id:
                    assert where[other_id][1] == column
        assert ("ERROR" in lines[line]) == (status == "ERROR"), name
    named = {name: where[span_id] for span_id, _, name, _ in spans}
    assert named["support_agent"][0] < named["chat gpt-fake"][0]
    assert named["support_agent"][1] < named["chat gpt-fake"][1]
    chat = lines[named["chat gpt-fake"][0]]
    assert "gpt-fake" in chat.split("chat gpt-fake", 1)[1] and "150" in chat and "$0.00054" in chat
    assert "tool get_weather" in out
    assert "upstream returned 503" in out  # the error's message, under the tree
    assert any(c in lines[0] for c in "█▉▊▋▌▍▎▏")  # the root's bar spans the whole time axis


def test_show_marks_a_missing_parent(store: Path) -> None:
    lines = tree_lines(run("show", ORPHAN_TRACE, data_dir=store).stdout)
    root = next(i for i, line in enumerate(lines) if "incoming_request_flow" in line)
    child = next(i for i, line in enumerate(lines) if "handler" in line)
    assert "parent missing" in lines[root] and "parent missing" not in lines[child]
    assert child > root and lines[child].index("handler") > lines[root].index("incoming_request_flow")


def test_show_one_span_trace_shows_its_attributes(store: Path) -> None:
    singles = raw(store, "SELECT trace_id, any_value(name), any_value(status_code), any_value(status_message), "
                         "any_value(attributes), any_value(kind) FROM s WHERE service_name = 'msgflux-fixture' GROUP BY trace_id "
                         "HAVING count(*) = 1 ORDER BY any_value(status_code) = 'ERROR' DESC, trace_id")
    assert singles
    for trace_id, name, status, message, attributes, kind in (singles[0], singles[-1]):  # one failed, one fine
        out = run("show", trace_id, data_dir=store).stdout
        assert name in out and "1 span" in out
        assert attributes, "msgflux spans carry attributes"
        for key, value in attributes.items():
            assert re.search(rf"{re.escape(key)}\s+{re.escape(value['str'])}", out), (key, out)
        assert re.search(r"service\s+msgflux-fixture", out) and re.search(rf"kind\s+{kind}", out)
        assert ("ERROR" in out) == (status == "ERROR")
        if status == "ERROR":
            assert message and message in out


def test_show_attributes_and_json(store: Path) -> None:
    out = run("show", SDK_TRACE, "--attributes", data_dir=store).stdout
    assert re.search(r"gen_ai\.tool\.name\s+get_weather", out)
    assert re.search(r"gen_ai\.request\.model\s+gpt-fake", out)

    document = run_json("show", SDK_TRACE, data_dir=store)
    assert document["trace"]["trace_id"] == SDK_TRACE and document["trace"]["span_count"] == 11
    assert document["trace"]["start_time"].endswith("Z")
    dt.datetime.fromisoformat(document["trace"]["start_time"].replace("Z", "+00:00"))
    spans = document["spans"]
    assert [s["position"] for s in spans] == list(range(11))
    seen = set()
    for span in spans:  # tree order: a parent comes before its children, one level up
        if span["depth"] > 0:
            parent = next(p for p in spans if p["span_id"] == span["parent_id"])
            assert parent["span_id"] in seen and parent["depth"] == span["depth"] - 1
        seen.add(span["span_id"])
    chat = next(s for s in spans if s["name"] == "chat gpt-fake")
    assert chat["model"] == "gpt-fake" and chat["attributes"]["gen_ai.request.model"] == "gpt-fake"
    assert isinstance(chat["start_time_unix_nano"], int)
    orphan = run_json("show", ORPHAN_TRACE.upper(), data_dir=store)["spans"][0]
    assert orphan["orphan"] is True and orphan["name"] == "incoming_request_flow"


# --- stats ------------------------------------------------------------------------------------------------------
TRACE_KEYS = {"workflow": "workflow", "day": "CAST(DATE '1970-01-01' + CAST(start_ns // 86400000000000 AS INTEGER) AS VARCHAR)"}


@pytest.mark.parametrize("by", ["workflow", "model", "service", "name", "day"])
def test_stats_match_the_raw_rows(store: Path, by: str) -> None:
    if by in TRACE_KEYS:  # counting traces
        expected_rows = raw(store, TRACES + f"SELECT {TRACE_KEYS[by]}, count(*), count(*) FILTER (WHERE errors > 0), "
                                            "NULL, NULL, sum(total_tokens), sum(cost) FROM traces GROUP BY 1")
    else:  # counting spans
        column = {"model": "model", "service": "service_name", "name": "name"}[by]
        expected_rows = raw(store, f"SELECT {column}, count(*), count(*) FILTER (WHERE status_code = 'ERROR'), "
                                   "sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(cost) FROM s "
                                   f"{'WHERE model IS NOT NULL' if by == 'model' else ''} GROUP BY 1")
    expected = {row[0]: row[1:] for row in expected_rows}
    stats = run_json("stats", "--by", by, data_dir=store)
    assert {row[by] for row in stats} == set(expected)
    assert [row["count"] for row in stats] == sorted((row["count"] for row in stats), reverse=True)
    for row in stats:
        count, errors, input_tokens, output_tokens, total_tokens, cost = expected[row[by]]
        assert (row["count"], row["errors"]) == (count, errors), row
        assert same_number(row["error_rate"], errors / count)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["total_tokens"] == total_tokens and same_number(row["cost"], cost), row
        if by == "model":
            assert (row["input_tokens"], row["output_tokens"]) == (input_tokens, output_tokens)


def test_stats_table_and_time_range(store: Path) -> None:
    out = run("stats", "--by", "model", data_dir=store).stdout
    for header in ("Model", "Count", "Errors", "Error %", "p50", "p95", "p99", "In tokens", "Out tokens", "Cost"):
        assert header in out
    for model, count in raw(store, "SELECT model, count(*) FROM s WHERE model IS NOT NULL GROUP BY 1"):
        assert re.search(rf"^{re.escape(model)}\s+{count:,}\s", out, re.M), model
    day = raw(store, "SELECT max(date) FROM s")[0][0]
    stats = run_json("stats", "--by", "day", "--since", str(day), data_dir=store)
    assert [row["day"] for row in stats] == [str(day)]


# --- sql --------------------------------------------------------------------------------------------------------
def test_sql_table_json_csv(store: Path) -> None:
    (total,) = raw(store, "SELECT count(*) FROM s")[0]
    assert re.search(rf"^\s*{total}\s*$", run("sql", "SELECT count(*) AS n FROM spans", data_dir=store).stdout,
                     re.M)

    query = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY n DESC, name LIMIT 5"
    expected = raw(store, "SELECT name, count(*) AS n FROM s GROUP BY name ORDER BY n DESC, name LIMIT 5")
    assert run_json("sql", query, data_dir=store) == [{"name": name, "n": n} for name, n in expected]
    table = run("sql", query, data_dir=store).stdout
    for name, n in expected:
        assert re.search(rf"^{re.escape(name)}\s+{n}\s*$", table, re.M)
    rows = list(csv.reader(io.StringIO(run("sql", query, "--csv", data_dir=store).stdout)))
    assert rows == [["name", "n"], *([name, str(n)] for name, n in expected)]

    timed = run_json("sql", f"SELECT start_time, attributes FROM spans WHERE trace_id = '{SDK_TRACE}' "
                            "ORDER BY start_time LIMIT 1", data_dir=store)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", timed["start_time"])
    assert timed["attributes"]["workflow.name"]["str"] == "support_request_flow"  # maps are objects


def test_sql_row_cap_is_noted(store: Path) -> None:
    result = run("sql", "SELECT * FROM range(50) AS t(i)", "--max-rows", "10", "--json", data_dir=store)
    assert json.loads(result.stdout) == [{"i": i} for i in range(10)]
    assert "truncated" in result.stderr
    assert "truncated" not in run("sql", "SELECT 1 AS one", data_dir=store).stderr


# --- help and errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["list", "show", "stats", "sql"])
def test_help(command: str) -> None:
    result = run(command, "--help")
    assert f"Usage: msgtrace {command}" in result.stdout and "--data-dir" in result.stdout
    assert "--json" in result.stdout


@pytest.mark.parametrize("args, code, expected", [
    (["show", "not-a-trace-id"], 2, "trace id must be 32 hexadecimal characters"),
    (["show", "0" * 32], 1, "no trace with id"),
    (["stats", "--by", "color"], 2, "--by must be one of"),
    (["list", "--since", "last tuesday"], 2, "--since must be an ISO date or time"),
    (["list", "--until", "2026-13-45"], 2, "--until must be an ISO date or time"),
    (["list", "--attr", "no-equals-sign"], 2, "--attr must be key=value"),
    (["list", "--status", "maybe"], 2, "--status must be OK or ERROR"),
    (["list", "--sort", "color"], 2, "--sort must be one of"),
    (["list", "--limit", "-1"], 2, "must not be negative"),
    (["list", "--min-ms", "fast"], 2, "--min-ms"),
    (["sql", "SELEC 1"], 2, "syntax error"),
    (["sql", "SELECT * FROM no_such_view"], 2, "no_such_view"),
    (["sql", "SELECT 1", "--json", "--csv"], 2, "exclude each other"),
    (["sql", "  "], 2, "the SQL statement is empty"),
    (["sql", "SELECT sum(range) FROM range(100000000000)", "--timeout", "0.3"], 1, "query ran longer than 0.3 s"),
    (["sql", "SELECT * FROM range(100000000000)", "--timeout", "0.3", "--max-rows", "100000000000"], 1,
     "query ran longer than 0.3 s"),
])
def test_bad_arguments_are_one_line(store: Path, args: list[str], code: int, expected: str) -> None:
    result = run(*args, data_dir=store, ok=False)
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("msgtrace: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    result = run("list", data_dir=tmp_path / "nowhere", ok=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"msgtrace: error: no msgtrace store at {tmp_path / 'nowhere'} (pass --data-dir or set MSGTRACE_DATA_DIR)"]
