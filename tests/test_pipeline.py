"""The ingest pipeline in-process, on real files: budgets, a failing flush, duplicate collapse, durability order."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.config import IngestConfig
from msgtrace.errors import Overloaded
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from tests.conftest import Server, parquet_glob

MiB = 1024 * 1024


def body(first: int, n: int = 100, start_ns: int | None = None) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = i.to_bytes(16, "big"), i.to_bytes(8, "big"), "s"
        span.start_time_unix_nano = start_ns or time.time_ns()
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.prompt", "x" * 2000
    return request.SerializeToString()


def stored(data_dir: Path) -> tuple[int, int]:
    return duckdb.connect().execute("SELECT count(*), count(DISTINCT span_id) FROM read_parquet(?)",
                                    [parquet_glob(data_dir)]).fetchall()[0]


@pytest.fixture
def ingestor(data_dir: Path):  # type: ignore[no-untyped-def]
    ing = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600, flush_bytes=1 * MiB,
                                buffer_limit_bytes=4 * MiB))
    ing.start()
    yield ing
    ing.close()


def test_stalled_flush_turns_into_503_before_anything_is_written(ingestor: Ingestor, data_dir: Path) -> None:
    accepted = 0
    with ingestor._flush_lock:  # the flush is stuck (a slow disk, say): the buffer fills up
        with pytest.raises(Overloaded):
            for i in range(1000):
                ingestor.accept(WireFormat.PROTOBUF, body(i * 100 + 1), time.time_ns())
                accepted += 100
        wal_before = ingestor.wal.size_bytes
        with pytest.raises(Overloaded):  # refused before decoding or logging: the WAL does not grow
            ingestor.accept(WireFormat.PROTOBUF, body(10**6), time.time_ns())
        assert ingestor.wal.size_bytes == wal_before
    assert accepted >= 100
    deadline = time.monotonic() + 5  # the flusher catches up once unstuck, and ingest is admitted again
    while time.monotonic() < deadline:
        try:
            ingestor.admit()
            break
        except Overloaded:
            time.sleep(0.05)
    ingestor.accept(WireFormat.PROTOBUF, body(2 * 10**6), time.time_ns())
    ingestor.flush()
    assert stored(data_dir) == (accepted + 100, accepted + 100)


def test_failed_flush_keeps_everything_and_retries(ingestor: Ingestor, data_dir: Path) -> None:
    today = dt.datetime.now(dt.UTC).date().isoformat()
    (data_dir / "spans" / f"date={today}").write_text("a file where the day directory should be")
    ingestor.accept(WireFormat.PROTOBUF, body(1), time.time_ns())
    with pytest.raises(OSError):
        ingestor.flush()
    status = ingestor.status()
    assert status["flush"]["errors"] == 1 and "Error" in status["flush"]["last_error"]
    assert status["buffer"]["pending_spans"] == 100  # given back, still readable and in the WAL
    assert status["wal"]["checkpoint"] == 0
    (data_dir / "spans" / f"date={today}").unlink()  # the fault clears
    ingestor.accept(WireFormat.PROTOBUF, body(101), time.time_ns())
    assert ingestor.flush() == 200
    assert stored(data_dir) == (200, 200)
    assert ingestor.status()["wal"]["checkpoint"] == 2


def test_duplicates_collapse_within_a_flush_and_against_the_previous_one(ingestor: Ingestor,
                                                                          data_dir: Path) -> None:
    ingestor.accept(WireFormat.PROTOBUF, body(1), time.time_ns())
    ingestor.accept(WireFormat.PROTOBUF, body(51), time.time_ns())  # 50 of these are retries
    assert ingestor.flush() == 150
    ingestor.accept(WireFormat.PROTOBUF, body(101), time.time_ns())  # 50 repeat the previous flush
    assert ingestor.flush() == 50
    assert stored(data_dir) == (200, 200)
    assert ingestor.status()["flush"]["duplicates_dropped"] == 100


def one_span(end_ns: int, name: str = "s") -> bytes:
    """Span 7 of trace 7, ending at ``end_ns``: the same span delivered again, with other content."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = (7).to_bytes(16, "big"), (7).to_bytes(8, "big"), name
    span.start_time_unix_nano, span.end_time_unix_nano = end_ns - 10**9, end_ns
    return request.SerializeToString()


def test_a_flush_keeps_the_copy_of_a_span_the_views_keep(ingestor: Ingestor, data_dir: Path) -> None:
    """Copies of one span that differ collapse at flush time to the copy the spans view and compaction keep (the
    latest end, then the smallest name), not to the first delivered; against the previous flush, a copy is only
    dropped when the one already written wins or ties (a retry)."""
    now = time.time_ns()

    def written() -> list[tuple[int, str]]:
        return sorted(duckdb.connect().execute("SELECT end_time_unix_nano - ?, name FROM read_parquet(?)",
                                               [now, parquet_glob(data_dir)]).fetchall())

    for end, name in [(0, "b"), (5, "b"), (5, "a"), (2, "c")]:  # one flush: (5, "a") wins
        ingestor.accept(WireFormat.PROTOBUF, one_span(now + end, name), now)
    assert ingestor.flush() == 1
    assert written() == [(5, "a")]
    ingestor.accept(WireFormat.PROTOBUF, one_span(now + 5, "a"), now)  # a retry of the copy written
    ingestor.accept(WireFormat.PROTOBUF, one_span(now + 3, "a"), now)  # an older copy
    assert ingestor.flush() == 0
    ingestor.accept(WireFormat.PROTOBUF, one_span(now + 9, "z"), now)  # a later copy: written, the views pick it
    assert ingestor.flush() == 1
    assert written() == [(5, "a"), (9, "z")]
    for _ in range(2):  # a client retrying flush after flush: the copy written stays the one to beat
        ingestor.accept(WireFormat.PROTOBUF, one_span(now + 9, "z"), now)
        assert ingestor.flush() == 0
    assert ingestor.status()["flush"]["duplicates_dropped"] == 7


