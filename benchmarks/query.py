"""Query benchmark: trace lookup, first page of the trace list, span tree and stats by workflow on a generated store.

    python benchmarks/query.py                       # 1,000,000 spans over 7 days in a temp dir
    python benchmarks/query.py --data-dir /tmp/q1m   # build once into a directory, reuse it on later runs

The store is filled with the synthetic LLM-agent workload (``msgtrace.synthetic``) through the ingest pipeline
itself (decode → WAL → buffer → Parquet, the same writer the server uses), then queried through the Python API
(:class:`msgtrace.query.store.Store`, which the REST API and the CLI call) and, for the trace list, over HTTP
(``GET /api/v1/traces`` on a real server) when ``--http`` is given. Every figure is a wall-clock time on a warm
store (after one untimed run), p50/p95 over repeated runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.query.store import Store
from msgtrace.storage.retired import visible_parts
from msgtrace.synthetic import build_workload

DAY_NS = 86_400 * 10**9
TARGETS = {"lookup_p50_ms": 20, "first_page_ms": 100, "stats_workflow_ms": 300}  # issue 3, 1M spans
# issue 5, 10M spans over 30 days (used when the store holds 5M spans or more)
TARGETS_10M = {"lookup_p50_ms": 50, "lookup_p95_ms": 150, "stats_workflow_ms": 1000,
               "stats_workflow_last_day_ms": 100, "first_page_ms": 150, "compaction_spans_per_s": -200_000,
               "compaction_peak_rss_mb": 1024}


def build_store(data_dir: Path, spans: int, days: int, seed: int) -> None:
    """Fill ``data_dir`` with ``spans`` spans spread over ``days`` days, through the real ingest pipeline."""
    started = time.perf_counter()
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600))
    ingestor.start()
    now = time.time_ns()
    per_day = -(-spans // days)
    for day in range(days):
        workload = build_workload(per_day, 512, seed=seed + day, base_time_ns=now - day * DAY_NS,
                                  spread_ns=DAY_NS - 3_600 * 10**9)
        for body in workload.bodies:
            ingestor.accept(WireFormat.PROTOBUF, body, now)
            if ingestor.buffer.total_bytes > 32 * 1024 * 1024:
                ingestor.flush()
    ingestor.close()
    files = list(data_dir.glob("spans/*/*.parquet"))
    size = sum(f.stat().st_size for f in files)
    print(f"  built {spans:,} spans in {time.perf_counter() - started:.1f} s: {len(files)} Parquet files, "
          f"{size / 2**20:.1f} MiB")


def timed(fn, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    fn()  # warm
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(round(q * (len(values) - 1))), len(values) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, help="build here if empty, else reuse")
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--workers", type=int, default=1, help="msgtrace compact --workers")
    parser.add_argument("--skip-before", action="store_true", help="with --compact: measure after compaction only")
    parser.add_argument("--compact", action="store_true",
                        help="measure, run `msgtrace compact` (rate, peak RSS), measure again")
    args = parser.parse_args()

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="msgtrace-qbench-")
        args.data_dir = Path(tmp.name)
    print(f"== store {args.data_dir}")
    if not list(args.data_dir.glob("spans/*/*.parquet")):
        build_store(args.data_dir, args.spans, args.days, args.seed)
    store = Store(args.data_dir)
    total = store.query("SELECT count(*) AS n FROM spans_source").rows()[0]["n"]
    ids = [r["trace_id"] for r in store.query(
        f"SELECT DISTINCT trace_id FROM spans_source USING SAMPLE {args.lookups * 3} ROWS").rows()]
    store.close()
    print(f"  {total:,} spans; lookups of {len(ids[:args.lookups])} random traces")
    targets = TARGETS_10M if total >= 5_000_000 else TARGETS
    pick = ids[:args.lookups]

    results = {}
    if not args.skip_before:
        results["before"] = measure(args.data_dir, pick, full=not args.compact or total < 5_000_000)
    if args.compact:
        results["compaction"] = compact(args.data_dir, args.workers)
        results["after"] = measure(args.data_dir, pick)

    for phase in ("before", "compaction", "after"):
        if phase not in results:
            continue
        print(f"\n== {phase}{' compaction' if phase != 'compaction' else ''}"
              f"{'':<20} measured     target")
        for name, value in results[phase].items():
            target = targets.get(name)
            if target is None or phase == "before" and args.compact:
                verdict, shown = "", ""
            elif target < 0:  # a floor
                verdict, shown = ("PASS" if value >= -target else "MISS"), f">= {-target:,}"
            else:
                verdict, shown = ("PASS" if value <= target else "MISS"), f"<= {target:,}"
            print(f"  {name:<32} {value:>12,.1f}   {shown:>10}   {verdict}")
    if args.json:
        print(json.dumps(results))
    if tmp is not None:
        tmp.cleanup()
    sys.exit(0)


def measure(data_dir: Path, pick: list[str], *, full: bool = True) -> dict[str, float]:
    """Lookup and tree times; with ``full``, also the trace list and stats (before compaction at 10M spans these
    take longer than the 30 s query limit, so the before phase measures lookups only)."""
    store = Store(data_dir)
    parts = visible_parts(store.engine.layout)  # the files a query opens
    days = len({p.parent.name for p in parts}) or 1
    figures: dict[str, float] = {"files": len(parts), "files_per_day": len(parts) / days}
    it = iter(pick * 100)
    lookup = timed(lambda: store.trace_result(next(it)), len(pick))
    figures["lookup_p50_ms"], figures["lookup_p95_ms"] = pct(lookup, 0.5), pct(lookup, 0.95)
    tree = timed(lambda: store.tree_result(next(it)), max(len(pick) // 2, 1))
    figures["tree_p50_ms"], figures["tree_p95_ms"] = pct(tree, 0.5), pct(tree, 0.95)
    if not full:
        store.close()
        return figures
    page = timed(lambda: store.traces_result(limit=50), 5)
    figures["first_page_ms"] = statistics.median(page)
    stats = timed(lambda: store.stats_result("workflow"), 3)
    figures["stats_workflow_ms"] = statistics.median(stats)
    last_day = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 86_400))
    day = timed(lambda: store.stats_result("workflow", since=last_day), 5)
    figures["stats_workflow_last_day_ms"] = statistics.median(day)
    store.close()
    return figures


def compact(data_dir: Path, workers: int = 1) -> dict[str, float]:
    """``msgtrace compact`` in its own process; its peak RSS sampled every 20 ms."""
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "msgtrace", "compact", "--json", "--grace", "0", "--workers",
                             str(workers), "--data-dir", str(data_dir)], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):  # the process may exit between poll() and the sample
            peak = max(peak, ps.memory_info().rss)
        time.sleep(0.02)
    out = json.loads(proc.stdout.read())  # type: ignore[union-attr]
    return {"input_files": out["input_files"], "output_files": out["output_files"], "spans": out["input_rows"],
            "seconds": out["seconds"], "compaction_spans_per_s": out["input_rows"] / out["seconds"],
            "compaction_peak_rss_mb": peak / 2**20}


if __name__ == "__main__":
    main()
