"""Receiver fuzzing with Hypothesis against one real server for the whole module.

Every case is one POST to an OTLP path. What the answer must be (the oracle):

- never a 5xx; only 200, 400, 413 or 415; answered within 2 s;
- 415 exactly when the Content-Type or Content-Encoding is not supported (they are judged before the body);
- 413 exactly when the body is over the server's limit on the wire or once decompressed (256 KiB here);
- a protobuf body: 200 exactly when the stock protobuf parser accepts the decompressed body (else 400), with
  ``partial_success`` counting the spans whose ids are missing, zero or the wrong length;
- a JSON body: 200 or 400; requests built here field by field: exactly 200 with exactly the bad-id spans rejected;
  a body that is not valid UTF-8: exactly 400.

At the end ``/health`` is 200, every span of every 200 the oracle could account for is in the ``spans`` view, and no
stored id is malformed.

Inputs: random bytes; byte-level mutations of valid requests (the captured client requests in tests/fixtures and
``msgtrace.synthetic`` bodies, as protobuf and as OTLP/JSON); requests generated field by field; deep AnyValue nesting
in protobuf and deep JSON arrays/objects; invalid UTF-8 in every kind of string; fuzzed Content-Type and
Content-Encoding headers; concatenated gzip members and zstd frames; bodies at the size limit. Each crosses protobuf
and JSON content types with none, gzip, deflate (zlib and raw) and zstd.

CI runs 11,000 cases with Hypothesis's fixed seed (``derandomize``), so a run is reproducible. ``MSGTRACE_STRESS=1``
runs 10x the cases with random seeds (Hypothesis prints how to reproduce a failure).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import zstandard
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from msgtrace.schema import COST_PARTS, LLM_FIELDS
from msgtrace.synthetic import build_workload
from tests.conftest import CAPTURES, Server, capture, running_server

STRESS = os.environ.get("MSGTRACE_STRESS", "") not in ("", "0")
SCALE = 10 if STRESS else 1
LIMIT = 256 * 1024  # the fuzz server's MSGTRACE_MAX_REQUEST_BYTES: small, so 413 is reachable with small bodies
ANSWER_SECONDS = 2.0
SEED_TIME_NS = 1_795_000_000_000_000_000  # 2026-11-18: the synthetic seeds' start times (stored raw whatever the date)
PATHS = ("/v1/traces", "/api/v1/traces/export")
PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf", "Application/X-Protobuf",
                  "application/x-protobuf; charset=utf-8")
JSON_TYPES = ("application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "application/json;q=1")
BAD_TYPES = (None, "", "text/plain", "application/xml", "application/x-protobuf-evil", "json", "application/jsonx",
             "multipart/form-data; boundary=x", "application/grpc", "*/*")
# "deflate-raw" is not a header value: raw deflate data sent as "deflate" (some clients do; the server accepts it)
ENCODINGS = (None, "identity", "gzip", "x-gzip", "GZIP", "deflate", "deflate-raw", "zstd", "Zstd")
BAD_ENCODINGS = ("br", "compress", "gzip, zstd", "zstd;q=1", "gzip2", "x-deflate", "BR")
MEDIA = {"application/x-protobuf": "protobuf", "application/protobuf": "protobuf", "application/json": "json"}
CODINGS = {"identity", "gzip", "x-gzip", "deflate", "zstd"}
QUOTAS = {"random": 2000, "mutated": 3500, "generated-protobuf": 1200, "generated-json": 1200, "nesting": 800,
          "utf8": 1000, "headers": 800, "members": 300, "limit": 200}  # 11,000 cases
LLM_KEYS = sorted({k for keys in LLM_FIELDS.values() for k in keys} | {k for parts in COST_PARTS for k in parts})


def fuzz_settings(cases: int) -> settings:
    return settings(
        max_examples=cases * SCALE, derandomize=not STRESS, database=None, deadline=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.filter_too_much],
    )


# --- the server, the client and what was acknowledged -----------------------------------------------------------
@dataclass
class Ledger:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status) → cases
    acked: set[tuple[str, str]] = field(default_factory=set)  # (trace_id, span_id) of spans a 200 accepted
    slowest: float = 0.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory, "fuzz", env={
            "MSGTRACE_MAX_REQUEST_BYTES": str(LIMIT), "MSGTRACE_QUERY_MAX_ROWS": "2000000",
            "MSGTRACE_FLUSH_INTERVAL": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=10.0) as c:
        yield c


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@dataclass(frozen=True)
class Expect:
    statuses: frozenset[int]
    rejected: int | None = None  # partial_success.rejected_spans a 200 must carry, when known
    spans: frozenset[tuple[str, str]] = frozenset()  # spans a 200 must have stored


ANY_OUTCOME = Expect(frozenset({200, 400, 413}))


def post(client: httpx.Client, ledger: Ledger, kind: str, path: str, body: bytes, content_type: str | bytes | None,
         encoding: str | bytes | None, expect: Expect) -> httpx.Response:
    headers: dict[str, str | bytes] = {}
    if content_type is not None:
        headers["content-type"] = content_type
    if encoding is not None:
        headers["content-encoding"] = encoding
    started = time.monotonic()
    response = client.post(path, content=body, headers=headers)
    elapsed = time.monotonic() - started
    ledger.cases[kind] += 1
    ledger.statuses[kind, response.status_code] += 1
    ledger.slowest = max(ledger.slowest, elapsed)
    where = f"{kind}: {path} content-type={content_type!r} content-encoding={encoding!r} body={body[:120]!r}…"
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text[:300]}"
    assert response.status_code in (200, 400, 413, 415), f"{where} -> {response.status_code}"
    assert elapsed < ANSWER_SECONDS, f"{where} took {elapsed:.2f} s"
    assert response.status_code in expect.statuses, \
        f"{where} -> {response.status_code}, expected {sorted(expect.statuses)}: {response.text[:300]}"
    if response.status_code == 200:
        if expect.rejected is not None:
            assert rejected_spans(response) == expect.rejected, f"{where} -> {response.content[:300]!r}"
        ledger.acked.update(expect.spans)
    return response


def rejected_spans(response: httpx.Response) -> int:
    if response.headers["content-type"] == "application/json":
        return int(response.json().get("partialSuccess", {}).get("rejectedSpans", 0))
    return ExportTraceServiceResponse.FromString(response.content).partial_success.rejected_spans


# --- encodings -------------------------------------------------------------------------------------------------
def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


COMPRESS: dict[str | None, Callable[[bytes], bytes]] = {
    None: lambda b: b, "identity": lambda b: b, "gzip": lambda b: gzip.compress(b, 1, mtime=0),
    "deflate": lambda b: zlib.compress(b, 1), "deflate-raw": _raw_deflate,
    "zstd": lambda b: zstandard.ZstdCompressor(level=1).compress(b),
}


def compress(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    """The body as sent with this encoding, and the Content-Encoding header that says so."""
    key = encoding.strip().lower() if encoding is not None else None
    key = "gzip" if key == "x-gzip" else key
    header = "deflate" if key == "deflate-raw" else encoding
    return COMPRESS[key](body), header


def header_verdict(content_type: str | bytes | None, encoding: str | bytes | None) -> str | None:
    """'protobuf' or 'json' when the server must take the body; None when it must answer 415 (the contract:
    media type case-insensitive, parameters ignored; encoding case-insensitive, blank means none)."""
    ctype = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type or ""
    enc = encoding.decode("latin-1") if isinstance(encoding, bytes) else encoding
    fmt = MEDIA.get(ctype.split(";", 1)[0].strip().lower())
    coding = (enc or "identity").strip().lower() or "identity"
    return fmt if coding in CODINGS else None


# --- the protobuf oracle ---------------------------------------------------------------------------------------
def protobuf_expect(plain: bytes, wire_size: int) -> Expect:
    """What the server must answer for a protobuf body whose decompressed bytes are ``plain``."""
    if wire_size > LIMIT or len(plain) > LIMIT:
        return Expect(frozenset({413}))
    try:
        request = ExportTraceServiceRequest.FromString(plain)
    except DecodeError:
        return Expect(frozenset({400}))
    rejected, spans = 0, set()
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                if (len(s.trace_id) != 16 or not any(s.trace_id) or len(s.span_id) != 8 or not any(s.span_id)
                        or (s.parent_span_id and len(s.parent_span_id) != 8)):
                    rejected += 1
                else:
                    spans.add((s.trace_id.hex(), s.span_id.hex()))
    return Expect(frozenset({200}), rejected, frozenset(spans))


def body_expect(fmt: str | None, plain: bytes, wire_size: int) -> Expect:
    """The oracle for a body sent with valid compression (``plain`` is what the server decompresses)."""
    if fmt is None:
        return Expect(frozenset({415}))
    if fmt == "protobuf":
        return protobuf_expect(plain, wire_size)
    if wire_size > LIMIT or len(plain) > LIMIT:
        return Expect(frozenset({413}))
    try:
        plain.decode("utf-8")
    except UnicodeDecodeError:
        return Expect(frozenset({400}))  # JSON is UTF-8: invalid UTF-8 is never accepted
    return Expect(frozenset({200, 400}))


# --- seeds: valid requests ---------------------------------------------------------------------------------------
def _shorten(request: ExportTraceServiceRequest, spans: int, chars: int = 200) -> ExportTraceServiceRequest:
    """A smaller copy: at most ``spans`` spans, long strings cut (the captures hold whole prompts)."""
    def cut(values) -> None:  # type: ignore[no-untyped-def]
        for kv in values:
            if kv.value.HasField("string_value") and len(kv.value.string_value) > chars:
                kv.value.string_value = kv.value.string_value[:chars]

    out = ExportTraceServiceRequest()
    out.CopyFrom(request)
    for rs in out.resource_spans:
        for ss in rs.scope_spans:
            del ss.spans[spans:]
            for s in ss.spans:
                cut(s.attributes)
                for e in s.events:
                    cut(e.attributes)
    return out


def to_otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: like MessageToDict, but ids are hex, as the OTLP JSON mapping requires."""
    doc = MessageToDict(request)

    def hexed(obj: dict, *keys: str) -> None:
        for k in keys:
            if k in obj:
                obj[k] = base64.b64decode(obj[k]).hex()

    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                hexed(s, "traceId", "spanId", "parentSpanId")
                for link in s.get("links", []):
                    hexed(link, "traceId", "spanId")
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Seed:
    name: str
    fmt: str
    body: bytes = field(repr=False)
    spans: frozenset[tuple[str, str]] = field(repr=False)  # what the server must store when the seed is sent unchanged


