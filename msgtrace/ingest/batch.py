"""Builds Arrow record batches in :data:`msgtrace.schema.SPAN_SCHEMA` from already-decoded OTLP values.

The two wire decoders (:mod:`.otlp_proto`, :mod:`.otlp_json`) walk their input and append plain Python values to
this builder; everything schema-shaped (LLM field mapping, attribute value structs, truncation, partition day)
happens here, once, so both wire formats store exactly the same row.

An attribute is appended to an :class:`AttrSink` as ``key``, ``type`` (one of :data:`msgtrace.schema.ATTR_TYPES`)
and ``value``: a ``str``/``bool``/``int``/``float``/``bytes``, the JSON text of an ``array``/``kvlist``, or ``None``
for ``empty``. The hot path is per span and per attribute, so it appends to flat lists and leaves all per-column
work to :meth:`SpanBatchBuilder.build` (decode rate: ``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from msgtrace.ingest.truncation import Truncator
from msgtrace.schema import (
    ATTR_VALUE,
    ATTRIBUTES,
    COST_PARTS,
    EVENT,
    FLOAT_FIELDS,
    INT_FIELDS,
    LINK,
    LLM_FIELDS,
    SPAN_SCHEMA,
    partition_day,
)

_INT64_MAX = (1 << 63) - 1
# attribute key → (LLM column, priority); lower priority wins when a span sends several conventions at once.
_KEY_FIELD: dict[str, tuple[str, int]] = {}
for _field, _keys in LLM_FIELDS.items():
    for _rank, _key in enumerate(_keys):
        _KEY_FIELD.setdefault(_key, (_field, _rank))
for _parts in COST_PARTS:
    for _key in _parts:
        _KEY_FIELD.setdefault(_key, ("cost_part", 0))
_LLM_SCALARS = frozenset({"string", "int", "double", "bool"})

# The plain columns of a span row, in the order decoders pass them to add_span().
ROW_FIELDS = ("trace_id", "span_id", "parent_span_id", "trace_state", "flags", "name", "kind",
              "start_time_unix_nano", "end_time_unix_nano", "status_code", "status_message",
              "dropped_attributes_count", "dropped_events_count", "dropped_links_count")


class AttrSink:
    """Flat columns of one map-typed attribute column: append key/type/value triples, then :meth:`close` a set.

    :meth:`build` splits the values by type in one pass and scatters each type's dense array into its struct child
    in Arrow (one Python pass per attribute instead of one per attribute and child).
    """

    __slots__ = ("offsets", "keys", "types", "values")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.keys: list[str] = []
        self.types: list[str] = []
        self.values: list[object] = []

    def close(self) -> None:
        self.offsets.append(len(self.keys))

    def build(self, cut: Truncator) -> pa.MapArray:
        n = len(self.types)
        buckets: dict[str, list[object]] = {child: [] for child in _CHILD_TYPES}
        put = {typ: buckets[child].append for typ, child in _CHILD_OF.items()}
        for typ, value in zip(self.types, self.values, strict=True):
            if typ != "empty":
                put[typ](value)
        types = pa.array(self.types, pa.string())
        children = []
        for child, arrow_type in _CHILD_TYPES.items():
            dense = buckets[child]
            if not dense:
                children.append(pa.nulls(n, arrow_type))
                continue
            if child in _CUTTABLE:
                dense = cut.many(dense)
            if len(dense) == n:
                children.append(pa.array(dense, arrow_type))
                continue
            mask = pc.equal(types, child) if child != "json" else pc.or_(pc.equal(types, "array"),
                                                                         pc.equal(types, "kvlist"))
            children.append(pc.replace_with_mask(pa.nulls(n, arrow_type), mask, pa.array(dense, arrow_type)))
        items = pa.StructArray.from_arrays([types, *children], fields=list(ATTR_VALUE))
        return pa.MapArray.from_arrays(
            pa.array(self.offsets, pa.int32()), pa.array(self.keys, pa.string()), items, type=ATTRIBUTES
        )


# The value struct's typed children, in schema order, keyed by the attribute type that fills them.
_CHILD_TYPES = {"string": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "double": pa.float64(),
                "bytes": pa.binary(), "json": pa.string()}
_CHILD_OF = {"string": "string", "bool": "bool", "int": "int", "double": "double", "bytes": "bytes",
             "array": "json", "kvlist": "json"}
_CUTTABLE = frozenset({"string", "bytes", "json"})


@dataclass
class BuiltBatch:
    """What one request decodes into: the rows, their partition days, and what was rejected or cut."""

    batch: pa.RecordBatch
    days: pa.Int32Array  # partition day (days since epoch) of each row
    rejected_spans: int
    rejected_reasons: list[str]
    truncated_values: int

    @property
    def num_spans(self) -> int:
        return self.batch.num_rows


class SpanBatchBuilder:
    """Accumulates the spans of one request; :meth:`build` turns them into a :class:`BuiltBatch`.

    Protocol for a decoder, per span: append its attributes to ``span_attrs`` and close the set; for each event
    and link, append its attributes to ``event_attrs``/``link_attrs`` and close; then call :meth:`add_span`.
    Resources and scopes likewise (``resource_attrs``/``scope_attrs``, then :meth:`add_resource`/:meth:`add_scope`).
    """

    def __init__(self, received_unix_nano: int, max_value_bytes: int) -> None:
        self.received_unix_nano = received_unix_nano
        self.max_value_bytes = max_value_bytes
        self.rejected_spans = 0
        self.rejected_reasons: list[str] = []
        self._cut = Truncator(max_value_bytes)
        self.span_attrs = AttrSink()
        self.resource_attrs = AttrSink()
        self.scope_attrs = AttrSink()
        self.event_attrs = AttrSink()
        self.link_attrs = AttrSink()
        self._rows: list[tuple] = []
        self._llm: list[dict[str, tuple[int, object]] | None] = []
        self._resources: list[tuple[str | None, str, int]] = []  # service name, schema url, dropped count
        self._scopes: list[tuple[str, str, str]] = []  # name, version, schema url
        self._resource_index: list[int] = []
        self._scope_index: list[int] = []
        self._events: list[tuple[int, str, int]] = []  # time, name, dropped
        self._event_offsets = [0]
        self._links: list[tuple[str, str, str, int, int]] = []  # trace, span, state, flags, dropped
        self._link_offsets = [0]

    # --- input --------------------------------------------------------------------------------------------------
    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected_spans += count
        if len(self.rejected_reasons) < 5 and reason not in self.rejected_reasons:
            self.rejected_reasons.append(reason)

    def add_resource(self, dropped: int, schema_url: str) -> int:
        """Register the resource whose attributes were just closed in ``resource_attrs``; returns its index."""
        sink = self.resource_attrs
        service = None
        for i in range(sink.offsets[-2], sink.offsets[-1]):
            if sink.keys[i] == "service.name" and sink.types[i] == "string":
                service = sink.values[i]
        self._resources.append((service, schema_url, dropped))  # type: ignore[arg-type]
        return len(self._resources) - 1

    def add_scope(self, name: str, version: str, schema_url: str) -> int:
        """Register the scope whose attributes were just closed in ``scope_attrs``; returns its index."""
        self._scopes.append((name, version, schema_url))
        return len(self._scopes) - 1

    def add_span(self, resource: int, scope: int, row: tuple, events: list[tuple[int, str, int]],
                 links: list[tuple[str, str, str, int, int]]) -> None:
        """``row`` holds :data:`ROW_FIELDS`; the span's attribute set must be the last one closed in ``span_attrs``."""
        self._rows.append(row)
        self._resource_index.append(resource)
        self._scope_index.append(scope)
        if events:
            self._events.extend(events)
        self._event_offsets.append(len(self._events))
        if links:
            self._links.extend(links)
        self._link_offsets.append(len(self._links))

        sink = self.span_attrs
        found: dict[str, tuple[int, object]] | None = None
        keys = sink.keys
        for i in range(sink.offsets[-2], sink.offsets[-1]):
            hit = _KEY_FIELD.get(keys[i])
            if hit is None or sink.types[i] not in _LLM_SCALARS:
                continue
            if found is None:
                found = {}
            field, rank = hit
            if field == "cost_part":
                found[keys[i]] = (0, sink.values[i])
            elif field not in found or rank < found[field][0]:
                found[field] = (rank, sink.values[i])
        self._llm.append(found)

    # --- output -------------------------------------------------------------------------------------------------
    def build(self) -> BuiltBatch:
        rows = self._rows
        columns = dict(zip(ROW_FIELDS, zip(*rows, strict=True), strict=True)) if rows else \
            {f: () for f in ROW_FIELDS}
        arrays: dict[str, pa.Array] = {}
        cut = self._cut
        for name in ROW_FIELDS:
            values = columns[name]
            if name in ("name", "status_message"):
                values = cut.many(values)
            arrays[name] = pa.array(values, SPAN_SCHEMA.field(name).type)
        starts = columns["start_time_unix_nano"]
        ends = columns["end_time_unix_nano"]
        arrays["duration_ns"] = pa.array(
            [max(min(e - s, _INT64_MAX), -_INT64_MAX) for s, e in zip(starts, ends, strict=True)], pa.int64())
        received = self.received_unix_nano
        days = pa.array([partition_day(s, received) for s in starts], pa.int32())
        arrays.update(self._llm_columns())
        arrays["attributes"] = self.span_attrs.build(cut)

        # Resources and scopes are built once per request and repeated per span with a take().
        res_idx = pa.array(self._resource_index, pa.int32())
        scope_idx = pa.array(self._scope_index, pa.int32())
        services, res_urls, res_dropped = _columns(self._resources, 3)
        scope_names, scope_versions, scope_urls = _columns(self._scopes, 3)
        arrays["service_name"] = pa.array(services, pa.string()).take(res_idx)
        arrays["resource_schema_url"] = pa.array(res_urls, pa.string()).take(res_idx)
        arrays["resource_dropped_attributes_count"] = pa.array(res_dropped, pa.uint32()).take(res_idx)
        arrays["resource_attributes"] = self.resource_attrs.build(cut).take(res_idx)
        arrays["scope_name"] = pa.array(scope_names, pa.string()).take(scope_idx)
        arrays["scope_version"] = pa.array(scope_versions, pa.string()).take(scope_idx)
        arrays["scope_schema_url"] = pa.array(scope_urls, pa.string()).take(scope_idx)
        arrays["scope_attributes"] = self.scope_attrs.build(cut).take(scope_idx)

        times, names, edropped = _columns(self._events, 3)
        events = pa.StructArray.from_arrays(
            [pa.array(times, pa.uint64()), pa.array(cut.many(names), pa.string()),
             self.event_attrs.build(cut), pa.array(edropped, pa.uint32())],
            fields=list(EVENT),
        )
        arrays["events"] = pa.ListArray.from_arrays(pa.array(self._event_offsets, pa.int32()), events,
                                                    type=pa.list_(EVENT))
        ltrace, lspan, lstate, lflags, ldropped = _columns(self._links, 5)
        links = pa.StructArray.from_arrays(
            [pa.array(ltrace, pa.string()), pa.array(lspan, pa.string()), pa.array(lstate, pa.string()),
             pa.array(lflags, pa.uint32()), self.link_attrs.build(cut), pa.array(ldropped, pa.uint32())],
            fields=list(LINK),
        )
        arrays["links"] = pa.ListArray.from_arrays(pa.array(self._link_offsets, pa.int32()), links,
                                                   type=pa.list_(LINK))
        batch = pa.RecordBatch.from_arrays([arrays[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)
        return BuiltBatch(batch, days, self.rejected_spans, self.rejected_reasons, cut.count)

    def _llm_columns(self) -> dict[str, pa.Array]:
        found = self._llm
        out = {}
        for field in LLM_FIELDS:
            values = [_convert(field, f[field][1]) if f is not None and field in f else None for f in found]
            out[field] = pa.array(values, SPAN_SCHEMA.field(field).type)
        # When no total is sent: cost is the sum of its parts, total tokens the sum of input and output.
        cost = out["cost"].to_pylist()
        total = out["total_tokens"].to_pylist()
        inp, outp = out["input_tokens"].to_pylist(), out["output_tokens"].to_pylist()
        for i, f in enumerate(found):
            if f is None:
                continue
            if cost[i] is None:
                cost[i] = _sum_cost(f)
            if total[i] is None and inp[i] is not None and outp[i] is not None:
                summed = inp[i] + outp[i]  # each fits int64, their sum may not (an OverflowError was a 500)
                total[i] = summed if -_INT64_MAX <= summed <= _INT64_MAX else None
        out["cost"] = pa.array(cost, pa.float64())
        out["total_tokens"] = pa.array(total, pa.int64())
        return out

def _columns(rows: list[tuple], width: int) -> list[tuple]:
    return list(zip(*rows, strict=True)) if rows else [()] * width


def _convert(field: str, value: object) -> object:
    try:
        if field in INT_FIELDS:
            number = int(value)  # type: ignore[call-overload]
            return number if -_INT64_MAX <= number <= _INT64_MAX else None
        if field in FLOAT_FIELDS:
            return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    if field == "operation" and isinstance(value, str) and value.isupper():
        return value.lower()  # OpenInference span kinds are upper case (LLM, TOOL, …)
    return str(value)


def _sum_cost(found: dict[str, tuple[int, object]]) -> float | None:
    for parts in COST_PARTS:
        present = [found[k][1] for k in parts if k in found]
        if present:
            try:
                return float(sum(float(v) for v in present))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
    return None
