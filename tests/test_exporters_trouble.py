"""Real OpenTelemetry Python exporters through server trouble: nothing lost, nothing stored twice.

Each OpenTelemetry Python release under test (1.39.x, and the newest, 1.45.x) gets its own virtualenv with
``opentelemetry-sdk`` and the matching ``opentelemetry-exporter-otlp-proto-http`` (built once per module; pip's cache
is shared). A client program in it sends 5,000 spans (1,000 traces of 5) at ~300 spans/s through the stock
``OTLPSpanExporter`` (protobuf, no compression, 10 s timeout) behind a default ``BatchSpanProcessor`` (queue 2,048,
batches of 512, every 5 s or when 512 are queued: at 300/s, one export every ~1.7 s), to a real ``msgtrace ingest``
on 127.0.0.1, while the server has trouble:

- overload: for 3 s every request is answered 503 + ``Retry-After: 1``. The overload is real: ``data/spans/`` sits
  on a loop-mounted ext4 filesystem that the test freezes (``fsfreeze``), so the flush stalls, and the buffer budget
  (``MSGTRACE_BUFFER_LIMIT_BYTES``, 64 KiB here so that one request fills it) is used up by a request the test sends
  right after freezing; the server refuses everything else until the disk thaws. The window opens 0.5 s after an
  export got through, so the next export meets it ~1.2 s in and is refused until it ends.
- restart: SIGTERM (a graceful stop that flushes), then a new server on the same port and data directory:
  (1) serving again 5 s after the SIGTERM, with the listening socket held by the test as a supervisor would
  (systemd socket activation, see msgtrace/server/run.py), so connections wait in the kernel's backlog meanwhile;
  (2) with the port closed in between (connections refused), restarted at once: it must be back within 2.4 s.

Afterwards plain DuckDB over the Parquet parts, and then the store's views, must hold each of the client's 5,000
spans exactly once (and each trace whole).

What the exporters do with trouble (read in their sources in the virtualenvs):

- 1.39 (``opentelemetry/exporter/otlp/proto/http/trace_exporter/__init__.py``): any 5xx (and 408) is retried with
  exponential back-off, 2**n s × a random 0.8-1.2 (1, 2, 4, 8 s), up to 6 tries, while the back-off fits in the 10 s
  timeout; ``Retry-After`` is ignored; 429 is not retried at all. A refused connection is retried once at once
  (meant for a stale keep-alive connection); the second ``ConnectionError`` escapes ``export()`` and the
  ``BatchSpanProcessor`` logs "Exception while exporting Span." and drops the batch. So any restart with the port
  closed loses the batches 1.39 tries to export meanwhile (measured: 3 batches, 1,536 spans, in a 5 s restart);
  that case is skipped. With the socket held, its request simply waits and succeeds.
- 1.45 (``opentelemetry/exporter/otlp/common/http.py``, ``_OTLPHTTPClient.export``): 429, 502, 503 and 504 are
  retried, waiting ``Retry-After`` when the answer has one (else the same jittered 1, 2, 4, 8 s), up to 6 tries
  within the 10 s timeout, and it gives up at once when the wait would not fit in the time left. With our
  ``Retry-After: 1`` that is six tries in ~5 s: an overload longer than that loses the batch (without the header,
  the back-off would have reached ~7 s). Connection errors (refused, reset, timeouts) are retried once at once,
  then with the jittered back-off, the last try 5.6-8.4 s after the first refusal.
- Both: while an export retries, the processor's worker is blocked and new spans queue: 2,048 at most, the oldest
  dropped silently beyond that, i.e. after ~6.8 s at 300 spans/s. That, not the server, bounds what can pass:
  a 5 s restart with the port closed made 1.45 wait for its 5.6-8.4 s retry and lost 413 queued spans in one run
  of three (so it is not tested: with exponential back-off, only an outage under ~2.4 s is always safe); an
  overload that starts just before an export can make 1.39 (deaf to ``Retry-After``) back off 5.6-8.4 s too,
  hence the overload's phase above.

``MSGTRACE_STRESS=1`` sends 15,000 spans and has the trouble three times.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import msgtrace
from tests.conftest import Server
from tests.faults import LoopFilesystem, stored_span_counts

pytestmark = pytest.mark.slow

STRESS = os.environ.get("MSGTRACE_STRESS") == "1"
TROUBLES = 3 if STRESS else 1
SPANS = 5_000 * TROUBLES
SPANS_PER_TRACE = 5
RATE = 300.0  # spans per second
FIRST_TROUBLE_AFTER = 4.0  # seconds of normal sending first (two or three exports)
TROUBLE_EVERY = SPANS / RATE / TROUBLES  # the next trouble, that long after the previous one began
OVERLOAD_SECONDS = 3.0
OVERLOAD_PHASE = 0.5  # the overload starts this long after an export got through (see the module docstring)
RESTART_SECONDS = 5.0  # from the SIGTERM to the new server answering, with the port held
QUICK_RESTART_LIMIT = 2.4  # from the SIGTERM to the new server answering, with the port closed (ditto)
RECOVERY_LIMIT = 5.0
VERSIONS = {"1.39": "1.39.*", "1.45": "1.45.*"}  # 1.45.2 is the newest on PyPI as of this writing
INSTALL_TIMEOUT = 300
SERVICE = "exporter-trouble"

CLIENT = r'''
import importlib.metadata, json, logging, sys, time

import requests
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

endpoint, total, rate, per_trace, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(created).3f %(name)s %(levelname)s %(message)s")

exports = []


class Recording(OTLPSpanExporter):
    """The stock exporter, noting how each export went (the batch processor only logs failures)."""

    def export(self, spans):
        started = time.time()
        try:
            result = super().export(spans)
        except BaseException as exc:
            exports.append([len(spans), "raised " + type(exc).__name__, started, time.time()])
            raise
        exports.append([len(spans), result.name, started, time.time()])
        return result


session = requests.Session()
session.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
provider = TracerProvider(resource=Resource.create({"service.name": sys.argv[6]}))
provider.add_span_processor(BatchSpanProcessor(Recording(endpoint=endpoint, session=session)))  # the defaults
tracer = provider.get_tracer("tests.exporters_trouble")

spans = []
print("started", flush=True)
t0 = time.monotonic()
n = 0
while n < total:
    with tracer.start_as_current_span("agent.run", attributes={"workflow.name": "trouble"}) as root:
        for k in range(per_trace):
            delay = t0 + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if k == per_trace - 1:
                break  # the root itself is the last span of the trace
            with tracer.start_as_current_span("llm.call", attributes={"span.index": n}) as child:
                ctx = child.get_span_context()
                spans.append([format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")])
            n += 1
        ctx = root.get_span_context()
    spans.append([format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")])
    n += 1
sending = time.monotonic() - t0
flushed = provider.force_flush(60_000)
provider.shutdown()
versions = {p: importlib.metadata.version(p) for p in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")}
with open(out, "w") as f:
    json.dump({"versions": versions, "sending_seconds": sending, "flushed": flushed, "spans": spans,
               "exports": exports}, f)
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith(("MSGTRACE_", "OTEL_"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost")
    return env


@pytest.fixture(scope="module", params=list(VERSIONS))
def otel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(version, python of a virtualenv with that OpenTelemetry SDK and OTLP/HTTP exporter)."""
    version = request.param
    path = tmp_path_factory.mktemp(f"otel-{version}") / "venv"
    for args, timeout in (([sys.executable, "-m", "venv", str(path)], 120),
                          ([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"opentelemetry-sdk=={VERSIONS[version]}",
                            f"opentelemetry-exporter-otlp-proto-http=={VERSIONS[version]}"], INSTALL_TIMEOUT)):
        proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return version, path / "bin" / "python"


