"""A stalled flush against the real server over HTTP: the Parquet side of the store sits on a loop-mounted ext4
filesystem that the test freezes (``fsfreeze``: every write to it blocks, as on a hung disk), while the WAL, on
another filesystem, keeps working. Clients keep sending. Then:

- once the budget is used (the buffer's in one run, the WAL's in the other), the answer is 503 + ``Retry-After``,
  and the buffer / WAL stop growing;
- never a 200 whose spans later go missing: every acknowledged request is stored whole, exactly once;
- requests that are accepted are acknowledged fast: p99 < 1 s over the whole run, stall included;
- within 5 s of the disk thawing, the backlog is flushed and every client is served again.

And a hung disk shown in ``/health`` (the WAL's or the Parquet side's filesystem frozen): ``/health`` keeps answering
within 100 ms throughout, says ``degraded`` with ``storage.stalled`` once the blocked write/fsync is older than
``storage_stall_seconds``, a new request then gets a 503 at once when it is the WAL that hangs, and ``/health`` is
``ok`` again within 5 s of the thaw.

No test hook in the server: the stall is a real frozen filesystem. Without root or loop devices the test is skipped
with the reason. ``MSGTRACE_STRESS=1`` holds the stall longer and repeats it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Server
from tests.faults import LoadClients, LoopFilesystem, assert_stored_once, collector_paused

STRESS = os.environ.get("MSGTRACE_STRESS") == "1"
STALLS = 3 if STRESS else 1
REFUSING_SECONDS = 6.0 if STRESS else 2.0  # how long the stall goes on once the first 503 is seen
CLIENTS = 4
SPANS_PER_REQUEST = 200
PAUSE = 0.01  # between a client's requests
ACK_P99_LIMIT = 1.0
RECOVERY_LIMIT = 5.0
HEALTH_LIMIT = 0.1  # seconds /health may take, hung disk or not
STALL_SECONDS = 5.0  # storage_stall_seconds (the default)
MiB = 2**20

BUDGETS = {
    # the in-memory buffer runs out first
    "buffer": {"MSGTRACE_BUFFER_LIMIT_BYTES": str(12 * MiB), "MSGTRACE_FLUSH_BYTES": str(3 * MiB)},
    # the WAL runs out first (the buffer budget stays at its default, 96 MiB)
    "wal": {"MSGTRACE_WAL_LIMIT_BYTES": str(12 * MiB)},
}


def request_body(client: int, seq: int) -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    for i in range(SPANS_PER_REQUEST):
        span = scope.spans.add()
        span.span_id = bytes([client + 1]) + seq.to_bytes(4, "big") + i.to_bytes(3, "big")
        span.trace_id = bytes([client + 1]) + seq.to_bytes(4, "big") + bytes(10) + bytes([i // 20 + 1])
        span.name = "llm.call"
        span.start_time_unix_nano, span.end_time_unix_nano = now + i, now + i + 1_000_000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.prompt", f"{client}/{seq}/{i} {os.urandom(16).hex()} " + "p" * 300
    return request.SerializeToString()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.fixture
def spans_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """data/spans/ on its own small filesystem (the one that will stall); data/wal/ stays on the test's disk."""
    with LoopFilesystem(image=tmp_path / "spans.img", mountpoint=tmp_path / "data" / "spans", size_mib=256) as fs:
        yield fs


