"""Settings of the ingest server, with their named defaults.

Every setting has a default here, can be set from the environment (``MSGTRACE_<NAME>``) and, for the common ones,
from a CLI flag. Validation happens once, in :meth:`IngestConfig.validated`, so the pipeline never sees a bad value.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from msgtrace.storage.compactor import CompactionSettings

FsyncPolicy = Literal["always", "batch", "none"]
FSYNC_POLICIES: tuple[str, ...] = ("always", "batch", "none")

DEFAULT_PORT = 4321
DEFAULT_HOST = "127.0.0.1"
MiB = 1024 * 1024


def default_data_dir() -> Path:
    """``$MSGTRACE_DATA_DIR``, else ``$XDG_DATA_HOME/msgtrace``, else ``~/.local/share/msgtrace``."""
    if env := os.environ.get("MSGTRACE_DATA_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "msgtrace"


@dataclasses.dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """What the ingest pipeline and its HTTP receiver need to know.

    Sizes are bytes, times are seconds.
    """

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # Host names answered besides the local ones (comma-separated in the environment; see msgtrace/server/hosts.py):
    # ``name``, ``*.suffix`` or ``*`` (no check). Bound to loopback, any other Host gets a 403 (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # Browser origins (``https://app.example:8080``, or ``*``) sent CORS headers; none by default, never credentials.
    cors_origins: tuple[str, ...] = ()

    # --- durability -------------------------------------------------------------------------------------------
    # ``batch`` (default): group commit. Every 200 still waits for an fsync that covers its WAL record, but
    # requests that arrive together share one fsync. ``always``: one fsync per request, serialised.
    # ``none``: no fsync; a 200 survives a crash of the process, not of the machine.
    fsync: FsyncPolicy = "batch"
    wal_segment_bytes: int = 64 * MiB

    # --- buffering and flushing -------------------------------------------------------------------------------
    flush_interval: float = 5.0  # age of the oldest buffered span that triggers a flush
    # Buffered Arrow bytes that trigger a flush. Peak RSS grows by ~4x this (the buffer, the batch being flushed,
    # its sorted copy, the Parquet writer's pages): 48 MiB peaked at 417 MB, 16 MiB at ~330 MB (benchmarks/).
    flush_bytes: int = 16 * MiB
    buffer_limit_bytes: int = 96 * MiB  # buffered + flushing bytes above which ingest answers 503
    wal_limit_bytes: int = 1024 * MiB  # WAL not yet retired above which ingest answers 503
    # A WAL write/fsync or a Parquet flush running this long means a hung disk: /health says "degraded" with
    # storage.stalled, and while the WAL's is, ingest answers 503 instead of leaving requests to wait on it.
    storage_stall_seconds: float = 5.0
    row_group_spans: int = 32_768
    parquet_compression_level: int = 1  # zstd; see msgtrace.schema.DICTIONARY_COLUMNS for the measurement

    # --- request limits ---------------------------------------------------------------------------------------
    max_request_bytes: int = 64 * MiB  # on the wire, and again after decompression (OTLP spec recommendation)
    # Request bodies held at once, as sent (being read, or waiting to be decoded); above it, new requests get a 503
    # before their body is read. Set with the decode gate below from the RSS target of a burst (< 768 MiB with 20
    # clients sending 20 MiB requests, tests/test_burst.py): ~100 MB idle + these bodies + one request decoding (~6x
    # its protobuf: upb's copy, the Python values, Arrow) + the buffer and its flush. With 256 MiB and no gate, a
    # dozen requests decoded at once and the server reached 3.4 GB. A body of unknown length reserves
    # max_request_bytes. (How long admitted requests may wait: msgtrace/server/admission.py.)
    max_inflight_bytes: int = 128 * MiB
    # Requests decompressed and decoded at once; the others wait (holding only their bodies). Decoding holds the
    # GIL most of the time (benchmarks/README.md: per-attribute walk and Arrow build), so a second one at once adds
    # memory, not speed.
    decode_concurrency: int = 1
    # Longer strings (in UTF-8 bytes) and bytes values are cut with a marker (prompts fit): ingest/truncation.py.
    max_attribute_value_bytes: int = 1 * MiB

    # --- queries ----------------------------------------------------------------------------------------------
    query_timeout: float = 10.0  # seconds before a query is interrupted (504)
    query_max_rows: int = 10_000  # rows a query returns at most; results say `truncated`
    # Spans one trace lookup (GET /traces/{id}, /tree) returns at most: a trace is served whole up to this, since
    # agent runs of more than query_max_rows spans exist (a 10,008-span trace was cut at 10,000). An answer costs
    # ~12 KB of server memory per span while it is built: 10,008 spans took RSS from 211 to 335 MB, 0.35 s of CPU
    # and 10.7 MB of JSON (tests/test_odd_data.py).
    query_max_trace_spans: int = 20_000
    # REST queries running at once; one more is answered 503 + Retry-After (see msgtrace/server/query_calls.py)
    query_slots: int = 2
    # Memory one POST /sql query's DuckDB database may use; past it the query fails (400) instead of the server
    # growing. Without a limit, one hostile query reached 2.5-6.3 GB of RSS before the 10 s time limit stopped it
    # (count(DISTINCT) / list() / string_agg() over range(10^9)); with 1 GiB, 0.6-1.1 GB, stopped within 1.7 s.
    query_memory_bytes: int = 1024 * MiB

    # --- compaction and retention (msgtrace/storage/compactor.py, msgtrace/storage/retired.py) ----------------
    compaction_interval: float = 30.0  # seconds between background compaction passes; 0 turns them off
    compaction_target_rows: int = 125_000  # spans per compacted file at most (~2.2 KB of Arrow each in memory)
    compaction_settle_seconds: float = 600.0  # a day without a new part for this long gets its final layout
    # Replaced parts stay on disk (hidden) this long before deletion, so no running query loses a file under it.
    compaction_grace_seconds: float = 600.0
    retention_days: int = 0  # keep today and the N previous UTC days; 0 keeps everything

    def compaction_settings(self) -> CompactionSettings:
        from msgtrace.storage.compactor import CompactionSettings  # storage imports config, not the reverse

        return CompactionSettings(target_rows=self.compaction_target_rows,
                                  settle_seconds=self.compaction_settle_seconds,
                                  grace_seconds=self.compaction_grace_seconds)

    @classmethod
    def from_env(cls, **overrides: object) -> IngestConfig:
        """Defaults, then ``MSGTRACE_*`` environment variables, then explicit ``overrides`` (non-None only)."""
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(f"MSGTRACE_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("allowed_hosts", "cors_origins"):
            if name in values:
                values[name] = split_list(values[name])  # type: ignore[arg-type]
        if "data_dir" in values:
            values["data_dir"] = Path(str(values["data_dir"])).expanduser()
        return cls(**values).validated()  # type: ignore[arg-type]

    def validated(self) -> IngestConfig:
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {self.fsync!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {self.port}")
        for name in ("query_timeout", "query_max_rows", "query_max_trace_spans", "query_slots", "query_memory_bytes",
                     "flush_interval", "flush_bytes", "buffer_limit_bytes", "wal_limit_bytes", "max_request_bytes",
                     "max_inflight_bytes", "decode_concurrency", "storage_stall_seconds", "max_attribute_value_bytes",
                     "wal_segment_bytes", "row_group_spans"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        if self.flush_bytes >= self.buffer_limit_bytes:
            raise ValueError("flush_bytes must be smaller than buffer_limit_bytes")
        if self.compaction_target_rows <= 0:
            raise ValueError(f"compaction_target_rows must be positive, not {self.compaction_target_rows}")
        for name in ("compaction_interval", "compaction_settle_seconds", "compaction_grace_seconds", "retention_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, not {getattr(self, name)}")
        for name in self.allowed_hosts:
            if not _HOST_PATTERN.match(name):
                raise ValueError(f"allowed_hosts: {name!r} is not a host name, '*.suffix' or '*'")
        for origin in self.cors_origins:
            if not _ORIGIN.match(origin):
                raise ValueError(f"cors_origins: {origin!r} is not an origin like https://app.example:8080 or '*'")
        return self


def split_list(raw: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A comma-separated setting (environment variable or flag) as a tuple of its non-empty items."""
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(item.strip() for item in items if item.strip())


_HOST_PATTERN = re.compile(r"\A(\*|(\*\.)?[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])\Z")
_ORIGIN = re.compile(r"\A(\*|https?://[A-Za-z0-9_.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)\Z")


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(IngestConfig)}[name]
    try:
        if kind == "int":
            return int(raw.replace("_", ""))
        if kind == "float":
            return float(raw)
        if kind == "tuple[str, ...]":
            return split_list(raw)
    except ValueError:
        raise ValueError(f"MSGTRACE_{name.upper()}={raw!r} is not a number") from None
    return raw