def _seeds() -> list[Seed]:
    requests: list[tuple[str, ExportTraceServiceRequest]] = []
    for name in CAPTURES:
        _, _, body, _ = capture(name)
        requests.append((name, _shorten(ExportTraceServiceRequest.FromString(body), spans=6)))
    workload = build_workload(12, batch=3, seed=11, base_time_ns=SEED_TIME_NS)  # fixed bytes: reproducible runs
    requests += [(f"synthetic-{i}", _shorten(ExportTraceServiceRequest.FromString(b), spans=3))
                 for i, b in enumerate(workload.bodies)]
    seeds = []
    for name, request in requests:
        spans = frozenset((s.trace_id.hex(), s.span_id.hex()) for rs in request.resource_spans
                          for ss in rs.scope_spans for s in ss.spans)
        seeds.append(Seed(name, "protobuf", request.SerializeToString(), spans))
        seeds.append(Seed(name, "json", to_otlp_json(request), spans))
    return seeds


SEEDS = _seeds()
assert all(len(s.body) < 16_384 for s in SEEDS), [(s.name, s.fmt, len(s.body)) for s in SEEDS]


# --- byte-level mutation -----------------------------------------------------------------------------------------
MUTATIONS = ("flip", "set", "insert", "delete", "truncate", "duplicate", "splice", "repeat")
INTERESTING = (0x00, 0x01, 0x08, 0x0A, 0x12, 0x22, 0x7F, 0x80, 0xFF, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A)


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    data = bytearray(body)
    for op in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        n = len(data)
        if op == "truncate":
            del data[draw(st.integers(0, n)):]
        elif op == "repeat":  # protobuf: concatenated messages merge; JSON: trailing garbage
            data += bytes(data)
        elif op == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(INTERESTING).map(lambda b: bytes([b])))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS)).body
            i, j = draw(st.integers(0, n)), draw(st.integers(0, len(other)))
            data[i:] = other[j:j + draw(st.integers(1, 512))]
        elif not n:
            continue
        elif op == "flip":
            data[draw(st.integers(0, n - 1))] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[draw(st.integers(0, n - 1))] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif op == "delete":
            i = draw(st.integers(0, n - 1))
            del data[i:i + draw(st.integers(1, 64))]
        elif op == "duplicate":
            i = draw(st.integers(0, n - 1))
            data[i:i] = data[i:i + draw(st.integers(1, 64))]
    return bytes(data)


