"""The FastAPI application: OTLP receive paths and health. It wires the HTTP edge to one :class:`Ingestor`.

Per request: check headers and budgets (415/413/503 before reading a byte), read the body with the wire limit,
then decompress, decode and log it durably in a worker thread (so the event loop keeps answering, e.g. ``/health``),
and answer with an ``ExportTraceServiceResponse`` in the request's own content type. What is let in, how much at
once and where the rest is refused: :mod:`msgtrace.server.admission`.
"""

from __future__ import annotations

import gc
import threading
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from msgtrace import __version__
from msgtrace.errors import MsgtraceError, PayloadTooLarge
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import AcceptResult, Ingestor, result_of
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
from msgtrace.server.admission import Admission, Ticket

if TYPE_CHECKING:
    from msgtrace.query.store import Store

OTLP_PATHS = ("/v1/traces", "/api/v1/traces/export")
# google.rpc.Status, in the request's format (JSON when the Content-Type was not understood), as OTLP/HTTP requires.
_STATUS = {"application/json": {"schema": {"type": "object", "required": ["code", "message"], "properties": {
               "code": {"type": "integer", "description": "The gRPC status code."},
               "message": {"type": "string"}}}},
           "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}
_OTLP_RESPONSES = {
    200: {"description": "Accepted: every span counted is durable (in the WAL) and queryable. `partial_success` "
                         "says how many spans were rejected (bad ids) or had values cut.",
          "content": {"application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                      "application/json": {"schema": {"type": "object"}, "example": {}}}},
    400: {"description": "Undecodable body: not OTLP protobuf/JSON, corrupt or truncated compression, too deep.",
          "content": _STATUS},
    **errors.FORBIDDEN,
    413: {"description": "Body larger than the limit, on the wire or after decompression.", "content": _STATUS},
    415: {"description": "Content-Type is not application/x-protobuf or application/json, or the "
                         "Content-Encoding is not gzip, deflate, zstd or none.", "content": _STATUS},
    503: {"description": "Overloaded (buffer, WAL or in-flight budget used up, or the WAL's disk stalled; refused "
                         "before the body is read, except a body sent without Content-Length that outgrows the "
                         "in-flight budget as it arrives) or storage unavailable. Nothing was kept: retry after "
                         "`Retry-After` seconds.",
          "content": _STATUS, "headers": errors.RETRY_AFTER_HEADER},
}
_OTLP_REQUEST = {
    "parameters": [{"name": "Content-Encoding", "in": "header", "required": False,
                    "description": "How the body is compressed (any case); none when absent or empty.",
                    "schema": {"type": "string", "enum": ["gzip", "x-gzip", "deflate", "zstd", "identity", ""]}}],
    "requestBody": {"required": True, "description": "An OTLP `ExportTraceServiceRequest`.", "content": {
        "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"type": "object", "description": "OTLP/JSON encoding."}}}},
}

_HEALTH_DESCRIPTION = """Liveness, and the state of the WAL, the buffer, the flushes, the storage and admission.

`status` is `ok`, or `degraded` while something needs attention: the WAL failed or is refusing writes, a
corrupt WAL segment was set aside, flushes are failing (`flush.failing_since_unix`), or the **storage is
stalled**. The answer never waits on the disk, so it comes at once even while the disk hangs.

- `storage`: `wal_io_seconds` / `flush_io_seconds`, how long the oldest WAL write or fsync and the Parquet flush
  in progress have been running (`null`: none is); `stalled` is true once either reaches
  `stall_threshold_seconds` (a hung disk blocks writes instead of failing them). While the WAL's is stalled, ingest
  answers 503 at once.
- `ingest`: `inflight_bytes` of request bodies held (limit `inflight_limit_bytes`), `waiting_to_decode` for one of
  the `decode_concurrency` places, `queue_seconds` (the estimated time to decode what is admitted; past 2 s new
  requests get a 503), and counters since start: `refused_unread` (413/415/503 answered before the
  body was read: overload is refused there), `requests_decoded` (bodies decompressed and decoded),
  `requests_accepted` (200s).
- `wal`, `buffer`, `flush`, `compaction`, `quarantined`: the pipeline's own state and counters.
"""


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
                     max_rows=config.query_max_rows, max_trace_spans=config.query_max_trace_spans,
                     sandbox_memory_bytes=config.query_memory_bytes)

    app.state.store = LazyStore(make_store)
    errors.install(app)
    hosts.install(app, bind_host=config.host, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins)
    app.include_router(query_api.router, prefix="/api/v1")
    admission = app.state.admission = Admission(config.max_inflight_bytes, config.decode_concurrency)

    async def export(request: Request) -> Response:
        received = time.time_ns()
        fmt: WireFormat | None = None
        ticket: Ticket | None = None
        try:
            try:  # everything that may refuse the request before its body is read
                fmt = wire_format(request.headers.get("content-type"))
                encoding = content_encoding(request.headers.get("content-encoding"))
                declared = _content_length(request)
                if declared is not None and declared > config.max_request_bytes:
                    raise PayloadTooLarge(f"request body of {declared} bytes is larger than the limit of "
                                          f"{config.max_request_bytes} bytes")
                ingestor.admit()
                admitted = admission.admit(declared, config.max_request_bytes, compressed=encoding != "identity")
                if isinstance(admitted, str):
                    ingestor.refuse(admitted)
                ticket = admitted
            except MsgtraceError:
                admission.refused_unread += 1
                raise
            held = admitted  # the ticket, as a Ticket for grow() (a refusal raised above)

            def grow(size: int) -> None:  # a body of unknown length takes its share as it arrives
                if not admission.grow(held, size):
                    ingestor.refuse("too many request bytes in flight")

            wire = await read_limited(request.stream(), config.max_request_bytes,
                                      None if declared is not None else grow)
            # Admitted requests are not refused for load any more: the budgets may be overrun by what is in flight
            # (bounded by the in-flight budget), which costs less than reading a body only to throw it away.
            async with admission.decoding(ticket, len(wire)):
                result, seq = await run_in_threadpool(_decode_and_log, ingestor, fmt, encoding, wire, received)
            del wire
            if seq:
                await run_in_threadpool(ingestor.commit, seq)
            admission.accepted += 1
        except MsgtraceError as exc:
            if exc.status >= 500:
                admission.log_refusal(str(exc))
            return _otlp_error(fmt, exc)
        finally:
            if ticket is not None:
                admission.release(ticket)
        return Response(success_body(fmt, result.rejected_spans, result.message), media_type=MEDIA_TYPE[fmt])

    for path in OTLP_PATHS:
        app.add_api_route(
            path, export, methods=["POST"], responses=_OTLP_RESPONSES, tags=["ingest"], openapi_extra=_OTLP_REQUEST,
            summary="Receive OTLP/HTTP traces (protobuf or JSON; gzip, deflate, zstd or none)",
            response_class=Response,
        )

    @app.get("/health", tags=["health"], summary="Liveness and the state of the WAL, buffer, flushes and storage",
             description=_HEALTH_DESCRIPTION,
             responses={503: {"description": "The write-ahead log has failed; ingest is refused."}, **errors.FORBIDDEN})
    async def health() -> JSONResponse:
        status = ingestor.status() | {"ingest": admission.status()}
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
                    # What the server has loaded by now (FastAPI, DuckDB, pyarrow, the views: ~35,000 objects)
                    # lives as long as it does; frozen, a full garbage collection no longer walks it. Those walks
                    # ran in query threads while rows became JSON and held the GIL 50-80 ms each, and /health and
                    # ingest waited for them (three per 20 s run of tests/test_query_safety.py; none > 5 ms after).
                    gc.freeze()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _decode_and_log(ingestor: Ingestor, fmt: WireFormat, encoding: str, wire: bytes | bytearray,
                    received: int) -> tuple[AcceptResult, int]:
    """Decompress, decode, append to the WAL and the buffer: the work inside the decode gate. Returns what to tell
    the client and the WAL sequence number to commit (fsync) outside the gate."""
    body = decompress(wire, encoding, ingestor.config.max_request_bytes)
    built = ingestor.decode(fmt, body, received)
    return result_of(built), ingestor.log(fmt, body, received, built)


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
    return Response(body, status_code=exc.status, media_type=media, headers=headers)
