"""Deleting a trace (or clearing the store) hides it from every view at once: Python, REST, CLI and the DuckDB shell,
whether its spans are in Parquet or still in the live buffer, while the Parquet parts stay untouched (compaction
removes rows physically)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

import msgtrace
from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.query.store import InvalidArgument, TraceNotFound
from tests.conftest import CAPTURES, Server, capture

SDK_TRACE = "2696f4701a86a3602fc274ae431deec3"
MSGTRACE = str(Path(sys.executable).parent / "msgtrace")


def fill(data_dir: Path) -> None:
    ingestor = Ingestor(IngestConfig(data_dir=data_dir))
    ingestor.start()
    for name in CAPTURES:
        ingestor.accept(WireFormat.PROTOBUF, capture(name)[2], time.time_ns())
    ingestor.close()


def parts_digest(data_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("spans/*/*.parquet")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_delete_hides_a_trace_everywhere_and_keeps_the_files(data_dir: Path) -> None:
    fill(data_dir)
    before = parts_digest(data_dir)
    store = msgtrace.open(data_dir)
    assert store.traces(limit=100).height == 26
    store.delete_trace(SDK_TRACE.upper())
    with pytest.raises(TraceNotFound):
        store.trace(SDK_TRACE)
    with pytest.raises(TraceNotFound):
        store.tree(SDK_TRACE)
    assert SDK_TRACE not in store.traces(limit=100)["trace_id"].to_list()
    assert store.traces(limit=100).height == 25
    assert store.stats("model").height == 0  # the only LLM call was in the deleted trace
    assert store.spans().filter(pl.col("trace_id") == SDK_TRACE).collect().height == 0
    with pytest.raises(TraceNotFound):
        store.delete_trace(SDK_TRACE)  # already gone
    with pytest.raises(InvalidArgument):
        store.delete_trace("not-a-trace-id")
    assert parts_digest(data_dir) == before  # hidden, not rewritten
    shell = subprocess.run([MSGTRACE, "duckdb", "--data-dir", str(data_dir), "-csv", "-c",
                            f"SELECT count(*) AS n FROM spans WHERE trace_id = '{SDK_TRACE}'"],
                           capture_output=True, text=True, timeout=60)
    assert shell.stdout.split() == ["n", "0"], shell.stderr


def test_clear_needs_confirmation_and_hides_everything(data_dir: Path) -> None:
    fill(data_dir)
    refused = subprocess.run([MSGTRACE, "clear", "--data-dir", str(data_dir)], input="n\n", capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0
    assert msgtrace.open(data_dir).traces(limit=100).height == 26
    done = subprocess.run([MSGTRACE, "clear", "--yes", "--data-dir", str(data_dir)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([MSGTRACE, "list", "--json", "--data-dir", str(data_dir)], capture_output=True,
                            text=True, timeout=60)
    assert json.loads(listed.stdout) == []
    # new traces after a clear are visible
    ingestor = Ingestor(IngestConfig(data_dir=data_dir))
    ingestor.start()
    request = capture("msgflux_agent")[2]
    ingestor.accept(WireFormat.PROTOBUF, request, time.time_ns())
    ingestor.close()
    # (the same trace ids as before: a cleared trace stays hidden, like any deleted one)
    assert msgtrace.open(data_dir).traces(limit=100).height == 0


def test_rest_delete_including_the_live_buffer(data_dir: Path) -> None:
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "3600"})
    server.start()
    try:
        path, headers, body, _ = capture("msgtrace_sdk_activated")
        assert server.post(path, body, headers).status_code == 200  # in the buffer only
        url = f"{server.url}/api/v1/traces/{SDK_TRACE}"
        assert httpx.get(url).status_code == 200
        deleted = httpx.delete(url)
        assert deleted.status_code == 200 and deleted.json() == {"deleted": SDK_TRACE}
        gone = httpx.get(url)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        assert httpx.delete(url).status_code == 404
        assert httpx.delete(f"{server.url}/api/v1/traces/xyz").status_code == 400
        listed = httpx.get(f"{server.url}/api/v1/traces", params={"limit": 100}).json()["traces"]
        assert SDK_TRACE not in {t["trace_id"] for t in listed} and len(listed) == 2
        spec = httpx.get(f"{server.url}/openapi.json").json()
        assert {"200", "400", "404"} <= set(spec["paths"]["/api/v1/traces/{trace_id}"]["delete"]["responses"])
    finally:
        assert server.stop() == 0
    # flushed to Parquet now, and still hidden
    with pytest.raises(TraceNotFound):
        msgtrace.open(data_dir).trace(SDK_TRACE)
