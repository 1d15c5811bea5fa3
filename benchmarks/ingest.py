"""Ingest benchmark: end-to-end OTLP/HTTP → Parquet rate against the real server, next to the in-process decode rate.

    python benchmarks/ingest.py                       # ~200,000 spans, 4 client threads, 512 spans per request
    python benchmarks/ingest.py --spans 50000 --clients 8 --client-mode process
    python benchmarks/ingest.py --profile /tmp/server.txt   # also py-spy the server (raw collapsed stacks)

What it does, in order (see benchmarks/README.md for what each figure means):

1. builds the workload (msgtrace/synthetic.py) and pre-serializes every request body before any timing;
2. starts ``python -m msgtrace ingest`` on a free port and a fresh data directory (default fsync policy ``batch``),
   POSTs the bodies from N keep-alive clients, counts spans of 200 responses only, then SIGTERMs the server (which
   flushes everything to Parquet) and counts the drain in the durable rate; samples the server's RSS every 50 ms;
3. checks with DuckDB that every acknowledged span is in Parquet exactly once;
4. times ``decode_request`` over the same bodies in this process (one core) and the bytes on disk per span.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

from msgtrace.synthetic import Workload, build_workload, describe  # noqa: E402

TARGETS = {"e2e_spans_per_s": 30_000, "e2e_pct_of_inprocess": 40.0, "disk_pct_of_protobuf": 25.0, "peak_rss_mb": 400}
PATH = "/v1/traces"
HEADERS = {"Content-Type": "application/x-protobuf"}


# --- machine ---------------------------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("msgtrace", "pyarrow", "duckdb", "protobuf", "fastapi", "uvicorn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    commit = "-"
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or "-"
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({len(os.sched_getaffinity(0))} usable)",
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "commit": commit,
    }


# --- load generation -------------------------------------------------------------------------------------------
@dataclass
class ClientResult:
    ok_spans: int = 0
    ok_requests: int = 0
    ok_body_bytes: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # first few non-200 bodies / exceptions
    last_ok: float = 0.0  # perf_counter of the last 200 this client got

    def merge(self, other: ClientResult) -> None:
        self.ok_spans += other.ok_spans
        self.ok_requests += other.ok_requests
        self.ok_body_bytes += other.ok_body_bytes
        self.latencies.extend(other.latencies)
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        self.errors.extend(other.errors[: max(0, 5 - len(self.errors))])
        self.last_ok = max(self.last_ok, other.last_ok)


def _client_loop(port: int, bodies: list[bytes], counts: list[int], next_index, deadline: float,
                 start: threading.Event | mp.synchronize.Event) -> ClientResult:  # type: ignore[name-defined]
    """One keep-alive connection; takes the next request index from ``next_index()`` until none is left."""
    res = ClientResult()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start.wait()
    clock = time.perf_counter
    while True:
        i = next_index()
        if i is None or i >= len(bodies) or clock() > deadline:
            break
        body = bodies[i]
        t0 = clock()
        try:
            conn.request("POST", PATH, body=body, headers=HEADERS)
            resp = conn.getresponse()
            payload = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            status, payload = type(exc).__name__, b""
            if len(res.errors) < 5:
                res.errors.append(f"request {i}: {exc!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t1 = clock()
        res.statuses[str(status)] = res.statuses.get(str(status), 0) + 1
        if status == 200:
            res.ok_spans += counts[i]
            res.ok_requests += 1
            res.ok_body_bytes += len(body)
            res.latencies.append(t1 - t0)
            res.last_ok = t1
        elif len(res.errors) < 5 and payload:
            res.errors.append(f"request {i}: HTTP {status}: {payload[:200]!r}")
    conn.close()
    return res


def _process_client(port, bodies, counts, counter, lock, deadline, start, ready, out) -> None:  # type: ignore[no-untyped-def]
    def next_index() -> int:
        with lock:
            i = counter.value
            counter.value = i + 1
        return i

    class _Gate:  # tell the parent this client is connected, then wait for the start signal
        def wait(self) -> None:
            ready.release()
            start.wait()

    out.put(_client_loop(port, bodies, counts, next_index, deadline, _Gate()))


def run_clients(mode: str, n: int, port: int, w: Workload, max_seconds: float) -> tuple[ClientResult, float, float,
                                                                                      float]:
    """Returns (merged result, start perf_counter, end perf_counter, client CPU seconds used)."""
    merged = ClientResult()
    me = psutil.Process()
    if mode == "thread":
        counter = itertools.count()
        lock = threading.Lock()

        def next_index() -> int:
            with lock:
                return next(counter)

        start = threading.Event()
        results: list[ClientResult] = []
        deadline = time.perf_counter() + 0.3 + max_seconds  # the load phase starts after a 0.3 s connect pause

        def worker() -> None:
            results.append(_client_loop(port, w.bodies, w.spans_per_body, next_index, deadline, start))

        threads = [threading.Thread(target=worker, name=f"client-{k}") for k in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # let them connect
        cpu0 = sum(me.cpu_times()[:2])
        t_start = time.perf_counter()
        start.set()
        for t in threads:
            t.join()
        t_end = time.perf_counter()
        cpu = sum(me.cpu_times()[:2]) - cpu0
        for r in results:
            merged.merge(r)
    else:
        ctx = mp.get_context("fork")  # bodies are inherited, not pickled
        counter, lock = ctx.Value("q", 0, lock=False), ctx.Lock()
        start, ready, out = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
        deadline = time.perf_counter() + max_seconds + 2  # plus the time the processes take to connect
        procs = [ctx.Process(target=_process_client, args=(port, w.bodies, w.spans_per_body, counter, lock,
                                                           deadline, start, ready, out)) for _ in range(n)]
        for p in procs:
            p.start()
        for _ in procs:
            ready.acquire()
        ps = [psutil.Process(p.pid) for p in procs]
        cpu0 = sum(sum(p.cpu_times()[:2]) for p in ps)
        t_start = time.perf_counter()
        start.set()
        results = [out.get() for _ in procs]
        t_end = time.perf_counter()
        cpu = 0.0
        for p in ps:
            with contextlib.suppress(psutil.Error):
                cpu += sum(p.cpu_times()[:2])
        cpu -= cpu0
        for p in procs:
            p.join()
        for r in results:
            merged.merge(r)
    return merged, t_start, t_end, cpu


# --- server ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def busy_seconds() -> tuple[float, float]:
    """(CPU-seconds the whole machine spent busy, of which stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0), getattr(t, "steal", 0.0)


