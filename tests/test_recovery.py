"""Recovery at start-up, each case a real process that dies at one exact point (``os._exit``, no clean-up), then a
real server started on the same data directory: nothing acknowledged lost, nothing duplicated, nothing partial read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.ingest.wal import SEGMENT_SUFFIX
from tests.conftest import Server, free_port, parquet_glob

DAY_NS = 86_400 * 1_000_000_000

# Runs an Ingestor in its own process: accepts N requests of 50 spans (half of them dated yesterday, so a flush
# writes two day partitions), then does what the named crash point says and dies without any clean-up.
_CRASHER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from msgtrace.config import IngestConfig
    from msgtrace.ingest.decode import WireFormat
    from msgtrace.ingest.pipeline import Ingestor

    data_dir, point, requests = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600))
    ingestor.start()
    now = time.time_ns()
    for r in range(requests):
        request = ExportTraceServiceRequest()
        scope = request.resource_spans.add().scope_spans.add()
        for i in range(50):
            n = r * 50 + i + 1
            span = scope.spans.add()
            span.trace_id = (n // 5 + 1).to_bytes(16, "big")
            span.span_id = n.to_bytes(8, "big")
            span.name = f"s{n}"
            span.start_time_unix_nano = now - (86_400 * 10**9 if n % 2 else 0)
            span.end_time_unix_nano = span.start_time_unix_nano + 1000
        ingestor.accept(WireFormat.PROTOBUF, request.SerializeToString(), time.time_ns())
    if point.startswith("published"):
        # a flush that got as far as publishing its parts, but not as far as the WAL checkpoint
        with ingestor._lock:
            ingestor.wal.rotate()
            entries = ingestor.buffer.take()
        paths = ingestor._write(entries)
        if point == "published-one-day":
            sorted(data_dir.glob("spans/*/*.parquet"))[-1].unlink()  # died between the two days' renames
    print("ready", flush=True)
    os._exit(0)
""")


def _crash(data_dir: Path, point: str, requests: int = 4) -> None:
    result = subprocess.run([sys.executable, "-c", _CRASHER, str(data_dir), point, str(requests)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "ready" in result.stdout, result.stderr


def _stored(data_dir: Path) -> tuple[int, int]:
    return duckdb.connect().execute("SELECT count(*), count(DISTINCT span_id) FROM read_parquet(?)",
                          [parquet_glob(data_dir)]).fetchall()[0]


def _restart_and_stop(data_dir: Path, more_spans: int = 0) -> dict:
    """Start a server on the directory, optionally send ``more_spans`` new spans, stop it (flushing)."""
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "3600"})
    server.start()
    health = server.health()
    if more_spans:
        request = ExportTraceServiceRequest()
        scope = request.resource_spans.add().scope_spans.add()
        for n in range(10_000, 10_000 + more_spans):
            span = scope.spans.add()
            span.trace_id, span.span_id, span.name = n.to_bytes(16, "big"), n.to_bytes(8, "big"), "late"
            span.start_time_unix_nano = time.time_ns()
        assert server.post("/v1/traces", request.SerializeToString(),
                           {"Content-Type": "application/x-protobuf"}).status_code == 200
    assert server.stop() == 0
    return health


def test_crash_before_any_flush_replays_the_wal(data_dir: Path) -> None:
    _crash(data_dir, "accepted")
    assert not list(data_dir.glob("spans/*/*.parquet"))
    _restart_and_stop(data_dir)
    assert _stored(data_dir) == (200, 200)


@pytest.mark.parametrize("point", ["published", "published-one-day"])
def test_crash_between_publish_and_wal_retirement_leaves_no_duplicate(data_dir: Path, point: str) -> None:
    _crash(data_dir, point)
    published = sorted(p.name for p in data_dir.glob("spans/*/*.parquet"))
    assert published  # the crash happened after at least one part was visible
    # New spans arrive before the next flush, so a naive replay would flush old and new records as one new
    # range beside the published parts; the interrupted range must be rewritten on its own instead.
    _restart_and_stop(data_dir, more_spans=50)
    assert _stored(data_dir) == (250, 250)
    names = [p.name for p in data_dir.glob("spans/*/*.parquet")]
    assert set(published) <= set(names)
    assert len(names) == 3  # the rewritten range (two days) and the new request's part


