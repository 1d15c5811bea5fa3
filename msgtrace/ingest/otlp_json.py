"""OTLP/JSON → :class:`~msgtrace.ingest.batch.SpanBatchBuilder`, following the OTLP JSON encoding rules.

The stock protobuf JSON parser would read ``traceId`` as base64; OTLP/JSON says hex. So this reader walks the JSON
itself: ids are hex (either case); enums are names or integers; 64-bit integers are strings or numbers; keys may be
lowerCamelCase or snake_case; unknown fields are ignored. A structurally wrong document (a span that is not an object,
a non-numeric timestamp) is a 400; a span with a missing, zero or wrong-length id is rejected alone through
``partial_success``.
"""

from __future__ import annotations

import base64
import binascii
import math

import msgspec

from msgtrace.errors import MalformedRequest
from msgtrace.ingest.batch import AttrSink, SpanBatchBuilder
from msgtrace.schema import SPAN_KINDS, STATUS_CODES

_json = msgspec.json.Encoder()
_INT64 = (-(1 << 63), (1 << 63) - 1)
_KIND_NAMES = {f"SPAN_KIND_{k}": k for k in SPAN_KINDS} | {k: k for k in SPAN_KINDS}
_STATUS_NAMES = {f"STATUS_CODE_{s}": s for s in STATUS_CODES} | {s: s for s in STATUS_CODES}
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _BadId(ValueError):
    pass


