"""The receiver's status table (405, 415, 400, 413, 503 + Retry-After, 200 with partial_success) against the real
server: never a 500, nothing acknowledged lost, and the server healthy afterwards."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Iterator

import duckdb
import httpx
import psutil
import pytest
import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import Server, capture, parquet_glob, running_server

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory, "receive") as server:
        yield server


def _request(n: int = 3, first: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add()
        span.trace_id = i.to_bytes(16, "big")
        span.span_id = i.to_bytes(8, "big")
        span.name = f"span-{i}"
        span.start_time_unix_nano = time.time_ns()
        span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return request


def _status_message(response: httpx.Response) -> str:
    if response.headers["content-type"] == "application/json":
        return response.json()["message"]
    # google.rpc.Status protobuf: field 1 (varint code), field 2 (length-delimited message)
    body = response.content
    assert body[0] == 0x08 and body[2] == 0x12
    length, shift, pos = 0, 0, 3
    while True:
        byte = body[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        shift += 7
        if byte < 0x80:
            return body[pos:pos + length].decode()


def _assert_healthy(server: Server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    response = server.post("/v1/traces", _request(1, first=999_999).SerializeToString(), PROTOBUF)
    assert response.status_code == 200


def test_405_for_wrong_method(srv: Server) -> None:
    response = httpx.get(f"{srv.url}/v1/traces")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("headers", [
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/grpc"},
    {},
    {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"},
])
def test_415_for_unsupported_media(srv: Server, headers: dict[str, str]) -> None:
    response = srv.post("/v1/traces", _request().SerializeToString(), headers)
    assert response.status_code == 415
    assert "unsupported" in _status_message(response)


def _deep_any_value(depth: int) -> bytes:
    value = AnyValue(string_value="leaf")
    for _ in range(depth):
        outer = AnyValue()
        outer.array_value.values.add().CopyFrom(value)
        value = outer
    request = _request(1)
    kv = request.resource_spans[0].scope_spans[0].spans[0].attributes.add()
    kv.key = "deep"
    kv.value.CopyFrom(value)
    return request.SerializeToString()


def _deep_json_attribute(depth: int) -> bytes:
    # built as text: json.dumps itself would hit the recursion limit
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "leaf"}' + "]}}" * depth
    span = '{"traceId": "' + "11" * 16 + '", "spanId": "' + "22" * 8 + '", "attributes": [{"key": "deep", "value": '
    return ('{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + value + "}]}]}]}]}").encode()


@pytest.mark.parametrize("name, body, headers", [
    ("garbage protobuf", b"\xff\xff\xff\xffnot protobuf at all", PROTOBUF),
    ("truncated protobuf", _request(5).SerializeToString()[:-7], PROTOBUF),
    ("bad JSON", b'{"resourceSpans": [', JSON),
    ("JSON of the wrong shape", b'{"resourceSpans": {"a": 1}}', JSON),
    ("JSON with a bad timestamp", json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "11" * 16, "spanId": "22" * 8, "startTimeUnixNano": "yesterday"}]}]}]}).encode(), JSON),
    ("deeply nested JSON", b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
    ("deeply nested JSON attribute", _deep_json_attribute(5000), JSON),
    ("deeply nested protobuf", _deep_any_value(200), PROTOBUF),
    ("truncated gzip", gzip.compress(_request(50).SerializeToString())[:-30],
     {**PROTOBUF, "Content-Encoding": "gzip"}),
    ("corrupt deflate", b"\x78\x9c not deflate", {**PROTOBUF, "Content-Encoding": "deflate"}),
    ("truncated zstd", zstandard.ZstdCompressor().compress(_request(50).SerializeToString())[:-9],
     {**PROTOBUF, "Content-Encoding": "zstd"}),
])
def test_400_for_undecodable(srv: Server, name: str, body: bytes, headers: dict[str, str]) -> None:
    response = srv.post("/v1/traces", body, headers)
    assert response.status_code == 400, (name, response.text)
    assert _status_message(response)
    _assert_healthy(srv)


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("zstd", zstandard.ZstdCompressor().compress),
    ("GZIP", gzip.compress), ("identity", lambda b: b),
])
def test_compressed_requests_accepted(srv: Server, encoding: str, compress) -> None:  # type: ignore[no-untyped-def]
    response = srv.post("/api/v1/traces/export", compress(_request(4, first=100).SerializeToString()),
                        {"content-type": "application/x-protobuf; charset=binary", "content-encoding": encoding})
    assert response.status_code == 200


def test_413_on_the_wire(srv: Server) -> None:
    limit = 64 * 1024 * 1024
    response = srv.post("/v1/traces", b"\0" * (limit + 1), PROTOBUF)
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is applied while reading
        for _ in range(65):
            yield b"\0" * (1024 * 1024)

    response = httpx.post(f"{srv.url}/v1/traces", content=chunks(), headers=PROTOBUF, timeout=30)
    assert response.status_code == 413
    _assert_healthy(srv)


def test_gzip_bomb_rejected_fast_with_bounded_memory(srv: Server) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range(1024)) + packer.flush()  # 1 GiB inflated
    assert len(bomb) < 1.1 * (1 << 20)
    proc = psutil.Process(srv.proc.pid)  # type: ignore[union-attr]
    rss_before = proc.memory_info().rss
    started = time.monotonic()
    response = srv.post("/v1/traces", bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
    elapsed = time.monotonic() - started
    assert response.status_code == 413
    assert elapsed < 1.0
    # Inflating it whole would take 1 GiB; stopping at the 64 MiB limit keeps the growth near that.
    assert proc.memory_info().rss - rss_before < 200 * 1024 * 1024
    _assert_healthy(srv)


def test_partial_success_for_bad_ids(srv: Server) -> None:
    request = _request(3, first=500)
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = bytes(16)  # zero
    spans[1].span_id = b"\x01\x02\x03"  # wrong length
    response = srv.post("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 2
    assert "trace_id" in parsed.partial_success.error_message
    assert "span_id" in parsed.partial_success.error_message


def test_oversized_value_truncated_with_marker(srv: Server) -> None:
    request = _request(1, first=700)
    kv = request.resource_spans[0].scope_spans[0].spans[0].attributes.add()
    kv.key = "gen_ai.prompt"
    kv.value.string_value = "p" * (2 * 1024 * 1024)
    response = srv.post("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert response.status_code == 200
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 0
    assert "truncated" in parsed.partial_success.error_message


def test_503_with_retry_after_when_the_wal_budget_is_used_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # Flushes never come due (an hour), so the WAL cannot be retired and its budget (256 bytes) runs out.
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "3600", "MSGTRACE_WAL_LIMIT_BYTES": "256"})
    server.start()
    try:
        _, headers, body, summary = capture("msgflux_agent")
        first = server.post("/v1/traces", body, headers)
        assert first.status_code == 200
        refused = server.post("/v1/traces", _request(2, first=900).SerializeToString(), PROTOBUF)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "budget" in _status_message(refused)
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        assert server.stop() == 0
    rows = duckdb.connect().execute("SELECT span_id FROM read_parquet(?)", [parquet_glob(data_dir)]).fetchall()
    assert sorted(r[0] for r in rows) == sorted(s["span_id"] for s in summary["spans"])  # the 200 kept, the 503 not
