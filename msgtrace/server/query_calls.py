"""How the REST API runs a store call: in a worker thread, a bounded number at once, and its answer rendered there.

The event loop also answers ``/health`` and hands every OTLP body to its worker thread, so whatever it computes
delays them: the worker thread that runs the query also builds the JSON body, as bytes
(:func:`~msgtrace.server.query_api.json_rows_raw`, msgspec), and the loop only sends them.

A worker turning rows into JSON holds the GIL, which the loop must win back for every request.
CPython hands it over between bytecodes only every 5 ms, and not necessarily to the thread that asked, so with two
threads busy in Python a thread that wanted it back waited 147 ms at p99: the conversion lets go of it after every
slice of rows (:data:`~msgtrace.server.query_api._SLICE_BYTES`). Each query's DuckDB database also brings worker
threads of its own onto the same cores, so at most ``query_slots`` store calls run at once
(``MSGTRACE_QUERY_SLOTS``, 2 by default: one per core of the 2-core machine the latency bounds hold on; four running
at once gave ingest p99 259 ms and ``/health`` 394 ms), and one more is refused at once with 503 + ``Retry-After``
(:class:`QueriesBusy`) instead of queueing, where it would only wait out the others' time limits while its client
times out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import msgspec
from anyio import CapacityLimiter
from fastapi import Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from msgtrace.errors import MsgtraceError, Overloaded
from msgtrace.server.errors import RETRY_AFTER_SECONDS

if TYPE_CHECKING:
    from msgtrace.query.store import Store

log = logging.getLogger("msgtrace.server.query")

_ENCODER = msgspec.json.Encoder()


class QueriesBusy(Overloaded):
    """Every query slot is taken: 503 + Retry-After, the client retries."""


class JSONBytes(Response):
    """A JSON answer rendered in the worker thread (see the module docstring)."""

    media_type = "application/json"


class QuerySlots:
    """The store calls running now; a call that finds every slot taken is refused rather than queued.

    Only the event loop takes and checks slots, so the check and the take need no lock; a slot is given back
    when the worker thread ends, which for a stopped query is after DuckDB has honoured the interrupt.
    """

    def __init__(self, slots: int) -> None:
        self.limiter = CapacityLimiter(slots)

    async def run(self, work: Callable[[], bytes]) -> bytes:
        if self.limiter.available_tokens < 1:
            raise QueriesBusy(f"all {int(self.limiter.total_tokens)} query slots are busy; retry shortly")
        return await anyio.to_thread.run_sync(work, limiter=self.limiter)


def _slots(request: Request) -> QuerySlots:
    state = request.app.state
    if getattr(state, "query_slots", None) is None:  # created on the loop that uses it (anyio needs one)
        state.query_slots = QuerySlots(state.ingestor.config.query_slots)
    return state.query_slots


async def answer(request: Request, build: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> Response:
    """``build(store, *args, **kwargs)`` run in a worker thread, its dict encoded there as the 200 body; msgtrace
    errors become the one error shape: InvalidArgument / QueryError → 400, TraceNotFound → 404, QueryTimeout →
    504, QueriesBusy → 503 + Retry-After (each error's ``status``); anything else is logged and answered 500.

    The Store itself is built (DuckDB imported, views created) in the worker thread too, by the first query."""
    lazy = request.app.state.store

    def work() -> bytes:
        store: Store = lazy.get()
        return _ENCODER.encode(build(store, *args, **kwargs))

    try:
        return JSONBytes(await _slots(request).run(work))
    except MsgtraceError as exc:
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if exc.status == 503 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from None
    except Exception:
        log.exception("query failed: %s", getattr(build, "__name__", build))
        raise HTTPException(500, "internal error while querying the store (see the server log)") from None
