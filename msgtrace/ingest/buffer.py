"""The in-memory buffer: decoded batches waiting to be flushed, in WAL order.

Batches move from ``pending`` to ``flushing`` when a flush takes them, and leave only once their Parquet parts are
published, so they stay readable (for the live view of the store) the whole time. Not thread-safe on its own: the
pipeline's lock guards it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa

from msgtrace.ingest.batch import BuiltBatch


@dataclass(frozen=True)
class BufferedBatch:
    seq: int
    built: BuiltBatch
    nbytes: int
    added_monotonic: float


class SpanBuffer:
    def __init__(self) -> None:
        self.pending: list[BufferedBatch] = []
        self.flushing: list[BufferedBatch] = []
        self.pending_bytes = 0
        self.flushing_bytes = 0
        self.pending_spans = 0

    def add(self, seq: int, built: BuiltBatch) -> None:
        entry = BufferedBatch(seq, built, built.batch.nbytes, time.monotonic())
        self.pending.append(entry)
        self.pending_bytes += entry.nbytes
        self.pending_spans += built.num_spans

    @property
    def total_bytes(self) -> int:
        return self.pending_bytes + self.flushing_bytes

    def oldest_age(self) -> float:
        return time.monotonic() - self.pending[0].added_monotonic if self.pending else 0.0

    def take(self) -> list[BufferedBatch]:
        """Move everything pending to ``flushing`` and return it."""
        taken, self.pending = self.pending, []
        self.flushing.extend(taken)
        self.flushing_bytes += self.pending_bytes
        self.pending_bytes = self.pending_spans = 0
        return taken

    def done(self, entries: list[BufferedBatch]) -> None:
        """Forget flushed entries (their parts are published)."""
        gone = {e.seq for e in entries}
        self.flushing = [e for e in self.flushing if e.seq not in gone]
        self.flushing_bytes = sum(e.nbytes for e in self.flushing)

    def give_back(self, entries: list[BufferedBatch]) -> None:
        """A flush failed: put its entries back in front of the pending ones, in order."""
        gone = {e.seq for e in entries}
        self.flushing = [e for e in self.flushing if e.seq not in gone]
        self.flushing_bytes = sum(e.nbytes for e in self.flushing)
        self.pending = entries + self.pending
        self.pending_bytes += sum(e.nbytes for e in entries)
        self.pending_spans += sum(e.built.num_spans for e in entries)

    def entries(self) -> list[BufferedBatch]:
        """Everything not yet published (being flushed, then pending), for readers of the live state."""
        return self.flushing + self.pending


def live_table(entries: list[BufferedBatch]) -> pa.Table | None:
    """The buffered spans as one table in the shape of the Parquet files read with their ``date`` partition."""
    if not entries:
        return None
    table = pa.Table.from_batches([e.built.batch for e in entries])
    days = pa.chunked_array([e.built.days for e in entries], pa.int32()).cast(pa.date32())
    return table.append_column("date", days)
