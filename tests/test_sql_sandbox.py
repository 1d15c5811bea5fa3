"""POST /api/v1/sql against the real server: one SELECT runs over the views; everything else is refused by the sandbox.

One server (query time limit 1 s, flushes only at shutdown) is loaded with two captures, stopped (so they are Parquet
parts) and started again; a third capture is then posted and stays in memory, so the sandbox reads both the allowed
Parquet files and the registered live Arrow table. Each refused statement must answer 400 in the one error shape and
leave every byte under the data directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from msgtrace.query.engine import QueryEngine
from tests.conftest import Server, capture
from tests.faults import collector_paused

NESTED = "2696f4701a86a3602fc274ae431deec3"  # msgtrace SDK: 11 spans, 3 levels
ON_DISK = ("msgtrace_sdk_activated", "msgflux_pipeline")
LIVE = "msgflux_agent"


def trace_ids(name: str) -> set[str]:
    return {span["trace_id"] for span in capture(name)[3]["spans"]}


def post_capture(srv: Server, name: str) -> httpx.Response:
    path, headers, body, _ = capture(name)
    return srv.post(path, body, headers)


def tree_hash(root: Path) -> dict[str, str]:
    """Every file under ``root`` (nothing excluded) → the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("sandbox") / "data"
    data_dir.mkdir()
    server = Server(data_dir, env={"MSGTRACE_QUERY_TIMEOUT": "1", "MSGTRACE_FLUSH_INTERVAL": "3600"})
    server.start()
    for name in ON_DISK:
        assert post_capture(server, name).status_code == 200
    server.stop()  # flushes: these are Parquet parts now
    server.start()
    assert post_capture(server, LIVE).status_code == 200  # stays in the live buffer
    yield server
    if server.proc is not None:
        server.stop()


def run_sql(srv: Server, sql: str, params: object = None, max_rows: int | None = None,
            timeout: float = 30.0) -> httpx.Response:
    return httpx.post(f"{srv.url}/api/v1/sql", json={"sql": sql, "params": params, "max_rows": max_rows},
                      timeout=timeout)


# --- what works ---------------------------------------------------------------------------------------------------
def test_select_over_traces_sees_parquet_and_live_spans(srv: Server) -> None:
    assert list((srv.data_dir / "spans").glob("date=*/*.parquet"))
    r = run_sql(srv, "SELECT trace_id FROM traces ORDER BY trace_id")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["columns"] == ["trace_id"] and body["truncated"] is False
    assert isinstance(body["elapsed_ms"], float)
    expected = set().union(*(trace_ids(n) for n in (*ON_DISK, LIVE)))
    assert {row["trace_id"] for row in body["rows"]} == expected
    assert trace_ids(LIVE) <= {row["trace_id"] for row in body["rows"]}  # the live Arrow table is readable


def test_select_over_spans_with_params(srv: Server) -> None:
    r = run_sql(srv, "SELECT count(*) AS n, min(start_time) AS first FROM spans WHERE trace_id = $id", {"id": NESTED})
    assert r.status_code == 200, r.text
    (row,) = r.json()["rows"]
    assert row["n"] == 11 and row["first"].endswith("Z")  # timestamps through the shared json_rows converter
    r = run_sql(srv, "SELECT count(*) AS n FROM spans WHERE trace_id = ?", [NESTED])
    assert r.json()["rows"] == [{"n": 11}]


def test_span_tree_macro(srv: Server) -> None:
    r = run_sql(srv, f"SELECT span_id, depth, position FROM span_tree('{NESTED}') ORDER BY position")
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert len(rows) == 11 and rows[0]["depth"] == 0 and max(row["depth"] for row in rows) == 2
    assert [row["position"] for row in rows] == list(range(11))