def decode_json(body: bytes, builder: SpanBatchBuilder) -> None:
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise MalformedRequest(f"body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec raises this, not DecodeError, for invalid UTF-8 inside a string
        raise MalformedRequest(f"JSON body is not valid UTF-8: {exc.reason} at a string's byte {exc.start}") from None
    except RecursionError:
        raise MalformedRequest("JSON nesting is too deep") from None
    try:
        _walk(doc, builder)
    except RecursionError:
        raise MalformedRequest("attribute nesting is too deep") from None
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise MalformedRequest(f"not an OTLP/JSON ExportTraceServiceRequest: {exc}") from None


def _get(obj: dict, camel: str, snake: str, default=None):  # type: ignore[no-untyped-def]
    value = obj.get(camel)
    if value is None:
        value = obj.get(snake)
    return default if value is None else value


def _objects(value: object, what: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError(f"{what} must be a list of objects")
    return value


def _walk(doc: object, builder: SpanBatchBuilder) -> None:
    if not isinstance(doc, dict):
        raise ValueError("the top level must be an object")
    for rs in _objects(_get(doc, "resourceSpans", "resource_spans"), "resourceSpans"):
        resource = rs.get("resource") or {}
        if not isinstance(resource, dict):
            raise ValueError("resource must be an object")
        _put(builder.resource_attrs, resource.get("attributes"))
        res = builder.add_resource(_uint32(_get(resource, "droppedAttributesCount", "dropped_attributes_count", 0)),
                                   _str(_get(rs, "schemaUrl", "schema_url", "")))
        for ss in _objects(_get(rs, "scopeSpans", "scope_spans"), "scopeSpans"):
            scope = ss.get("scope") or {}
            if not isinstance(scope, dict):
                raise ValueError("scope must be an object")
            _put(builder.scope_attrs, scope.get("attributes"))
            sc = builder.add_scope(_str(scope.get("name", "")), _str(scope.get("version", "")),
                                   _str(_get(ss, "schemaUrl", "schema_url", "")))
            for span in _objects(ss.get("spans"), "spans"):
                _span(span, res, sc, builder)


def _span(span: dict, res: int, sc: int, builder: SpanBatchBuilder) -> None:
    name = _str(span.get("name", ""))
    try:
        trace_id = _hex_id(_get(span, "traceId", "trace_id", ""), 16, "traceId")
        span_id = _hex_id(_get(span, "spanId", "span_id", ""), 8, "spanId")
        parent = _get(span, "parentSpanId", "parent_span_id", "")
        parent_id = _hex_id(parent, 8, "parentSpanId", allow_zero=True) if parent else None
    except _BadId as exc:
        builder.reject(f"span {name!r}: {exc}")
        return
    if parent_id is not None and not int(parent_id, 16):
        parent_id = None
    status = span.get("status") or {}
    if not isinstance(status, dict):
        raise ValueError("status must be an object")
    # Convert everything that can fail before touching the builder, so a 400 leaves no half-added span behind.
    row = (
        trace_id, span_id, parent_id, _str(_get(span, "traceState", "trace_state", "")),
        _uint32(span.get("flags", 0)), name, _enum(span.get("kind", 0), _KIND_NAMES, SPAN_KINDS),
        _uint(_get(span, "startTimeUnixNano", "start_time_unix_nano", 0)),
        _uint(_get(span, "endTimeUnixNano", "end_time_unix_nano", 0)),
        _enum(status.get("code", 0), _STATUS_NAMES, STATUS_CODES), _str(status.get("message", "")),
        _uint32(_get(span, "droppedAttributesCount", "dropped_attributes_count", 0)),
        _uint32(_get(span, "droppedEventsCount", "dropped_events_count", 0)),
        _uint32(_get(span, "droppedLinksCount", "dropped_links_count", 0)),
    )
    attrs = _attrs(span.get("attributes"))
    events, event_attrs = [], []
    for e in _objects(span.get("events"), "events"):
        events.append((_uint(_get(e, "timeUnixNano", "time_unix_nano", 0)), _str(e.get("name", "")),
                       _uint32(_get(e, "droppedAttributesCount", "dropped_attributes_count", 0))))
        event_attrs.append(_attrs(e.get("attributes")))
    links, link_attrs = [], []
    for link in _objects(span.get("links"), "links"):
        links.append((_loose_hex(_get(link, "traceId", "trace_id", "")),
                      _loose_hex(_get(link, "spanId", "span_id", "")),
                      _str(_get(link, "traceState", "trace_state", "")), _uint32(link.get("flags", 0)),
                      _uint32(_get(link, "droppedAttributesCount", "dropped_attributes_count", 0))))
        link_attrs.append(_attrs(link.get("attributes")))
    _fill(builder.span_attrs, attrs)
    for a in event_attrs:
        _fill(builder.event_attrs, a)
    for a in link_attrs:
        _fill(builder.link_attrs, a)
    builder.add_span(res, sc, row, events, links)


def _hex_id(value: object, size: int, what: str, allow_zero: bool = False) -> str:
    if not isinstance(value, str) or len(value) != size * 2:
        raise _BadId(f"{what} must be {size * 2} hex characters")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise _BadId(f"{what} must be {size * 2} hex characters") from None
    if len(raw) != size:  # fromhex skips whitespace: "…c6  " would pass as a 15-byte id
        raise _BadId(f"{what} must be {size * 2} hex characters")
    if not allow_zero and not any(raw):
        raise _BadId(f"{what} must not be all zeros")
    return raw.hex()


def _loose_hex(value: object) -> str:
    """Link ids: kept lower-cased when they are hex, stored as empty otherwise (a bad link never drops a span)."""
    if isinstance(value, str):
        try:
            return bytes.fromhex(value).hex()
        except ValueError:
            pass
    return ""


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _uint(value: object, bits: int = 64) -> int:
    """A (u)int64 field: a JSON number or a decimal string."""
    if isinstance(value, bool):
        raise ValueError("expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    number = int(value)  # type: ignore[call-overload]  # str or int; anything else raises
    if not 0 <= number < 1 << bits:
        raise ValueError(f"{number} is out of range for an unsigned {bits}-bit field")
    return number


def _uint32(value: object) -> int:
    """A uint32 field (flags, dropped counts): past 2**32 - 1 it is a 400, not an Arrow overflow (a 500)."""
    return _uint(value, 32)


def _enum(value: object, names: dict[str, str], ordered: tuple[str, ...]) -> str:
    if isinstance(value, str):
        if value in names:
            return names[value]
        if value.isdigit():
            value = int(value)
        else:
            raise ValueError(f"unknown enum value {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return ordered[value] if 0 <= value < len(ordered) else str(value)
    raise ValueError(f"bad enum value {value!r}")


def _attrs(values: object) -> list[tuple[str, str, object]]:
    return [(_str(kv.get("key", "")), *_value(kv.get("value"))) for kv in _objects(values, "attributes")]


def _fill(sink: AttrSink, attrs: list[tuple[str, str, object]]) -> None:
    for key, typ, value in attrs:
        sink.keys.append(key)
        sink.types.append(typ)
        sink.values.append(value)
    sink.close()


def _put(sink: AttrSink, values: object) -> None:
    _fill(sink, _attrs(values))


def _value(v: object) -> tuple[str, object]:
    """An AnyValue as (type, value); arrays and key-value lists as their JSON text."""
    typ, value = _typed(v)
    if typ == "array" or typ == "kvlist":
        return typ, _json.encode(value).decode()
    return typ, value


def _typed(v: object) -> tuple[str, object]:
    if v is None:
        return "empty", None
    if not isinstance(v, dict):
        raise ValueError("an attribute value must be an AnyValue object")
    if (s := _get(v, "stringValue", "string_value")) is not None:
        return "string", _str(s)
    if (b := _get(v, "boolValue", "bool_value")) is not None:
        if not isinstance(b, bool):
            raise ValueError("boolValue must be true or false")
        return "bool", b
    if (i := _get(v, "intValue", "int_value")) is not None:
        return "int", _int64(i)
    if (d := _get(v, "doubleValue", "double_value")) is not None:
        return "double", _double(d)
    if (raw := _get(v, "bytesValue", "bytes_value")) is not None:
        return "bytes", _b64(raw)
    if (a := _get(v, "arrayValue", "array_value")) is not None:
        if not isinstance(a, dict):
            raise ValueError("arrayValue must be an object")
        return "array", [_plain(x) for x in a.get("values") or []]
    if (kv := _get(v, "kvlistValue", "kvlist_value")) is not None:
        if not isinstance(kv, dict):
            raise ValueError("kvlistValue must be an object")
        return "kvlist", {_str(item.get("key", "")): _plain(item.get("value"))
                          for item in _objects(kv.get("values"), "values")}
    return "empty", None


def _plain(v: object) -> object:
    """A nested value as plain JSON data (see :mod:`msgtrace.schema` for how nested bytes are written)."""
    typ, value = _typed(v)
    return base64.b64encode(value).decode() if typ == "bytes" else value  # type: ignore[arg-type]


def _int64(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("intValue must be an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    number = int(value)  # type: ignore[call-overload]
    if not _INT64[0] <= number <= _INT64[1]:
        raise ValueError(f"intValue {number} is out of range for int64")
    return number


def _double(value: object) -> float:
    if isinstance(value, str) and value in _FLOAT_WORDS:
        return _FLOAT_WORDS[value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("doubleValue must be a number")
    return float(value)


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("bytesValue must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        try:
            return base64.urlsafe_b64decode(value)
        except (binascii.Error, ValueError):
            raise ValueError("bytesValue is not valid base64") from None
