"""The read side of the REST API, under ``/api/v1``: a thin layer over :class:`msgtrace.query.store.Store`.

No SQL lives here: the endpoints call ``Store.traces_result``, ``trace_result`` + ``trace_summary``, ``tree_result``
and ``stats_result`` (the views the CLI and the Python API use), and ``POST /sql`` passes the client's SQL to
``Store.sandboxed_sql``. Each endpoint's answer, the query and its rows turned into JSON with one converter
(:func:`json_rows` / :func:`json_row`), is built in a worker thread by
:func:`~msgtrace.server.query_calls.answer`, which also bounds how many run at once and maps msgtrace errors to
HTTP: nothing of it runs on the event loop that answers ``/health`` and ingest.

JSON encoding of rows (one converter, used by every endpoint):

- timestamps (``start_time``, ``end_time``): ISO 8601 text in UTC with microseconds, always six digits,
  e.g. ``"2026-11-24T10:00:00.123456Z"`` (the views' precision); the exact nanoseconds are the
  ``start_time_unix_nano`` / ``end_time_unix_nano`` integers next to them;
- dates (``date``): ISO dates, ``"2026-11-24"``;
- attribute maps (``attributes``, ``resource_attributes``, ``scope_attributes``, and those of events and links):
  a JSON object ``{key: {"type": T, "value": V}}``, where ``T`` is the OTLP type (``string``, ``bool``, ``int``,
  ``double``, ``bytes``, ``array``, ``kvlist``, ``empty``) and ``V`` the value: bytes as base64 text, arrays and
  key-value lists as JSON arrays / objects, ``empty`` as ``null``; a NaN or infinite double attribute is the string
  ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (as in the OTLP/JSON mapping);
- other bytes as base64 text; NaN or infinite doubles in columns (``cost``, ``p95_ms``, …) as ``null``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException

from msgtrace.query.options import STATS_DIMENSIONS, TRACE_SORTS
from msgtrace.server.errors import FORBIDDEN, error_schema
from msgtrace.server.query_calls import answer

if TYPE_CHECKING:
    from msgtrace.query.store import Store

# msgtrace.query.store loads DuckDB (~50 MB), which an ingest-only server never needs: it is imported by the first
# query. msgtrace.query.options holds the fixed choices without importing it.

router = APIRouter(tags=["query"])

# --- JSON encoding of Arrow rows ---------------------------------------------------------------------------------
_ATTR_FIELDS = frozenset({"type", "str", "bool", "int", "double", "bytes", "json"})
_ATTR_FIELD_OF = {"string": "str", "bool": "bool", "int": "int", "double": "double", "bytes": "bytes",
                  "array": "json", "kvlist": "json"}
_EPOCH = dt.datetime(1970, 1, 1)
_US_PER_UNIT = {"s": 10**6, "ms": 10**3, "us": 1}
_DATETIME_US = (-62_135_596_800_000_000, 253_402_300_799_999_999)  # years 1 to 9999, as iso_us writes them
_ENCODER = msgspec.json.Encoder()


def json_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of an Arrow table as JSON-ready dicts (see the module docstring for the encoding)."""
    return [row for part in _slices(table) for row in _rows(part)]


def json_rows_raw(table: pa.Table) -> msgspec.Raw:
    """The rows of :func:`json_rows` already encoded as one JSON array, to be embedded in an answer as is."""
    out = bytearray(b"[")
    for part in _slices(table):  # one growing copy of the JSON, not a list of pieces and then their join
        if len(out) > 1:
            out += b","
        out += _ENCODER.encode(_rows(part))[1:-1]
        time.sleep(0)  # let go of the GIL: see _SLICE_BYTES
    out += b"]"
    return msgspec.Raw(out)


# The rows are converted slice by slice, and the GIL is let go after each one (time.sleep(0)), because the event
# loop (/health, ingest) needs it for every request and would otherwise wait behind the conversion:
# - Arrow's to_pylist() and msgspec's encode() are C loops that never let go of it: on a 5,152-row spans result,
#   to_pylist() of `attributes` alone held it for 284 ms;
# - between bytecodes, CPython hands it over only every 5 ms, and not necessarily to the thread that asked: with
#   two threads busy in Python, a thread that wanted it back after a 2 ms sleep waited 13 ms at the median and
#   147 ms at p99; with the busy threads letting go every ~1 ms of work, 0.7 and 0.9 ms.
# A slice of ~64 KiB of Arrow data is about a millisecond of work (1.2 ms for spans with their attributes; smaller
# slices cost more per row than they gain).
_SLICE_BYTES = 64 * 1024
_SLICE_ROWS = 256


