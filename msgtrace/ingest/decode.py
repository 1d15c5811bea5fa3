"""One entry point from request bytes to Arrow: :func:`decode_request`. Pure: no I/O, no clock, no globals.

Determinism matters: the WAL stores the request body, its wire format and its receive time, and a replay after a crash
must rebuild exactly the rows the first decode built (flushed file names derive from WAL ranges, see
:mod:`msgtrace.storage.layout`).
"""

from __future__ import annotations

import enum

from msgtrace.ingest.batch import BuiltBatch, SpanBatchBuilder
from msgtrace.ingest.otlp_json import decode_json
from msgtrace.ingest.otlp_proto import decode_protobuf


class WireFormat(enum.IntEnum):
    PROTOBUF = 1
    JSON = 2


def decode_request(fmt: WireFormat, body: bytes | bytearray, received_unix_nano: int,
                   max_value_bytes: int) -> BuiltBatch:
    """Decode an ``ExportTraceServiceRequest``; raises :class:`~msgtrace.errors.MalformedRequest` if undecodable."""
    builder = SpanBatchBuilder(received_unix_nano, max_value_bytes)
    if fmt is WireFormat.PROTOBUF:
        decode_protobuf(body, builder)
    else:
        decode_json(body, builder)
    return builder.build()