def media_for(fmt: str) -> st.SearchStrategy[str]:
    return st.sampled_from(PROTOBUF_TYPES if fmt == "protobuf" else JSON_TYPES)


# --- hand-built protobuf (for nesting and invalid UTF-8, which the generated classes refuse to build) ------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def ld(field_number: int, payload: bytes) -> bytes:
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def pb_span(trace_id: bytes, span_id: bytes, *, name: bytes = b"fuzz", attributes: Iterable[bytes] = (),
            extra: bytes = b"") -> bytes:
    now = time.time_ns()
    return (ld(1, trace_id) + ld(2, span_id) + ld(5, name) + b"\x39" + now.to_bytes(8, "little")
            + b"\x41" + (now + 1000).to_bytes(8, "little") + b"".join(ld(9, a) for a in attributes) + extra)


def pb_request(spans: Iterable[bytes], resource_attrs: Iterable[bytes] = (), scope: bytes = b"") -> bytes:
    resource = b"".join(ld(1, a) for a in resource_attrs)
    scope_spans = (ld(1, scope) if scope else b"") + b"".join(ld(2, s) for s in spans)
    return ld(1, ld(1, resource) + ld(2, scope_spans))


def pb_kv(key: bytes, any_value: bytes) -> bytes:
    return ld(1, key) + ld(2, any_value)


def ids(r: random.Random) -> tuple[bytes, bytes]:
    return r.randbytes(15) + b"\x01", r.randbytes(7) + b"\x01"


# --- tests ---------------------------------------------------------------------------------------------------------
def test_random_bytes(client: httpx.Client, ledger: Ledger) -> None:
    """Random bodies × every content type (good and bad) × every encoding (good and bad), compressed properly or
    sent raw under an encoding header."""
    @fuzz_settings(QUOTAS["random"])
    @given(body=st.binary(max_size=1024), path=st.sampled_from(PATHS),
           content_type=st.sampled_from(PROTOBUF_TYPES + JSON_TYPES + BAD_TYPES),
           encoding=st.sampled_from(ENCODINGS + BAD_ENCODINGS), compress_it=st.booleans())
    def case(body: bytes, path: str, content_type: str | None, encoding: str | None, compress_it: bool) -> None:
        fmt = header_verdict(content_type, "deflate" if encoding == "deflate-raw" else encoding)
        if fmt is None:
            wire, header = body, encoding
            expect = Expect(frozenset({415}))
        elif compress_it:
            wire, header = compress(body, encoding)
            expect = body_expect(fmt, body, len(wire))
        else:  # random bytes claimed to be compressed: whatever they inflate to, never a 5xx
            wire, header = body, "deflate" if encoding == "deflate-raw" else encoding
            plain = encoding is None or encoding.strip().lower() == "identity"
            expect = body_expect(fmt, body, len(wire)) if plain else ANY_OUTCOME
        post(client, ledger, "random", path, wire, content_type, header, expect)

    case()
    assert ledger.cases["random"] >= QUOTAS["random"] * SCALE


def test_mutated_valid_requests(client: httpx.Client, ledger: Ledger) -> None:
    """The captured and synthetic requests, mutated byte by byte (or not at all), in their own format, under every
    encoding; sometimes the compressed stream itself is mutated."""
    @fuzz_settings(QUOTAS["mutated"])
    @given(data=st.data(), seed=st.sampled_from(SEEDS), path=st.sampled_from(PATHS),
           encoding=st.sampled_from(ENCODINGS), corrupt_stream=st.booleans())
    def case(data: st.DataObject, seed: Seed, path: str, encoding: str | None, corrupt_stream: bool) -> None:
        body = data.draw(mutated(seed.body), label="body")
        content_type = data.draw(media_for(seed.fmt), label="content_type")
        wire, header = compress(body, encoding)
        if corrupt_stream and wire is not body:
            wire = data.draw(mutated(wire), label="wire")
            expect = ANY_OUTCOME
        elif body == seed.body:  # unchanged: accepted whole
            expect = Expect(frozenset({200}), 0, seed.spans)
        else:
            expect = body_expect(seed.fmt, body, len(wire))
        post(client, ledger, "mutated", path, wire, content_type, header, expect)

    case()
    assert ledger.cases["mutated"] >= QUOTAS["mutated"] * SCALE


# Requests generated field by field, with ids that are sometimes wrong: the answer is known exactly.
scalar_text = st.text(max_size=24)
int64 = st.integers(-(1 << 63), (1 << 63) - 1)
uint64 = st.integers(0, (1 << 64) - 1)
UINT32_MAX = (1 << 32) - 1
uint32 = st.integers(0, UINT32_MAX)
UINT32_FIELDS = ("flags", "droppedAttributesCount", "droppedEventsCount", "droppedLinksCount")
keys = st.sampled_from(LLM_KEYS) | scalar_text


def _any_values() -> st.SearchStrategy[tuple[str, object]]:
    leaves = st.one_of(
        st.tuples(st.just("string"), scalar_text), st.tuples(st.just("bool"), st.booleans()),
        st.tuples(st.just("int"), int64), st.tuples(st.just("double"), st.floats()),
        st.tuples(st.just("bytes"), st.binary(max_size=24)), st.tuples(st.just("empty"), st.none()),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.tuples(st.just("array"), st.lists(inner, max_size=3)),
        st.tuples(st.just("kvlist"), st.lists(st.tuples(scalar_text, inner), max_size=3)),
    ), max_leaves=4)