def wait_quiet(max_wait: float, threshold: float = 0.15) -> float:
    """Wait (up to ``max_wait`` s) until the machine is idle: other processes below ``threshold`` cores for 2 s."""
    end = time.monotonic() + max_wait
    while True:
        b0 = busy_seconds()[0]
        time.sleep(2.0)
        load = (busy_seconds()[0] - b0) / 2.0
        if load < threshold or time.monotonic() > end:
            return load


def get_health(port: int, timeout: float = 2.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


class RssSampler(threading.Thread):
    """Max RSS of a process and its children, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.proc.memory_info().rss
                for c in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += c.memory_info().rss
            except psutil.Error:
                break
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class EndToEnd:
    result: ClientResult
    seconds_to_last_ack: float
    seconds_durable: float
    drain_seconds: float
    server_cpu_seconds: float
    client_cpu_seconds: float
    other_cpu_seconds: float  # everything else on the machine during the load phase (other processes, kernel)
    steal_seconds: float
    peak_rss_mb: float
    idle_rss_mb: float
    server_exit: int | None
    server_log: str
    data_dir: Path
    health_before_stop: dict


def run_end_to_end(w: Workload, args: argparse.Namespace, root: Path) -> EndToEnd:
    data_dir = root / "data"
    port = free_port()
    log_path = root / "server.log"
    cmd = [sys.executable, "-m", "msgtrace", "ingest", "--port", str(port), "--data-dir", str(data_dir),
           "--log-level", "warning"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    profiler = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                if get_health(port)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not answer /health within 60 s")
            time.sleep(0.1)
        proc = psutil.Process(server.pid)
        idle_rss = proc.memory_info().rss
        sampler = RssSampler(server.pid)
        sampler.start()
        if args.profile:
            fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(Path(args.profile).suffix, "raw")
            profiler = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "-o", args.profile,
                                         "--format", fmt, "--rate", "100", "--threads", *args.pyspy_args.split()],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
        srv_cpu0 = sum(proc.cpu_times()[:2])
        busy0, steal0 = busy_seconds()
        result, t_start, t_end, client_cpu = run_clients(args.client_mode, args.clients, port, w, args.seconds)
        busy1, steal1 = busy_seconds()
        srv_cpu = sum(proc.cpu_times()[:2]) - srv_cpu0
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                profiler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                profiler.kill()
            err = profiler.stderr.read().decode(errors="replace") if profiler.stderr else ""
            if profiler.returncode not in (0, None) and not Path(args.profile).exists():
                print(f"py-spy failed ({profiler.returncode}): {err[-500:]}", file=sys.stderr)
        try:
            health = get_health(port)[1]
        except (OSError, http.client.HTTPException, ValueError) as exc:
            health = {"error": repr(exc)}
        t_stop = time.perf_counter()
        server.send_signal(signal.SIGTERM)  # the server flushes every buffered span to Parquet before exiting
        try:
            server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        t_drained = time.perf_counter()
        sampler.stop()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
    last_ack = (result.last_ok or t_end) - t_start
    return EndToEnd(
        result=result, seconds_to_last_ack=last_ack, seconds_durable=t_drained - t_start,
        drain_seconds=t_drained - t_stop, server_cpu_seconds=srv_cpu, client_cpu_seconds=client_cpu,
        other_cpu_seconds=max(0.0, busy1 - busy0 - srv_cpu - client_cpu), steal_seconds=steal1 - steal0,
        peak_rss_mb=sampler.peak / 2**20, idle_rss_mb=idle_rss / 2**20, server_exit=server.returncode,
        server_log=log_path.read_text(errors="replace"), data_dir=data_dir, health_before_stop=health,
    )


# --- in-process decode -----------------------------------------------------------------------------------------
def run_inprocess(w: Workload, repeat: int) -> tuple[float, float]:
    """Spans/s and seconds of decode_request (protobuf → Arrow) over every body, on this one thread."""
    from msgtrace.ingest.decode import WireFormat, decode_request

    max_value = 1 << 20
    for body in w.bodies[:8]:  # warm up: imports, caches, allocator
        decode_request(WireFormat.PROTOBUF, body, time.time_ns(), max_value)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        n = 0
        for body in w.bodies:
            n += decode_request(WireFormat.PROTOBUF, body, time.time_ns(), max_value).num_spans
        best = min(best, time.perf_counter() - t)
        if n != w.total_spans:
            raise AssertionError(f"decode_request returned {n} spans, the workload has {w.total_spans}")
    return w.total_spans / best, best


# --- verification ----------------------------------------------------------------------------------------------
def verify(data_dir: Path) -> tuple[int, int, int, int]:
    """(rows, distinct (trace_id, span_id), parquet files, parquet bytes) of the store."""
    import duckdb

    files = sorted((data_dir / "spans").glob("*/*.parquet"))
    size = sum(f.stat().st_size for f in files)
    if not files:
        return 0, 0, 0, 0
    con = duckdb.connect()
    rows, distinct = con.execute(
        "SELECT count(*), count(DISTINCT (trace_id, span_id)) FROM read_parquet(?)",
        [str(data_dir / "spans" / "*" / "*.parquet")],
    ).fetchone()
    return rows, distinct, len(files), size


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- main ------------------------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description="msgtrace ingest benchmark (end to end vs in-process).")
    p.add_argument("--spans", type=int, default=200_000, help="spans to send (rounded up to whole requests)")
    p.add_argument("--clients", type=int, default=4, help="concurrent keep-alive HTTP clients")
    p.add_argument("--client-mode", choices=("thread", "process"), default="thread")
    p.add_argument("--batch", type=int, default=512, help="spans per request")
    p.add_argument("--seconds", type=float, default=120.0, help="hard stop for the load phase")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeat", type=int, default=3, help="passes of the in-process decode (best is kept)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="first wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--profile", help="py-spy the server during the load phase into this file "
                                     "(.svg flamegraph, .json speedscope, else raw collapsed stacks)")
    p.add_argument("--pyspy-args", default="", help="with --profile: extra py-spy record flags, e.g. '--native' "
                                                   "or '--gil'")
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = p.parse_args()

    print("== machine")
    for k, v in machine().items():
        print(f"  {k:<9} {v}")

    t = time.perf_counter()
    w = build_workload(args.spans, args.batch, args.seed)
    gen_s = time.perf_counter() - t
    shape = describe(w)
    print(f"\n== workload (seed {args.seed}, built and serialized in {gen_s:.1f} s, before any timing)")
    print(f"  {shape['requests']} requests x {args.batch} spans = {w.total_spans:,} spans in {shape['traces']:,} "
          f"traces ({shape['spans_per_trace']} spans/trace), {shape['error_spans_pct']} % ERROR spans")
    print(f"  span types {shape['span_types']}")
    print(f"  protobuf: {w.total_bytes / 2**20:.1f} MiB, {w.bytes_per_span:.0f} bytes/span, "
          f"{w.total_bytes / len(w.bodies) / 1024:.0f} KiB/request")

    root = Path(tempfile.mkdtemp(prefix="msgtrace-bench-"))
    failures: list[str] = []
    try:
        print(f"\n== 1. end to end: {args.clients} {args.client_mode} clients -> msgtrace ingest (fsync=batch) "
              f"-> Parquet   [data dir {root}]")
        if args.wait_quiet:
            load = wait_quiet(args.wait_quiet)
            print(f"  machine load before the run: {load:.2f} cores busy")
        e = run_end_to_end(w, args, root)
        r = e.result
        n_req = sum(r.statuses.values())
        ack_rate = r.ok_spans / e.seconds_to_last_ack if e.seconds_to_last_ack > 0 else 0.0
        durable_rate = r.ok_spans / e.seconds_durable if e.seconds_durable > 0 else 0.0
        print(f"  requests sent {n_req}, statuses {r.statuses}; acked spans {r.ok_spans:,}"
              f"{'' if n_req == len(w.bodies) else f' (stopped early: {n_req} of {len(w.bodies)} requests)'}")
        print(f"  ack rate            {ack_rate:>10,.0f} spans/s   ({r.ok_spans:,} spans in {e.seconds_to_last_ack:.2f} s "
              f"to the last 200; {r.ok_body_bytes / e.seconds_to_last_ack / 2**20:.1f} MiB/s of protobuf)")
        print(f"  durable rate        {durable_rate:>10,.0f} spans/s   (first request -> server exited after "
              f"SIGTERM with everything in Parquet: {e.seconds_durable:.2f} s, of which drain {e.drain_seconds:.2f} s)"
              f"   target >= {TARGETS['e2e_spans_per_s']:,}: {verdict(durable_rate >= TARGETS['e2e_spans_per_s'])}")
        lat = [x * 1000 for x in r.latencies]
        print(f"  request latency     p50 {pct(lat, 50):.1f} ms   p95 {pct(lat, 95):.1f} ms   p99 {pct(lat, 99):.1f} ms"
              f"   max {max(lat) if lat else float('nan'):.1f} ms   ({len(lat)} requests of {args.batch} spans)")
        busy = e.seconds_to_last_ack
        print(f"  CPU during load     server {e.server_cpu_seconds:.1f} s ({100 * e.server_cpu_seconds / busy:.0f} % of one "
              f"core, {1e6 * e.server_cpu_seconds / max(r.ok_spans, 1):.1f} us/span), load generator "
              f"{e.client_cpu_seconds:.1f} s ({100 * e.client_cpu_seconds / busy:.0f} % of one core), everything else "
              f"{e.other_cpu_seconds:.1f} s ({100 * e.other_cpu_seconds / busy:.0f} % of one core; steal "
              f"{e.steal_seconds:.1f} s)")
        if e.other_cpu_seconds / busy > 0.15:
            print("  WARNING: other processes used the CPUs during the run; the figures are not representative")
        print(f"  peak server RSS     {e.peak_rss_mb:.0f} MB   (idle after start {e.idle_rss_mb:.0f} MB, sampled "
              f"every 50 ms)   target <= {TARGETS['peak_rss_mb']} MB: {verdict(e.peak_rss_mb <= TARGETS['peak_rss_mb'])}")
        hb = e.health_before_stop
        if "buffer" in hb:
            print(f"  /health before SIGTERM: pending_spans {hb['buffer']['pending_spans']:,}, flushes "
                  f"{hb['flush']['flushes']}, spans_written {hb['flush']['spans_written']:,}, "
                  f"duplicates_dropped {hb['flush']['duplicates_dropped']}, flush errors {hb['flush']['errors']}")
        print(f"  server exit code {e.server_exit}")
        log_lines = [ln for ln in e.server_log.splitlines() if ln.strip()]
        if log_lines:
            print(f"  server log ({len(log_lines)} lines, last 10):")
            for ln in log_lines[-10:]:
                print(f"    {ln[:200]}")
        for err in r.errors:
            print(f"  client error: {err}")
        if r.ok_requests != n_req:
            failures.append(f"{n_req - r.ok_requests} request(s) did not get 200")
        if e.server_exit != 0:
            failures.append(f"server exit code {e.server_exit}")

        print("\n== verification (duckdb over the Parquet files)")
        rows, distinct, files, size = verify(e.data_dir)
        ok = rows == r.ok_spans and distinct == rows
        print(f"  SELECT count(*) = {rows:,}; count(DISTINCT (trace_id, span_id)) = {distinct:,}; acked = "
              f"{r.ok_spans:,}   -> {'OK: every acked span is in Parquet exactly once' if ok else 'MISMATCH'}")
        if not ok:
            failures.append(f"Parquet holds {rows} rows ({distinct} distinct), {r.ok_spans} were acked")

        print("\n== 2. in-process decode_request (protobuf -> Arrow), one thread, same bodies")
        rate, secs = run_inprocess(w, args.repeat)
        ratio = 100 * durable_rate / rate
        print(f"  in-process rate     {rate:>10,.0f} spans/s   ({w.total_spans:,} spans in {secs:.2f} s, "
              f"{w.total_bytes / secs / 2**20:.1f} MiB/s of protobuf)")
        print(f"  end to end / in-process = {ratio:.1f} % (durable rate), {100 * ack_rate / rate:.1f} % (ack rate)"
              f"   target >= {TARGETS['e2e_pct_of_inprocess']:.0f} %: {verdict(ratio >= TARGETS['e2e_pct_of_inprocess'])}")

        print("\n== 3. bytes on disk")
        disk_per_span = size / max(rows, 1)
        pb_per_span = r.ok_body_bytes / max(r.ok_spans, 1)
        disk_pct = 100 * disk_per_span / pb_per_span if pb_per_span else float("nan")
        print(f"  Parquet             {size / 2**20:.1f} MiB in {files} file(s) = {disk_per_span:.0f} bytes/span")
        print(f"  OTLP protobuf       {pb_per_span:.0f} bytes/span received")
        print(f"  on disk / protobuf = {disk_pct:.1f} %   target <= {TARGETS['disk_pct_of_protobuf']:.0f} %: "
              f"{verdict(disk_pct <= TARGETS['disk_pct_of_protobuf'])}")

        print("\n== summary                                    measured        target   verdict")
        rows_out = [
            ("end-to-end durable rate (spans/s)", f"{durable_rate:,.0f}", f">= {TARGETS['e2e_spans_per_s']:,}",
             durable_rate >= TARGETS["e2e_spans_per_s"]),
            ("end to end / in-process decode", f"{ratio:.1f} %", f">= {TARGETS['e2e_pct_of_inprocess']:.0f} %",
             ratio >= TARGETS["e2e_pct_of_inprocess"]),
            ("Parquet bytes / protobuf bytes", f"{disk_pct:.1f} %", f"<= {TARGETS['disk_pct_of_protobuf']:.0f} %",
             disk_pct <= TARGETS["disk_pct_of_protobuf"]),
            ("peak server RSS", f"{e.peak_rss_mb:.0f} MB", f"<= {TARGETS['peak_rss_mb']} MB",
             e.peak_rss_mb <= TARGETS["peak_rss_mb"]),
        ]
        for label, value, target, good in rows_out:
            print(f"  {label:<40} {value:>12}  {target:>12}   {verdict(good)}")
        print(f"  (ack rate {ack_rate:,.0f} spans/s; in-process {rate:,.0f} spans/s; latency p50/p95/p99 "
              f"{pct(lat, 50):.0f}/{pct(lat, 95):.0f}/{pct(lat, 99):.0f} ms; "
              f"{disk_per_span:.0f} of {pb_per_span:.0f} bytes/span)")
        if args.profile:
            print(f"  server profile: {args.profile}")
    finally:
        if args.keep:
            print(f"\n(data kept in {root})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