def test_large_result_is_capped(srv: Server) -> None:
    body = run_sql(srv, "SELECT range AS i FROM range(50000)").json()
    assert len(body["rows"]) == 10_000 and body["truncated"] is True  # the server's default cap
    body = run_sql(srv, "SELECT range AS i FROM range(50000)", max_rows=7).json()
    assert [row["i"] for row in body["rows"]] == list(range(7)) and body["truncated"] is True
    body = run_sql(srv, "SELECT range AS i FROM range(50000)", max_rows=10**9).json()
    assert len(body["rows"]) == 10_000 and body["truncated"] is True  # never above the server's cap
    body = run_sql(srv, "SELECT range AS i FROM range(3)", max_rows=3).json()
    assert len(body["rows"]) == 3 and body["truncated"] is False


# --- what is refused ----------------------------------------------------------------------------------------------
NOT_SELECT = "only SELECT statements are allowed"
DENIED = "Permission Error"  # DuckDB's own refusal: external access is off


def refused_cases(data_dir: Path) -> list[tuple[str, str]]:
    spans = data_dir / "spans"
    return [
        ("INSERT INTO spans SELECT * FROM spans", NOT_SELECT),
        ("UPDATE spans SET name = 'x'", NOT_SELECT),
        ("DELETE FROM spans", NOT_SELECT),
        ("CREATE TABLE t AS SELECT 1", NOT_SELECT),
        ("DROP VIEW spans", NOT_SELECT),
        (f"COPY (SELECT 1) TO '{spans}/x.csv'", NOT_SELECT),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", NOT_SELECT),
        ("ATTACH '/tmp/x.db'", NOT_SELECT),
        ("INSTALL httpfs", NOT_SELECT),
        ("LOAD httpfs", NOT_SELECT),
        ("SET threads = 1", NOT_SELECT),
        ("PRAGMA enable_external_access", NOT_SELECT),
        ("SELECT 1; SELECT 2", "exactly one SQL statement"),
        (f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{spans}/y.csv'", NOT_SELECT),
        ("CALL pragma_version()", NOT_SELECT),
        (f"EXPORT DATABASE '{spans}'", NOT_SELECT),  # writes a copy of every table into a directory
        (f"IMPORT DATABASE '{spans}'", NOT_SELECT),
        ("CHECKPOINT", NOT_SELECT),
        # SELECTs for DuckDB's parser, refused by the sandbox database's settings
        ("SELECT * FROM read_csv('/etc/passwd')", DENIED),
        ("SELECT * FROM read_parquet('~/.cache/x.parquet')", DENIED),
        ("SELECT * FROM read_text('/etc/hostname')", DENIED),
        ("SELECT * FROM glob('/etc/*')", DENIED),
        (f"SELECT * FROM read_text('{spans}/../wal/*')", DENIED),
        (f"SELECT * FROM glob('{spans}/*')", DENIED),  # only the snapshot's files, not the directory
        # the store's own files beside the Parquet parts: the WAL, the lock file
        (f"SELECT * FROM read_blob('{spans}/../wal/*')", DENIED),
        (f"SELECT * FROM parquet_metadata('{spans}/../wal/x')", DENIED),
        (f"SELECT * FROM read_csv('{spans}/../LOCK')", DENIED),
        ("SELECT * FROM read_csv('https://example.com/x.csv')", DENIED),
        ("SELECT * FROM duckdb_extensions()", DENIED),
        # DuckDB 2.0 parses a data-modifying CTE as a SELECT: the sandbox holds no table it could change
        ("WITH t AS (DELETE FROM spans RETURNING *) SELECT * FROM t", "Binder Error"),
        ("WITH t AS (INSERT INTO spans_source SELECT * FROM spans RETURNING *) SELECT * FROM t", "Catalog Error"),
        ("SELECT * FROM query('COPY (SELECT 1) TO ''/tmp/z.csv''')", "Parser Error"),
        ("SELEC 1", "Parser Error"),
    ]


def test_refused_statements_leave_the_data_dir_untouched(srv: Server) -> None:
    outside = [Path("/tmp/x.csv"), Path("/tmp/x.db"), Path("/tmp/z.csv")]
    existed = [p.exists() for p in outside]
    for sql, reason in refused_cases(srv.data_dir):
        before = tree_hash(srv.data_dir)
        r = run_sql(srv, sql)
        assert r.status_code == 400, (sql, r.text)
        error = r.json()["error"]
        assert error["status"] == 400 and error["code"] == "bad_request", sql
        assert reason in error["message"], (sql, error["message"])
        assert tree_hash(srv.data_dir) == before, sql
    assert [p.exists() for p in outside] == existed
    assert run_sql(srv, "SELECT current_setting('threads') AS t").status_code == 200  # still serving


def test_statement_type_is_decided_by_duckdb() -> None:
    """The file-reading cases above are SELECTs: the type check lets them through, the settings refuse them."""
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/hostname')",
                "SELECT * FROM glob('/etc/*')", "SELECT * FROM read_parquet('~/.cache/x.parquet')"):
        (statement,) = duckdb.extract_statements(sql)
        assert statement.type == duckdb.StatementType.SELECT


