"""The HTTP edge of ingest: media types, content encodings, body limits and OTLP response bodies.

Bodies are limited twice (``max_request_bytes``): on the wire while reading, and after decompression, which is done
incrementally so a compression bomb is stopped at the limit instead of being inflated whole.

Bodies are handed on as the ``bytearray`` they were assembled in (protobuf, msgspec, zlib and the WAL all take one):
turning it into ``bytes`` copied every body once more, 20 MiB at a time in a burst of 20 MiB requests.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable

import msgspec
import zstandard
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from msgtrace.errors import MalformedRequest, PayloadTooLarge, UnsupportedMedia
from msgtrace.ingest.decode import WireFormat

PROTOBUF_TYPES = {"application/x-protobuf": WireFormat.PROTOBUF, "application/protobuf": WireFormat.PROTOBUF}
JSON_TYPES = {"application/json": WireFormat.JSON}
MEDIA_TYPE = {WireFormat.PROTOBUF: "application/x-protobuf", WireFormat.JSON: "application/json"}
ENCODINGS = ("identity", "gzip", "x-gzip", "deflate", "zstd")
_CHUNK = 1 << 20


def wire_format(content_type: str | None) -> WireFormat:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    fmt = PROTOBUF_TYPES.get(media) or JSON_TYPES.get(media)
    if fmt is None:
        shown = media or "none"
        raise UnsupportedMedia(f"unsupported Content-Type {shown!r}: send application/x-protobuf or application/json")
    return fmt


def content_encoding(header: str | None) -> str:
    encoding = (header or "identity").strip().lower() or "identity"
    if encoding not in ENCODINGS:
        raise UnsupportedMedia(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate, zstd or none")
    return encoding


async def read_limited(chunks: AsyncIterator[bytes], limit: int,
                       grow: Callable[[int], None] | None = None) -> bytearray:
    """The body, at most ``limit`` bytes (413 past it); ``grow(bytes so far)`` after each chunk, which may refuse."""
    out = bytearray()
    async for chunk in chunks:
        out += chunk
        if len(out) > limit:
            raise PayloadTooLarge(f"request body is larger than the limit of {limit} bytes")
        if grow is not None:
            grow(len(out))
    return out


def decompress(body: bytes | bytearray, encoding: str, limit: int) -> bytes | bytearray:
    """Inflate ``body``, never producing more than ``limit`` bytes (413 past it, 400 for corrupt or truncated)."""
    if encoding == "identity":
        return body
    if encoding == "zstd":
        return _zstd(body, limit)
    if encoding in ("gzip", "x-gzip"):
        return _zlib(body, _GZIP_WBITS, limit, "gzip")
    try:  # HTTP "deflate" is zlib-wrapped; some clients send raw deflate
        return _zlib(body, zlib.MAX_WBITS, limit, "deflate")
    except MalformedRequest:
        return _zlib(body, -zlib.MAX_WBITS, limit, "deflate")


def _zlib(body: bytes | bytearray, wbits: int, limit: int, name: str) -> bytearray:
    # A gzip body may hold several members (RFC 1952 §2.2), e.g. concatenated exports: stopping after the first one
    # answered 200 and dropped the spans of the others. Bytes after the last member are a 400. The input is fed in
    # slices so that what zlib copies past a member's end (``unused_data``) stays small: fed whole, a body of many
    # tiny members took quadratic time (4 MiB of empty members: 7.4 s), now linear, and capped at _MAX_MEMBERS.
    out = bytearray()
    view, pos, members = memoryview(body), 0, 1
    inflater = zlib.decompressobj(wbits)
    try:
        while pos < len(view):
            piece = data = view[pos:pos + _ZLIB_SLICE]
            while data:
                out += inflater.decompress(data, _CHUNK)
                if len(out) > limit:
                    raise PayloadTooLarge(f"decompressed body is larger than the limit of {limit} bytes")
                if inflater.eof:
                    break
                data = inflater.unconsumed_tail  # output was capped at _CHUNK: the rest of this slice
            if not inflater.eof:
                pos += len(piece)
                continue
            pos += len(piece) - len(inflater.unused_data)  # what is left over is always a suffix of the slice
            if pos == len(view) or wbits != _GZIP_WBITS:
                break  # (zlib-wrapped and raw deflate have no members: trailing bytes are ignored, as before)
            members += 1
            if members > _MAX_MEMBERS:
                raise MalformedRequest(f"{name} body has more than {_MAX_MEMBERS} members")
            inflater = zlib.decompressobj(wbits)
    except zlib.error as exc:
        raise MalformedRequest(f"{name} body is corrupt: {exc}") from None
    if not inflater.eof:
        raise MalformedRequest(f"{name} body is truncated")
    return out


_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_SLICE = 64 * 1024
# gzip members or zstd frames in one body. Real clients send one; each costs a new decompressor (~10-20 us), so a
# body of thousands of empty ones could keep a worker busy for a minute within the 64 MiB limit.
_MAX_MEMBERS = 1000


def _zstd(body: bytes | bytearray, limit: int) -> bytearray:
    # The input is fed in small slices because one zstd call returns everything it can produce: 1 KiB of a
    # compression bomb inflates to ~32 MiB in a single call; 512 bytes bound that to ~16 MiB past the limit.
    out = bytearray()
    pos, inflater, frames = 0, None, 0
    try:
        while pos < len(body):
            if inflater is None or inflater.eof:  # a body may hold several frames
                frames += 1
                if frames > _MAX_MEMBERS:
                    raise MalformedRequest(f"zstd body has more than {_MAX_MEMBERS} frames")
                inflater = zstandard.ZstdDecompressor().decompressobj()
            piece = body[pos:pos + _ZSTD_SLICE]
            out += inflater.decompress(piece)
            if len(out) > limit:
                raise PayloadTooLarge(f"decompressed body is larger than the limit of {limit} bytes")
            used = len(piece) - len(inflater.unused_data) if inflater.eof else len(piece)
            pos += used
    except zstandard.ZstdError as exc:
        raise MalformedRequest(f"zstd body is corrupt: {exc}") from None
    if inflater is not None and not inflater.eof:
        raise MalformedRequest("zstd body is truncated")
    return out


_ZSTD_SLICE = 512


def success_body(fmt: WireFormat, rejected: int, message: str) -> bytes:
    """An ``ExportTraceServiceResponse``; ``partial_success`` only when something was rejected or cut."""
    if fmt is WireFormat.JSON:
        if not rejected and not message:
            return b"{}"
        return msgspec.json.encode({"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response.SerializeToString()


# gRPC status codes used in google.rpc.Status bodies (the OTLP/HTTP error body).
_GRPC_CODE = {400: 3, 413: 8, 415: 3, 503: 14, 405: 12, 500: 13}


def error_body(fmt: WireFormat | None, status: int, message: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` in the request's format (JSON when the format is unknown)."""
    code = _GRPC_CODE.get(status, 2)
    if fmt is WireFormat.PROTOBUF:
        # google.rpc.Status: field 1 (int32 code) and field 2 (string message), encoded by hand to avoid a
        # dependency on googleapis-common-protos for two fields.
        text = message.encode()
        return bytes([0x08, code]) + b"\x12" + _varint(len(text)) + text, MEDIA_TYPE[fmt]
    return msgspec.json.encode({"code": code, "message": message}), MEDIA_TYPE[WireFormat.JSON]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
