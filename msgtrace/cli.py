"""The ``msgtrace`` command line: a thin layer that builds the library objects and calls them.

Errors a user can cause (a bad flag value, a data directory in use) print one line to stderr and exit non-zero.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from msgtrace import __version__
from msgtrace.config import DEFAULT_HOST, DEFAULT_PORT, FSYNC_POLICIES, IngestConfig
from msgtrace.errors import DataDirLocked

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


def fail(message: str, code: int = 2) -> None:
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
                                       flush_interval=flush_interval)
    except ValueError as exc:
        fail(str(exc))
    try:
        serve(config, log_level=log_level.lower())
    except DataDirLocked as exc:
        fail(str(exc), code=1)


app.command(name="start", help="Alias of 'msgtrace ingest'.")(ingest)


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit 2, never a panel or a traceback."""
    try:
        code = app(standalone_mode=False, prog_name="msgtrace")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option, bad value, unknown command
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"msgtrace: error: {exc.format_message()}{hint}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