def test_sandbox_settings_refuse_without_the_statement_check(srv: Server) -> None:
    """Defense in depth: on the sandbox database itself, writes, attach, extensions and settings all fail."""
    spans = srv.data_dir / "spans"
    before = tree_hash(srv.data_dir)
    engine = QueryEngine(srv.data_dir)
    db = engine.sandbox()
    try:
        assert db.execute("SELECT count(*) FROM spans").fetchall()[0][0] > 0  # the allowed Parquet files
        for sql in (f"COPY (SELECT 1) TO '{spans}/x.csv'", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{spans}/y.csv'",
                    "COPY (SELECT 1) TO '/tmp/x.csv'", "ATTACH '/tmp/x.db'", "INSTALL httpfs", "LOAD httpfs",
                    "SELECT * FROM read_csv('/etc/passwd')"):
            with pytest.raises(duckdb.PermissionException):
                db.execute(sql).fetchall()
        for sql in ("SET threads = 1", "SET enable_external_access = true", "RESET lock_configuration",
                    "PRAGMA threads = 1"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                db.execute(sql).fetchall()
        settings = dict(db.execute("SELECT name, value FROM duckdb_settings()").fetchall())
        assert settings["enable_external_access"] == "false" and settings["lock_configuration"] == "true"
        assert settings["autoload_known_extensions"] == "false"
        assert settings["autoinstall_known_extensions"] == "false"
        assert settings["allowed_directories"] == "[]" and settings["temp_directory"] == ""
    finally:
        db.close()
        engine.close()
    assert tree_hash(srv.data_dir) == before


def test_bad_body_is_422(srv: Server) -> None:
    r = httpx.post(f"{srv.url}/api/v1/sql", json={"sql": "SELECT 1", "unknown": 1}, timeout=10)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter"
    r = httpx.post(f"{srv.url}/api/v1/sql", content=json.dumps({"max_rows": 1}), timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422


# --- a runaway query ----------------------------------------------------------------------------------------------
def test_runaway_query_times_out_while_ingest_and_health_answer(srv: Server) -> None:
    answer: dict[str, httpx.Response] = {}

    def runaway() -> None:
        answer["r"] = run_sql(srv, "SELECT count(*) FROM range(1000000000000)")

    thread = threading.Thread(target=runaway)
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)  # the query is running now
    assert thread.is_alive()
    assert post_capture(srv, LIVE).status_code == 200
    latencies = []
    with collector_paused(), httpx.Client() as client:
        while thread.is_alive() and time.monotonic() - started < 10:
            t0 = time.perf_counter()
            assert client.get(f"{srv.url}/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
    thread.join(timeout=10)
    r = answer["r"]
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert 0.9 < time.monotonic() - started < 5
    assert latencies and max(latencies) < 0.1, latencies