class SupervisedServer(Server):
    """A server whose listening socket the test holds and hands over, as systemd socket activation does: across a
    restart the port keeps accepting, and connections wait in the backlog until the new process serves them."""

    LAUNCH = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd != 3 and os.close(fd); "
              "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
              "os.execv(sys.executable, [sys.executable, '-m', 'msgtrace', *sys.argv[2:]])")

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        super().__init__(data_dir, port=self.sock.getsockname()[1], env=env)

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.LAUNCH, str(self.sock.fileno()), "ingest", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--log-level", "warning"]

    def pass_fds(self) -> tuple[int, ...]:
        return (self.sock.fileno(),)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def spans_disk(tmp_path: Path) -> Iterator[LoopFilesystem]:
    with LoopFilesystem(image=tmp_path / "spans.img", mountpoint=tmp_path / "data" / "spans", size_mib=64) as fs:
        yield fs


def probe(server: Server) -> int:
    """POST an empty export (no spans, so nothing is stored): 200 if the server takes requests now, else 503."""
    return httpx.post(f"{server.url}/v1/traces", content=b"", headers={"Content-Type": "application/x-protobuf"},
                      timeout=10).status_code


def await_export(server: Server, timeout: float = 10.0) -> None:
    """Return as soon as the next export from the client has been taken (a new WAL record: the empty probes and
    /health polls add none)."""
    seen = server.health()["wal"]["next_seq"]
    deadline = time.monotonic() + timeout
    while server.health()["wal"]["next_seq"] == seen:
        assert time.monotonic() < deadline, "the client exported nothing"
        time.sleep(0.01)


