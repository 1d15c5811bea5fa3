"""The exceptions msgtrace raises, classified where they arise and mapped to HTTP once, at the edge.

    MsgtraceError                 base; ``status`` is the HTTP status the server answers with
    ├── RequestError              the client sent something we will never accept; retrying is pointless
    │   ├── MalformedRequest      400: undecodable protobuf/JSON, truncated compression, nesting too deep
    │   ├── PayloadTooLarge       413: over the body limit on the wire or after decompression
    │   └── UnsupportedMedia      415: unknown Content-Type or Content-Encoding
    ├── Overloaded                503 + Retry-After: buffer, WAL or in-flight budget used up; retry soon
    │   └── QueriesBusy           503 + Retry-After: every REST query slot is taken (msgtrace/server/query_calls.py)
    ├── StorageUnavailable        503 + Retry-After: the WAL cannot be written (disk full, I/O error)
    └── DataDirLocked             another process owns the data directory (the CLI exits non-zero)
"""

from __future__ import annotations


class MsgtraceError(Exception):
    status: int = 500
    retryable: bool = False


class RequestError(MsgtraceError):
    status = 400


class MalformedRequest(RequestError):
    status = 400


class PayloadTooLarge(RequestError):
    status = 413


class UnsupportedMedia(RequestError):
    status = 415


class Overloaded(MsgtraceError):
    status = 503
    retryable = True


class StorageUnavailable(MsgtraceError):
    status = 503
    retryable = True


class DataDirLocked(MsgtraceError):
    status = 503
