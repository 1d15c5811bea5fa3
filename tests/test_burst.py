"""A burst far beyond what the server can take: 20 clients send 20 MiB OTLP requests back to back for 60 s against
one real ``msgtrace ingest`` (default settings), a quarter of them gzipped. The server must

- stay up, with a peak RSS (the process and any children, sampled every 50 ms) under 768 MiB,
- refuse the excess with 503 + ``Retry-After`` *before reading the body*, so before decompressing or decoding it:
  the server counts the bodies it decoded and the requests it refused unread (``/health`` → ``ingest``), and the
  test holds those counts to what the clients saw: decoded = the 200s, refused unread = the 503s. A refusal moved
  after the body is read or parsed makes the counts differ and fails the test;
- keep every acknowledged span, exactly once, and nothing of a refused request,
- answer every accepted request within the 10 s an OTel exporter waits (a later 200 is lost on the client, which
  then sends the batch again).

A client that gets a 503 sends the same request again (as OTel exporters retry a batch), after ``RETRY_PAUSE``
rather than the advertised second, to keep the pressure on; after a 200 it sends a new one. Every client is
bounded in time (``DURATION``) and in requests (``MAX_REQUESTS``). ``MSGTRACE_STRESS=1`` runs for 180 s.

Found and fixed with this test: with a 256 MiB in-flight budget and every admitted request decoding at once, the
server reached 3.4 GB (a dozen 20 MiB requests at ~6x their size each; now one decodes at a time, the others wait as
bodies: msgtrace/server/admission.py); background compaction merging the burst's parts on top of that took the
server from ~600 MB to 1.7 GB (it now waits while ingest refuses requests: msgtrace/storage/maintenance.py);
admitted requests then queued for 7-10 s (now refused when the decode queue is over 2 s long); each body was copied
once more on its way to the WAL; and every 503 was logged, ~4,000 lines a minute.
"""

from __future__ import annotations

import os
import random
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Server
from tests.faults import RssSampler, assert_stored_once

STRESS = os.environ.get("MSGTRACE_STRESS") == "1"
DURATION = 180.0 if STRESS else 60.0
CLIENTS = 20
GZIP_EVERY = 4  # clients 0, 4, 8, … gzip their requests
MiB = 2**20
REQUEST_BYTES = 20 * MiB  # of protobuf, before gzip
MAX_REQUESTS = 5_000  # per client, whatever the rate
RETRY_PAUSE = 0.05
RSS_LIMIT = 768 * MiB
EXPORTER_TIMEOUT = 10.0  # seconds an OTel exporter waits for an answer
# The spans' ids hold a 5-byte placeholder (span ids start with it, trace ids end with it) that each request replaces
# with its own (client, request): one template serialised once, so that making a 20 MiB request costs the test a
# copy, not a protobuf build.
PLACEHOLDER = b"\xfe\xfd\xfc\xfb\xfa"


