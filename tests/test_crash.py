"""kill -9 of the server during sustained ingest, at several random moments: after each restart the port answers
within 5 s, and in the end every span whose request got a 200 is stored exactly once (and nothing else appears).

Clients do not retry a request that got no answer: its spans may or may not be stored (the crash may have come
before or after its WAL append), but never twice, and never if they were not sent.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import duckdb
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Server, parquet_glob

CLIENTS = 4
SPANS_PER_REQUEST = 250
TARGET_ACKED_SPANS = 100_000
KILLS = 3
DEADLINE_SECONDS = 240


def _request(client: int, seq: int) -> bytes:
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    kv = resource.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", f"client-{client}"
    scope = resource.scope_spans.add()
    now = time.time_ns()
    for i in range(SPANS_PER_REQUEST):
        span = scope.spans.add()
        # span id = (client, request, index): unique, and decodable back to the request that carried it
        span.span_id = bytes([client + 1]) + seq.to_bytes(4, "big") + i.to_bytes(3, "big")
        span.trace_id = bytes([client + 1]) + seq.to_bytes(4, "big") + bytes(10) + bytes([i // 10 + 1])
        span.name = "llm.call" if i % 3 else "workflow"
        span.start_time_unix_nano = now + i
        span.end_time_unix_nano = now + i + 1_000_000
        attr = span.attributes.add()
        attr.key, attr.value.string_value = "gen_ai.prompt", f"prompt {seq}/{i} " + "x" * 200
    return request.SerializeToString()


class Load:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.acked: set[tuple[int, int]] = set()  # (client, request seq) that got a 200
        self.sent: set[tuple[int, int]] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run_client(self, client: int) -> None:
        seq = 0
        with httpx.Client(timeout=10.0) as http:
            while not self.stop.is_set():
                body = _request(client, seq)
                with self._lock:
                    self.sent.add((client, seq))
                try:
                    response = http.post(f"{self.server.url}/v1/traces", content=body,
                                         headers={"Content-Type": "application/x-protobuf"})
                except httpx.TransportError:
                    time.sleep(0.05)  # the server is down: move on to new spans, never resend these
                else:
                    if response.status_code == 200:
                        with self._lock:
                            self.acked.add((client, seq))
                    elif response.status_code != 503:
                        self.errors.append(f"{response.status_code}: {response.text[:200]}")
                seq += 1

    def acked_spans(self) -> int:
        with self._lock:
            return len(self.acked) * SPANS_PER_REQUEST


def test_kill_9_under_load_loses_and_duplicates_nothing(data_dir: Path) -> None:
    rng = random.Random(20261124)
    server = Server(data_dir, env={"MSGTRACE_FLUSH_INTERVAL": "0.5"})
    server.start()
    load = Load(server)
    threads = [threading.Thread(target=load.run_client, args=(c,), daemon=True) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE_SECONDS
    restarts = []
    try:
        for kill in range(KILLS):
            # a random moment: somewhere in this kill's share of the target, so kills land mid-flush too
            goal = TARGET_ACKED_SPANS * (kill + rng.uniform(0.3, 0.9)) / (KILLS + 1)
            while load.acked_spans() < goal and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            server.kill()
            restarts.append(server.start(timeout=15))
        while load.acked_spans() < TARGET_ACKED_SPANS and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=15)
    assert server.stop() == 0
    assert not load.errors, load.errors[:5]
    assert load.acked_spans() >= TARGET_ACKED_SPANS, "the load did not reach its target in time"
    assert max(restarts) < 5.0, restarts

    rows = duckdb.connect().execute(
        "SELECT span_id, count(*) FROM read_parquet(?) GROUP BY span_id", [parquet_glob(data_dir)]
    ).fetchall()
    counts = {bytes.fromhex(span_id): n for span_id, n in rows}
    duplicated = [k.hex() for k, n in counts.items() if n != 1]
    assert not duplicated, f"{len(duplicated)} span(s) stored more than once, e.g. {duplicated[:3]}"
    stored_requests = {(k[0] - 1, int.from_bytes(k[1:5], "big")) for k in counts}
    missing = load.acked - stored_requests
    assert not missing, f"{len(missing)} acknowledged request(s) lost, e.g. {sorted(missing)[:3]}"
    assert stored_requests <= load.sent
    # requests are stored whole or not at all
    per_request: dict[tuple[int, int], int] = {}
    for k in counts:
        key = (k[0] - 1, int.from_bytes(k[1:5], "big"))
        per_request[key] = per_request.get(key, 0) + 1
    assert set(per_request.values()) == {SPANS_PER_REQUEST}
