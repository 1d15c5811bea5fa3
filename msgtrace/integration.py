"""One call to trace a Python program into a local msgtrace store: :func:`quick_start`.

.. code-block:: python

    from msgtrace.integration import quick_start

    observer = quick_start()            # before importing msgtrace.sdk or msgflux!
    from msgtrace.sdk import Spans      # now reads the settings quick_start exported

    with Spans.init_flow("my_flow"):
        ...
    observer.stop()                     # export pending spans; stop the server if quick_start started it
    print(observer.store.traces())      # msgtrace.open(observer.data_dir): Polars frames

What :func:`quick_start` does:

1. If something already answers ``GET http://127.0.0.1:{port}/health`` with a msgtrace health body, it reuses
   that server (and its data directory). Otherwise it starts ``python -m msgtrace ingest --port {port}
   --data-dir {data_dir}`` as a background subprocess (Parquet flushes every second unless
   ``MSGTRACE_FLUSH_INTERVAL`` is set) and waits up to 15 s for ``/health``; a server that exits or never
   answers raises :class:`QuickStartError` with the tail of its log. A port held by something else is an error too.
2. It points the msgtrace SDK (and msgflux, which uses it) at the server by setting
   ``MSGTRACE_TELEMETRY_ENABLED=true`` and ``MSGTRACE_OTLP_ENDPOINT=http://127.0.0.1:{port}/api/v1/traces/export``
   in ``os.environ``. The SDK reads them **once, when ``msgtrace.sdk`` is first imported**: if it was imported
   earlier with other settings, tracing cannot be redirected any more, and quick_start emits a
   :class:`RuntimeWarning` saying so (the fix: call quick_start before importing msgtrace.sdk / msgflux).
3. It returns an :class:`Observer`: ``.url``, ``.data_dir``, ``.store`` (``msgtrace.open(data_dir)``, opened
   lazily), ``.flush()`` (force-flushes the global OpenTelemetry tracer provider, so batched spans are exported
   now) and ``.stop()`` (flush, then SIGTERM the server and wait for it, only if quick_start started it; the
   server writes its buffered spans to Parquet on shutdown). ``stop()`` also runs at interpreter exit.

Spans reach the Parquet files that ``.store`` reads when the server flushes (within about a second for a server
started here, or when it stops): call ``.stop()``, or wait briefly after ``.flush()``, before querying.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import IO, Any

from msgtrace.config import DEFAULT_PORT, default_data_dir

__all__ = ["Observer", "QuickStartError", "quick_start"]

HOST = "127.0.0.1"
EXPORT_PATH = "/api/v1/traces/export"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 30.0


class QuickStartError(RuntimeError):
    """The ingest server could not be started or reached."""


class Observer:
    """A msgtrace ingest server the current program traces into; see the module docstring."""

    def __init__(self, url: str, data_dir: Path, process: subprocess.Popen[bytes] | None = None,
                 log: IO[bytes] | None = None) -> None:
        self.url = url
        self.data_dir = data_dir
        self.process = process  # None when an already running server was reused
        self._log = log
        self._store: Any = None

    @property
    def endpoint(self) -> str:
        """Where the SDK sends spans (OTLP/HTTP)."""
        return self.url + EXPORT_PATH

    @property
    def started(self) -> bool:
        """Whether quick_start started this server (and :meth:`stop` will stop it)."""
        return self.process is not None

    @property
    def store(self) -> Any:
        """``msgtrace.open(self.data_dir)``, opened on first use: a :class:`msgtrace.query.store.Store`."""
        if self._store is None:
            from msgtrace.query.store import Store

            self._store = Store(self.data_dir)
        return self._store

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export the spans the OpenTelemetry tracer provider still holds; ``True`` if all were (or none set)."""
        try:
            from opentelemetry import trace
        except ImportError:  # no OpenTelemetry: nothing can be pending
            return True
        force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        return bool(force_flush(timeout_millis)) if callable(force_flush) else True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Flush, then stop the server if quick_start started it (SIGTERM, wait; it writes its buffer out)."""
        self.flush()
        if self._store is not None:
            self._store.refresh()  # later answers see what the shutdown flush writes
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                warnings.warn(f"msgtrace ingest (pid {process.pid}) did not stop within {timeout:g} s and was "
                              "killed; its write-ahead log keeps the spans for the next start", RuntimeWarning,
                              stacklevel=2)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        owner = "started here" if self.started else "reused"
        return f"Observer(url={self.url!r}, data_dir={str(self.data_dir)!r}, {owner})"


def quick_start(port: int | None = None, data_dir: str | Path | None = None) -> Observer:
    """Reuse or start a local ``msgtrace ingest`` on ``port`` and point the msgtrace SDK at it.

    ``port`` defaults to ``$MSGTRACE_PORT`` or 4321, like ``msgtrace ingest``.
    ``data_dir`` defaults to ``$MSGTRACE_DATA_DIR`` or ``~/.local/share/msgtrace``; a reused server keeps its own.
    Call it before ``msgtrace.sdk`` (or msgflux) is imported; see the module docstring.
    """
    if port is None:
        port = int(os.environ.get("MSGTRACE_PORT") or DEFAULT_PORT)
    url = f"http://{HOST}:{port}"
    requested = Path(data_dir).expanduser().resolve() if data_dir is not None else None
    health = _health(url)
    if health is not None:
        observer = Observer(url, Path(health["data_dir"]))
        if requested is not None and Path(health["data_dir"]).resolve() != requested:
            warnings.warn(f"msgtrace is already running on {url} with data dir {health['data_dir']}, not "
                          f"{requested}; using it as it is (stop it or pick another port for {requested})",
                          RuntimeWarning, stacklevel=2)
    else:
        observer = _start(url, port, requested or default_data_dir())
    _configure_sdk(observer.endpoint)
    return observer


def _health(url: str) -> dict[str, Any] | None:
    """The msgtrace health body at ``url``; None if nothing listens; QuickStartError if something else does."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2.0) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: a msgtrace whose WAL failed, or another service
        body = exc.read()
        if _is_msgtrace(body):
            raise QuickStartError(f"msgtrace on {url} is unhealthy (HTTP {exc.code}): {body[:500]!r}") from None
        raise QuickStartError(f"port {url} is taken by something that is not msgtrace (GET /health: HTTP "
                              f"{exc.code}); pass another port to quick_start") from None
    except (urllib.error.URLError, OSError):
        return None
    if not _is_msgtrace(body):
        raise QuickStartError(f"port {url} is taken by something that is not msgtrace; pass another port to "
                              "quick_start")
    return json.loads(body)