def filler_request(first: int, n: int = 300) -> tuple[bytes, list[str]]:
    """A request big enough to use up a 64 KiB buffer budget; returns it and its span ids."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    now = time.time_ns()
    ids = []
    for i in range(first, first + n):
        span = scope.spans.add()
        span.trace_id, span.span_id, span.name = (0xF0 << 120 | i).to_bytes(16, "big"), (0xF0 << 56 | i).to_bytes(
            8, "big"), "filler"
        span.start_time_unix_nano, span.end_time_unix_nano = now, now + 1000
        kv = span.attributes.add()
        kv.key, kv.value.string_value = "gen_ai.prompt", "f" * 400
        ids.append(span.span_id.hex())
    return request.SerializeToString(), ids


def run_client(python: Path, server: Server, tmp_path: Path, trouble: Callable[[int], None]) -> tuple[dict, str]:
    """Run the client program, calling ``trouble(i)`` TROUBLES times while it sends; returns its report and log."""
    out, err = tmp_path / "client.json", tmp_path / "client.stderr"
    program = tmp_path / "client.py"
    program.write_text(CLIENT)
    with err.open("wb") as stderr:
        proc = subprocess.Popen([str(python), str(program), f"{server.url}/v1/traces", str(SPANS), str(RATE),
                                 str(SPANS_PER_TRACE), str(out), SERVICE],
                                env=_env(), stdout=subprocess.PIPE, stderr=stderr, cwd=tmp_path)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"started", err.read_text()[-3000:]
            began = time.monotonic()
            for i in range(TROUBLES):
                time.sleep(max(0.0, began + FIRST_TROUBLE_AFTER + i * TROUBLE_EVERY - time.monotonic()))
                trouble(i)
            proc.wait(timeout=SPANS / RATE + 90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    log = err.read_text()
    assert proc.returncode == 0, log[-3000:]
    return json.loads(out.read_text()), log


def check_stored(data_dir: Path, report: dict, version: str, extra_span_ids: list[str] = ()) -> None:  # type: ignore[assignment]
    """The client's spans (and ``extra_span_ids``), each stored exactly once, in the files and in the views."""
    assert report["versions"]["opentelemetry-sdk"].startswith(version + "."), report["versions"]
    assert report["versions"]["opentelemetry-exporter-otlp-proto-http"].startswith(version + "."), report["versions"]
    sent = [span_id for _, span_id in report["spans"]]
    assert len(sent) == len(set(sent)) == SPANS
    counts = stored_span_counts(data_dir)
    twice = {k: n for k, n in counts.items() if n != 1}
    assert not twice, f"{len(twice)} span(s) stored more than once, e.g. {list(twice.items())[:3]}"
    missing = set(sent) - counts.keys()
    failed = [e for e in report["exports"] if e[1] != "SUCCESS"]
    assert not missing, (f"{len(missing)} of {SPANS} spans not stored; exports that failed: {failed}; "
                         f"the processor drops spans silently when its queue (2,048) overflows")
    assert set(extra_span_ids) <= counts.keys()
    assert counts.keys() == set(sent) | set(extra_span_ids), "spans stored that nobody sent"

    traces = {trace_id for trace_id, _ in report["spans"]}
    with msgtrace.open(data_dir) as store:
        viewed = store.query(
            "SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans WHERE service_name = ?",
            [SERVICE]).table.to_pylist()
        trace_rows = store.query(
            "SELECT count(*) AS n, min(span_count) AS lo, max(span_count) AS hi FROM traces "
            "WHERE service_name = ?", [SERVICE]).table.to_pylist()
    assert viewed == [{"n": SPANS, "d": SPANS}], viewed
    assert trace_rows == [{"n": len(traces), "lo": SPANS_PER_TRACE, "hi": SPANS_PER_TRACE}], trace_rows


def exporter_log_summary(log: str) -> dict[str, int]:
    return {
        "retry_warnings": len(re.findall(r"Transient error .* retrying in", log)),
        "retries_after_503": len(re.findall(r"Transient error Service Unavailable", log)),
        "refused": log.count("Connection refused"),
        "failed_exports": len(re.findall(r"Failed to export|Exception while exporting", log)),
    }


