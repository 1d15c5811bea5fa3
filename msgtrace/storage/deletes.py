"""Deletes on immutable files: tombstones.

Parquet parts are never rewritten to delete a trace. A delete publishes a small Parquet file under ``deletes/`` that
lists trace ids; every view filters them out, so the trace disappears from every surface at once (REST, CLI, Python,
the DuckDB shell), including spans still in the live buffer and spans of that trace that arrive later. Compaction
removes the rows physically.

Tombstone files are append-only and uniquely named, and they are published atomically, so any process may write
one (a CLI ``clear`` while a server runs, say) without the writer lock.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from msgtrace.storage.files import publish
from msgtrace.storage.layout import StoreLayout

TOMBSTONE_SCHEMA = pa.schema([("trace_id", pa.string()), ("deleted_at_unix_nano", pa.int64())])


def write_tombstone(layout: StoreLayout, trace_ids: Iterable[str]) -> Path | None:
    """Publish one tombstone file hiding ``trace_ids`` (lower-case hex); returns its path (None if no ids)."""
    ids = sorted(set(trace_ids))
    if not ids:
        return None
    now = time.time_ns()
    table = pa.table({"trace_id": ids, "deleted_at_unix_nano": [now] * len(ids)}, schema=TOMBSTONE_SCHEMA)
    path = layout.deletes_dir / f"{now:020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
    publish(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    return path
