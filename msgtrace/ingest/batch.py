"""Builds Arrow record batches in :data:`msgtrace.schema.SPAN_SCHEMA` from already-decoded OTLP values.

The two wire decoders (:mod:`.otlp_proto`, :mod:`.otlp_json`) walk their input and feed this builder plain Python
values; everything schema-shaped (LLM field mapping, attribute value structs, truncation, partition day) happens here,
once, so both wire formats store exactly the same row.

An attribute arrives as ``(key, type, value)`` with ``type`` one of :data:`msgtrace.schema.ATTR_TYPES` and ``value`` a
``str``/``bool``/``int``/``float``/``bytes``, or for ``array``/``kvlist`` its JSON text, or ``None`` for ``empty``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa

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

Attr = tuple[str, str, object]
# (time_unix_nano, name, attributes, dropped_attributes_count)
Event = tuple[int, str, Sequence[Attr], int]
# (trace_id hex, span_id hex, trace_state, flags, attributes, dropped_attributes_count)
Link = tuple[str, str, str, int, Sequence[Attr], int]

_INT64_MAX = (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_TRUNCATION_MARKER = "…[truncated by msgtrace: {kept} of {total} {unit} kept]"
# Attribute keys the LLM columns read, looked up once per attribute instead of once per field.
_LLM_KEYS = frozenset(k for keys in LLM_FIELDS.values() for k in keys) | frozenset(k for p in COST_PARTS for k in p)


class _Attrs:
    """Flat columns of one map-typed attribute column (offsets, keys, value structs)."""

    __slots__ = ("offsets", "keys", "types", "values")

    def __init__(self) -> None:
        self.offsets: list[int] = [0]
        self.keys: list[str] = []
        self.types: list[str] = []
        self.values: list[object] = []

    def build(self) -> pa.MapArray:
        types, values = self.types, self.values

        def only(*wanted: str) -> list[object]:
            return [v if t in wanted else None for t, v in zip(types, values, strict=True)]

        items = pa.StructArray.from_arrays(
            [
                pa.array(types, pa.string()),
                pa.array(only("string"), pa.string()),
                pa.array(only("bool"), pa.bool_()),
                pa.array(only("int"), pa.int64()),
                pa.array(only("double"), pa.float64()),
                pa.array(only("bytes"), pa.binary()),
                pa.array(only("array", "kvlist"), pa.string()),
            ],
            fields=list(ATTR_VALUE),
        )
        return pa.MapArray.from_arrays(
            pa.array(self.offsets, pa.int32()), pa.array(self.keys, pa.string()), items, type=ATTRIBUTES
        )


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
    """Accumulates spans of one request; :meth:`build` turns them into a :class:`BuiltBatch`."""

    def __init__(self, received_unix_nano: int, max_value_bytes: int) -> None:
        self.received_unix_nano = received_unix_nano
        self.max_value_bytes = max_value_bytes
        self.rejected_spans = 0
        self.rejected_reasons: list[str] = []
        self.truncated_values = 0
        self._cols: dict[str, list[object]] = {f.name: [] for f in SPAN_SCHEMA}
        self._days: list[int] = []
        self._span_attrs = _Attrs()
        self._resource_attrs = _Attrs()
        self._scope_attrs = _Attrs()
        self._resources: list[tuple[str | None, str, int]] = []  # service name, schema url, dropped count
        self._scopes: list[tuple[str, str, str]] = []  # name, version, schema url
        self._resource_index: list[int] = []
        self._scope_index: list[int] = []
        self._event_offsets = [0]
        self._event_cols: tuple[list[object], ...] = ([], [], [])  # time, name, dropped
        self._event_attrs = _Attrs()
        self._link_offsets = [0]
        self._link_cols: tuple[list[object], ...] = ([], [], [], [], [])  # trace, span, state, flags, dropped
        self._link_attrs = _Attrs()

    # --- input --------------------------------------------------------------------------------------------------
    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected_spans += count
        if len(self.rejected_reasons) < 5 and reason not in self.rejected_reasons:
            self.rejected_reasons.append(reason)

    def add_resource(self, attrs: Iterable[Attr], dropped: int, schema_url: str) -> int:
        service = None
        for key, typ, value in self._put_attrs(self._resource_attrs, attrs):
            if key == "service.name" and typ == "string":
                service = value
        self._resources.append((service, schema_url, dropped))
        return len(self._resources) - 1

    def add_scope(self, name: str, version: str, attrs: Iterable[Attr], schema_url: str) -> int:
        self._put_attrs(self._scope_attrs, attrs)
        self._scopes.append((name, version, schema_url))
        return len(self._scopes) - 1

    def add_span(
        self,
        resource: int,
        scope: int,
        trace_id: str,
        span_id: str,
        parent_span_id: str | None,
        trace_state: str,
        flags: int,
        name: str,
        kind: str,
        start: int,
        end: int,
        status_code: str,
        status_message: str,
        attrs: Iterable[Attr],
        dropped_attributes: int,
        events: Iterable[Event],
        dropped_events: int,
        links: Iterable[Link],
        dropped_links: int,
    ) -> None:
        c = self._cols
        start = min(max(start, 0), _UINT64_MAX)
        end = min(max(end, 0), _UINT64_MAX)
        c["trace_id"].append(trace_id)
        c["span_id"].append(span_id)
        c["parent_span_id"].append(parent_span_id)
        c["trace_state"].append(trace_state)
        c["flags"].append(flags)
        c["name"].append(self._cut(name))
        c["kind"].append(kind)
        c["start_time_unix_nano"].append(start)
        c["end_time_unix_nano"].append(end)
        c["duration_ns"].append(max(min(end - start, _INT64_MAX), -_INT64_MAX))
        c["status_code"].append(status_code)
        c["status_message"].append(self._cut(status_message))
        c["dropped_attributes_count"].append(dropped_attributes)
        c["dropped_events_count"].append(dropped_events)
        c["dropped_links_count"].append(dropped_links)
        self._resource_index.append(resource)
        self._scope_index.append(scope)
        self._days.append(partition_day(start, self.received_unix_nano))

        llm: dict[str, object] = {}
        for key, typ, value in self._put_attrs(self._span_attrs, attrs):
            if key in _LLM_KEYS and key not in llm and typ in ("string", "int", "double", "bool"):
                llm[key] = value
        for field, keys in LLM_FIELDS.items():
            c[field].append(_pick(llm, keys, field))
        if c["cost"][-1] is None:
            c["cost"][-1] = _sum_cost(llm)
        if c["total_tokens"][-1] is None and c["input_tokens"][-1] is not None and c["output_tokens"][-1] is not None:
            c["total_tokens"][-1] = c["input_tokens"][-1] + c["output_tokens"][-1]

        times, names, edropped = self._event_cols
        for time, ename, eattrs, dropped in events:
            times.append(min(max(time, 0), _UINT64_MAX))
            names.append(self._cut(ename))
            edropped.append(dropped)
            self._put_attrs(self._event_attrs, eattrs)
        self._event_offsets.append(len(times))

        ltrace, lspan, lstate, lflags, ldropped = self._link_cols
        for ltid, lsid, state, lf, lattrs, dropped in links:
            ltrace.append(ltid)
            lspan.append(lsid)
            lstate.append(state)
            lflags.append(lf)
            ldropped.append(dropped)
            self._put_attrs(self._link_attrs, lattrs)
        self._link_offsets.append(len(ltrace))

    # --- output -------------------------------------------------------------------------------------------------
    def build(self) -> BuiltBatch:
        c = self._cols
        n = len(self._days)
        arrays: dict[str, pa.Array] = {}
        for field in SPAN_SCHEMA:
            if field.name in c and field.type != ATTRIBUTES and field.name not in _FROM_RESOURCE_OR_SCOPE:
                arrays[field.name] = pa.array(c[field.name], field.type)
        arrays["attributes"] = self._span_attrs.build()
        # Resources and scopes are built once per request and repeated per span with a take().
        res_idx = pa.array(self._resource_index, pa.int32())
        scope_idx = pa.array(self._scope_index, pa.int32())
        services, res_urls, res_dropped = (list(col) for col in zip(*self._resources, strict=True)) if self._resources \
            else ([], [], [])
        scope_names, scope_versions, scope_urls = (list(col) for col in zip(*self._scopes, strict=True)) \
            if self._scopes else ([], [], [])
        arrays["service_name"] = pa.array(services, pa.string()).take(res_idx)
        arrays["resource_schema_url"] = pa.array(res_urls, pa.string()).take(res_idx)
        arrays["resource_dropped_attributes_count"] = pa.array(res_dropped, pa.uint32()).take(res_idx)
        arrays["resource_attributes"] = self._resource_attrs.build().take(res_idx)
        arrays["scope_name"] = pa.array(scope_names, pa.string()).take(scope_idx)
        arrays["scope_version"] = pa.array(scope_versions, pa.string()).take(scope_idx)
        arrays["scope_schema_url"] = pa.array(scope_urls, pa.string()).take(scope_idx)
        arrays["scope_attributes"] = self._scope_attrs.build().take(scope_idx)

        times, names, edropped = self._event_cols
        events = pa.StructArray.from_arrays(
            [pa.array(times, pa.uint64()), pa.array(names, pa.string()), self._event_attrs.build(),
             pa.array(edropped, pa.uint32())],
            fields=list(EVENT),
        )
        arrays["events"] = pa.ListArray.from_arrays(pa.array(self._event_offsets, pa.int32()), events,
                                                    type=pa.list_(EVENT))
        ltrace, lspan, lstate, lflags, ldropped = self._link_cols
        links = pa.StructArray.from_arrays(
            [pa.array(ltrace, pa.string()), pa.array(lspan, pa.string()), pa.array(lstate, pa.string()),
             pa.array(lflags, pa.uint32()), self._link_attrs.build(), pa.array(ldropped, pa.uint32())],
            fields=list(LINK),
        )
        arrays["links"] = pa.ListArray.from_arrays(pa.array(self._link_offsets, pa.int32()), links,
                                                   type=pa.list_(LINK))
        batch = pa.RecordBatch.from_arrays([arrays[f.name] for f in SPAN_SCHEMA], schema=SPAN_SCHEMA)
        assert batch.num_rows == n
        return BuiltBatch(batch, pa.array(self._days, pa.int32()), self.rejected_spans, self.rejected_reasons,
                          self.truncated_values)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _put_attrs(self, sink: _Attrs, attrs: Iterable[Attr]) -> list[Attr]:
        """Append one attribute set to ``sink``; returns it (after truncation) for the caller to inspect."""
        out = [(k, t, self._cut(v) if t in _CUTTABLE else v) for k, t, v in attrs]
        for k, t, v in out:
            sink.keys.append(k)
            sink.types.append(t)
            sink.values.append(v)
        sink.offsets.append(len(sink.keys))
        return out

    def _cut(self, value):  # type: ignore[no-untyped-def]
        """Cut a string or bytes value longer than the cap, with a marker saying so (the span is never dropped)."""
        cap = self.max_value_bytes
        if len(value) <= cap:
            return value
        self.truncated_values += 1
        if isinstance(value, bytes):
            return value[:cap] + _TRUNCATION_MARKER.format(kept=cap, total=len(value), unit="bytes").encode()
        return value[:cap] + _TRUNCATION_MARKER.format(kept=cap, total=len(value), unit="characters")


_CUTTABLE = frozenset({"string", "bytes", "array", "kvlist"})
_FROM_RESOURCE_OR_SCOPE = frozenset(
    {"service_name", "resource_schema_url", "resource_dropped_attributes_count", "scope_name", "scope_version",
     "scope_schema_url"}
)


def _pick(values: dict[str, object], keys: tuple[str, ...], field: str) -> object:
    for key in keys:
        value = values.get(key)
        if value is None:
            continue
        try:
            if field in INT_FIELDS:
                number = int(value)  # type: ignore[call-overload]
                if -_INT64_MAX <= number <= _INT64_MAX:
                    return number
                continue
            if field in FLOAT_FIELDS:
                return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            continue
        if field == "operation" and key == "openinference.span.kind":
            return str(value).lower()
        return str(value)
    return None


def _sum_cost(values: dict[str, object]) -> float | None:
    for parts in COST_PARTS:
        present = [values[k] for k in parts if k in values]
        if present:
            try:
                return float(sum(float(v) for v in present))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return None
    return None