def test_torn_wal_tail_is_truncated_and_counted(data_dir: Path) -> None:
    _crash(data_dir, "accepted", requests=3)
    (segment,) = [p for p in (data_dir / "wal").glob(f"*{SEGMENT_SUFFIX}") if p.stat().st_size]
    with segment.open("ab") as f:  # the first bytes of a fourth record: a write cut short by the crash
        f.write(b"\x10\x27\x00\x00\xde\xad\xbe\xef\x04\x00")
    health = _restart_and_stop(data_dir)
    assert health["wal"]["truncated_tail_records"] == 1
    assert health["wal"]["corrupt_segments"] == []
    assert _stored(data_dir) == (150, 150)


def test_torn_tail_inside_the_last_record_loses_only_that_record(data_dir: Path) -> None:
    _crash(data_dir, "accepted", requests=3)
    (segment,) = [p for p in (data_dir / "wal").glob(f"*{SEGMENT_SUFFIX}") if p.stat().st_size]
    with segment.open("r+b") as f:
        f.truncate(segment.stat().st_size - 100)  # the last record's body is incomplete
    health = _restart_and_stop(data_dir)
    assert health["wal"]["truncated_tail_records"] == 1
    assert _stored(data_dir) == (100, 100)  # that request never got its 200: the crash came first


def test_corruption_before_the_tail_is_quarantined_and_reported(data_dir: Path) -> None:
    _crash(data_dir, "accepted", requests=3)
    (segment,) = [p for p in (data_dir / "wal").glob(f"*{SEGMENT_SUFFIX}") if p.stat().st_size]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte in the middle record
    segment.write_bytes(bytes(data))
    # a newer (empty) segment exists, so the damaged one is not the tail
    (data_dir / "wal" / f"{10**6:020d}{SEGMENT_SUFFIX}").write_bytes(b"")
    server = Server(data_dir)
    server.start()
    health = server.health()
    assert health["status"] == "degraded"
    assert len(health["wal"]["corrupt_segments"]) == 1
    assert list((data_dir / "quarantine").glob("wal-*"))
    assert server.stop() == 0
    assert _stored(data_dir) == (50, 50)  # the record before the damage is kept


def test_temp_and_footerless_parts_are_quarantined_never_read(data_dir: Path) -> None:
    _crash(data_dir, "published")
    day = sorted((data_dir / "spans").iterdir())[0]
    (day / "00000000000000000099-00000000000000000099.parquet.tmp").write_bytes(b"PAR1 half written")
    good = sorted(day.glob("*.parquet"))[0]
    (day / "00000000000000000100-00000000000000000100.parquet").write_bytes(good.read_bytes()[:-200])
    server = Server(data_dir)
    server.start()
    quarantined = server.health()["quarantined"]
    assert server.stop() == 0
    assert len(quarantined) == 2
    assert not list(data_dir.glob("spans/*/*.tmp"))
    assert _stored(data_dir) == (200, 200)  # DuckDB reads every remaining part without error


def test_second_server_on_the_same_dir_exits_fast_with_a_clear_message(server: Server) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "msgtrace", "ingest", "--port", str(free_port()), "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=10,
    )
    assert time.monotonic() - started < 2.0
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by msgtrace process" in lines[0], result.stderr
    assert str(server.proc.pid) in lines[0]  # type: ignore[union-attr]
    assert httpx.get(f"{server.url}/health").status_code == 200  # the first one is untouched


def test_lock_is_released_by_a_killed_process(data_dir: Path) -> None:
    server = Server(data_dir)
    server.start()
    server.kill()
    assert os.path.exists(data_dir / "LOCK")
    server.start()  # the kernel dropped the flock with the process
    assert server.stop() == 0