@pytest.mark.parametrize("budget", BUDGETS)
def test_stalled_flush_refuses_with_503_and_recovers(spans_disk: LoopFilesystem, budget: str) -> None:
    data_dir = spans_disk.mountpoint.parent
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "0.2", **BUDGETS[budget]})
    server.start()
    limit = int(BUDGETS[budget].get("MSGTRACE_BUFFER_LIMIT_BYTES") or BUDGETS[budget]["MSGTRACE_WAL_LIMIT_BYTES"])
    stalls: list[dict[str, float]] = []
    try:
        with LoadClients(server.url, request_body, CLIENTS, PAUSE) as clients:
            assert clients.wait_for(lambda: len(clients.acked) >= 20, 15), clients.bad[:5]
            for _ in range(STALLS):
                with spans_disk.frozen(limit=60):
                    frozen_at = time.monotonic()
                    assert clients.wait_for(lambda t=frozen_at: any(a.status == 503 and a.sent > t
                                                                    for a in clients.answers), 30), \
                        "the budget was never used up"
                    refused_at = time.monotonic()
                    peak = 0
                    while time.monotonic() < refused_at + REFUSING_SECONDS:  # the budget holds
                        health = server.health()
                        used = (health["buffer"]["pending_bytes"] + health["buffer"]["flushing_bytes"]
                                if budget == "buffer" else health["wal"]["bytes"])
                        peak = max(peak, used)
                        time.sleep(0.1)
                    thawed_at = time.monotonic()
                # Recovery: the backlog flushed (budget free again) and every client served again.
                recovered = clients.wait_for(lambda t=thawed_at: clients.served_since(t) == CLIENTS,
                                             RECOVERY_LIMIT)
                health = server.health()
                while time.monotonic() < thawed_at + RECOVERY_LIMIT and health["buffer"]["flushing_bytes"]:
                    time.sleep(0.05)
                    health = server.health()
                recovered_at = time.monotonic()
                assert recovered, f"not every client was served within {RECOVERY_LIMIT} s of the thaw"
                assert health["buffer"]["flushing_bytes"] == 0, health["buffer"]
                assert health["flush"]["last_flush_unix"] > time.time() - (recovered_at - thawed_at) - 0.5
                time.sleep(RECOVERY_LIMIT)  # keep the load on: no 503 once recovered (checked below)
                stalls.append({"first_503_after_freeze_s": round(refused_at - frozen_at, 2),
                               "peak_budget_used_mib": round(peak / MiB, 2),
                               "recovered_after_thaw_s": round(recovered_at - thawed_at, 2),
                               "frozen_at": frozen_at, "thawed_at": thawed_at})
    finally:
        spans_disk.thaw()
        code = server.stop()
    assert code == 0, server.log.read_text()[-3000:]

    statuses = Counter(a.status for a in clients.answers)
    acked_latencies = [a.answered - a.sent for a in clients.answers if a.status == 200]
    refused_latencies = [a.answered - a.sent for a in clients.answers if a.status == 503]
    print(f"stalled flush ({budget} budget): {dict(statuses)}; ack p99 {p99(acked_latencies) * 1000:.0f} ms, "
          f"max {max(acked_latencies) * 1000:.0f} ms; 503 p99 {p99(refused_latencies) * 1000:.0f} ms; "
          f"stalls: {[{k: v for k, v in s.items() if k not in ('frozen_at', 'thawed_at')} for s in stalls]}")
    assert not clients.bad, clients.bad[:5]  # only 200 and 503
    assert set(statuses) == {200, 503}, statuses
    assert all(a.retry_after == "1" for a in clients.answers if a.status == 503)
    assert p99(acked_latencies) < ACK_P99_LIMIT
    assert p99(refused_latencies) < ACK_P99_LIMIT
    for stall in stalls:
        # The budget held: it was not overrun by more than the requests in flight when it ran out.
        assert stall["peak_budget_used_mib"] * MiB < limit + 4 * MiB, stall
        assert stall["recovered_after_thaw_s"] < RECOVERY_LIMIT, stall
    # 503s only for requests sent while the disk was frozen or within the recovery limit after the thaw: never in
    # normal running, and never once recovered (the load goes on for RECOVERY_LIMIT after each recovery).
    late = [a.sent for a in clients.answers if a.status == 503 and not any(
        st["frozen_at"] <= a.sent <= st["thawed_at"] + RECOVERY_LIMIT for st in stalls)]
    assert not late, f"{len(late)} request(s) refused outside the stalls and their recovery"

    # Never a 200 whose spans went missing: every acked request stored whole, exactly once.
    assert assert_stored_once(data_dir, clients.acked, clients.sent, SPANS_PER_REQUEST) > 0


