"""Network defaults against the real server: bound to loopback, a 403 for non-local ``Host`` names (DNS rebinding),
no CORS unless configured, and hostile trace ids in URLs stopped before SQL or a path."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from unittest.mock import ANY

import httpx
import psutil
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.config import DEFAULT_HOST, IngestConfig
from msgtrace.server import hosts
from msgtrace.server.errors import CODES
from tests.conftest import Server, running_server

PROTOBUF = {"content-type": "application/x-protobuf"}
LOCAL_HOSTS = ["127.0.0.1", "127.0.0.1:{port}", "localhost", "localhost:{port}", "LOCALHOST:{port}",
               "localhost.:{port}", "[::1]", "[::1]:{port}", "app.localhost:{port}", "a.b.localhost", "127.1.2.3:80"]
FOREIGN_HOSTS = ["evil.example", "evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io:{port}",
                 "evil.example.localhost.com", "mylocalhost", "192.0.2.2:{port}", "[::2]:{port}", "0.0.0.0:{port}",
                 "[fd00::2]", "localhost:abc", "localhost:{port}:1", "localhost:", "user@localhost",
                 "localhost/x", "", " ", "[::1", "local%68ost"]


def _url_host(host: str, port: int) -> str:
    return host.format(port=port)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory, "network") as server:  # no --host, no MSGTRACE_HOST: the defaults
        yield server


def _span_request(trace_id: bytes) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = trace_id, b"\x01" * 8, "network-test"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return request.SerializeToString()


def _assert_error(response: httpx.Response, status: int, says: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "code", "message"}
    assert body["error"]["status"] == status
    assert body["error"]["code"] == CODES.get(status, "error")
    assert says in body["error"]["message"]


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send exact bytes (httpx would normalise or refuse odd Host headers) and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# --- bind address ------------------------------------------------------------------------------------------------
def test_default_bind_is_loopback_only(srv: Server) -> None:
    assert DEFAULT_HOST == "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k != "MSGTRACE_HOST"}
    code = "from msgtrace.config import IngestConfig; print(IngestConfig.from_env().host)"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip() == "127.0.0.1"
    assert srv.proc is not None
    listening = [c.laddr for c in psutil.Process(srv.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening == [("127.0.0.1", srv.port)]
    # from any address of this machine other than loopback, nothing answers on the port
    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:
        with pytest.raises(OSError), socket.create_connection((address, srv.port), timeout=2):
            pass


def test_bind_beyond_loopback_has_no_host_check_unless_configured() -> None:
    from fastapi import FastAPI

    def guards(bind: str, allowed: tuple[str, ...] = ()) -> list[type]:
        app = FastAPI()
        hosts.install(app, bind_host=bind, allowed_hosts=allowed)
        return [m.cls for m in app.user_middleware]  # type: ignore[misc]

    for bind in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert guards(bind) == [hosts.HostGuard], bind
    for bind in ("0.0.0.0", "::", "192.0.2.2", "example.org"):
        assert guards(bind) == [], bind
        assert guards(bind, ("traces.example",)) == [hosts.HostGuard], bind


# --- Host check (DNS rebinding) ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_local_host_names_are_answered(srv: Server, host: str) -> None:
    response = httpx.get(f"{srv.url}/health", headers={"Host": _url_host(host, srv.port)}, timeout=5)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_other_host_names_get_403(srv: Server, host: str) -> None:
    value = _url_host(host, srv.port)
    for method, path in (("GET", "/health"), ("GET", "/api/v1/traces"), ("GET", "/docs"), ("GET", "/openapi.json"),
                         ("GET", "/nowhere"), ("POST", "/v1/traces"), ("DELETE", "/api/v1/traces/" + "a" * 32)):
        answer = _raw(srv.port, f"{method} {path} HTTP/1.1\r\nHost: {value}\r\nContent-Length: 0\r\n"
                                f"Connection: close\r\n\r\n".encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert _status(answer) == 403, answer[:300]
        assert b"\r\ncontent-type: application/json" in head.lower()
        assert json.loads(body) == {"error": {"status": 403, "code": CODES.get(403, "error"), "message": ANY}}
        assert "not allowed" in json.loads(body)["error"]["message"]


def test_odd_host_bytes_get_403_and_the_server_stays_up(srv: Server) -> None:
    for value in (b"l\xf6calhost", b"\xff\xfe", b"localhost\x00.evil.example", b"localhost\tevil.example", b"x" * 8000):
        answer = _raw(srv.port, b"GET /health HTTP/1.1\r\nHost: " + value + b"\r\nConnection: close\r\n\r\n")
        assert answer and _status(answer) in (400, 403), (value[:40], answer[:200])
    assert httpx.get(f"{srv.url}/health", timeout=5).status_code == 200


def test_two_host_headers_are_judged_by_the_first(srv: Server) -> None:
    answer = _raw(srv.port, b"GET /health HTTP/1.1\r\nHost: evil.example\r\nHost: localhost\r\n"
                            b"Connection: close\r\n\r\n")
    assert _status(answer) in (400, 403), answer[:200]


def test_request_without_host_is_answered(srv: Server) -> None:
    # Browsers always send Host, so a request without one cannot be a rebinding attack (HTTP/1.0 tools omit it).
    answer = _raw(srv.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert _status(answer) == 200, answer[:300]


def test_ingest_from_a_foreign_host_is_refused_and_not_stored(srv: Server) -> None:
    trace_id = os.urandom(16)
    refused = httpx.post(f"{srv.url}/v1/traces", content=_span_request(trace_id),
                         headers={**PROTOBUF, "Host": f"evil.example:{srv.port}"}, timeout=5)
    _assert_error(refused, 403, "evil.example")
    time.sleep(0.5)  # a stored span would be queryable at once (live buffer); give any flush a chance anyway
    assert httpx.get(f"{srv.url}/api/v1/traces/{trace_id.hex()}", timeout=10).status_code == 404
    accepted = httpx.post(f"{srv.url}/v1/traces", content=_span_request(trace_id),
                          headers={**PROTOBUF, "Host": f"localhost:{srv.port}"}, timeout=5)
    assert accepted.status_code == 200
    assert httpx.get(f"{srv.url}/api/v1/traces/{trace_id.hex()}", timeout=10).status_code == 200


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir, env={"MSGTRACE_ALLOWED_HOSTS": "traces.internal, *.corp.example,[fd00::2]"})
    server.start()
    try:
        def status(host: str) -> int:
            return httpx.get(f"{server.url}/health", headers={"Host": host}, timeout=5).status_code

        for host in ("traces.internal", f"Traces.Internal:{server.port}", "a.corp.example", "b.a.corp.example:1",
                     "[fd00::2]:80", f"localhost:{server.port}", "127.0.0.1"):
            assert status(host) == 200, host
        for host in ("corp.example", "evil.example", "traces.internal.evil.example", "xcorp.example"):
            assert status(host) == 403, host
    finally:
        server.stop()


def test_allowed_hosts_star_switches_the_check_off(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"MSGTRACE_ALLOWED_HOSTS": "*"})
    server.start()
    try:
        assert httpx.get(f"{server.url}/health", headers={"Host": "anything.example"}, timeout=5).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("flag, value, says", [
    ("--allowed-hosts", "evil.example:80", "allowed_hosts"),
    ("--allowed-hosts", "a b", "allowed_hosts"),
    ("--cors-origins", "http://app.example/", "cors_origins"),
    ("--cors-origins", "app.example", "cors_origins"),
    ("--cors-origins", "null", "cors_origins"),
])
def test_bad_network_settings_are_refused_at_start(tmp_path: Path, flag: str, value: str, says: str) -> None:
    result = subprocess.run([sys.executable, "-m", "msgtrace", "ingest", "--data-dir", str(tmp_path / "d"),
                             "--port", "1", flag, value], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ValueError, match=says):
        IngestConfig.from_env(**{flag[2:].replace("-", "_"): value})


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSGTRACE_ALLOWED_HOSTS", " a.example, ,*.b.example ")
    monkeypatch.setenv("MSGTRACE_CORS_ORIGINS", "http://localhost:3000,https://[::1]:8443")
    config = IngestConfig.from_env()
    assert config.allowed_hosts == ("a.example", "*.b.example")
    assert config.cors_origins == ("http://localhost:3000", "https://[::1]:8443")
    assert IngestConfig.from_env(allowed_hosts="c.example").allowed_hosts == ("c.example",)  # a flag wins
    monkeypatch.delenv("MSGTRACE_ALLOWED_HOSTS")
    monkeypatch.delenv("MSGTRACE_CORS_ORIGINS")
    assert IngestConfig.from_env().allowed_hosts == () == IngestConfig.from_env().cors_origins


# --- CORS ----------------------------------------------------------------------------------------------------------
def _preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                       "Access-Control-Request-Headers": "content-type"}, timeout=5)


def test_no_cors_headers_by_default(srv: Server) -> None:
    for origin in ("http://localhost:3000", "https://evil.example", "null"):
        for response in (httpx.get(f"{srv.url}/health", headers={"Origin": origin}, timeout=5),
                         httpx.get(f"{srv.url}/api/v1/traces", headers={"Origin": origin}, timeout=10),
                         _preflight(f"{srv.url}/v1/traces", origin)):
            assert not [h for h in response.headers if h.lower().startswith("access-control-")], response.headers
    assert _preflight(f"{srv.url}/v1/traces", "http://localhost:3000").status_code == 405


def test_cors_only_for_configured_origins_and_never_with_credentials(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"MSGTRACE_CORS_ORIGINS": "http://localhost:3000"})
    server.start()
    try:
        good = httpx.get(f"{server.url}/health", headers={"Origin": "http://localhost:3000",
                                                          "Cookie": "session=1"}, timeout=5)
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "access-control-allow-credentials" not in good.headers
        preflight = _preflight(f"{server.url}/v1/traces", "http://localhost:3000")
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in preflight.headers
        other = httpx.get(f"{server.url}/health", headers={"Origin": "https://evil.example"}, timeout=5)
        assert "access-control-allow-origin" not in other.headers
        assert _preflight(f"{server.url}/v1/traces", "https://evil.example").status_code == 400
        # the Host check still comes first: a rebinding page cannot use a CORS-allowed origin to get in
        rebound = httpx.get(f"{server.url}/health", headers={"Origin": "http://localhost:3000",
                                                             "Host": "evil.example"}, timeout=5)
        _assert_error(rebound, 403)
    finally:
        server.stop()


def test_cors_star_never_allows_credentials(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", env={"MSGTRACE_CORS_ORIGINS": "*"})
    server.start()
    try:
        for response in (httpx.get(f"{server.url}/health", headers={"Origin": "https://x.example",
                                                                    "Cookie": "a=b"}, timeout=5),
                         _preflight(f"{server.url}/api/v1/traces/export", "https://x.example")):
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in response.headers
    finally:
        server.stop()


# --- hostile trace ids -------------------------------------------------------------------------------------------
HOSTILE_IDS = [
    "../../../../etc/passwd", "..", ".", "..%2f..%2fetc%2fpasswd", "%2e%2e", "a" * 30 + "/..",
    "' OR '1'='1", "2696f4701a86a360' OR '1'='1' --", "'; DROP TABLE spans; --", '"; SELECT 1; --',
    "a" * 31 + "'", "a" * 32 + "'", "a" * 32 + ";", "$trace_id", "?", "*", "%", "_" * 32, "a" * 31 + "%",
    "ａ" * 32, "é" * 32, "٣" * 32, "𝟙" * 32, "a" * 31 + "ğ", "A" * 31 + "\u0130", "a" * 16 + "\u200b" + "a" * 16,
    "a" * 32 + "\x00", "\x00" * 32, "a" * 31 + "\x00", " " + "a" * 32, "a" * 32 + " ", "\t" + "a" * 31,
    "a" * 33, "a" * 64, "a" * 4096, "0x" + "a" * 30, "-" + "1" * 31, "+" + "1" * 31, "1e+" + "1" * 29,
    "a" * 32 + "\r\n", "a" * 31 + "\n",
]
# a trailing newline is let through by ``re.match(r"^…$")``; check_trace_id must not be fooled by it
NEWLINE_IDS = ["a" * 32 + "\n", "A" * 32 + "\n"]


def _snapshot(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if "wal" not in p.parts}


def _raw_json(port: int, method: str, target: str) -> tuple[int, dict]:
    answer = _raw(port, f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
                        .encode("ascii"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json" in head.lower(), answer[:300]
    return _status(answer), json.loads(body)


def _check_hostile(srv: Server, trace_id: str) -> None:
    # Raw requests: an HTTP client would resolve "." and ".." segments before the server ever saw them.
    for quoted in {urllib.parse.quote(trace_id, safe=""), urllib.parse.quote(trace_id, safe="/.'*$;")}:
        for method, suffix in (("GET", ""), ("GET", "/tree"), ("DELETE", "")):
            status, body = _raw_json(srv.port, method, f"/api/v1/traces/{quoted}{suffix}")
            assert set(body) == {"error"} and body["error"]["status"] == status, (trace_id, body)
            message = body["error"]["message"]
            if status == 404:  # no route matched (the id held a "/"): then it never reached a handler either
                assert "no trace" not in message, (trace_id, body)
            elif status == 405:  # a "/.." suffix landed on a route without this method
                pass
            else:
                assert (status, body["error"]["code"]) == (400, "bad_request"), (trace_id, body)
                assert "32 hexadecimal" in message, (trace_id, body)


@pytest.mark.parametrize("trace_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_trace_ids_never_reach_sql_or_a_path(srv: Server, trace_id: str) -> None:
    before = _snapshot(srv.data_dir)
    _check_hostile(srv, trace_id)
    created = _snapshot(srv.data_dir) - before
    assert all(p.startswith("spans") for p in created), created  # flushes only: no tombstone, no stray file
    assert not (srv.data_dir.parent / "etc").exists()


@pytest.mark.parametrize("trace_id", NEWLINE_IDS)
def test_trace_id_with_trailing_newline_is_400(srv: Server, trace_id: str) -> None:
    _check_hostile(srv, trace_id)


def test_valid_ids_in_any_case_still_work(srv: Server) -> None:
    trace_id = os.urandom(16)
    assert srv.post("/v1/traces", _span_request(trace_id), PROTOBUF).status_code == 200
    for shown in (trace_id.hex(), trace_id.hex().upper()):
        response = httpx.get(f"{srv.url}/api/v1/traces/{shown}", timeout=10)
        assert response.status_code == 200
        assert [s["trace_id"] for s in response.json()["spans"]] == [trace_id.hex()]
    assert httpx.get(f"{srv.url}/health", timeout=5).status_code == 200
