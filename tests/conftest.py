"""Shared test harness: a real ``msgtrace ingest`` process on 127.0.0.1 and a free port, over a temp data dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "otlp"
CAPTURES = ("msgtrace_sdk_activated", "msgflux_pipeline", "msgflux_agent")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``msgtrace ingest`` subprocess: start, stop (SIGTERM, flushes), kill (SIGKILL), restart."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {"MSGTRACE_FLUSH_INTERVAL": "0.2", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> float:
        """Start and wait until /health answers; returns the seconds that took."""
        env = {**os.environ, **self.env}
        started = time.monotonic()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=self.pass_fds())
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "msgtrace", "ingest", "--port", str(self.port), "--data-dir",
                str(self.data_dir), "--log-level", "warning"]

    def pass_fds(self) -> tuple[int, ...]:
        """File descriptors the server process inherits (none: it binds its own socket)."""
        return ()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", content=body, headers=headers, timeout=timeout)


@contextmanager
def running_server(factory: pytest.TempPathFactory, name: str, env: dict[str, str] | None = None
                   ) -> Iterator[Server]:
    """A server on a fresh data directory, for a module-scoped fixture; stopped (which flushes) at the end."""
    data_dir = factory.mktemp(name) / "data"
    data_dir.mkdir()
    server = Server(data_dir, env=env)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def server(data_dir: Path) -> Iterator[Server]:
    srv = Server(data_dir)
    srv.start()
    yield srv
    if srv.proc is not None:
        srv.stop()


def capture(name: str) -> tuple[str, dict[str, str], bytes, dict]:
    """A captured client request: its path, headers (as sent, minus hop-by-hop ones), body and decoded summary."""
    meta = json.loads((FIXTURES / f"{name}.headers.json").read_text())
    skip = {"host", "content-length", "connection"}
    headers = {k: v for k, v in meta["headers"] if k.lower() not in skip}
    body = (FIXTURES / f"{name}.bin").read_bytes()
    summary = json.loads((FIXTURES / f"{name}.summary.json").read_text())
    return meta["path"], headers, body, summary


def parquet_glob(data_dir: Path) -> str:
    return str(data_dir / "spans" / "*" / "*.parquet")
