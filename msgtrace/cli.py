"""The ``msgtrace`` command line: a thin layer that builds the library objects and calls them.

Errors a user can cause (a bad flag value, a data directory in use) print one line to stderr and exit non-zero.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from msgtrace import __version__
from msgtrace.config import DEFAULT_HOST, DEFAULT_PORT, FSYNC_POLICIES, IngestConfig, default_data_dir
from msgtrace.errors import DataDirLocked, MsgtraceError

if TYPE_CHECKING:
    from rich.console import Console

    from msgtrace.query.store import Store
    from msgtrace.storage.compactor import Compactor

app = typer.Typer(
    name="msgtrace",
    help="A columnar trace store for LLM agents and workflows: OTLP in, Parquet on disk, DuckDB and Polars out.",
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", "-d", help="Store directory (env MSGTRACE_DATA_DIR; default ~/.local/share/msgtrace)",
                 show_default=False),
]


JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
SinceOption = Annotated[str | None, typer.Option(
    help="Only from this UTC time on: ISO date or time (2026-11-24, 2026-11-24T10:00:00Z) or an age (30m, 6h, 2d)",
    show_default=False)]
UntilOption = Annotated[str | None, typer.Option(help="Only before this UTC time (same forms as --since)",
                                                 show_default=False)]


def fail(message: str, code: int = 2) -> None:
    message = " ".join(str(message).split())  # always exactly one line
    typer.echo(f"msgtrace: error: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"msgtrace {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command()
def ingest(
    host: Annotated[str | None, typer.Option(help=f"Address to bind (env MSGTRACE_HOST; default {DEFAULT_HOST}). "
                                             "Anything but loopback exposes the store to the network.",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help=f"Port (env MSGTRACE_PORT; default {DEFAULT_PORT})",
                                             show_default=False)] = None,
    data_dir: DataDirOption = None,
    fsync: Annotated[str | None, typer.Option(
        help="WAL durability: 'batch' (default: fsync before every 200, shared by concurrent requests), "
             "'always' (one fsync per request) or 'none' (survives a process crash, not a power loss) "
             "(env MSGTRACE_FSYNC)", show_default=False)] = None,
    flush_interval: Annotated[float | None, typer.Option(
        help="Seconds spans may wait in memory before being written to Parquet (env MSGTRACE_FLUSH_INTERVAL; "
             "default 5)", show_default=False)] = None,
    allowed_hosts: Annotated[str | None, typer.Option(
        help="Comma-separated Host names to answer besides localhost, *.localhost, 127.0.0.1 and [::1] "
             "('name', '*.suffix', or '*' for any); bound to loopback, other names get 403 "
             "(env MSGTRACE_ALLOWED_HOSTS)", show_default=False)] = None,
    cors_origins: Annotated[str | None, typer.Option(
        help="Comma-separated browser origins allowed by CORS, e.g. http://localhost:3000 (env "
             "MSGTRACE_CORS_ORIGINS; default none: no CORS headers)", show_default=False)] = None,
    retention_days: Annotated[int | None, typer.Option(
        help="Keep today and the N previous UTC days; older day partitions are dropped in the background "
             "(env MSGTRACE_RETENTION_DAYS; default 0: keep everything)", show_default=False, min=0)] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the OTLP/HTTP ingest server (POST /v1/traces and /api/v1/traces/export, GET /health)."""
    from msgtrace.server.run import serve  # imported here so that `msgtrace --help` stays fast

    if fsync is not None and fsync not in FSYNC_POLICIES:
        fail(f"--fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    try:
        config = IngestConfig.from_env(host=host, port=port, data_dir=data_dir, fsync=fsync,
                                       flush_interval=flush_interval, allowed_hosts=allowed_hosts,
                                       cors_origins=cors_origins, retention_days=retention_days)
    except ValueError as exc:
        fail(str(exc))
    try:
        serve(config, log_level=log_level.lower())
    except DataDirLocked as exc:
        fail(str(exc), code=1)


app.command(name="start", help="Alias of 'msgtrace ingest'.")(ingest)


# --- queries: straight on the Parquet files of --data-dir, no server needed ------------------------------------------
def _store(data_dir: Path | None, **options: float) -> Store:
    from msgtrace.query.store import Store  # imported here so that `msgtrace --help` stays fast

    path = data_dir.expanduser() if data_dir is not None else default_data_dir()
    if not path.is_dir():
        fail(f"no msgtrace store at {path} (pass --data-dir or set MSGTRACE_DATA_DIR)", code=1)
    return Store(path, **options)


_FLAGS = {"since": "--since", "until": "--until", "status": "--status", "sort": "--sort", "by": "--by",
          "attribute": "--attr", "limit and offset": "--limit and --offset"}


@contextmanager
def _query_errors() -> Iterator[None]:
    """Errors of the query layer as one line: bad input exits 2, an unknown trace or a timeout exits 1."""
    from msgtrace.query.engine import QueryError, QueryTimeout
    from msgtrace.query.store import InvalidArgument, TraceNotFound

    try:
        yield
    except InvalidArgument as exc:
        message = str(exc)
        for name, flag in _FLAGS.items():  # the Store names its parameters; say which flag was wrong
            if message.startswith(name + " "):
                message = flag + message[len(name):]
                break
        fail(message)
    except QueryError as exc:
        fail(str(exc))
    except (TraceNotFound, QueryTimeout) as exc:
        fail(str(exc), code=1)
    except MsgtraceError as exc:
        fail(str(exc), code=1)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_AGE_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def _when(value: str | None) -> str | None:
    """An age ("30m", "6h", "2d", "1w") becomes the UTC time that long ago; anything else goes to the Store as is
    (it validates ISO dates and times)."""
    if value is None or not (match := _AGE.match(value)):
        return value
    seconds = float(match[1]) * _AGE_SECONDS[match[2]]
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)).isoformat()


