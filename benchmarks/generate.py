"""Fill a store with N realistic spans over D days, the way a server that ran for D days would have left it.

    python benchmarks/generate.py --data-dir /tmp/s10m --spans 10000000 --days 30     # ~10M spans, ~5 min on 2 cores

Each day gets ``N / D`` spans of the synthetic LLM-agent workload (``msgtrace.synthetic``: 512-span OTLP protobuf
requests, traces spread over the day), decoded by the server's decoder (``decode_request``) and written by the
server's Parquet writer (``write_parts``) in flushes of 16 MiB of Arrow — the server's default flush size — so the
day ends with the same many small, trace-sorted parts a real server leaves before compaction. The WAL is skipped
(it is retired after every flush anyway). Days are filled by ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa

from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat, decode_request
from msgtrace.storage.files import write_bytes_atomic
from msgtrace.storage.layout import StoreLayout
from msgtrace.storage.writer import write_parts
from msgtrace.synthetic import build_workload

DAY_NS = 86_400 * 10**9
MiB = 1024 * 1024


def fill_day(data_dir: Path, day: int, spans: int, seed: int, now_ns: int) -> tuple[int, int]:
    """Write day ``day`` (0 = today) of the store; returns (spans, parts written)."""
    config = IngestConfig(data_dir=data_dir)
    layout = StoreLayout(data_dir)
    base = now_ns - day * DAY_NS
    # Traces of day N start within the hours before "now - N days"; clamp today's to the past.
    workload = build_workload(spans, 512, seed=seed * 1000 + day, base_time_ns=base, spread_ns=DAY_NS - 3_600 * 10**9)
    pending: list = []
    pending_bytes, written, parts, seq = 0, 0, 0, (day + 1) * 10**9
    for body in workload.bodies:
        built = decode_request(WireFormat.PROTOBUF, body, base, config.max_attribute_value_bytes)
        pending.append(built)
        pending_bytes += built.batch.nbytes
        if pending_bytes >= config.flush_bytes or body is workload.bodies[-1]:
            table = pa.Table.from_batches([b.batch for b in pending])
            days = pa.chunked_array([b.days for b in pending], pa.int32()).combine_chunks()
            first = seq
            seq += len(pending)
            parts += len(write_parts(layout, table, days, first, seq - 1, row_group_spans=config.row_group_spans,
                                     compression_level=config.parquet_compression_level))
            written += table.num_rows
            pending, pending_bytes = [], 0
    return written, parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--spans", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if list(args.data_dir.glob("spans/*/*.parquet")):
        sys.exit(f"{args.data_dir} already holds a store; choose an empty directory")
    StoreLayout(args.data_dir).create()
    started = time.perf_counter()
    now = time.time_ns()
    per_day = -(-args.spans // args.days)
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(pool.map(fill_day, [args.data_dir] * args.days, range(args.days), [per_day] * args.days,
                                [args.seed] * args.days, [now] * args.days))
    # As after the server's flushes: the WAL checkpoint covers every part (compaction only touches covered parts).
    write_bytes_atomic(StoreLayout(args.data_dir).wal_dir / "checkpoint", f"{(args.days + 1) * 10**9}\n".encode())
    spans = sum(r[0] for r in results)
    files = list(args.data_dir.glob("spans/*/*.parquet"))
    size = sum(f.stat().st_size for f in files)
    elapsed = time.perf_counter() - started
    print(f"{spans:,} spans over {args.days} days in {elapsed:.0f} s ({spans / elapsed:,.0f} spans/s): "
          f"{len(files):,} Parquet files ({len(files) / args.days:.0f} per day), {size / 2**20:,.0f} MiB, "
          f"{size / spans:.0f} bytes/span")


if __name__ == "__main__":
    main()