def test_overload_window(otel: tuple[str, Path], spans_disk: LoopFilesystem, tmp_path: Path) -> None:
    """3 s of 503 + Retry-After: 1 while the flush is stalled; every span stored exactly once."""
    version, python = otel
    data_dir = spans_disk.mountpoint.parent
    server = Server(data_dir, env={"MSGTRACE_BUFFER_LIMIT_BYTES": str(64 * 1024),
                                   "MSGTRACE_FLUSH_BYTES": str(32 * 1024)})
    server.start()
    fillers: list[str] = []
    windows: list[dict[str, float]] = []

    def overload(i: int) -> None:
        await_export(server)
        time.sleep(OVERLOAD_PHASE)
        with spans_disk.frozen(limit=60):
            for attempt in range(3):  # once, unless an export slipped in between and took the budget itself
                body, ids = filler_request(i * 1000 + attempt * 300)
                filled = httpx.post(f"{server.url}/v1/traces", content=body,
                                    headers={"Content-Type": "application/x-protobuf"}, timeout=10)
                assert filled.status_code in (200, 503), filled.text
                if filled.status_code == 200:  # taken: its flush now hangs on the frozen disk
                    fillers.extend(ids)
                if probe(server) == 503:  # the budget is used up: everything is refused from now on
                    break
            else:
                pytest.fail("the frozen flush did not use up the buffer budget")
            refused_at = time.monotonic()
            time.sleep(max(0.0, refused_at + OVERLOAD_SECONDS - time.monotonic()))
            assert probe(server) == 503
        thawed_at = time.monotonic()
        while probe(server) != 200 and time.monotonic() < thawed_at + RECOVERY_LIMIT:
            time.sleep(0.05)
        windows.append({"refusing_s": round(thawed_at - refused_at, 2),
                        "recovered_after_thaw_s": round(time.monotonic() - thawed_at, 2)})

    try:
        report, log = run_client(python, server, tmp_path, overload)
    finally:
        spans_disk.thaw()
        code = server.stop()
    assert code == 0, server.log.read_text()[-3000:]
    summary = exporter_log_summary(log)
    print(f"OTel {report['versions']['opentelemetry-sdk']} overload: windows {windows}; exporter log {summary}; "
          f"{len(report['exports'])} exports, slowest {max(e[3] - e[2] for e in report['exports']):.1f} s")
    assert all(w["recovered_after_thaw_s"] < RECOVERY_LIMIT for w in windows), windows
    assert summary["retries_after_503"] >= TROUBLES, log[-3000:]  # the exporter did run into the 503s
    assert summary["failed_exports"] == 0, log[-3000:]
    assert report["flushed"] and all(e[1] == "SUCCESS" for e in report["exports"]), report["exports"]
    check_stored(data_dir, report, version, fillers)


@pytest.mark.parametrize("restart", ["port-held-5s", "port-closed-quick"])
def test_restart(otel: tuple[str, Path], restart: str, data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM, then a new server on the same port and data directory: with the port held by a supervisor, serving
    again 5 s after the SIGTERM; with the port closed in between, as quickly as the server restarts. Every span
    stored exactly once."""
    version, python = otel
    held = restart == "port-held-5s"
    if not held and version == "1.39":
        pytest.skip("OTel 1.39 drops a batch when the connection is refused twice in a row (see the module "
                    "docstring): no server can make that pass; 'port-held-5s' is the restart it survives")
    server = SupervisedServer(data_dir) if held else Server(data_dir)
    first_start = server.start()
    outages: list[float] = []

    def restart_server(i: int) -> None:
        if not held:  # stop just before the next export is due (every ~1.7 s), so that it meets the closed port
            await_export(server)
            time.sleep(1.2)
        sigterm_at = time.monotonic()
        assert server.stop() == 0
        if held:
            # Launch the new server so that it serves RESTART_SECONDS after the SIGTERM (its start-up takes about
            # as long as the first one did).
            time.sleep(max(0.0, sigterm_at + RESTART_SECONDS - first_start - time.monotonic()))
        server.start()
        outages.append(round(time.monotonic() - sigterm_at, 2))

    try:
        report, log = run_client(python, server, tmp_path, restart_server)
    finally:
        code = server.stop() if server.proc is not None else 0
        if isinstance(server, SupervisedServer):
            server.close()
    assert code == 0, server.log.read_text()[-3000:]
    summary = exporter_log_summary(log)
    print(f"OTel {report['versions']['opentelemetry-sdk']} restart, {restart}: outages {outages} s "
          f"(first start {first_start:.2f} s); exporter log {summary}; {len(report['exports'])} exports, slowest "
          f"{max(e[3] - e[2] for e in report['exports']):.1f} s")
    if held:
        assert all(RESTART_SECONDS - 1.0 < o < RESTART_SECONDS + 2.0 for o in outages), outages  # a real ~5 s one
        assert sum(e[3] - e[2] > 1.0 for e in report["exports"]) >= TROUBLES, report["exports"]  # an export waited
    else:
        # Longer, and 1.45's back-off after a refusal (1, 2, then 4 s) can hold its queue for up to 8.4 s: more
        # than 2,048 spans at 300/s, dropped in the client.
        assert all(o < QUICK_RESTART_LIMIT for o in outages), f"restarts took {outages} s"
        assert summary["refused"] >= TROUBLES, log[-3000:]  # the exporter met the closed port
    assert summary["failed_exports"] == 0, log[-3000:]
    assert report["flushed"] and all(e[1] == "SUCCESS" for e in report["exports"]), report["exports"]
    check_stored(data_dir, report, version)