any_values = _any_values()
# Token counts and costs feed the typed LLM columns, which add them up: each is drawn on purpose (under one of its
# conventions' keys), with extreme values.
usage_value = st.one_of(st.tuples(st.just("int"), int64), st.tuples(st.just("double"), st.floats()),
                        st.tuples(st.just("string"), int64.map(str)))
usage = st.tuples(*(st.none() | st.tuples(st.sampled_from(keys_), usage_value) for keys_ in (
    LLM_FIELDS["input_tokens"], LLM_FIELDS["output_tokens"], LLM_FIELDS["total_tokens"], LLM_FIELDS["cost"],
    *COST_PARTS))).map(lambda drawn: [kv for kv in drawn if kv is not None])
attributes = st.builds(lambda a, b: a + b, st.lists(st.tuples(keys, any_values), max_size=4), usage)


def _pb_any(value: tuple[str, object], out: AnyValue) -> None:
    kind, v = value
    if kind == "array":
        out.array_value.SetInParent()
        for item in v:  # type: ignore[attr-defined]
            _pb_any(item, out.array_value.values.add())
    elif kind == "kvlist":
        out.kvlist_value.SetInParent()
        for k, item in v:  # type: ignore[attr-defined]
            kv = out.kvlist_value.values.add()
            kv.key = k
            _pb_any(item, kv.value)
    elif kind != "empty":
        setattr(out, f"{kind}_value", v)


def _pb_attrs(attrs: list[tuple[str, tuple[str, object]]], target) -> None:  # type: ignore[no-untyped-def]
    for key, value in attrs:
        kv = target.add()
        kv.key = key
        _pb_any(value, kv.value)


pb_ids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20), st.just(b"\x00" * 16))
pb_span_ids = st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10), st.just(b"\x00" * 8))


@st.composite
def generated_protobuf(draw: st.DrawFn) -> tuple[bytes, int, frozenset[tuple[str, str]]]:
    # One attribute list per request, shared by its resources, spans, events and links: drawing a list per place
    # made generation ~4x slower (Hypothesis draws cost more than the request does) for little extra coverage.
    attrs = draw(attributes)
    request = ExportTraceServiceRequest()
    rejected, spans = 0, set()
    for _ in range(draw(st.integers(1, 2))):
        rs = request.resource_spans.add()
        _pb_attrs(attrs[:2], rs.resource.attributes)
        ss = rs.scope_spans.add()
        ss.scope.name = draw(scalar_text)
        for _ in range(draw(st.integers(0, 3))):
            s = ss.spans.add()
            s.trace_id, s.span_id = draw(pb_ids), draw(pb_span_ids)
            s.parent_span_id = draw(st.just(b"") | pb_span_ids)
            s.name = draw(scalar_text)
            s.kind, s.status.code = draw(st.integers(0, 7)), draw(st.integers(0, 4))
            s.start_time_unix_nano, s.end_time_unix_nano = draw(uint64), draw(uint64)
            s.flags, s.dropped_attributes_count = draw(uint32), draw(uint32)
            _pb_attrs(attrs, s.attributes)
            if draw(st.booleans()):
                e = s.events.add()
                e.time_unix_nano, e.name = draw(uint64), draw(scalar_text)
                _pb_attrs(attrs[-1:], e.attributes)
                link = s.links.add()
                link.trace_id, link.span_id = draw(pb_ids), draw(pb_span_ids)
                _pb_attrs(attrs[:1], link.attributes)
            ok = (len(s.trace_id) == 16 and any(s.trace_id) and len(s.span_id) == 8 and any(s.span_id)
                  and len(s.parent_span_id) in (0, 8))
            if ok:
                spans.add((s.trace_id.hex(), s.span_id.hex()))
            else:
                rejected += 1
    return request.SerializeToString(), rejected, frozenset(spans)


def test_generated_protobuf_requests(client: httpx.Client, ledger: Ledger) -> None:
    @fuzz_settings(QUOTAS["generated-protobuf"])
    @given(generated=generated_protobuf(), path=st.sampled_from(PATHS), content_type=st.sampled_from(PROTOBUF_TYPES),
           encoding=st.sampled_from(ENCODINGS))
    def case(generated: tuple[bytes, int, frozenset[tuple[str, str]]], path: str, content_type: str,
             encoding: str | None) -> None:
        body, rejected, spans = generated
        wire, header = compress(body, encoding)
        post(client, ledger, "generated-protobuf", path, wire, content_type, header,
             Expect(frozenset({200}), rejected, spans))

    case()
    assert ledger.cases["generated-protobuf"] >= QUOTAS["generated-protobuf"] * SCALE


HEX = "0123456789abcdefABCDEF"


def json_id(size: int) -> st.SearchStrategy[object]:
    """Hex ids of ``size`` bytes, mostly right; else the wrong length, zeros, whitespace, non-hex, base64, not text."""
    return st.one_of(
        st.binary(min_size=size, max_size=size).map(bytes.hex),
        st.binary(min_size=size, max_size=size).map(lambda b: b.hex().upper()),
        st.just("0" * 2 * size),
        st.text(alphabet=HEX + " \t\n\r\x0b\x0c", min_size=2 * size, max_size=2 * size),
        st.text(alphabet=HEX + "gG-+_xX", min_size=2 * size - 1, max_size=2 * size + 1),
        st.binary(min_size=size, max_size=size).map(lambda b: base64.b64encode(b).decode()),
        st.text(max_size=2 * size + 2), st.none(), st.integers(), st.lists(st.integers(0, 255), max_size=size),
    )


def json_id_ok(value: object, size: int, allow_zero: bool = False) -> bool:
    return (isinstance(value, str) and len(value) == 2 * size and all(c in HEX for c in value)
            and (allow_zero or any(c != "0" for c in value)))