@app.command("list")
def list_traces(
    since: SinceOption = None,
    until: UntilOption = None,
    service: Annotated[str | None, typer.Option(help="Only traces with a span of this service",
                                                show_default=False)] = None,
    workflow: Annotated[str | None, typer.Option(help="Only this workflow", show_default=False)] = None,
    status: Annotated[str | None, typer.Option(help="ok or error (a trace is in error when any span is)",
                                               show_default=False)] = None,
    min_ms: Annotated[float | None, typer.Option("--min-ms", help="Minimum trace duration (ms)",
                                                 show_default=False)] = None,
    max_ms: Annotated[float | None, typer.Option("--max-ms", help="Maximum trace duration (ms)",
                                                 show_default=False)] = None,
    model: Annotated[str | None, typer.Option(help="Only traces that called this model",
                                              show_default=False)] = None,
    user: Annotated[str | None, typer.Option(help="Only this user id", show_default=False)] = None,
    session: Annotated[str | None, typer.Option(help="Only this session id", show_default=False)] = None,
    attr: Annotated[str | None, typer.Option(help="Only traces with a span or resource attribute key=value "
                                                  "(value compared as text)", show_default=False)] = None,
    sort: Annotated[str, typer.Option(help="start_time, duration, spans, errors, cost or tokens")] = "start_time",
    asc: Annotated[bool, typer.Option("--asc", help="Ascending order (default: descending)")] = False,
    limit: Annotated[int, typer.Option(help="Traces to show")] = 20,
    offset: Annotated[int, typer.Option(help="Traces to skip (paging)")] = 0,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """List traces, newest first: start, id, workflow, service, spans, errors, duration, tokens, cost."""
    from msgtrace import render

    store = _store(data_dir)
    with _query_errors():
        result = store.traces_result(
            since=_when(since), until=_when(until), service=service, workflow=workflow, status=status,
            min_duration_ms=min_ms, max_duration_ms=max_ms, model=model, user_id=user, session_id=session,
            attribute=attr, sort=sort, descending=not asc, limit=limit, offset=offset)
    traces = render.rows(result.table)
    if as_json:
        render.print_json(traces)
    else:
        render.trace_list(traces, limit=limit, offset=offset)


@app.command()
def show(
    trace_id: Annotated[str, typer.Argument(help="32 hexadecimal characters", show_default=False)],
    attributes: Annotated[bool, typer.Option("--attributes", "-a",
                                             help="Also list every span's attributes and events")] = False,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one trace as a tree: nesting, a timeline bar per span, durations, status, model, tokens, cost.

    --json prints {"trace": the summary, "spans": the spans in tree order, with depth, parent_id and orphan}.
    """
    from msgtrace import render

    store = _store(data_dir)
    with _query_errors():
        tree = store.tree_result(trace_id)
        head = render.plain(store.trace_summary(trace_id))
    spans = [render.simplify_span(span) for span in render.rows(tree.table)]
    if as_json:
        render.print_json({"trace": head, "spans": spans})
    else:
        render.trace_tree(head, spans, attributes=attributes)


@app.command()
def stats(
    by: Annotated[str, typer.Option(help="workflow or day (counting traces); model, service or name (counting "
                                         "spans)")] = "workflow",
    since: SinceOption = None,
    until: UntilOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Count, errors, error rate, p50/p95/p99 duration, tokens and cost per workflow, model, service, name or day."""
    from msgtrace import render

    store = _store(data_dir)
    with _query_errors():
        result = store.stats_result(by, since=_when(since), until=_when(until))
    table = render.rows(result.table)
    if as_json:
        render.print_json(table)
    else:
        render.stats_table(table, by)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SQL statement over the views: spans, traces, "
                                              "span_tree('<trace id>'), stats('<by>', NULL, NULL)",
                                         show_default=False)],
    as_json: JsonOption = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (header + rows) instead of a table.")] = False,
    max_rows: Annotated[int, typer.Option("--max-rows", help="Rows to return at most (a note on stderr says "
                                                             "when there were more)")] = 10_000,
    timeout: Annotated[float, typer.Option(help="Seconds before the query is stopped")] = 60.0,
    data_dir: DataDirOption = None,
) -> None:
    """Run SQL over the store's views (DuckDB dialect) and print the result as a table, JSON rows or CSV."""
    from msgtrace import render

    if as_json and as_csv:
        fail("--json and --csv exclude each other")
    if max_rows < 1:
        fail(f"--max-rows must be at least 1, not {max_rows}")
    if timeout <= 0:
        fail(f"--timeout must be positive, not {timeout:g}")
    if not query.strip():
        fail("the SQL statement is empty")
    store = _store(data_dir, timeout=timeout)
    with _query_errors():
        try:
            result = store.query(query, max_rows=max_rows)
        except OSError as exc:  # an interrupt while Arrow batches stream surfaces as an OSError, not QueryTimeout
            if "interrupt" not in str(exc).lower():
                raise
            fail(f"query ran longer than {timeout:g} s and was stopped (raise --timeout)", code=1)
    if as_json:
        render.print_json(render.rows(result.table))
    elif as_csv:
        render.print_csv(result.table)
    else:
        render.result_table(result.table)
    if result.truncated:
        render.note(f"truncated: only the first {max_rows:,} rows are shown (raise --max-rows for more)")