def template(size: int) -> tuple[bytes, int]:
    """An ``ExportTraceServiceRequest`` of about ``size`` bytes of LLM spans; returns it and its span count."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    kv = resource_spans.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "burst"
    scope = resource_spans.scope_spans.add()
    rnd = random.Random(7)
    words = [rnd.randbytes(6).hex() for _ in range(2000)]  # prompts gzip ~3:1, like real text
    now = time.time_ns()
    n = 0
    while request.ByteSize() < size - 4096:
        for _ in range(100):
            span = scope.spans.add()
            span.span_id = PLACEHOLDER + n.to_bytes(3, "big")
            if n % 20 == 0:  # traces of 20 spans, with random ids as real clients make them
                trace_id = rnd.randbytes(11) + PLACEHOLDER
            span.trace_id = trace_id
            span.name = "llm.call"
            span.start_time_unix_nano, span.end_time_unix_nano = now + n, now + n + 1_000_000
            for key, value in (("gen_ai.request.model", "gpt-4o"), ("gen_ai.system", "openai"),
                               ("gen_ai.prompt", " ".join(rnd.choices(words, k=110)))):
                kv = span.attributes.add()
                kv.key, kv.value.string_value = key, value
            kv = span.attributes.add()
            kv.key, kv.value.int_value = "gen_ai.usage.input_tokens", n % 1000
            n += 1
    body = request.SerializeToString()
    assert body.count(PLACEHOLDER) == 2 * n  # nowhere but in the ids
    return body, n


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def prefix(client: int, seq: int) -> bytes:
    return bytes([client + 1]) + seq.to_bytes(4, "big")


@dataclass
class Burst:
    url: str
    body: bytes
    deadline: float
    sent: Counter = field(default_factory=Counter)  # status -> answers
    acked: set[tuple[int, int]] = field(default_factory=set)
    latencies: dict[int, list[float]] = field(default_factory=lambda: {200: [], 503: []})  # seconds, by status
    wire_bytes: int = 0
    bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, client: int) -> None:
        gzipped = client % GZIP_EVERY == 0
        seq, body = 0, None
        with httpx.Client(timeout=30.0) as http:
            for _ in range(MAX_REQUESTS):
                if time.monotonic() > self.deadline:
                    return
                if body is None:  # a new request; after a 503 the same one again
                    body = self.body.replace(PLACEHOLDER, prefix(client, seq))
                    if gzipped:
                        body = zlib.compress(body, 1, wbits=31)
                headers = {"Content-Type": "application/x-protobuf"}
                if gzipped:
                    headers["Content-Encoding"] = "gzip"
                sent = time.monotonic()
                try:
                    response = http.post(f"{self.url}/v1/traces", content=body, headers=headers)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.bad.append(f"client {client}: {type(exc).__name__}: {exc}")
                    return  # the outcome of that request is unknown; stop this client
                with self.lock:
                    self.sent[response.status_code] += 1
                    self.latencies.setdefault(response.status_code, []).append(time.monotonic() - sent)
                    self.wire_bytes += len(body)
                    if response.status_code == 200:
                        self.acked.add((client, seq))
                    elif response.status_code != 503 or response.headers.get("retry-after") != "1":
                        self.bad.append(f"client {client}: {response.status_code} "
                                        f"retry-after={response.headers.get('retry-after')}: {response.text[:200]}")
                if response.status_code == 200:
                    seq, body = seq + 1, None
                else:
                    time.sleep(RETRY_PAUSE)


def test_burst_of_20_mib_requests(tmp_path: Path) -> None:
    body, spans_per_request = template(REQUEST_BYTES)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    server.start()
    assert server.proc is not None
    rss = RssSampler(server.proc.pid, interval=0.05)
    rss.start()
    idle = server.health()
    burst = Burst(server.url, body, time.monotonic() + DURATION)
    threads = [threading.Thread(target=burst.client, args=(c,), daemon=True) for c in range(CLIENTS)]
    started = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=DURATION + 60)
        elapsed = time.monotonic() - started
        assert not any(t.is_alive() for t in threads), "a client did not finish"
        assert server.proc.poll() is None, server.log.read_text()[-3000:]
        health = server.health()
    finally:
        rss.stop()
        code = server.stop()
    assert code == 0, server.log.read_text()[-3000:]

    ingest, idle_ingest = health["ingest"], idle["ingest"]
    decoded = ingest["requests_decoded"] - idle_ingest["requests_decoded"]
    refused_unread = ingest["refused_unread"] - idle_ingest["refused_unread"]
    print(f"\nburst: {CLIENTS} clients x {REQUEST_BYTES // MiB} MiB ({spans_per_request} spans) for {elapsed:.0f} s: "
          f"answers {dict(burst.sent)}; {len(burst.acked) * spans_per_request} spans acked "
          f"({len(burst.acked) * REQUEST_BYTES / MiB / elapsed:.1f} MiB/s of protobuf); "
          f"{burst.wire_bytes / MiB / elapsed:.0f} MiB/s sent; server: decoded {decoded}, refused unread "
          f"{refused_unread}; compaction passes put off {health['compaction']['deferred_passes']}; peak RSS "
          f"{rss.peak / MiB:.0f} MiB ({rss.samples} samples, idle {rss.first / MiB:.0f} MiB); latency (s) "
          + ", ".join(f"{status}: p50 {quantile(v, 0.5):.2f} p99 {quantile(v, 0.99):.2f} max {max(v):.2f}"
                      for status, v in burst.latencies.items() if v))
    assert not burst.bad, burst.bad[:5]
    assert max(burst.latencies[200]) < EXPORTER_TIMEOUT
    assert rss.peak < RSS_LIMIT, f"peak RSS {rss.peak / MiB:.0f} MiB"
    assert burst.sent[200] >= CLIENTS, "the server took too little to tell anything"
    assert burst.sent[503] > burst.sent[200], "the burst never overloaded the server"
    assert set(burst.sent) == {200, 503}, burst.sent
    # Where the excess was refused: every 503 unread, and only the 200s decoded.
    assert refused_unread == burst.sent[503]
    assert decoded == burst.sent[200]

    # Every acked request stored whole, exactly once; nothing of a refused one (for these, "sent" = acked).
    assert assert_stored_once(data_dir, burst.acked, burst.acked, spans_per_request) == \
        len(burst.acked) * spans_per_request