def test_spans_from_two_days_go_to_two_partitions(ingestor: Ingestor, data_dir: Path) -> None:
    yesterday = time.time_ns() - 86_400 * 10**9
    ingestor.accept(WireFormat.PROTOBUF, body(1, start_ns=yesterday), time.time_ns())
    ingestor.accept(WireFormat.PROTOBUF, body(101), time.time_ns())
    ingestor.flush()
    days = duckdb.connect().execute(
        "SELECT date, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY date ORDER BY date",
        [parquet_glob(data_dir)]).fetchall()
    assert [n for _, n in days] == [100, 100]
    assert days[1][0] - days[0][0] == dt.timedelta(days=1)


def test_wal_is_retired_once_flushed(ingestor: Ingestor) -> None:
    for i in range(5):
        ingestor.accept(WireFormat.PROTOBUF, body(i * 100 + 1), time.time_ns())
    assert ingestor.wal.size_bytes > 5 * 100 * 2000
    ingestor.flush()
    assert ingestor.wal.size_bytes == 0
    assert len(list((ingestor.layout.wal_dir).glob("*.wal"))) == 1  # only the (empty) active segment


@pytest.fixture
def start_server(data_dir: Path) -> Iterator[Callable[..., Server]]:
    """Starts a server on ``data_dir`` (with ``env``); one a failed test left running is killed afterwards."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None) -> Server:
        server = Server(data_dir, env=env)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        if server.proc is not None:
            server.kill()


def chunked_post(url: str, chunks: list[bytes], release: threading.Event, results: list[tuple[int, str]]) -> None:
    """POST ``chunks`` without Content-Length (chunked): the first at once, the rest once ``release`` is set."""
    def stream():  # type: ignore[no-untyped-def]
        yield chunks[0]
        release.wait(20)
        yield from chunks[1:]

    response = httpx.post(f"{url}/v1/traces", content=stream(), headers={"Content-Type": "application/x-protobuf"},
                          timeout=30)
    results.append((response.status_code, response.headers.get("retry-after", "")))


def test_inflight_budget_refuses_a_second_large_upload(
        data_dir: Path, start_server: Callable[..., Server]) -> None:
    server = start_server({"MSGTRACE_MAX_INFLIGHT_BYTES": str(1 * MiB)})
    release = threading.Event()
    results: list[tuple[int, str]] = []
    first = body(1)  # chunked, no Content-Length: 1 MiB reserved at first, the whole budget here
    holder = threading.Thread(target=chunked_post, args=(server.url, [b"", first], release, results))
    holder.start()
    try:
        time.sleep(0.5)
        refused = server.post("/v1/traces", body(1000), {"Content-Type": "application/x-protobuf"})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
    finally:
        release.set()
        holder.join(15)
    assert [status for status, _ in results] == [200]
    assert server.post("/v1/traces", body(2000), {"Content-Type": "application/x-protobuf"}).status_code == 200
    assert server.stop() == 0
    assert stored(data_dir) == (200, 200)


def test_uploads_of_unknown_length_share_the_inflight_budget_as_they_arrive(
        data_dir: Path, start_server: Callable[..., Server]) -> None:
    """Chunked bodies (a proxy that streams request bodies sends them so) take 1 MiB of the in-flight budget at first
    and more as they arrive. When each reserved the whole 64 MiB body limit, only 2 of these 10 concurrent exports
    got in under the default 128 MiB budget; the 8 others were answered 503."""
    server = start_server()
    release = threading.Event()
    results: list[tuple[int, str]] = []
    bodies = [body(1 + 1000 * i) for i in range(10)]
    clients = [threading.Thread(target=chunked_post, args=(server.url, [b[:1000], b[1000:]], release, results))
               for b in bodies]
    for client in clients:
        client.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(results) < 10:  # all ten are being read (or were refused)
            ingest = httpx.get(f"{server.url}/health", timeout=5).json()["ingest"]
            if ingest["inflight_bytes"] >= 10 * MiB:
                break
            time.sleep(0.05)
        assert ingest["inflight_bytes"] == 10 * MiB, (ingest, results)
    finally:
        release.set()
        for client in clients:
            client.join(30)
    assert [status for status, _ in results] == [200] * 10
    assert server.stop() == 0
    assert stored(data_dir) == (1000, 1000)


def test_an_upload_of_unknown_length_past_the_budget_is_refused_part_read(
        data_dir: Path, start_server: Callable[..., Server]) -> None:
    server = start_server({"MSGTRACE_MAX_INFLIGHT_BYTES": str(2 * MiB)})
    release, at_once = threading.Event(), threading.Event()
    at_once.set()
    held: list[tuple[int, str]] = []
    first = body(1)
    holder = threading.Thread(target=chunked_post, args=(server.url, [first[:1000], first[1000:]], release, held))
    holder.start()  # holds 1 MiB of the 2 MiB budget while it waits
    try:
        time.sleep(0.5)
        refused: list[tuple[int, str]] = []
        # 1 MiB more is admitted (the budget is full then); the body growing past it is refused part-read.
        chunked_post(server.url, [b"\n" + b"\x00" * (MiB + 64 * 1024)], at_once, refused)
        assert refused == [(503, "1")]
        health = httpx.get(f"{server.url}/health", timeout=5).json()["ingest"]
        assert health["inflight_bytes"] == MiB  # what the refused request held is given back
    finally:
        release.set()
        holder.join(30)
    assert held == [(200, "")]
    assert server.stop() == 0
    assert stored(data_dir) == (100, 100)