@app.command()
def clear(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Delete every trace in the store: all of them disappear from every view at once.

    The Parquet files are not rewritten (a tombstone lists the traces; compaction removes their rows). Traces
    that arrive afterwards are kept; a trace id that was cleared stays hidden if more of its spans arrive.
    """
    store = _store(data_dir)
    if not yes:
        try:  # no terminal and nothing on stdin reads as "no"
            confirmed = typer.confirm(f"Delete every trace in {store.data_dir}?", default=False, err=True)
        except (typer.Abort, EOFError):
            confirmed = False
        if not confirmed:
            fail("nothing deleted", code=1)
    with _query_errors():
        count = store.clear()
    typer.echo(f"deleted {count:,} trace(s) from {store.data_dir}")


# --- upkeep: the writer's work, so it needs the data directory's lock (no server running on it) ---------------------
@contextmanager
def _writer(data_dir: Path | None, grace: float | None, workers: int = 1) -> Iterator[tuple[Path, Compactor]]:
    """Take the store's lock and give a Compactor over it; a running server on it is a one-line error."""
    from msgtrace.storage.compactor import Compactor
    from msgtrace.storage.layout import StoreLayout
    from msgtrace.storage.lock import DirLock

    path = data_dir.expanduser() if data_dir is not None else default_data_dir()
    if not (path / "spans").is_dir():
        fail(f"no msgtrace store at {path} (pass --data-dir or set MSGTRACE_DATA_DIR)", code=1)
    try:
        config = IngestConfig.from_env(data_dir=path, compaction_grace_seconds=grace)
    except ValueError as exc:
        fail(str(exc))
    layout = StoreLayout(path)
    lock = DirLock(layout.lock_path)
    try:
        lock.acquire()
    except DataDirLocked as exc:
        fail(f"{exc} (a running server compacts and applies --retention-days itself)", code=1)
    try:
        import dataclasses

        yield path, Compactor(layout, dataclasses.replace(config.compaction_settings(), workers=workers))
    finally:
        lock.release()


GraceOption = Annotated[float | None, typer.Option(
    "--grace", min=0, help="Seconds replaced files stay on disk, hidden, before deletion, so queries already "
    "running in other processes (a DuckDB shell, a notebook) finish (env MSGTRACE_COMPACTION_GRACE_SECONDS; "
    "default 600)", show_default=False)]


@app.command()
def compact(
    data_dir: DataDirOption = None,
    grace: GraceOption = None,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Merge threads: at 10M spans on 2 cores, 2 compacted "
                                         "~122,000-124,000 spans/s at ~0.92-0.95 GB peak, 1 ~71,000 at ~0.84 GB")] = 1,
    json_out: JsonOption = False,
) -> None:
    """Merge each day's small Parquet files into few large ones sorted for trace lookup, dropping deleted traces
    and duplicate spans. The server does this in the background; run it when no server owns the store."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with _writer(data_dir, grace, workers) as (path, compactor):
        plans = compactor.plan(force=True)
        total = sum(p.rows for p in plans)
        with Progress(TextColumn("compacting"), BarColumn(), MofNCompleteColumn(), TextColumn("spans"),
                      TimeRemainingColumn(), transient=True, disable=json_out or not sys.stderr.isatty(),
                      console=_stderr_console()) as progress:
            task = progress.add_task("compact", total=total)
            report = compactor.run(plans=plans, progress=lambda n: progress.advance(task, n))
    summary = report.as_dict()
    if json_out:
        typer.echo(json.dumps(summary))
        return
    rate = report.input_rows / report.seconds if report.seconds else 0.0
    typer.echo(f"compacted {report.input_files:,} file(s) of {report.days} day(s) into {report.output_files:,} "
               f"in {report.seconds:.1f} s ({report.input_rows:,} spans, {rate:,.0f} spans/s); dropped "
               f"{report.dropped_duplicates:,} duplicate and {report.dropped_deleted:,} deleted span(s); "
               f"{report.purged_files:,} replaced file(s) deleted after the grace period")


@app.command()
def prune(
    before: Annotated[str, typer.Option(help="Drop every day partition before this UTC date (YYYY-MM-DD)",
                                        show_default=False)],
    data_dir: DataDirOption = None,
    grace: GraceOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop whole day partitions older than --before: gone from every view at once, files deleted after --grace."""
    try:
        cutoff = dt.date.fromisoformat(before)
    except ValueError:
        fail(f"--before must be a date like 2026-11-01, not {before!r}")
    with _writer(data_dir, grace) as (path, compactor):
        if not yes:
            try:
                confirmed = typer.confirm(f"Drop every day before {cutoff} in {path}?", default=False, err=True)
            except (typer.Abort, EOFError):
                confirmed = False
            if not confirmed:
                fail("nothing dropped", code=1)
        report = compactor.prune(cutoff)
    days = ", ".join(report.days) if report.days else "none"
    typer.echo(f"dropped {len(report.days)} day(s) ({days}): {report.files:,} file(s), {report.spans:,} spans")


