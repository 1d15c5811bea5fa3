"""OTLP/JSON: one golden request (modelled on the specification's example trace) in every variant the encoding
rules allow stores the same span as its protobuf twin, and the stored trace id is the 16 bytes that were sent."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import re

import duckdb
import pytest
from google.protobuf.json_format import ParseDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import Server, parquet_glob

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
SPAN_ID = "EEE19B7EC3C1B17"  # + one hex digit per variant
PARENT_ID = "EEE19B7EC3C1B173"


def golden(variant_digit: str) -> dict:
    return {
        "resourceSpans": [{
            "resource": {
                "attributes": [
                    {"key": "service.name", "value": {"stringValue": "my.service"}},
                    {"key": "host.cores", "value": {"intValue": "8"}},
                ],
                "droppedAttributesCount": 1,
            },
            "schemaUrl": "https://opentelemetry.io/schemas/1.24.0",
            "scopeSpans": [{
                "scope": {
                    "name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}],
                },
                "spans": [{
                    "traceId": TRACE_ID,
                    "spanId": SPAN_ID + variant_digit,
                    "parentSpanId": PARENT_ID,
                    "traceState": "vendor=1",
                    "flags": 257,
                    "name": "I'm a server span",
                    "startTimeUnixNano": "1544712660000000000",
                    "endTimeUnixNano": "1544712661000000000",
                    "kind": 2,
                    "attributes": [
                        {"key": "my.span.attr", "value": {"stringValue": "some value"}},
                        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "9007199254740993"}},
                        {"key": "ratio", "value": {"doubleValue": 0.25}},
                        {"key": "ok", "value": {"boolValue": True}},
                        {"key": "blob", "value": {"bytesValue": "AP/+gA=="}},
                        {"key": "list", "value": {"arrayValue": {"values": [
                            {"stringValue": "a"}, {"intValue": "2"}, {"doubleValue": 2.5}]}}},
                        {"key": "map", "value": {"kvlistValue": {"values": [
                            {"key": "tenant", "value": {"stringValue": "acme"}},
                            {"key": "tier", "value": {"intValue": "2"}}]}}},
                        {"key": "nothing", "value": {}},
                    ],
                    "droppedAttributesCount": 2,
                    "events": [{
                        "timeUnixNano": "1544712660500000000", "name": "exception",
                        "attributes": [{"key": "exception.type", "value": {"stringValue": "ValueError"}}],
                        "droppedAttributesCount": 0,
                    }],
                    "droppedEventsCount": 3,
                    "links": [{
                        "traceId": "0AF7651916CD43DD8448EB211C80319C", "spanId": "B7AD6B7169203331",
                        "traceState": "", "flags": 1,
                        "attributes": [{"key": "link.kind", "value": {"stringValue": "follows"}}],
                    }],
                    "droppedLinksCount": 4,
                    "status": {"code": 2, "message": "it broke"},
                }],
            }],
        }]
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _map_keys(doc: object, rename) -> object:  # type: ignore[no-untyped-def]
    if isinstance(doc, dict):
        # the values of "key" fields are attribute names, not protocol fields: leave them alone
        return {rename(k): (v if k == "key" else _map_keys(v, rename)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_map_keys(v, rename) for v in doc]
    return doc


def _int64_as_numbers(doc: object) -> object:
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in ("startTimeUnixNano", "endTimeUnixNano", "timeUnixNano", "intValue") and isinstance(v, str):
                out[k] = int(v)
            else:
                out[k] = _int64_as_numbers(v)
        return out
    if isinstance(doc, list):
        return [_int64_as_numbers(v) for v in doc]
    return doc


def _with_unknown_fields(doc: object) -> object:
    if isinstance(doc, dict):
        out = {k: _with_unknown_fields(v) for k, v in doc.items()}
        if "value" not in out or "key" not in out:  # not inside a KeyValue's AnyValue choice
            out["someFutureField"] = {"nested": [1, 2, {"x": None}]}
        return out
    if isinstance(doc, list):
        return [_with_unknown_fields(v) for v in doc]
    return doc


def _span(doc: dict) -> dict:
    key = "resourceSpans" if "resourceSpans" in doc else "resource_spans"
    scope_key = "scopeSpans" if key == "resourceSpans" else "scope_spans"
    return doc[key][0][scope_key][0]["spans"][0]


def variants() -> dict[str, tuple[dict, str]]:
    """name → (request document, span id it carries)."""
    out: dict[str, tuple[dict, str]] = {}

    def add(name: str, digit: str, change) -> None:  # type: ignore[no-untyped-def]
        doc = golden(digit)
        doc = change(doc) or doc
        out[name] = (doc, (SPAN_ID + digit).lower())

    add("canonical", "0", lambda d: None)

    def lower(d):  # type: ignore[no-untyped-def]
        span = _span(d)
        for k in ("traceId", "spanId", "parentSpanId"):
            span[k] = span[k].lower()
        span["links"][0]["traceId"] = span["links"][0]["traceId"].lower()

    add("lower_hex", "1", lower)
    add("snake_case", "2", lambda d: _map_keys(d, _snake))
    add("int64_numbers", "3", _int64_as_numbers)

    def enum_names(d):  # type: ignore[no-untyped-def]
        span = _span(d)
        span["kind"] = "SPAN_KIND_SERVER"
        span["status"]["code"] = "STATUS_CODE_ERROR"

    add("enum_names", "4", enum_names)
    add("unknown_fields", "5", _with_unknown_fields)

    def everything(d):  # type: ignore[no-untyped-def]
        lower(d)
        enum_names(d)
        return _map_keys(_with_unknown_fields(_int64_as_numbers(d)), _snake)

    add("all_at_once", "6", everything)
    return out


def _protobuf_twin(digit: str) -> bytes:
    """The same request as protobuf: ids converted from hex by hand (ParseDict would read them as base64)."""
    doc = golden(digit)
    span = _span(doc)
    for holder, keys in ((span, ("traceId", "spanId", "parentSpanId")), (span["links"][0], ("traceId", "spanId"))):
        for k in keys:
            holder[k] = base64.b64encode(bytes.fromhex(holder[k])).decode()
    return ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    data_dir = tmp_path_factory.mktemp("json") / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    server.start()
    try:
        for name, (doc, _) in variants().items():
            response = server.post("/v1/traces", json.dumps(doc).encode(),
                                   {"Content-Type": "application/json; charset=utf-8"})
            assert response.status_code == 200, (name, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {}, name
        response = server.post("/v1/traces", _protobuf_twin("f"), {"Content-Type": "application/x-protobuf"})
        assert response.status_code == 200
    finally:
        assert server.stop() == 0
    rows = duckdb.connect().sql("SELECT *, unhex(trace_id) AS trace_id_bytes FROM read_parquet(?)",
                      params=[parquet_glob(data_dir)]).to_arrow_table().to_pylist()
    return {row["span_id"]: row for row in rows}


def _comparable(row: dict) -> dict:
    row = dict(row)
    row.pop("span_id")
    return {k: (sorted(v) if k.endswith("attributes") and isinstance(v, list) else v) for k, v in row.items()}


@pytest.mark.parametrize("name", list(variants()))
def test_variant_stores_the_same_span_as_protobuf(stored: dict[str, dict], name: str) -> None:
    _, span_id = variants()[name]
    row = stored[span_id]
    twin = stored[(SPAN_ID + "f").lower()]
    assert _comparable(row) == _comparable(twin)


def test_golden_span_fields(stored: dict[str, dict]) -> None:
    row = stored[(SPAN_ID + "0").lower()]
    assert row["trace_id_bytes"] == bytes.fromhex(TRACE_ID)
    assert row["trace_id"] == TRACE_ID.lower()
    assert row["parent_span_id"] == PARENT_ID.lower()
    assert (row["kind"], row["status_code"], row["status_message"]) == ("SERVER", "ERROR", "it broke")
    assert (row["start_time_unix_nano"], row["end_time_unix_nano"]) == (1544712660000000000, 1544712661000000000)
    assert (row["flags"], row["trace_state"]) == (257, "vendor=1")
    assert (row["dropped_attributes_count"], row["dropped_events_count"], row["dropped_links_count"]) == (2, 3, 4)
    assert row["resource_dropped_attributes_count"] == 1
    assert row["resource_schema_url"] == "https://opentelemetry.io/schemas/1.24.0"
    assert (row["scope_name"], row["scope_version"]) == ("my.library", "1.0.0")
    attrs = dict(row["attributes"])
    assert attrs["gen_ai.usage.input_tokens"]["int"] == 9007199254740993  # above 2**53: no float on the way
    assert row["input_tokens"] == 9007199254740993
    assert attrs["ratio"]["double"] == 0.25
    assert attrs["ok"]["bool"] is True
    assert attrs["blob"]["bytes"] == b"\x00\xff\xfe\x80"
    assert json.loads(attrs["list"]["json"]) == ["a", 2, 2.5]
    assert json.loads(attrs["map"]["json"]) == {"tenant": "acme", "tier": 2}
    assert attrs["nothing"]["type"] == "empty"
    (event,) = row["events"]
    assert (event["name"], event["time_unix_nano"]) == ("exception", 1544712660500000000)
    (link,) = row["links"]
    assert (link["trace_id"], link["span_id"], link["flags"]) == ("0af7651916cd43dd8448eb211c80319c",
                                                                  "b7ad6b7169203331", 1)
    assert dict(link["attributes"])["link.kind"]["str"] == "follows"
    # start time in 2018 is outside [now - 1 year, now + 1 day]: partitioned by ingest day, stored raw
    assert row["date"] == dt.datetime.now(dt.UTC).date()


def test_bad_ids_are_rejected_alone(server: Server) -> None:
    doc = golden("0")
    good = _span(doc)
    bad = [copy.deepcopy(good) for _ in range(4)]
    bad[0]["traceId"] = "0" * 32
    bad[1]["spanId"] = "ABC"
    bad[2]["traceId"] = "zz" * 16
    del bad[3]["spanId"]
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"] = [good, *bad]
    response = server.post("/v1/traces", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "4"
    assert "traceId" in partial["errorMessage"]
    server.stop()
    assert duckdb.connect().execute("SELECT count(*) FROM read_parquet(?)", [parquet_glob(server.data_dir)]).fetchall() \
        == [(1,)]
