"""OTLP protobuf (``ExportTraceServiceRequest``) → :class:`~msgtrace.ingest.batch.SpanBatchBuilder`.

Uses the official ``opentelemetry-proto`` classes (upb-backed protobuf), so undecodable input and nesting deeper
than upb's limit surface as ``DecodeError`` and become a 400 here.
"""

from __future__ import annotations

import base64

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from msgtrace.errors import MalformedRequest
from msgtrace.ingest.batch import AttrSink, SpanBatchBuilder
from msgtrace.schema import SPAN_KINDS, STATUS_CODES

_json = msgspec.json.Encoder()
_SCALAR_TAG = {"string_value": "string", "int_value": "int", "double_value": "double", "bool_value": "bool",
               "bytes_value": "bytes"}


def decode_protobuf(body: bytes, builder: SpanBatchBuilder) -> None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise MalformedRequest(f"body is not a valid OTLP ExportTraceServiceRequest: {exc}") from None
    span_sink, event_sink, link_sink = builder.span_attrs, builder.event_attrs, builder.link_attrs
    add_span = builder.add_span
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource
        _put(builder.resource_attrs, resource.attributes)
        res = builder.add_resource(resource.dropped_attributes_count, resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            _put(builder.scope_attrs, scope.attributes)
            sc = builder.add_scope(scope.name, scope.version, scope_spans.schema_url)
            for span in scope_spans.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if len(trace_id) != 16 or not any(trace_id):
                    builder.reject(f"span {span.name!r}: trace_id must be 16 non-zero bytes")
                    continue
                if len(span_id) != 8 or not any(span_id):
                    builder.reject(f"span {span.name!r}: span_id must be 8 non-zero bytes")
                    continue
                if parent and len(parent) != 8:
                    builder.reject(f"span {span.name!r}: parent_span_id must be empty or 8 bytes")
                    continue
                _put(span_sink, span.attributes)
                events = []
                for e in span.events:
                    _put(event_sink, e.attributes)
                    events.append((e.time_unix_nano, e.name, e.dropped_attributes_count))
                links = []
                for lk in span.links:
                    _put(link_sink, lk.attributes)
                    links.append((lk.trace_id.hex(), lk.span_id.hex(), lk.trace_state, lk.flags,
                                  lk.dropped_attributes_count))
                status = span.status
                kind, code = span.kind, status.code
                add_span(res, sc, (
                    trace_id.hex(), span_id.hex(), parent.hex() if any(parent) else None, span.trace_state,
                    span.flags, span.name, SPAN_KINDS[kind] if 0 <= kind < 6 else str(kind),
                    span.start_time_unix_nano, span.end_time_unix_nano,
                    STATUS_CODES[code] if 0 <= code < 3 else str(code), status.message,
                    span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count,
                ), events, links)


def _put(sink: AttrSink, key_values) -> None:  # type: ignore[no-untyped-def]
    keys, types, values = sink.keys.append, sink.types.append, sink.values.append
    for kv in key_values:
        v = kv.value
        which = v.WhichOneof("value")
        keys(kv.key)
        tag = _SCALAR_TAG.get(which)  # type: ignore[arg-type]
        if tag is not None:
            types(tag)
            values(getattr(v, which))  # type: ignore[arg-type]
        elif which == "array_value":
            types("array")
            values(_json.encode([_plain(x) for x in v.array_value.values]).decode())
        elif which == "kvlist_value":
            types("kvlist")
            values(_json.encode({x.key: _plain(x.value) for x in v.kvlist_value.values}).decode())
        else:
            types("empty")
            values(None)
    sink.close()


def _plain(v):  # type: ignore[no-untyped-def]
    """A nested value as plain JSON data (see :mod:`msgtrace.schema` for how nested bytes are written)."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_plain(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    if which is None:
        return None
    return getattr(v, which)
