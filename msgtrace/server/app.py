"""The FastAPI application: OTLP receive paths and health. It wires the HTTP edge to one :class:`Ingestor`.

Per request: check headers and budgets (415/413/503 before reading a byte), read the body with the wire limit,
then decompress, decode and log it durably in a worker thread (so the event loop keeps answering, e.g. ``/health``),
and answer with an ``ExportTraceServiceResponse`` in the request's own content type.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from msgtrace import __version__
from msgtrace.errors import MsgtraceError, Overloaded, PayloadTooLarge
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.ingest.receive import (
    MEDIA_TYPE,
    content_encoding,
    decompress,
    error_body,
    read_limited,
    success_body,
    wire_format,
)
from msgtrace.server import errors, hosts, query_api

if TYPE_CHECKING:
    from msgtrace.query.store import Store

log = logging.getLogger("msgtrace.server")

OTLP_PATHS = ("/v1/traces", "/api/v1/traces/export")
_OTLP_RESPONSES = {
    200: {"description": "Accepted: every span counted is durable (in the WAL) and queryable. `partial_success` "
                         "says how many spans were rejected (bad ids) or had values cut.",
          "content": {"application/x-protobuf": {}, "application/json": {"example": {}}}},
    400: {"description": "Undecodable body: not OTLP protobuf/JSON, corrupt or truncated compression, too deep."},
    413: {"description": "Body larger than the limit, on the wire or after decompression."},
    415: {"description": "Content-Type is not application/x-protobuf or application/json, or the "
                         "Content-Encoding is not gzip, deflate, zstd or none."},
    503: {"description": "Overloaded (buffer, WAL or in-flight budget used up) or storage unavailable. "
                         "Nothing was kept: retry after `Retry-After` seconds."},
}


class ByteBudget:
    """Bytes of request bodies held in memory at once; over budget, requests are refused before being read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.used and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


def create_app(ingestor: Ingestor) -> FastAPI:
    """An app around a started (or startable) ingestor; the app's lifespan closes it at shutdown."""
    config = ingestor.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if not ingestor.started:
            await run_in_threadpool(ingestor.start)
        try:
            yield
        finally:
            await run_in_threadpool(ingestor.close)  # flush everything before the process exits
            app.state.store.close()

    app = FastAPI(
        title="msgtrace",
        version=__version__,
        description="A columnar trace store for LLM agents and workflows: OTLP in, Parquet on disk, DuckDB out.",
        lifespan=lifespan,
    )
    app.state.ingestor = ingestor

    # Queries see the Parquet files plus the live buffer, so a span is readable as soon as its 200 is sent. The
    # query stack (DuckDB and its views, ~50 MB) is loaded by the first query, not by an ingest-only server.
    def make_store() -> Store:
        from msgtrace.query.store import Store

        return Store(config.data_dir, live=ingestor.live_table, timeout=config.query_timeout,
                     max_rows=config.query_max_rows, max_trace_spans=config.query_max_trace_spans)

    app.state.store = LazyStore(make_store)
    errors.install(app)
    hosts.install(app, bind_host=config.host, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins)
    app.include_router(query_api.router, prefix="/api/v1")
    inflight = ByteBudget(config.max_inflight_bytes)

    async def export(request: Request) -> Response:
        received = time.time_ns()
        fmt: WireFormat | None = None
        taken = 0
        try:
            fmt = wire_format(request.headers.get("content-type"))
            encoding = content_encoding(request.headers.get("content-encoding"))
            declared = _content_length(request)
            if declared is not None and declared > config.max_request_bytes:
                raise PayloadTooLarge(f"request body of {declared} bytes is larger than the limit of "
                                      f"{config.max_request_bytes} bytes")
            ingestor.admit()
            taken = declared if declared is not None else config.max_request_bytes
            if not inflight.try_take(taken):
                taken = 0
                raise Overloaded("too many request bytes in flight")
            wire = await read_limited(request.stream(), config.max_request_bytes)
            result = await run_in_threadpool(_accept, ingestor, fmt, encoding, wire, received)
        except MsgtraceError as exc:
            return _otlp_error(fmt, exc)
        finally:
            if taken:
                inflight.give(taken)
        return Response(success_body(fmt, result.rejected_spans, result.message), media_type=MEDIA_TYPE[fmt])

    for path in OTLP_PATHS:
        app.add_api_route(
            path, export, methods=["POST"], responses=_OTLP_RESPONSES, tags=["ingest"],
            summary="Receive OTLP/HTTP traces (protobuf or JSON; gzip, deflate, zstd or none)",
            response_class=Response,
        )

    @app.get("/health", tags=["health"], summary="Liveness and the state of the WAL, buffer and flushes",
             responses={503: {"description": "The write-ahead log has failed; ingest is refused."}})
    async def health() -> JSONResponse:
        status = ingestor.status()
        failed = bool(status["wal"]["failed"])  # type: ignore[index]
        return JSONResponse(status | {"version": __version__}, status_code=503 if failed else 200)

    return app


class LazyStore:
    """Builds the :class:`Store` on first use (thread-safe); ``get()`` returns it."""

    def __init__(self, factory):  # type: ignore[no-untyped-def]
        self._factory = factory
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._factory()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _accept(ingestor: Ingestor, fmt: WireFormat, encoding: str, wire: bytes, received: int):  # type: ignore[no-untyped-def]
    body = decompress(wire, encoding, ingestor.config.max_request_bytes)
    return ingestor.accept(fmt, body, received)


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _otlp_error(fmt: WireFormat | None, exc: MsgtraceError) -> Response:
    body, media = error_body(fmt, exc.status, str(exc))
    headers = {"Retry-After": errors.RETRY_AFTER_SECONDS} if exc.status == 503 else None
    if exc.status >= 500:
        log.warning("ingest refused: %s", exc)
    return Response(body, status_code=exc.status, media_type=media, headers=headers)