def _slices(table: pa.Table) -> Iterator[pa.Table]:
    if not table.num_rows:
        return
    per_row = max(1, table.nbytes // table.num_rows)
    step = max(1, min(_SLICE_ROWS, _SLICE_BYTES // per_row))
    for start in range(0, table.num_rows, step):
        yield table.slice(start, step)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    names = table.column_names
    columns = [_column(table.column(i)) for i in range(table.num_columns)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)] if columns else []


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    """One row that is already Python (e.g. :meth:`Store.trace_summary`), encoded the same way."""
    return {k: _value(v, None) for k, v in row.items()}


def _column(column: pa.ChunkedArray) -> list[Any]:
    typ = column.type
    if pa.types.is_timestamp(typ) and typ.unit == "us":  # the views' timestamps
        ints = column.cast(pa.int64())
        low, high = pc.min_max(ints).values()
        if low.as_py() is None or (_DATETIME_US[0] <= low.as_py() and high.as_py() <= _DATETIME_US[1]):
            # Formatted by Arrow: per value in Python, the two timestamps were 13 % of a big trace's answer.
            return pc.strftime(ints.cast(pa.timestamp("us")), "%Y-%m-%dT%H:%M:%SZ").to_pylist()
    if pa.types.is_timestamp(typ):  # through integers: to_pylist() cannot hold nanoseconds (no pandas)
        ints = column.cast(pa.int64()).to_pylist()
        if typ.unit == "ns":
            return [None if v is None else iso_us(v // 1000) for v in ints]
        return [None if v is None else iso_us(v * _US_PER_UNIT[typ.unit]) for v in ints]
    if pa.types.is_string(typ) or pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        return column.to_pylist()  # JSON values as they are: no call per value
    if pa.types.is_floating(typ):
        return [v if v is None or math.isfinite(v) else None for v in column.to_pylist()]
    if pa.types.is_map(typ) and _is_attr_value(typ.item_type):
        return [row for chunk in column.chunks for row in _attribute_maps(chunk)]
    return [_value(v, typ) for v in column.to_pylist()]


def _attribute_maps(maps: pa.MapArray) -> list[dict[str, Any] | None]:
    """An attribute-map array → one ``{key: {"type": T, "value": V}}`` per row, as :func:`_attr` does per value.

    The struct's fields come out of Arrow a whole column at a time and the common types are picked inline: the
    attribute maps were 3/4 of the time of encoding a spans result (5 us per attribute through :func:`_value`),
    and that time holds the GIL that the event loop needs."""
    offsets = maps.offsets.to_pylist()  # into the unsliced keys and items, as Arrow keeps them
    first = offsets[0]
    count = offsets[-1] - first
    keys = maps.keys.slice(first, count).to_pylist()
    items = maps.items.slice(first, count)
    kinds = items.field("type").to_pylist()
    strs, ints, doubles, bools = (items.field(name).to_pylist() for name in ("str", "int", "double", "bool"))
    present = items.is_valid().to_pylist()
    values: list[dict[str, Any] | None] = []
    for i, kind in enumerate(kinds):
        if not present[i]:
            values.append(None)
        elif kind == "string":
            values.append({"type": kind, "value": strs[i]})
        elif kind == "int":
            values.append({"type": kind, "value": ints[i]})
        elif kind == "bool":
            values.append({"type": kind, "value": bools[i]})
        elif kind == "double" and (doubles[i] is None or math.isfinite(doubles[i])):
            values.append({"type": kind, "value": doubles[i]})
        else:  # bytes, array, kvlist, empty, non-finite doubles, unknown types: the general rule
            values.append(_attr(items[i].as_py()))
    valid = maps.is_valid().to_pylist()
    return [dict(zip(keys[a - first:b - first], values[a - first:b - first], strict=True)) if ok else None
            for ok, a, b in zip(valid, offsets, offsets[1:], strict=False)]


def iso_us(us: int) -> str:
    """Microseconds since the epoch as ISO 8601 UTC text with six fraction digits."""
    try:
        return _iso(_EPOCH + dt.timedelta(microseconds=us))
    except OverflowError:
        return str(us)


def _iso(moment: dt.datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S.%f}Z"


def _value(value: Any, typ: pa.DataType | None) -> Any:
    """One Python value (from ``to_pylist``) made JSON-safe; ``typ`` is its Arrow type when known."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.datetime):
        return _iso(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if typ is not None and pa.types.is_map(typ):
        item = typ.item_type
        if _is_attr_value(item):
            return {k: _attr(v) for k, v in value}
        return {str(k): _value(v, item) for k, v in value}
    if isinstance(value, dict):
        if _is_attr_dict(value, typ):
            return _attr(value)
        fields = {f.name: f.type for f in typ} if typ is not None and pa.types.is_struct(typ) else {}
        return {k: _value(v, fields.get(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        inner = typ.value_type if typ is not None and hasattr(typ, "value_type") else None
        if typ is None and value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            return {str(k): _value(v, None) for k, v in value}  # a map whose type we do not know
        return [_value(v, inner) for v in value]
    return str(value)


@functools.lru_cache(maxsize=64)  # asked for every map value of nested columns (events, links)
def _is_attr_value(typ: pa.DataType) -> bool:
    return pa.types.is_struct(typ) and {f.name for f in typ} == _ATTR_FIELDS


def _is_attr_dict(value: dict[str, Any], typ: pa.DataType | None) -> bool:
    return _is_attr_value(typ) if typ is not None else set(value) == _ATTR_FIELDS


def _attr(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored attribute value struct → ``{"type": …, "value": …}``."""
    if value is None:
        return None
    kind = value.get("type")
    field = _ATTR_FIELD_OF.get(kind or "")
    if field is None and kind != "empty":  # unknown type: the first field that is set
        field = next((f for f in ("str", "int", "double", "bool", "bytes", "json") if value.get(f) is not None), None)
    raw = value.get(field) if field else None
    if raw is None:
        out: Any = None
    elif field == "json":
        try:
            out = json.loads(raw, parse_constant=str)  # NaN / Infinity inside stay text
        except ValueError:
            out = raw
    elif field == "double":
        out = raw if math.isfinite(raw) else ("NaN" if math.isnan(raw) else ("Infinity" if raw > 0 else "-Infinity"))
    elif field == "bytes":
        out = base64.b64encode(raw).decode("ascii")
    else:
        out = raw
    return {"type": kind, "value": out}


# --- OpenAPI ------------------------------------------------------------------------------------------------------
def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses of an endpoint that queries the store: ``codes``, and those every such one can give."""
    text = {
        400: "Malformed argument (trace id not 32 hex characters, unknown `sort`/`order`/`status`/`by`, bad ISO "
             "time, `attribute` not key=value) or a failed query.",
        404: "No trace with this id.",
        422: "A query parameter has the wrong type or is out of range (e.g. `limit=0`, `offset=-1`).",
        500: "The store failed in a way that is not the request's fault (the server log says why).",
        504: "The query ran past the server's query time limit (`MSGTRACE_QUERY_TIMEOUT`) and was stopped.",
    }
    busy = error_schema("Every query slot is taken by queries still running: retry after `Retry-After` seconds.",
                        retry_after=True)
    return {**FORBIDDEN, **{code: error_schema(text[code]) for code in (*codes, 500, 504)}, 503: busy}


def _ok(description: str, example: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {"application/json": {"example": example}}}}


_ENCODING = ("Timestamps are ISO 8601 UTC text with microseconds (`2026-11-24T10:00:00.123456Z`; the exact "
             "nanoseconds are the `*_unix_nano` integers), dates ISO dates. Attribute maps are objects "
             "`{key: {\"type\": T, \"value\": V}}` with T the OTLP type (string, bool, int, double, bytes, array, "
             "kvlist, empty): bytes as base64, arrays and key-value lists as JSON, NaN/inf doubles as "
             "\"NaN\"/\"Infinity\"/\"-Infinity\", e.g. `{\"gen_ai.request.model\": {\"type\": \"string\", "
             "\"value\": \"gpt-4o\"}}`. Non-finite numbers in other columns are null; bytes are base64.")
_TRACE_ROW = {"trace_id": "2696f4701a86a3602fc274ae431deec3", "start_time": "2026-11-24T10:00:00.123456Z",
              "end_time": "2026-11-24T10:00:01.500000Z", "duration_ms": 1376.543211, "root_name": "support_flow",
              "service_name": "support-api", "workflow": "support_flow", "span_count": 11, "error_count": 1,
              "status": "ERROR", "input_tokens": 120, "output_tokens": 30, "total_tokens": 150, "cost": 0.00054,
              "user_id": "user-42", "session_id": "sess-7f3a", "models": ["gpt-4o"]}
_SPAN_EXAMPLE = {"trace_id": "2696f4701a86a3602fc274ae431deec3", "span_id": "e974b40794c1e1ad",
                 "parent_span_id": "13486e427462a449", "name": "chat gpt-4o", "kind": "CLIENT",
                 "start_time": "2026-11-24T10:00:00.200000Z", "duration_ms": 812.5, "status_code": "OK",
                 "model": "gpt-4o", "attributes": {"gen_ai.request.model": {"type": "string", "value": "gpt-4o"}},
                 "events": [], "links": [], "…": "every column of the spans view"}
TraceIdPath = Path(description="The trace id: 32 hexadecimal characters, any case. Anything else is a 400.",
                   examples=["2696f4701a86a3602fc274ae431deec3"],
                   json_schema_extra={"pattern": "^[0-9a-fA-F]{32}$"})  # checked by Store (400), not here (422)


class TraceIdSegment(Convertor[str]):
    """The ``{trace_id}`` segment of the trace routes: any segment but ``export``, which belongs to the OTLP path
    ``/api/v1/traces/export`` (POST only); matched as a trace id, a GET there was a 400 for a malformed id instead
    of a 405. Malformed ids are still routed here, to be refused with a 400 that says why."""

    regex = "(?!export$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("trace_id", TraceIdSegment())
_TIME_SCHEMA = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}


# --- endpoints ----------------------------------------------------------------------------------------------------
@router.get(
    "/traces",
    summary="List traces (filter, sort, paginate)",
    description="One row per trace from the `traces` view: start/end, duration, root span, service, workflow, "
                "span and error counts, status, tokens, cost, user, session, models. Every filter is optional and "
                "they combine with AND. `next_offset` is the offset of the next page, or null when this page is the "
                "last (shorter than `limit`). " + _ENCODING,
    responses={**_ok("A page of traces.", {"traces": [_TRACE_ROW], "limit": 50, "offset": 0, "count": 1,
                                           "next_offset": None}),
               **_errors(400, 422)},
)
async def list_traces(
    request: Request,
    since: str | None = Query(None, description="Only traces starting at or after this ISO 8601 date or time "
                                                "(UTC unless an offset is given), e.g. `2026-11-24T10:00:00Z`.",
                              json_schema_extra=_TIME_SCHEMA),
    until: str | None = Query(None, description="Only traces starting before this ISO 8601 date or time.",
                              json_schema_extra=_TIME_SCHEMA),
    service: str | None = Query(None, description="Service name of the trace's root, or of any of its spans."),
    workflow: str | None = Query(None, description="Workflow: the root's `workflow.name`, else its "
                                                   "`msgflux.workflow.name`, else the root span's name."),
    status: str | None = Query(None, description="`ERROR` (some span failed) or `OK` (none did); any case.",
                               json_schema_extra={"enum": ["OK", "ERROR"]}),
    min_duration_ms: float | None = Query(None, description="Minimum trace duration in milliseconds.",
                                          allow_inf_nan=False),
    max_duration_ms: float | None = Query(None, description="Maximum trace duration in milliseconds.",
                                          allow_inf_nan=False),
    model: str | None = Query(None, description="Some span of the trace used this model."),
    user_id: str | None = Query(None, description="The trace's user id (the root's, else any span's)."),
    session_id: str | None = Query(None, description="The trace's session id (the root's, else any span's)."),
    attribute: str | None = Query(None, description="`key=value`: some span or resource attribute `key` whose "
                                                    "value, rendered as text, equals `value`.",
                                  examples=["gen_ai.request.model=gpt-4o"],
                                  json_schema_extra={"pattern": "^[^=]+="}),  # checked by Store (400)
    sort: str = Query("start_time", description="Sort key.", json_schema_extra={"enum": list(TRACE_SORTS)}),
    order: str = Query("desc", description="Sort direction (nulls always last).",
                       json_schema_extra={"enum": ["desc", "asc"]}),
    limit: int = Query(50, ge=1, le=1000, description="Traces per page, 1 to 1000."),
    offset: int = Query(0, ge=0, le=2**62, description="Traces to skip."),
) -> Response:
    if order.lower() not in ("asc", "desc"):
        raise HTTPException(400, f"order must be asc or desc, not {order!r:.80}")

    def build(store: Store) -> dict[str, Any]:
        result = store.traces_result(
            since=since, until=until, service=service, workflow=workflow, status=status,
            min_duration_ms=min_duration_ms, max_duration_ms=max_duration_ms, model=model, user_id=user_id,
            session_id=session_id, attribute=attribute, sort=sort, descending=order.lower() == "desc", limit=limit,
            offset=offset,
        )
        count = result.table.num_rows
        return {"traces": json_rows_raw(result.table), "limit": limit, "offset": offset, "count": count,
                "next_offset": offset + limit if count == limit else None}

    return await answer(request, build)


@router.get(
    "/traces/{trace_id:trace_id}",
    summary="One trace: its summary and every span",
    description="`trace` is the trace's row of the `traces` view (as in the list); `spans` are all its spans in "
                "start order, with every column of the `spans` view, including `attributes`, "
                "`resource_attributes`, `events` and `links`. `truncated` is true when the trace has more spans "
                "than the server's cap for one trace (`MSGTRACE_QUERY_MAX_TRACE_SPANS`, 20,000 by default; the row "
                "cap of other queries does not apply). " + _ENCODING,
    responses={**_ok("The trace.", {"trace": _TRACE_ROW, "spans": [_SPAN_EXAMPLE], "truncated": False}),
               **_errors(400, 404)},
)
async def get_trace(request: Request, trace_id: str = TraceIdPath) -> Response:
    return await answer(request, _trace_document, trace_id)


def _trace_document(store: Store, trace_id: str) -> dict[str, Any]:
    spans = store.trace_result(trace_id)  # validates the id (400) before any SQL; 404 when unknown
    summary = store.trace_summary(trace_id)
    return {"trace": json_row(summary), "spans": json_rows_raw(spans.table), "truncated": spans.truncated}


@router.delete(
    "/traces/{trace_id:trace_id}",
    summary="Delete one trace",
    description="Hides the trace from every view at once — the trace list, its detail and tree, stats, SQL, the CLI "
                "and the DuckDB shell — whether its spans are in Parquet files or still in memory, and also spans of "
                "it that arrive later. The data files are not rewritten: a tombstone under `deletes/` lists the "
                "trace, and compaction removes its rows physically.",
    responses={**_ok("Deleted.", {"deleted": "2696f4701a86a3602fc274ae431deec3"}), **_errors(400, 404)},
)
async def delete_trace(request: Request, trace_id: str = TraceIdPath) -> Response:
    # Store.delete_trace validates the id (400) and answers 404 for an unknown one.
    return await answer(request, lambda store: {"deleted": store.delete_trace(trace_id)})


@router.get(
    "/traces/{trace_id:trace_id}/tree",
    summary="The span tree of one trace",
    description="The trace's spans in depth-first tree order (siblings by start time), each with every span column "
                "plus `depth` (0 for the root), `parent_id` (the parent in the tree; null for the root), "
                "`position` (0, 1, 2, … in tree order) and `orphan` (the span's own parent is not stored: it is "
                "attached under the root; for the root, its parent lives elsewhere, e.g. in a calling service). "
                "`truncated` is true past `MSGTRACE_QUERY_MAX_TRACE_SPANS` spans, as for the trace itself. "
                + _ENCODING,
    responses={**_ok("The tree.", {"trace_id": "2696f4701a86a3602fc274ae431deec3", "truncated": False,
                                   "spans": [{**_SPAN_EXAMPLE, "depth": 2, "parent_id": "13486e427462a449",
                                              "position": 4, "orphan": False}]}),
               **_errors(400, 404)},
)
async def get_tree(request: Request, trace_id: str = TraceIdPath) -> Response:
    def build(store: Store) -> dict[str, Any]:
        result = store.tree_result(trace_id)  # validates the id (400) before any SQL
        return {"trace_id": trace_id.lower(), "spans": json_rows_raw(result.table), "truncated": result.truncated}

    return await answer(request, build)


@router.get(
    "/stats",
    summary="Aggregates by workflow, model, service, span name or day",
    description="One row per value of `by`: `count`, `errors`, `error_rate`, `p50_ms`/`p95_ms`/`p99_ms` "
                "duration, `input_tokens`/`output_tokens`/`total_tokens` and `cost`, most frequent first. `workflow` "
                "and `day` count traces (runs; a trace's day is the UTC date of its start); `model`, `service` and "
                "`name` count spans (spans without a model are left out of `by=model`). The first column of each "
                "row is named after `by`. `since`/`until` bound the start time (of the trace or span) as "
                "[since, until). A negative duration (a client sent an end before the start) is counted but left "
                "out of the percentiles.",
    responses={**_ok("The aggregates.", {"by": "model", "truncated": False, "rows": [
        {"model": "gpt-4o", "count": 812, "errors": 12, "error_rate": 0.0148, "p50_ms": 950.1, "p95_ms": 2410.7,
         "p99_ms": 3990.2, "input_tokens": 1200000, "output_tokens": 98000, "total_tokens": 1298000,
         "cost": 4.21}]}),
               **_errors(400, 422)},
)
async def stats(
    request: Request,
    by: str = Query("workflow", description="The dimension to group by.",
                    json_schema_extra={"enum": list(STATS_DIMENSIONS)}),
    since: str | None = Query(None, description="Only what started at or after this ISO 8601 date or time.",
                              json_schema_extra=_TIME_SCHEMA),
    until: str | None = Query(None, description="Only what started before this ISO 8601 date or time.",
                              json_schema_extra=_TIME_SCHEMA),
) -> Response:
    def build(store: Store) -> dict[str, Any]:
        result = store.stats_result(by, since=since, until=until)
        return {"by": by, "rows": json_rows_raw(result.table), "truncated": result.truncated}

    return await answer(request, build)


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(description="Exactly one SELECT statement over the views: `spans`, `traces`, "
                                 "`span_tree(trace_id)`, `stats(by, since, until)`.",
                     examples=["SELECT workflow, count(*) AS n FROM traces GROUP BY ALL ORDER BY n DESC"])
    params: dict[str, Any] | list[Any] | None = Field(
        None, description="Values for `$name` (an object) or `?` / `$1` (an array) placeholders.")
    max_rows: int | None = Field(None, ge=0, strict=True, description="Rows to return at most; never more than the server's "
                                                         "row cap (`MSGTRACE_QUERY_MAX_ROWS`), which is the default.")


@router.post(
    "/sql",
    summary="Run one read-only SELECT over the views",
    description="Exactly one statement, whose type (as DuckDB's own parser sees it) is SELECT; anything else is "
                "refused with 400. It runs on a sandbox database of its own that holds the views over a snapshot "
                "of the store and can read nothing else: external access is off (only the store's Parquet files "
                "are readable), extensions cannot be installed or loaded, the configuration is locked. It is "
                "stopped at the server's time limit (504), refused past the memory a query may use (400), and at "
                "most `max_rows` rows come back (`truncated` says there were more). `columns` are the result's "
                "column names, in order; each row is an object keyed by them. " + _ENCODING,
    responses={**_ok("The result.", {"columns": ["workflow", "n"], "rows": [{"workflow": "support_flow", "n": 812}],
                                     "truncated": False, "elapsed_ms": 12.5}),
               400: error_schema("Not exactly one SELECT statement (INSERT, COPY, ATTACH, SET, PRAGMA, several "
                                 "statements, …), a SQL error, a SELECT that reaches outside the store, e.g. "
                                 "`read_csv('/etc/passwd')` (a permission error), or one that needs more memory "
                                 "than a query may use (`MSGTRACE_QUERY_MEMORY_BYTES`, 1 GiB by default)."),
               **_errors(422)},
)
async def run_sql(request: Request, body: SqlRequest) -> Response:
    def build(store: Store) -> dict[str, Any]:
        result = store.sandboxed_sql(body.sql, body.params, max_rows=body.max_rows)
        return {"columns": result.table.column_names, "rows": json_rows_raw(result.table),
                "truncated": result.truncated, "elapsed_ms": round(result.elapsed_ms, 3)}

    return await answer(request, build)