def _json_any(value: tuple[str, object], snake: bool) -> dict:
    kind, v = value
    name = f"{kind}_value" if snake else f"{kind}Value"
    if kind == "array":
        return {name: {"values": [_json_any(x, snake) for x in v]}}  # type: ignore[attr-defined]
    if kind == "kvlist":
        return {name: {"values": [{"key": k, "value": _json_any(x, snake)} for k, x in v]}}  # type: ignore[attr-defined]
    if kind == "empty":
        return {}
    if kind == "bytes":
        return {name: base64.b64encode(v).decode()}  # type: ignore[arg-type]
    if kind == "int":
        return {name: str(v) if snake else v}
    if kind == "double":
        f = float(v)  # type: ignore[arg-type]
        return {name: repr(f).replace("nan", "NaN").replace("inf", "Infinity") if f != f or f in (
            float("inf"), float("-inf")) else f}
    return {name: v}


def _json_attrs(attrs: list[tuple[str, tuple[str, object]]], snake: bool) -> list[dict]:
    return [{"key": k, "value": _json_any(v, snake)} for k, v in attrs]


@st.composite
def generated_json(draw: st.DrawFn) -> tuple[bytes, int, frozenset[tuple[str, str]]]:
    snake = draw(st.booleans())
    attrs = _json_attrs(draw(attributes), snake)  # one list per request, as in generated_protobuf

    def key(camel: str) -> str:
        return "".join("_" + c.lower() if c.isupper() else c for c in camel) if snake else camel

    def number(n: int) -> object:
        return str(n) if snake else n

    rejected, spans, out_of_range = 0, set(), False
    resource_spans = []
    for _ in range(draw(st.integers(1, 2))):
        span_docs = []
        for _ in range(draw(st.integers(0, 3))):
            trace_id, span_id = draw(json_id(16)), draw(json_id(8))
            parent = draw(st.sampled_from([None, ""]) | json_id(8))
            doc = {key("traceId"): trace_id, key("spanId"): span_id, "name": draw(scalar_text),
                   "kind": draw(st.integers(0, 7) | st.sampled_from(["SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "3"])),
                   key("startTimeUnixNano"): number(draw(uint64)), key("endTimeUnixNano"): number(draw(uint64)),
                   "attributes": attrs, "status": {"code": draw(st.integers(0, 4) | st.just("STATUS_CODE_ERROR"))}}
            counts = draw(st.dictionaries(st.sampled_from(UINT32_FIELDS), st.one_of(
                uint32, uint32, uint32, st.integers(UINT32_MAX + 1, (1 << 64) - 1)), max_size=1))
            doc.update({key(k): number(v) for k, v in counts.items()})
            if draw(st.booleans()):
                doc["events"] = [{key("timeUnixNano"): number(draw(uint64)), "name": draw(scalar_text),
                                  "attributes": attrs[-1:]}]
                doc["links"] = [{key("traceId"): draw(json_id(16)), key("spanId"): draw(json_id(8)),
                                 "attributes": attrs[:1]}]
            if parent is not None:
                doc[key("parentSpanId")] = parent
            span_docs.append(doc)
            if json_id_ok(trace_id, 16) and json_id_ok(span_id, 8) and (not parent or json_id_ok(parent, 8, True)):
                spans.add((trace_id.lower(), span_id.lower()))  # type: ignore[union-attr]
                out_of_range |= any(v > UINT32_MAX for v in counts.values())  # (a rejected span is not read)
            else:
                rejected += 1
        resource_spans.append({"resource": {"attributes": attrs[:2]},
                               key("scopeSpans"): [{"scope": {"name": draw(scalar_text)}, "spans": span_docs}]})
    body = json.dumps({key("resourceSpans"): resource_spans}, ensure_ascii=snake).encode()
    if out_of_range:  # a uint32 field past 2**32 - 1 is not OTLP (the protobuf JSON mapping refuses it too)
        return body, -1, frozenset()
    return body, rejected, frozenset(spans)


def test_generated_json_requests(client: httpx.Client, ledger: Ledger) -> None:
    @fuzz_settings(QUOTAS["generated-json"])
    @given(generated=generated_json(), path=st.sampled_from(PATHS), content_type=st.sampled_from(JSON_TYPES),
           encoding=st.sampled_from(ENCODINGS))
    def case(generated: tuple[bytes, int, frozenset[tuple[str, str]]], path: str, content_type: str,
             encoding: str | None) -> None:
        body, rejected, spans = generated
        wire, header = compress(body, encoding)
        expect = Expect(frozenset({400})) if rejected < 0 else Expect(frozenset({200}), rejected, spans)
        post(client, ledger, "generated-json", path, wire, content_type, header, expect)

    case()
    assert ledger.cases["generated-json"] >= QUOTAS["generated-json"] * SCALE


def test_pathological_nesting(client: httpx.Client, ledger: Ledger) -> None:
    """AnyValue nested arrays/kvlists in protobuf (past upb's depth limit) and JSON nested far past any recursion
    limit, at the top level, in an ignored field and inside an attribute value."""
    r = random.Random(6)

    @fuzz_settings(QUOTAS["nesting"])
    @given(fmt=st.sampled_from(["protobuf", "json"]), depth=st.integers(1, 60) | st.integers(61, 30_000),
           shape=st.sampled_from(["array", "kvlist", "mixed", "top-array", "top-object", "ignored-field"]),
           encoding=st.sampled_from(ENCODINGS), path=st.sampled_from(PATHS))
    def case(fmt: str, depth: int, shape: str, encoding: str | None, path: str) -> None:
        trace_id, span_id = ids(r)
        if fmt == "protobuf":
            depth = min(depth, 3000)  # ~6 bytes per level: stay well under the body limit
            value = ld(1, b"leaf")  # AnyValue{string_value}
            for level in range(depth):
                as_array = shape == "array" or (shape != "kvlist" and level % 2 == 0)
                value = ld(5, ld(1, value)) if as_array else ld(6, ld(1, pb_kv(b"k", value)))
            body = pb_request([pb_span(trace_id, span_id, attributes=[pb_kv(b"deep", value)])])
        elif shape == "top-array":
            body = b"[" * depth + b"]" * depth
        elif shape == "top-object":
            body = b'{"a":' * depth + b"1" + b"}" * depth
        elif shape == "ignored-field":
            body = b'{"resourceSpans":[],"x":' + b"[" * depth + b"]" * depth + b"}"
        else:
            depth = min(depth, 6000)
            value = b'{"stringValue":"leaf"}'
            open_, close = [], []
            for level in range(depth):
                as_array = shape == "array" or (shape == "mixed" and level % 2 == 0)
                open_.append(b'{"arrayValue":{"values":[' if as_array else b'{"kvlistValue":{"values":[{"key":"k","value":')
                close.append(b"]}}" if as_array else b"}]}}")
            value = b"".join(reversed(open_)) + value + b"".join(close)
            body = (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + trace_id.hex().encode()
                    + b'","spanId":"' + span_id.hex().encode() + b'","name":"deep","attributes":[{"key":"deep",'
                    b'"value":' + value + b"}]}]}]}]}")
        wire, header = compress(body, encoding)
        if fmt == "protobuf":
            expect = protobuf_expect(body, len(wire))
        elif shape in ("array", "kvlist", "mixed") and depth <= 60:
            expect = Expect(frozenset({200}), 0, frozenset({(trace_id.hex(), span_id.hex())}))
        elif shape == "ignored-field" and depth <= 60:
            expect = Expect(frozenset({200}), 0)
        else:
            expect = body_expect(fmt, body, len(wire))
        content_type = PROTOBUF_TYPES[0] if fmt == "protobuf" else JSON_TYPES[0]
        post(client, ledger, "nesting", path, wire, content_type, header, expect)

    case()
    assert ledger.cases["nesting"] >= QUOTAS["nesting"] * SCALE


INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe2\x82",
                b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"a\xc3", b"\xc3\x28")
LONE_SURROGATES = ("\\ud800", "\\udfff", "\\ud800\\u0041", "\\udc00\\ud800", "\\ud83d")


def test_invalid_utf8(client: httpx.Client, ledger: Ledger) -> None:
    """Invalid UTF-8 in every kind of string of a protobuf request, and in JSON strings (raw bytes, and lone
    surrogates written as \\u escapes, which are valid JSON syntax but not valid Unicode text)."""
    r = random.Random(8)
    places = ("name", "attr-key", "attr-value", "nested-value", "resource", "scope", "status", "event", "trace-state",
              "link-state")

    @fuzz_settings(QUOTAS["utf8"])
    @given(fmt=st.sampled_from(["protobuf", "json", "json-escape"]), place=st.sampled_from(places),
           bad=st.sampled_from(INVALID_UTF8), escape=st.sampled_from(LONE_SURROGATES),
           prefix=st.binary(max_size=4).map(lambda b: b.hex().encode()), encoding=st.sampled_from(ENCODINGS),
           path=st.sampled_from(PATHS))
    def case(fmt: str, place: str, bad: bytes, escape: str, prefix: bytes, encoding: str | None, path: str) -> None:
        trace_id, span_id = ids(r)
        text = prefix + bad
        if fmt == "protobuf":
            def string_kv(key: bytes, value: bytes) -> bytes:
                return pb_kv(key, ld(1, value))

            attrs = {"attr-key": [string_kv(text, b"v")], "attr-value": [string_kv(b"k", text)],
                     "nested-value": [pb_kv(b"k", ld(5, ld(1, ld(1, text))))]}.get(place, [])
            extra = {"status": ld(15, ld(2, text)), "event": ld(11, ld(2, text)), "trace-state": ld(3, text),
                     "link-state": ld(13, ld(1, trace_id) + ld(2, span_id) + ld(3, text))}.get(place, b"")
            span = pb_span(trace_id, span_id, name=text if place == "name" else b"utf8", attributes=attrs, extra=extra)
            body = pb_request([span], resource_attrs=[string_kv(b"service.name", text)] if place == "resource" else (),
                              scope=ld(1, text) if place == "scope" else b"")
            content_type = PROTOBUF_TYPES[0]
        else:
            s = (prefix + (bad if fmt == "json" else escape.encode())).decode("latin-1")
            body = _json_with_string(trace_id, span_id, place, s).encode("latin-1")
            content_type = JSON_TYPES[0]
        wire, header = compress(body, encoding)
        expect = body_expect("protobuf" if fmt == "protobuf" else "json", body, len(wire))
        post(client, ledger, "utf8", path, wire, content_type, header, expect)

    case()
    assert ledger.cases["utf8"] >= QUOTAS["utf8"] * SCALE


def _json_with_string(trace_id: bytes, span_id: bytes, place: str, s: str) -> str:
    q = '"' + s + '"'
    name = q if place == "name" else '"utf8"'
    attrs = {"attr-key": f'[{{"key":{q},"value":{{"stringValue":"v"}}}}]',
             "attr-value": f'[{{"key":"k","value":{{"stringValue":{q}}}}}]',
             "nested-value": f'[{{"key":"k","value":{{"arrayValue":{{"values":[{{"stringValue":{q}}}]}}}}}}]'
             }.get(place, "[]")
    extra = {"status": f',"status":{{"message":{q}}}', "event": f',"events":[{{"name":{q}}}]',
             "trace-state": f',"traceState":{q}',
             "link-state": f',"links":[{{"traceId":"{trace_id.hex()}","spanId":"{span_id.hex()}","traceState":{q}}}]'
             }.get(place, "")
    resource = f'{{"attributes":[{{"key":"service.name","value":{{"stringValue":{q}}}}}]}}' \
        if place == "resource" else "{}"
    scope = f'{{"name":{q}}}' if place == "scope" else "{}"
    return (f'{{"resourceSpans":[{{"resource":{resource},"scopeSpans":[{{"scope":{scope},"spans":[{{'
            f'"traceId":"{trace_id.hex()}","spanId":"{span_id.hex()}","name":{name},"attributes":{attrs}{extra}'
            f'}}]}}]}}]}}')


header_text = st.lists(st.integers(0x21, 0x7E) | st.integers(0x80, 0xFF) | st.just(0x20), max_size=40).map(
    lambda xs: bytes(xs).strip(b" "))


def test_content_type_and_encoding_headers(client: httpx.Client, ledger: Ledger) -> None:
    """A valid request under fuzzed Content-Type and Content-Encoding values: 415 exactly when unsupported."""
    seeds = [s for s in SEEDS if s.name == "msgflux_agent"]

    @fuzz_settings(QUOTAS["headers"])
    @given(seed=st.sampled_from(seeds), path=st.sampled_from(PATHS),
           content_type=st.none() | header_text | st.sampled_from(PROTOBUF_TYPES + JSON_TYPES + BAD_TYPES[1:])
           | st.builds(lambda m, p: m.encode() + b";" + p, st.sampled_from(sorted(MEDIA)), header_text),
           encoding=st.none() | header_text | st.sampled_from(tuple(e for e in ENCODINGS if e not in (None, "deflate-raw")) + BAD_ENCODINGS)
           | st.sampled_from(sorted(CODINGS)).map(str.upper))
    def case(seed: Seed, path: str, content_type: str | bytes | None, encoding: str | bytes | None) -> None:
        fmt = header_verdict(content_type, encoding)
        if fmt is None:
            wire, expect = seed.body, Expect(frozenset({415}))
        else:
            coding = encoding.decode("latin-1") if isinstance(encoding, bytes) else encoding or ""
            wire, _ = compress(seed.body, coding.strip().lower() or None)
            expect = Expect(frozenset({200}), 0, seed.spans) if fmt == seed.fmt else body_expect(fmt, seed.body, len(wire))
        post(client, ledger, "headers", path, wire, content_type, encoding, expect)

    case()
    assert ledger.cases["headers"] >= QUOTAS["headers"] * SCALE


def _with_new_trace_ids(body: bytes, r: random.Random) -> bytes:
    """The same protobuf request with fresh trace ids, so its spans are told apart from every other request's."""
    request = ExportTraceServiceRequest.FromString(body)
    fresh: dict[bytes, bytes] = {}
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.trace_id = fresh.setdefault(s.trace_id, r.randbytes(15) + b"\x01")
    return request.SerializeToString()


MAX_MEMBERS = 1000  # gzip members / zstd frames the server takes in one body (msgtrace/ingest/receive.py)


def test_concatenated_members_and_frames(client: httpx.Client, ledger: Ledger) -> None:
    """gzip bodies of several members and zstd bodies of several frames are one body (RFC 1952 §2.2; RFC 8878 §3):
    for protobuf, the concatenation of serialized requests is their merge, so every span of every part is kept.
    Empty members pad some bodies up to and past the server's cap on members (a 400)."""
    seeds = [s for s in SEEDS if s.fmt == "protobuf"]
    r = random.Random(5)

    @fuzz_settings(QUOTAS["members"])
    @given(parts=st.lists(st.sampled_from(seeds), min_size=2, max_size=3), encoding=st.sampled_from(["gzip", "zstd"]),
           empty=st.integers(0, 3) | st.integers(MAX_MEMBERS - 5, MAX_MEMBERS + 2) | st.integers(0, 12_000),
           where=st.floats(0, 1), path=st.sampled_from(PATHS))
    def case(parts: list[Seed], encoding: str, empty: int, where: float, path: str) -> None:
        bodies = [_with_new_trace_ids(p.body, r) for p in parts]
        members = [compress(b, encoding)[0] for b in bodies]
        at = int(where * len(members))
        members[at:at] = [compress(b"", encoding)[0]] * empty
        wire = b"".join(members)
        if len(wire) <= LIMIT and len(members) > MAX_MEMBERS:
            expect = Expect(frozenset({400}))
        else:
            expect = protobuf_expect(b"".join(bodies), len(wire))
            assert expect.statuses == {413} or len(expect.spans) == sum(len(p.spans) for p in parts)
        post(client, ledger, "members", path, wire, PROTOBUF_TYPES[0], encoding, expect)

    case()
    assert ledger.cases["members"] >= QUOTAS["members"] * SCALE


def test_size_limit_boundary(client: httpx.Client, ledger: Ledger) -> None:
    """A valid request padded with an unknown field to a few bytes either side of the limit: 200 up to the limit,
    413 past it, on the wire (identity) or after decompression."""
    r = random.Random(4)

    @fuzz_settings(QUOTAS["limit"])
    @given(delta=st.integers(-4, 4) | st.integers(-LIMIT // 2, LIMIT * 8), encoding=st.sampled_from(ENCODINGS),
           path=st.sampled_from(PATHS))
    def case(delta: int, encoding: str | None, path: str) -> None:
        trace_id, span_id = ids(r)
        base = pb_request([pb_span(trace_id, span_id)])
        target = max(len(base) + 8, LIMIT + delta)
        pad = target - len(base) - 4
        for _ in range(3):  # field 15 (unknown, skipped by parsers): 1 tag byte + varint length + payload
            pad = target - len(base) - 1 - len(varint(pad))
        body = base + ld(15, b"\x00" * pad)
        wire, header = compress(body, encoding)
        post(client, ledger, "limit", path, wire, PROTOBUF_TYPES[0], header, protobuf_expect(body, len(wire)))

    case()
    assert ledger.cases["limit"] >= QUOTAS["limit"] * SCALE


# --- what the fuzzing found: one regression test each ----------------------------------------------------------
def _json_span_request(trace_id: str, span_id: str, **fields: object) -> bytes:
    span = {"traceId": trace_id, "spanId": span_id, "name": "regression",
            "startTimeUnixNano": str(time.time_ns()), "endTimeUnixNano": str(time.time_ns() + 1000), **fields}
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()


def _stored(client: httpx.Client, trace_id: str, columns: str = "span_id") -> list[dict]:
    response = client.post("/api/v1/sql", json={"sql": f"SELECT {columns} FROM spans WHERE trace_id = $t",
                                                "params": {"t": trace_id}})
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_found_invalid_utf8_in_a_json_string_is_400(client: httpx.Client) -> None:
    # msgspec raises UnicodeDecodeError (not DecodeError) for invalid UTF-8 inside a JSON string: it was a 500.
    body = b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",' \
           b'"spanId":"eee19b7ec3c1b174","name":"\xc3\x28"}]}]}]}'
    response = client.post("/v1/traces", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "UTF-8" in response.json()["message"]


@pytest.mark.parametrize("field, value", [
    ("traceId", "5b8efff798038103d269b633813fc6  "), ("traceId", " 5b8efff798038103d269b633813fc6 "),
    ("spanId", "eee19b7ec3c1b1\t "), ("parentSpanId", "eee19b7ec3c1b1  "), ("parentSpanId", " " * 16),
])
def test_found_whitespace_in_json_ids_rejects_the_span(client: httpx.Client, field: str, value: str) -> None:
    # bytes.fromhex skips whitespace: a 32-character id with spaces was stored as a 15-byte id, and an all-space
    # parent id failed the whole request. Now the span alone is rejected, and the others are kept.
    good = os.urandom(16).hex()
    spans = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", field: value}
    body = json.loads(_json_span_request(spans.pop("traceId"), spans.pop("spanId"), **spans))
    body["resourceSpans"][0]["scopeSpans"][0]["spans"].append(
        json.loads(_json_span_request(good, "0102030405060708"))["resourceSpans"][0]["scopeSpans"][0]["spans"][0])
    response = client.post("/v1/traces", json=body)
    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert f"{field} must be" in response.json()["partialSuccess"]["errorMessage"]
    assert [r["span_id"] for r in _stored(client, good)] == ["0102030405060708"]
    assert _stored(client, value.strip()[:30]) == []


@pytest.mark.parametrize("field", ["flags", "droppedAttributesCount", "droppedEventsCount", "droppedLinksCount"])
def test_found_json_uint32_fields_past_their_range_are_400(client: httpx.Client, field: str) -> None:
    # they were accepted as 64-bit numbers and overflowed the uint32 Arrow column: a 500
    trace_id = os.urandom(16).hex()
    for value in (2**32, str(2**64 - 1)):
        body = _json_span_request(trace_id, "0102030405060708", **{field: value})
        response = client.post("/v1/traces", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert "32-bit" in response.json()["message"]
    body = _json_span_request(trace_id, "0102030405060708", **{field: 2**32 - 1})
    assert client.post("/v1/traces", content=body, headers={"content-type": "application/json"}).status_code == 200


def test_found_token_counts_whose_sum_overflows(client: httpx.Client) -> None:
    # input + output tokens, each a valid int64, summed past int64 into total_tokens: an OverflowError, a 500
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = os.urandom(15) + b"\x01", b"\x01" * 8, "tokens"
    for key, value in (("gen_ai.usage.input_tokens", 2**63 - 1), ("gen_ai.usage.output_tokens", 1)):
        kv = span.attributes.add()
        kv.key, kv.value.int_value = key, value
    response = client.post("/v1/traces", content=request.SerializeToString(),
                           headers={"content-type": "application/x-protobuf"})
    assert response.status_code == 200
    assert _stored(client, span.trace_id.hex(), "input_tokens, output_tokens, total_tokens") == [
        {"input_tokens": 2**63 - 1, "output_tokens": 1, "total_tokens": None}]


def test_found_gzip_members_after_the_first_were_dropped(client: httpx.Client) -> None:
    # only the first gzip member was inflated: a 200 whose other spans were never stored
    r = random.Random(3)
    bodies = [_with_new_trace_ids(s.body, r) for s in SEEDS if s.fmt == "protobuf"][:3]
    expect = protobuf_expect(b"".join(bodies), 0)
    wire = b"".join(gzip.compress(b) for b in bodies)
    response = client.post("/v1/traces", content=wire,
                           headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"})
    assert response.status_code == 200
    for trace_id in {t for t, _ in expect.spans}:
        assert {r["span_id"] for r in _stored(client, trace_id)} == {s for t, s in expect.spans if t == trace_id}
    for tail in (b"garbage", b"\x1f\x8b", gzip.compress(b"x")[:-4]):  # bytes after the last member: corrupt
        response = client.post("/v1/traces", content=wire + tail,
                               headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"})
        assert response.status_code == 400, tail


def test_found_many_tiny_members_cost_linear_time_and_are_capped(client: httpx.Client) -> None:
    # Once members after the first were read, each one copied the rest of the body (zlib's unused_data): 4 MiB of
    # empty gzip members took 7.4 s. zstd frames were linear but ~1 s per MiB. Both are now capped.
    from msgtrace.ingest.receive import decompress

    empty = {"gzip": gzip.compress(b"", mtime=0), "zstd": zstandard.ZstdCompressor().compress(b"")}
    for encoding, member in empty.items():
        started = time.monotonic()
        with pytest.raises(Exception, match=f"more than {MAX_MEMBERS}"):
            decompress(member * ((16 << 20) // len(member)), encoding, 64 << 20)
        assert time.monotonic() - started < 0.5
        assert decompress(member * MAX_MEMBERS, encoding, 64 << 20) == b""
        response = client.post("/v1/traces", content=member * (MAX_MEMBERS + 1),
                               headers={"content-type": "application/x-protobuf", "content-encoding": encoding})
        assert response.status_code == 400


# --- afterwards ---------------------------------------------------------------------------------------------------
def test_server_healthy_and_every_acked_span_queryable(srv: Server, client: httpx.Client, ledger: Ledger) -> None:
    assert srv.proc is not None and srv.proc.poll() is None
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["flush"]["errors"] == 0 and not health.json()["wal"]["failed"], health.text
    total = sum(ledger.cases.values())
    by_kind = {kind: {status: n for (k, status), n in sorted(ledger.statuses.items()) if k == kind}
               for kind in ledger.cases}
    print(f"\nfuzz: {total} cases, answers by kind {by_kind}; slowest {ledger.slowest * 1000:.0f} ms; "
          f"{len(ledger.acked)} distinct acknowledged spans to find")
    response = client.post("/api/v1/sql", json={"sql": "SELECT DISTINCT trace_id, span_id FROM spans"}, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert not result["truncated"]
    stored = {(row["trace_id"], row["span_id"]) for row in result["rows"]}
    missing = ledger.acked - stored
    assert not missing, f"{len(missing)} acknowledged spans are not queryable, e.g. {sorted(missing)[:5]}"
    malformed = [(t, s) for t, s in stored if len(t) != 32 or len(s) != 16 or not all(c in "0123456789abcdef" for c in t + s)]
    assert not malformed, f"stored ids that are not lower-case hex of the right length: {malformed[:5]}"
    if set(ledger.cases) == set(QUOTAS):  # the whole module ran
        assert total >= 10_000 * SCALE