@pytest.fixture(params=["wal", "spans"])
def hung_disk(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """data/wal/ (appends and fsyncs will block) or data/spans/ (the flush will) on its own filesystem."""
    with LoopFilesystem(image=tmp_path / f"{request.param}.img", mountpoint=tmp_path / "data" / request.param,
                        size_mib=64) as fs:
        yield fs


def test_health_shows_a_hung_disk(hung_disk: LoopFilesystem) -> None:
    disk, hung = hung_disk, hung_disk.mountpoint.name
    data_dir = disk.mountpoint.parent
    server = Server(data_dir)
    timings: list[float] = []  # seconds each /health took
    try:
        server.start()
        with collector_paused(), httpx.Client(base_url=server.url, timeout=5) as http, \
                LoadClients(server.url, request_body, 2, 0.05) as clients:

            def health() -> dict:
                started = time.monotonic()
                response = http.get("/health")
                timings.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
                return response.json()

            assert clients.wait_for(lambda: len(clients.acked) >= 5, 15), clients.bad[:5]
            state = health()
            assert state["storage"]["stalled"] is False
            # The fields a monitor reads are documented in the endpoint's OpenAPI description.
            described = http.get("/openapi.json").json()["paths"]["/health"]["get"]["description"]
            undocumented = [k for k in [*state["storage"], *state["ingest"]] if f"`{k}`" not in described]
            assert not undocumented, undocumented
            with disk.frozen(limit=60):
                frozen_at = time.monotonic()
                while not (state := health())["storage"]["stalled"] and time.monotonic() < frozen_at + 3 * STALL_SECONDS:
                    time.sleep(0.05)
                stalled_after = time.monotonic() - frozen_at
                assert state["storage"]["stalled"], state["storage"]
                assert state["status"] == "degraded"
                age = state["storage"]["wal_io_seconds" if hung == "wal" else "flush_io_seconds"]
                assert STALL_SECONDS <= age <= stalled_after + 0.5, state["storage"]
                if hung == "wal":  # a new request is refused at once instead of waiting on the disk
                    sent = time.monotonic()
                    refused = http.post("/v1/traces", content=request_body(99, 0),
                                        headers={"Content-Type": "application/x-protobuf"})
                    assert (refused.status_code, refused.headers.get("retry-after")) == (503, "1"), refused.text
                    assert time.monotonic() - sent < 1.0
                for _ in range(10):  # and /health keeps answering fast while the disk stays hung
                    assert health()["storage"]["stalled"]
                    time.sleep(0.05)
                thawed_at = time.monotonic()
            while (state := health())["status"] != "ok" and time.monotonic() < thawed_at + RECOVERY_LIMIT:
                time.sleep(0.05)
            recovered_after = time.monotonic() - thawed_at
            assert state["status"] == "ok", state
            assert state["storage"]["stalled"] is False
            assert clients.wait_for(lambda: clients.served_since(thawed_at) == 2, RECOVERY_LIMIT)
    finally:
        disk.thaw()
        code = server.stop() if server.proc is not None else 0
    assert code == 0, server.log.read_text()[-3000:]
    print(f"hung {hung} disk: stalled shown after {stalled_after:.2f} s, ok {recovered_after:.2f} s after the thaw; "
          f"/health {len(timings)} times, max {max(timings) * 1000:.0f} ms, p99 {p99(timings) * 1000:.0f} ms")
    assert max(timings) < HEALTH_LIMIT, f"/health took up to {max(timings) * 1000:.0f} ms"
    assert recovered_after < RECOVERY_LIMIT
    # Requests that waited on the hung disk were answered (or timed out) but nothing acked was lost or doubled.
    assert assert_stored_once(data_dir, clients.acked, clients.sent, SPANS_PER_REQUEST) > 0
