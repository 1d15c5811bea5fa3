"""Disk full, for real: the data directory lives on a small loop-mounted ext4 filesystem that ballast fills up
while clients keep sending, and the server (a real ``msgtrace ingest`` on 127.0.0.1) must

- answer 503 + ``Retry-After`` (never 500): at once when no WAL record fits any more; when only the inodes ran out
  (the open WAL segment still takes writes, no Parquet part or new segment can be created), once the buffer
  budget is used,
- never show a reader a torn Parquet file (plain DuckDB reads every part while the disk is full, and a restart
  afterwards finds nothing to quarantine),
- take requests again within 5 s of the ballast being deleted, retrying the failed flush about once a second,
- stop cleanly (exit 0) when SIGTERM comes while the disk is full, leaving the unflushed spans to the WAL,
- and keep every span it acknowledged: each acked request is stored whole, exactly once; nothing unsent appears.

No mocks: the ENOSPC comes from the kernel. Without root or loop devices the tests are skipped with the reason.
``MSGTRACE_STRESS=1`` fills and frees the disk three times.

Found and fixed with these tests (msgtrace/ingest/wal.py, pipeline.py): out of inodes, rotating the WAL closed
the active segment before the new one could be created, so the next append wrote to a closed descriptor and the
WAL failed for good (or, had the number been reused, wrote into another file); a flush failing between two day
partitions was retried with the requests taken meanwhile, so the part already published got its rows written a
second time under another name; a failed flush was retried on every incoming request instead of once a second;
a SIGTERM on a full disk ended in "Application shutdown failed" and an internal-error exit.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import FLUSH_RETRY_SECONDS, Ingestor
from tests.conftest import Server
from tests.faults import (
    LoadClients,
    LoopFilesystem,
    assert_stored_once,
    check_parts_readable,
    stored_span_counts,
)

STRESS = os.environ.get("MSGTRACE_STRESS") == "1"
ROUNDS = 3 if STRESS else 1
CLIENTS = 3
SPANS_PER_REQUEST = 100
PAUSE = 0.02  # between a client's requests: ~40 requests/s each, far below what the server can take
FULL_SECONDS = 3.0  # how long the disk stays full once the first 503 is seen
RESUME_LIMIT = 5.0  # seconds from freeing space to the next 200
DEADLINE = 60.0  # the whole load phase, whatever happens
DAY_NS = 86_400 * 10**9


def request_body(client: int, seq: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(SPANS_PER_REQUEST):
        # Half the spans start yesterday (late children are common): a flush then publishes two parts, and a disk
        # that fills up between them must not leave the first one to be written again under another name.
        start = now + i - (DAY_NS if i % 2 else 0)
        span = scope.spans.add()
        # span id = (client, request, index), so a stored span names the request that carried it
        span.span_id = bytes([client + 1]) + seq.to_bytes(4, "big") + i.to_bytes(3, "big")
        span.trace_id = bytes([client + 1]) + seq.to_bytes(4, "big") + bytes(11)
        span.name = "llm.call"
        span.start_time_unix_nano, span.end_time_unix_nano = start, start + 1_000_000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.prompt", f"{client}/{seq}/{i} {os.urandom(32).hex()} " + "x" * 300
    return request.SerializeToString()


@pytest.fixture
def full_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    with LoopFilesystem(image=tmp_path / "disk.img", mountpoint=tmp_path / "disk", size_mib=64) as fs:
        yield fs


# What runs out: every data block (a ballast file), or every inode (ballast files; writes to open files still
# work, creating a Parquet part, a WAL segment or the checkpoint does not). Out of inodes, the WAL keeps taking
# requests until the buffer budget (set small here, below the disk's size) is used: then 503.
EXHAUSTED = {
    "blocks": {},
    "inodes": {"MSGTRACE_BUFFER_LIMIT_BYTES": str(8 * 2**20), "MSGTRACE_FLUSH_BYTES": str(2 * 2**20)},
}


@pytest.mark.parametrize("exhausted", EXHAUSTED)
def test_disk_full_answers_503_keeps_acked_spans_and_resumes(full_disk: LoopFilesystem, exhausted: str) -> None:
    data_dir = full_disk.mountpoint / "data"
    data_dir.mkdir()
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "0.2", **EXHAUSTED[exhausted]})
    server.log = full_disk.image.parent / "server.log"  # the log must not need space on the full disk
    fill = full_disk.fill if exhausted == "blocks" else full_disk.fill_inodes
    server.start()
    rounds: list[dict[str, float]] = []
    try:
        with LoadClients(server.url, request_body, CLIENTS, PAUSE) as clients:
            assert clients.wait_for(lambda: len(clients.acked) >= 20, 15), clients.bad[:5]
            for _ in range(ROUNDS):
                errors_before = server.health()["flush"]["errors"]
                filled_at = time.monotonic()
                ballast = fill()
                assert clients.wait_for(lambda t=filled_at: any(a.status == 503 and a.answered > t for a in clients.answers),
                                        15), "no 503 while the disk was full"
                refused_at = next(a.answered for a in clients.answers if a.status == 503 and a.answered > filled_at)
                time.sleep(FULL_SECONDS)
                check_parts_readable(data_dir)  # every part a reader can see is whole, while the disk is full
                full_health = server.health()  # says why clients get 503s
                assert full_health["status"] == "degraded", full_health
                assert "No space left" in str(full_health["wal"]["write_error"] or full_health["flush"]["last_error"])
                freed_at = time.monotonic()
                full_disk.free()
                assert clients.wait_for(lambda t=freed_at: any(at > t for at in clients.acked.values()),
                                        RESUME_LIMIT), f"no 200 within {RESUME_LIMIT} s of freeing space"
                resumed_at = min(at for at in clients.acked.values() if at > freed_at)
                # Every client is served again (not just a lucky one), then some load on the recovered disk.
                assert clients.wait_for(lambda t=freed_at: clients.served_since(t) == CLIENTS, 10)
                deadline = time.monotonic() + RESUME_LIMIT
                while (health := server.health())["status"] != "ok" and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert health["status"] == "ok", health
                time.sleep(1.0)
                # A failing flush is retried about once a second, not once per incoming request.
                flush_errors = server.health()["flush"]["errors"] - errors_before
                assert flush_errors <= (resumed_at - filled_at) / FLUSH_RETRY_SECONDS + 3, flush_errors
                rounds.append({"ballast": ballast, "first_503_after_fill_s": round(refused_at - filled_at, 3),
                               "resume_after_free_s": round(resumed_at - freed_at, 3), "flush_errors": flush_errors})
                assert time.monotonic() - filled_at < DEADLINE
            # Last, a shutdown while the disk is full: the final flush cannot be written, the WAL keeps it all.
            fill()
            assert clients.wait_for(lambda t=time.monotonic(): any(a.status == 503 and a.answered > t
                                                                   for a in clients.answers), 15)
    finally:
        code = server.stop()
        full_disk.free()
    assert code == 0, server.log.read_text()[-3000:]

    statuses = Counter(a.status for a in clients.answers)
    print(f"disk full ({exhausted}): {dict(statuses)} answers; {len(clients.acked)} requests acked; "
          f"rounds: {rounds}")
    assert not clients.bad, clients.bad[:5]  # only 200 and 503, no transport errors, never a 500
    assert set(statuses) == {200, 503}, statuses
    assert all(a.retry_after == "1" for a in clients.answers if a.status == 503)
    assert max(r["resume_after_free_s"] for r in rounds) < RESUME_LIMIT

    # Space is back: a restart replays what the last shutdown could not flush, finds nothing torn to quarantine
    # and no corrupt WAL segment.
    server.start()
    try:
        health = server.health()
    finally:
        assert server.stop() == 0
    assert health["quarantined"] == [], health["quarantined"]
    assert health["wal"]["corrupt_segments"] == [], health["wal"]
    assert not list(data_dir.glob("spans/*/*.tmp"))

    # Every acked request stored whole, exactly once, and nothing that was not sent.
    assert check_parts_readable(data_dir) > 0
    assert assert_stored_once(data_dir, clients.acked, clients.sent, SPANS_PER_REQUEST) > 0


def test_flush_that_fills_the_disk_between_two_days_is_retried_as_the_same_range(tmp_path: Path) -> None:
    """One flush writes one part per day. When the disk fills up after the first part is published, the retry
    must write exactly the same WAL range again (same part names, so the published part is overwritten): a range
    grown by the requests accepted meanwhile would be published under new names next to the first part, and its
    rows would be on disk twice. In-process (an Ingestor), on a real small filesystem, so the moment is exact."""
    fs = LoopFilesystem(image=tmp_path / "disk.img", mountpoint=tmp_path / "disk", size_mib=16)
    fs.mount()
    ingestor = Ingestor(IngestConfig(data_dir=fs.mountpoint / "data", flush_interval=3600, compaction_interval=0))
    try:
        ingestor.start()
        now = time.time_ns()
        # one span yesterday (a small part, written first), 2,000 today (a part of ~1 MB, which will not fit)
        ingestor.accept(WireFormat.PROTOBUF, spans_body(0, 1, now - DAY_NS, 16), now)
        ingestor.accept(WireFormat.PROTOBUF, spans_body(1, 2000, now, 1000), now)
        fs.fill(leave=256 * 1024)
        with pytest.raises(OSError) as failed:
            ingestor.flush()
        assert failed.value.errno == errno.ENOSPC
        parts = sorted(p.name for p in (fs.mountpoint / "data" / "spans").glob("*/*.parquet"))
        assert len(parts) == 1, parts  # yesterday's part got published before the disk was full
        fs.free()
        ingestor.accept(WireFormat.PROTOBUF, spans_body(5000, 10, now - DAY_NS, 16), now)  # taken meanwhile
        assert ingestor.flush() == 2011
        ingestor.close()
        counts = stored_span_counts(fs.mountpoint / "data")
        assert len(counts) == 2011 and set(counts.values()) == {1}, Counter(counts.values())
    finally:
        ingestor.close()
        fs.unmount()


def spans_body(first: int, n: int, start_ns: int, value_bytes: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = (i + 1).to_bytes(16, "big"), (i + 1).to_bytes(8, "big"), "s"
        span.start_time_unix_nano, span.end_time_unix_nano = start_ns, start_ns + 1000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.prompt", os.urandom(value_bytes // 2).hex()
    return request.SerializeToString()
