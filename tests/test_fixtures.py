"""Captured client requests go in through the real server and come out of plain DuckDB field for field.

Each capture in ``tests/fixtures/otlp`` (copies of ``shared/fixtures/otlp``) is posted with its own path, headers
and body; the Parquet files are then read with nothing but ``duckdb`` and compared with the capture's
``.summary.json``: ids, parent, name, kind, timestamps, status, events, every attribute with its type, the
resource and the scope.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.conftest import CAPTURES, FIXTURES, Server, capture, parquet_glob

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "otlp"


def _expected_value(typed: dict) -> tuple[str, object]:
    """A summary.json typed value → (type, the field of the stored value struct that must equal it)."""
    kind, value = typed["type"], typed["value"]
    if kind == "bytes":
        return kind, base64.b64decode(value["base64"])
    if kind in ("array", "kvlist"):
        return kind, _plain(typed)
    return kind, value


def _plain(typed: dict) -> object:
    kind, value = typed["type"], typed["value"]
    if kind == "array":
        return [_plain(v) for v in value]
    if kind == "kvlist":
        return {k: _plain(v) for k, v in value.items()}
    if kind == "bytes":
        return value["base64"]
    return value


_FIELD = {"string": "str", "int": "int", "double": "double", "bool": "bool", "bytes": "bytes", "array": "json",
          "kvlist": "json"}


def _assert_attributes(stored: dict, expected: dict, where: str) -> None:
    assert set(stored) == set(expected), where
    for key, typed in expected.items():
        kind, value = _expected_value(typed)
        got = stored[key]
        assert got["type"] == kind, f"{where}: {key}"
        field = _FIELD[kind]
        actual = json.loads(got[field]) if field == "json" else got[field]
        assert actual == value, f"{where}: {key}"
        # exactly one typed field is set
        assert [f for f in ("str", "int", "double", "bool", "bytes", "json") if got[f] is not None] == [field]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Post all three captures to one server, stop it (which flushes), and read every row back."""
    data_dir = tmp_path_factory.mktemp("fixtures") / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    server.start()
    try:
        for name in CAPTURES:
            path, headers, body, _ = capture(name)
            response = server.post(path, body, headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/x-protobuf"
            parsed = ExportTraceServiceResponse.FromString(response.content)
            assert not parsed.HasField("partial_success")
    finally:
        assert server.stop() == 0
    con = duckdb.connect()
    rows = con.sql(
        "SELECT * FROM read_parquet(?, hive_partitioning = true)", params=[parquet_glob(data_dir)]
    ).to_arrow_table().to_pylist()
    return {row["span_id"]: row for row in rows}


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_stored_field_for_field(stored: dict[str, dict], name: str) -> None:
    _, _, _, summary = capture(name)
    (resource,) = summary["resources"]
    ours = [s for s in summary["spans"] if s["span_id"] in stored]
    assert len(ours) == summary["span_count"] == len(summary["spans"])
    for span in summary["spans"]:
        row = stored[span["span_id"]]
        where = f"{name}/{span['name']}"
        assert row["trace_id"] == span["trace_id"]
        assert row["parent_span_id"] == span["parent_span_id"]
        assert row["trace_state"] == span["trace_state"]
        assert row["flags"] == span["flags"]
        assert row["name"] == span["name"]
        assert row["kind"] == span["kind"]
        assert row["start_time_unix_nano"] == span["start_time_unix_nano"]
        assert row["end_time_unix_nano"] == span["end_time_unix_nano"]
        assert row["duration_ns"] == span["end_time_unix_nano"] - span["start_time_unix_nano"]
        assert row["status_code"] == span["status"]["code"]
        assert row["status_message"] == span["status"]["message"]
        assert row["scope_name"] == span["scope"]
        assert row["scope_version"] == span["scope_version"]
        assert row["dropped_attributes_count"] == span["dropped_attributes_count"]
        assert row["service_name"] == resource["attributes"]["service.name"]["value"]
        _assert_attributes(dict(row["attributes"]), span["attributes"], where)
        _assert_attributes(dict(row["resource_attributes"]), resource["attributes"], where + " resource")
        assert len(row["events"]) == len(span["events"]), where
        for got, event in zip(row["events"], span["events"], strict=True):
            assert got["name"] == event["name"]
            assert got["time_unix_nano"] == event["time_unix_nano"]
            assert got["dropped_attributes_count"] == event["dropped_attributes_count"]
            _assert_attributes(dict(got["attributes"]), event["attributes"], f"{where} event {event['name']}")
        assert len(row["links"]) == len(span["links"])
        # the day partition is the UTC date of the start time (the captures are recent)
        start_day = dt.datetime.fromtimestamp(span["start_time_unix_nano"] / 1e9, dt.UTC).date()
        assert row["date"] == start_day


def test_large_and_odd_values_survive(stored: dict[str, dict]) -> None:
    by_key = {k: v for row in stored.values() for k, v in dict(row["attributes"]).items()}
    assert len(by_key["custom.big_text"]["str"]) == 120_000
    assert by_key["custom.bytes_binary"]["bytes"] == b"\x00\xff\xfe\x80"
    assert json.loads(by_key["request.meta"]["json"]) == {"tenant": "acme", "tier": 2}
    assert json.loads(by_key["gen_ai.response.finish_reasons"]["json"]) == ["stop"]


def test_llm_columns_are_promoted(stored: dict[str, dict]) -> None:
    rows = list(stored.values())
    chat = next(r for r in rows if r["name"] == "chat gpt-fake")
    assert (chat["operation"], chat["provider"], chat["model"]) == ("chat", "openai", "gpt-fake")
    assert (chat["input_tokens"], chat["output_tokens"], chat["total_tokens"]) == (120, 30, 150)
    assert chat["cost"] == pytest.approx(0.00036 + 0.00018)
    tool = next(r for r in rows if r["name"] == "tool get_weather")
    assert tool["tool_name"] == "get_weather"
    root = next(r for r in rows if r["name"] == "support_request_flow")
    assert root["workflow_name"] == "support_request_flow"
    assert {r["user_id"] for r in rows} >= {"user-42"}
    assert {r["session_id"] for r in rows} >= {"sess-7f3a", "sess-async-1"}
    assert {r["agent_name"] for r in rows} >= {"support_agent", "research_agent"}


def test_fixture_copies_match_shared() -> None:
    """tests/fixtures holds copies so a fresh clone can test; they must not drift from shared/fixtures."""
    if not SHARED.exists():
        pytest.skip("shared/fixtures is not beside this checkout")
    for path in SHARED.iterdir():
        assert (FIXTURES / path.name).read_bytes() == path.read_bytes(), path.name


def test_accepted_on_both_paths_and_lowercase_header(server: Server) -> None:
    _, headers, body, summary = capture("msgflux_agent")
    for path in ("/v1/traces", "/api/v1/traces/export"):
        lower = {k.lower(): v for k, v in headers.items()}
        response = server.post(path, body, lower)
        assert response.status_code == 200
    server.stop()
    count, distinct = duckdb.connect().execute(
        "SELECT count(*), count(DISTINCT span_id) FROM read_parquet(?)", [parquet_glob(server.data_dir)]
    ).fetchone()
    # the second delivery of the same spans is a duplicate and collapses at flush time
    assert distinct == summary["span_count"]
    assert count == summary["span_count"]