def _stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def duckdb(ctx: typer.Context, data_dir: DataDirOption = None) -> None:
    """Open the store in the DuckDB shell with every view defined (spans, traces, span_tree, stats, …).

    Arguments after the options go to the duckdb shell, e.g. `msgtrace duckdb -c "SELECT * FROM traces LIMIT 5"`;
    SQL piped to stdin runs and exits. The shell is the `duckdb` command of the duckdb-cli package.
    """
    import signal
    import subprocess
    import tempfile

    from msgtrace.query.engine import shell_init_sql

    path = data_dir.expanduser() if data_dir is not None else default_data_dir()
    if not path.is_dir():
        fail(f"no msgtrace store at {path} (pass --data-dir or set MSGTRACE_DATA_DIR)", code=1)
    if not list(path.glob("spans/*/*.parquet")):
        fail(f"the store at {path} has no Parquet files yet (spans reach them within seconds of ingest)", code=1)
    beside = Path(sys.executable).parent / "duckdb"  # the venv's script, even when the venv is not activated
    shell = str(beside) if beside.exists() else shutil.which("duckdb")
    if shell is None:
        fail("the duckdb shell is not installed (pip install duckdb-cli)", code=1)
    with tempfile.TemporaryDirectory(prefix="msgtrace-duckdb-") as tmp:
        init = Path(tmp) / "init.sql"
        init.write_text(shell_init_sql(path))
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the shell
        try:
            code = subprocess.call([shell, "-init", str(init), *ctx.args])  # type: ignore[list-item]
        finally:
            signal.signal(signal.SIGINT, previous)
    raise typer.Exit(code)


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit 2, never a panel or a traceback."""
    try:
        code = app(standalone_mode=False, prog_name="msgtrace")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except BrokenPipeError:  # `msgtrace sql ... --csv | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except typer.TyperException as exc:  # usage errors: bad option, bad value, unknown command
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"msgtrace: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: still one line (MSGTRACE_DEBUG=1 shows the traceback)
        if os.environ.get("MSGTRACE_DEBUG"):
            raise
        message = " ".join(str(exc).split())[:500]
        typer.echo(f"msgtrace: error: internal error: {type(exc).__name__}: {message} "
                   "(set MSGTRACE_DEBUG=1 for details)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