def _is_msgtrace(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"status", "data_dir", "wal", "buffer", "version"} <= doc.keys()


def _start(url: str, port: int, data_dir: Path) -> Observer:
    command = [sys.executable, "-m", "msgtrace", "ingest", "--port", str(port), "--data-dir", str(data_dir),
               "--log-level", "warning"]
    if not os.environ.get("MSGTRACE_FLUSH_INTERVAL"):
        command += ["--flush-interval", "1"]  # spans are queryable about a second after export
    log = tempfile.TemporaryFile(prefix="msgtrace-ingest-")  # noqa: SIM115  (open as long as the server runs)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise QuickStartError(f"msgtrace ingest exited with status {process.returncode} before answering on "
                                  f"{url}:\n{_tail(log)}")
        try:
            health = _health(url)
        except QuickStartError:
            health = None  # someone else's answer on our port: our process will fail to bind and exit
        if health is not None:
            break
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise QuickStartError(f"msgtrace ingest did not answer {url}/health within {START_TIMEOUT:g} s:\n"
                                  f"{_tail(log)}")
        time.sleep(0.05)
    observer = Observer(url, Path(health["data_dir"]), process, log)
    atexit.register(observer.stop)
    return observer


def _tail(log: IO[bytes], limit: int = 3000) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode(errors="replace").strip()
    log.close()
    return text[-limit:] or "(no output)"


def _configure_sdk(endpoint: str) -> None:
    os.environ["MSGTRACE_TELEMETRY_ENABLED"] = "true"
    os.environ["MSGTRACE_OTLP_ENDPOINT"] = endpoint
    if "msgtrace.sdk" not in sys.modules:
        return  # the SDK reads both when it is first imported
    problem = _sdk_problem(endpoint)
    if problem:
        warnings.warn(f"msgtrace.sdk was imported before quick_start, and {problem}: its tracer was set up then "
                      f"and will not send spans to {endpoint}. Fix: call msgtrace.integration.quick_start() "
                      "before importing msgtrace.sdk / msgflux (or set MSGTRACE_TELEMETRY_ENABLED=true and "
                      f"MSGTRACE_OTLP_ENDPOINT={endpoint} in the environment before starting Python).",
                      RuntimeWarning, stacklevel=3)


def _sdk_problem(endpoint: str) -> str | None:
    """Why the already imported SDK will not export to ``endpoint``, or None if it will (or is not set up yet)."""
    manager = getattr(sys.modules.get("msgtrace.sdk.tracer"), "tracer_manager", None)
    if manager is not None and getattr(manager, "_tracer", True) is None:
        return None  # not initialised yet: it reads the environment on first use
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    processors = getattr(getattr(provider, "_active_span_processor", None), "_span_processors", None)
    if processors is None:
        return ("telemetry was off then (MSGTRACE_TELEMETRY_ENABLED was not 'true'), so it traces nothing")
    endpoints = [getattr(getattr(p, "span_exporter", None), "_endpoint", None) for p in processors]
    if endpoint in endpoints:
        return None
    found = ", ".join(str(e) for e in endpoints if e) or "no OTLP endpoint"
    return f"it exports to {found}"

