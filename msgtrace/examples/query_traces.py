"""Analyse a msgtrace store from Python with msgtrace.open(), Polars and SQL: no server needed.

    python -m msgtrace.examples.query_traces                    # on a generated demo store
    python -m msgtrace.examples.query_traces --data-dir DIR     # on your store, e.g. ~/.local/share/msgtrace

Without --data-dir, about --spans (default 5,000) synthetic agent spans spread over the last 7 days
(msgtrace.synthetic: several services, workflows and models, about 3 % failing steps) are written into a temporary
store through the real ingest pipeline, analysed, and deleted.

Each answer is one call on the store:

    store.traces(...)          the newest traces, and the slowest failed ones
    store.tree(trace_id)       the slowest trace as a tree
    store.stats(by=...)        latency percentiles, tokens and cost per workflow and per model
    store.spans()              a Polars LazyFrame over every span: here, the steps that fail most
    store.sql("SELECT ...")    SQL over the views, with bound parameters: spend per day
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from msgtrace.examples import ArgumentParser, bounded_int

PROG = "python -m msgtrace.examples.query_traces"
DEMO_SPANS = 5_000
DAY_NS = 86_400 * 10**9

# Each trace's spend goes to the day the trace started: counted by its spans' own days, a run across midnight UTC
# would count on both.
SPEND_PER_DAY = """
WITH s AS (SELECT trace_id, model, total_tokens, cost, min(start_time) OVER (PARTITION BY trace_id) AS started
           FROM spans)
SELECT CAST(started AS DATE) AS day, count(DISTINCT trace_id) AS traces, count(model) AS llm_calls,
       sum(total_tokens) AS tokens, round(sum(cost), 4) AS cost_usd
FROM s
WHERE started >= $since
GROUP BY ALL
ORDER BY day
"""


def build_demo_store(data_dir: Path, spans: int) -> int:
    """Write about ``spans`` synthetic spans (whole requests of 512) into a store at ``data_dir``, through the ingest
    pipeline the server runs; returns how many."""
    from msgtrace.config import IngestConfig
    from msgtrace.ingest.decode import WireFormat
    from msgtrace.ingest.pipeline import Ingestor
    from msgtrace.synthetic import build_workload

    workload = build_workload(spans, 512, seed=7, spread_ns=7 * DAY_NS)
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600))
    ingestor.start()
    try:
        for body in workload.bodies:
            ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
            if ingestor.buffer.total_bytes > 32 * 2**20:
                ingestor.flush()
    finally:
        ingestor.close()  # writes the rest to <data_dir>/spans/date=*/*.parquet
    return workload.total_spans


def analyse(store: Any) -> None:
    """Print the answers; copes with an empty store."""
    import polars as pl

    title("The newest traces: store.traces(limit=5)")
    columns = ["start_time", "trace_id", "workflow", "span_count", "error_count", "duration_ms", "total_tokens",
               "cost"]
    readable = [pl.col("start_time").dt.truncate("1s"), pl.col("duration_ms").round(1), pl.col("cost").round(4)]
    show(store.traces(limit=5).select(columns).with_columns(readable))
    title('The slowest failed traces: store.traces(status="error", sort="duration", limit=3)')
    show(store.traces(status="error", sort="duration", limit=3).select(columns).with_columns(readable))

    slowest = store.traces(sort="duration", limit=1)
    if slowest.height:
        trace_id = slowest["trace_id"][0]
        title(f"The slowest trace as a tree: store.tree({trace_id!r})")
        tree = store.tree(trace_id).with_columns(
            (pl.lit("  ").repeat_by("depth").list.join("") + pl.col("name")).alias("span"))
        show(tree.select("span", pl.col("duration_ms").round(1), "status_code", "model", "total_tokens",
                         pl.col("cost").round(6)))

    stat_columns = ["count", "errors", "p50_ms", "p95_ms", "input_tokens", "output_tokens", "cost"]
    readable = [pl.col("p50_ms").round(1), pl.col("p95_ms").round(1), pl.col("cost").round(6)]
    title('Per workflow (count = traces): store.stats(by="workflow")')
    show(store.stats(by="workflow").select("workflow", *stat_columns).with_columns(readable))
    title('Per model (count = LLM calls): store.stats(by="model")')
    show(store.stats(by="model").select("model", *stat_columns).with_columns(readable))

    title("The steps that fail most, a Polars LazyFrame: store.spans().group_by(\"name\")...")
    failing = (store.spans()
               .group_by("name")
               .agg(pl.len().alias("spans"), pl.col("is_error").sum().alias("errors"),
                    pl.col("duration_ms").median().round(1).alias("p50_ms"))
               .filter(pl.col("errors") > 0)
               .with_columns((100 * pl.col("errors") / pl.col("spans")).round(1).alias("error_%"))
               .sort(["errors", "spans", "name"], descending=[True, True, False])
               .head(10)
               .collect())
    show(failing)

    since = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=7)
    title(f"Spend per day since {since}, by the day each trace started: store.sql(...) with $since bound")
    print(SPEND_PER_DAY.strip())
    show(store.sql(SPEND_PER_DAY, {"since": since}))


def title(text: str) -> None:
    print(f"\n── {text}")


def show(frame: Any) -> None:
    import polars as pl

    if frame.is_empty():
        print("(none)")
        return
    with pl.Config(tbl_rows=30, tbl_cols=12, tbl_width_chars=200, fmt_str_lengths=40, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_FULL_CONDENSED"):
        print(frame)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(PROG, __doc__)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the store to analyse (default: generate a demo store in a temporary directory)")
    parser.add_argument("--spans", type=bounded_int(1, 200_000), default=None,
                        help=f"spans in the generated demo store, rounded up to whole requests of 512 "
                             f"(default {DEMO_SPANS:,})")
    args = parser.parse_args(argv)
    if args.data_dir is not None and args.spans is not None:
        parser.error("--spans sizes the generated demo store: it does not go with --data-dir")

    import msgtrace

    if args.data_dir is not None:
        data_dir = args.data_dir.expanduser().resolve()
        if not data_dir.is_dir():
            sys.exit(f"{PROG}: error: no msgtrace store at {data_dir}")
        with msgtrace.open(data_dir) as store:
            print(f"store: {store.data_dir}")
            analyse(store)
        return
    with tempfile.TemporaryDirectory(prefix="msgtrace-demo-") as tmp:
        started = time.perf_counter()
        spans = build_demo_store(Path(tmp), args.spans or DEMO_SPANS)
        print(f"demo store: {spans:,} synthetic spans written to {tmp} in {time.perf_counter() - started:.1f} s "
              "(deleted at exit)")
        with msgtrace.open(tmp) as store:
            analyse(store)


if __name__ == "__main__":
    main()
