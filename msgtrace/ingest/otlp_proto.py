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
from msgtrace.ingest.batch import Attr, SpanBatchBuilder
from msgtrace.schema import SPAN_KINDS, STATUS_CODES

_json = msgspec.json.Encoder()


def decode_protobuf(body: bytes, builder: SpanBatchBuilder) -> None:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError) as exc:
        raise MalformedRequest(f"body is not a valid OTLP ExportTraceServiceRequest: {exc}") from None
    add_span = builder.add_span
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource
        res = builder.add_resource(_attrs(resource.attributes), resource.dropped_attributes_count,
                                   resource_spans.schema_url)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope
            sc = builder.add_scope(scope.name, scope.version, _attrs(scope.attributes), scope_spans.schema_url)
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
                status = span.status
                add_span(
                    res, sc, trace_id.hex(), span_id.hex(), parent.hex() if any(parent) else None,
                    span.trace_state, span.flags, span.name, _kind(span.kind),
                    span.start_time_unix_nano, span.end_time_unix_nano,
                    _status(status.code), status.message,
                    _attrs(span.attributes), span.dropped_attributes_count,
                    [(e.time_unix_nano, e.name, _attrs(e.attributes), e.dropped_attributes_count)
                     for e in span.events],
                    span.dropped_events_count,
                    [(lk.trace_id.hex(), lk.span_id.hex(), lk.trace_state, lk.flags, _attrs(lk.attributes),
                      lk.dropped_attributes_count) for lk in span.links],
                    span.dropped_links_count,
                )


def _kind(value: int) -> str:
    return SPAN_KINDS[value] if 0 <= value < len(SPAN_KINDS) else str(value)


def _status(value: int) -> str:
    return STATUS_CODES[value] if 0 <= value < len(STATUS_CODES) else str(value)


def _attrs(key_values) -> list[Attr]:  # type: ignore[no-untyped-def]
    return [(kv.key, *_value(kv.value)) for kv in key_values]


def _value(v) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    which = v.WhichOneof("value")
    if which == "string_value":
        return "string", v.string_value
    if which == "int_value":
        return "int", v.int_value
    if which == "double_value":
        return "double", v.double_value
    if which == "bool_value":
        return "bool", v.bool_value
    if which == "bytes_value":
        return "bytes", v.bytes_value
    if which == "array_value":
        return "array", _json.encode([_plain(x) for x in v.array_value.values]).decode()
    if which == "kvlist_value":
        return "kvlist", _json.encode({kv.key: _plain(kv.value) for kv in v.kvlist_value.values}).decode()
    return "empty", None


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
