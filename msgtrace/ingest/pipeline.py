"""The ingest pipeline: decode → WAL → buffer → Parquet, with recovery at start and a flush at stop.

:class:`Ingestor` is what the server (and the benchmark, and tests) drive::

    ingestor = Ingestor(config); ingestor.start()      # lock, quarantine, replay the WAL, start the flusher
                                                       # and the background compaction (storage/maintenance.py)
    result = ingestor.accept(WireFormat.PROTOBUF, body, received_unix_nano)   # durable when it returns
    ingestor.close()                                   # flush everything, retire the WAL, unlock

What a return from :meth:`Ingestor.accept` means: every span it counted is in the WAL (fsynced per policy) and in
the buffer, so it is readable now and after any crash. Overload is refused *before* anything is written
(:class:`~msgtrace.errors.Overloaded` → 503), never accepted and then dropped.

Duplicate deliveries (a client retrying a request whose 200 it never saw) are collapsed at flush time: rows whose
(trace_id, span_id) already appeared in the same flush, or in the previous one, are dropped before writing. Older
duplicates (a retry after a restart, say) are left to the query views and to compaction.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

import pyarrow as pa
import pyarrow.compute as pc

from msgtrace.config import IngestConfig
from msgtrace.errors import Overloaded
from msgtrace.ingest.batch import BuiltBatch
from msgtrace.ingest.buffer import BufferedBatch, SpanBuffer, live_table
from msgtrace.ingest.decode import WireFormat, decode_request
from msgtrace.ingest.wal import WalRecord, WriteAheadLog
from msgtrace.storage.duplicates import KEY_COLUMNS, kept_copies
from msgtrace.storage.iowatch import IoWatch
from msgtrace.storage.layout import StoreLayout, part_range
from msgtrace.storage.lock import DirLock
from msgtrace.storage.maintenance import Maintenance
from msgtrace.storage.recovery import quarantine_bad_parts
from msgtrace.storage.writer import write_parts

log = logging.getLogger("msgtrace.ingest")

FLUSH_RETRY_SECONDS = 1.0  # after a failed flush (disk full, I/O error), the flusher tries again this much later


@dataclass(frozen=True)
class AcceptResult:
    accepted_spans: int
    rejected_spans: int
    message: str  # for partial_success: why spans were rejected or values cut; empty when all is well


@dataclass
class FlushStats:
    flushes: int = 0
    spans_written: int = 0
    duplicates_dropped: int = 0
    parts_written: int = 0
    last_flush_unix: float | None = None
    last_flush_seconds: float | None = None
    errors: int = 0
    last_error: str | None = None
    failing_since_unix: float | None = None  # flushes fail since then (e.g. disk full); None once one succeeds


class Ingestor:
    def __init__(self, config: IngestConfig) -> None:
        self.config = config
        self.layout = StoreLayout(config.data_dir)
        self.wal = WriteAheadLog(self.layout.wal_dir, config.fsync, config.wal_segment_bytes,
                                 self.layout.quarantine_dir)
        self.buffer = SpanBuffer()
        self.flush_stats = FlushStats()
        self.flush_io = IoWatch()  # the flush writing Parquet, if one is (a hung disk shows as an old one)
        self.quarantined: list[str] = []
        self._lock = threading.Lock()  # WAL append + buffer add are one step; a flush takes the buffer under it
        self._flush_lock = threading.Lock()  # one flush at a time
        self._wake = threading.Condition()
        self._stopping = False
        self._flusher: threading.Thread | None = None
        self._dir_lock = DirLock(self.layout.lock_path)
        self._recent: pa.Table | None = None  # the winning copy of each span of the previous flush (dedup)
        self._retry_last: int | None = None  # last WAL seq of a failed flush, retried as exactly that range
        # Compaction only touches parts the WAL checkpoint covers: a replay may rewrite any part past it.
        self._overloaded = False  # a request was refused for load since the maintenance thread last asked
        self.maintenance = Maintenance(self.layout, config, checkpoint=lambda: self.wal.checkpoint,
                                       busy=self.was_overloaded)
        self.started = False

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the data directory, make it consistent, replay the WAL and start flushing in the background."""
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._dir_lock.acquire()
        try:
            self.layout.create()
            self.quarantined = quarantine_bad_parts(self.layout)
            self._replay()
        except BaseException:
            self._dir_lock.release()
            raise
        self._flusher = threading.Thread(target=self._flush_loop, name="msgtrace-flusher", daemon=True)
        self._flusher.start()
        self.maintenance.start()
        self.started = True

    def close(self) -> None:
        """Flush everything buffered, retire the WAL and release the data directory.

        If the final flush fails (a full disk, say), nothing is lost: every acknowledged span is in the WAL, which
        is still closed cleanly and replayed at the next start. So that is logged, not raised (raising made a
        SIGTERM on a full disk end in "Application shutdown failed" and an "internal error" exit).
        """
        if not self.started:
            return
        self.maintenance.stop()
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self.flush()
        except Exception as exc:
            log.error("final flush failed (%s: %s); %d buffered span(s) stay in the write-ahead log and are "
                      "replayed at the next start", type(exc).__name__, exc, self.buffer.pending_spans)
        self.wal.close()
        self._dir_lock.release()
        self.started = False

    # --- the hot path ---------------------------------------------------------------------------------------
    def decode(self, fmt: WireFormat, body: bytes | bytearray, received_unix_nano: int) -> BuiltBatch:
        return decode_request(fmt, body, received_unix_nano, self.config.max_attribute_value_bytes)

    def admit(self) -> None:
        """Refuse new work when the buffer or the WAL budget is used up, or the WAL's disk is stalled (503, before
        anything is read)."""
        stalled = self.wal.io.oldest_age()
        if stalled is not None and stalled >= self.config.storage_stall_seconds:
            # Requests let in now would only wait on the hung disk until their clients time out (and, for OTel
            # exporters, drop the batch); a 503 has them retry, and the ones already waiting complete on recovery.
            self.refuse(f"write-ahead log storage is stalled: a write or fsync has been blocked for {stalled:.0f} s")
        if self.buffer.total_bytes >= self.config.buffer_limit_bytes:
            self.refuse("ingest buffer is full; flushing to Parquet is behind")
        if self.wal.size_bytes >= self.config.wal_limit_bytes:
            self.refuse("write-ahead log budget is used up; flushing to Parquet is behind")

    def refuse(self, reason: str) -> NoReturn:
        """Refuse a request for load (503): raises Overloaded, and puts off background compaction."""
        self._overloaded = True
        raise Overloaded(reason)

    def was_overloaded(self) -> bool:
        """Whether a request was refused for load since the last call."""
        overloaded, self._overloaded = self._overloaded, False
        return overloaded

    def accept(self, fmt: WireFormat, body: bytes, received_unix_nano: int) -> AcceptResult:
        """Decode, log durably and buffer one request. Raises MalformedRequest, Overloaded, StorageUnavailable."""
        self.admit()
        built = self.decode(fmt, body, received_unix_nano)
        self.commit(self.log(fmt, body, received_unix_nano, built))
        return result_of(built)

    def log(self, fmt: WireFormat, body: bytes | bytearray, received_unix_nano: int, built: BuiltBatch) -> int:
        """Append the request to the WAL and its rows to the buffer; returns the WAL sequence number to
        :meth:`commit` (0 when there was nothing to keep). Not durable until committed."""
        if not built.num_spans:
            return 0
        with self._lock:
            seq = self.wal.append(int(fmt), body, received_unix_nano)
            self.buffer.add(seq, built)
            wake = self.buffer.pending_bytes >= self.config.flush_bytes
        if wake:
            with self._wake:
                self._wake.notify_all()
        return seq

    def commit(self, seq: int) -> None:
        """Return once WAL record ``seq`` is durable under the fsync policy (group commit: see the WAL)."""
        if seq:
            self.wal.sync(seq)

    # --- flushing -------------------------------------------------------------------------------------------
    def flush(self) -> int:
        """Write everything buffered now; returns the number of spans written."""
        with self._flush_lock:
            retrying = self._retry_last is not None
            written = self._flush_pending()
            if retrying:  # that was a failed flush's range on its own: now the rest
                written += self._flush_pending()
            return written

    def _flush_pending(self) -> int:
        """Write the buffered batches (or only those of a failed flush, see below) as one WAL range; the caller
        holds ``_flush_lock``."""
        with self._lock:
            if not self.buffer.pending:
                return 0
            try:
                self.wal.rotate()  # closed segments now hold exactly the records being flushed
            except BaseException as exc:  # e.g. no inode left for the new segment: nothing was taken
                self._note_flush_error(exc)
                raise
            entries = self.buffer.take()
            if self._retry_last is not None:
                # A failed flush may have published some of its parts (one per day) before failing, e.g. on a
                # full disk. Retrying exactly its WAL range rewrites them under the same names; newer records
                # would rename the range and leave the rows of those parts on disk twice.
                later = [e for e in entries if e.seq > self._retry_last]
                if later:
                    entries = entries[:len(entries) - len(later)]
                    self.buffer.give_back(later)
        try:
            written = self._write(entries)
        except BaseException as exc:
            with self._lock:
                self.buffer.give_back(entries)
            self._retry_last = entries[-1].seq
            self._note_flush_error(exc)
            raise
        self._retry_last = None
        # The parts are published: the buffer lets go first, then the WAL is retired. If the checkpoint
        # cannot be written, the next flush's checkpoint covers this range too, and a replay before that
        # rewrites the range under the same part names (see _replay), so nothing is duplicated.
        with self._lock:
            self.buffer.done(entries)
        self.wal.set_checkpoint(entries[-1].seq)
        return written

    def _note_flush_error(self, exc: BaseException) -> None:
        s = self.flush_stats
        s.errors += 1
        s.last_error = f"{type(exc).__name__}: {exc}"
        if s.failing_since_unix is None:
            s.failing_since_unix = time.time()

    def _write(self, entries: list[BufferedBatch]) -> int:
        started = time.monotonic()
        table = pa.Table.from_batches([e.built.batch for e in entries])
        days = pa.chunked_array([e.built.days for e in entries], pa.int32()).combine_chunks()
        table, days, keys, dropped = self._drop_duplicates(table, days)
        with self.flush_io.track():
            paths = write_parts(self.layout, table, days, entries[0].seq, entries[-1].seq,
                                row_group_spans=self.config.row_group_spans,
                                compression_level=self.config.parquet_compression_level)
        # Only a published flush becomes "the previous flush": after a failed one, its rows come back for a
        # retry and must not be mistaken for duplicates of themselves.
        self._recent = keys
        s = self.flush_stats
        s.flushes += 1
        s.spans_written += table.num_rows
        s.duplicates_dropped += dropped
        s.parts_written += len(paths)
        s.last_flush_unix = time.time()
        s.last_flush_seconds = time.monotonic() - started
        s.failing_since_unix = None
        return table.num_rows

    def _drop_duplicates(self, table: pa.Table, days: pa.Array) -> tuple[pa.Table, pa.Array, pa.Table, int]:
        """Collapse duplicate deliveries of a span to the copy the views keep (:mod:`msgtrace.storage.duplicates`),
        counting the copy the previous flush wrote of it: a copy that does not beat that one (a retry, or an older
        copy) is dropped; a later copy is written, and the views collapse the two. Returns the rows kept, their
        days, each of this flush's spans' winning copy so far (for the next flush) and how many rows were dropped.

        Vectorised (Arrow sort and joins), so the flusher thread holds the GIL only briefly.
        """
        rows = table.select(KEY_COLUMNS).append_column("row", pa.array(range(table.num_rows), pa.int64()))
        candidates = rows
        if self._recent is not None and rows.num_rows:
            # The previous flush's copies of these spans, placed first: on a tie the stable sort keeps them.
            written = self._recent.join(rows.select(["trace_id", "span_id"]), ["trace_id", "span_id"],
                                        join_type="left semi")
            if written.num_rows:
                written = written.append_column("row", pa.nulls(written.num_rows, pa.int64()))
                candidates = pa.concat_tables([written, rows])
        winners = kept_copies(candidates)
        kept = winners.filter(pc.is_valid(winners["row"]))
        dropped = table.num_rows - kept.num_rows
        if dropped:
            keep = pc.is_in(rows["row"], value_set=kept["row"])
            table, days = table.filter(keep), days.filter(keep)
        return table, days, winners.select(KEY_COLUMNS), dropped

    def _flush_loop(self) -> None:
        interval = self.config.flush_interval
        retry_at = 0.0  # after a failed flush, the next try waits until then
        while True:
            with self._wake:
                if self._stopping:
                    return
                now = time.monotonic()
                due = (self.buffer.pending_bytes >= self.config.flush_bytes
                       or (self.buffer.pending and self.buffer.oldest_age() >= interval))
                # The wake-ups accept() sends must not cut the back-off short: on a full disk they came with every
                # request and turned it into a retry (and a logged traceback) per request.
                if not due or now < retry_at:
                    self._wake.wait(timeout=retry_at - now if now < retry_at else min(interval / 4, 0.5))
                    continue
            try:
                self.flush()
            except Exception:
                log.exception("flush failed; the spans stay buffered and in the WAL, retrying in %.0f s",
                              FLUSH_RETRY_SECONDS)
                retry_at = time.monotonic() + FLUSH_RETRY_SECONDS

    # --- recovery -------------------------------------------------------------------------------------------
    def _replay(self) -> None:
        """Decode every WAL record past the checkpoint back into the buffer.

        A flush that crashed after publishing some of its parts left files named with its WAL range; that exact
        range is flushed again at once (overwriting them with identical content) so no row appears twice.
        """
        records = list(self.wal.recover())
        checkpoint = self.wal.checkpoint
        partial = sorted({r for p in self.layout.parts() if (r := part_range(p)) and r[1] > checkpoint})
        by_seq: dict[int, WalRecord] = {r.seq: r for r in records}
        for first, last in partial:
            group = [by_seq.pop(s) for s in range(first, last + 1) if s in by_seq]
            if len(group) != last - first + 1:
                # Some records of the range are gone (a corrupt segment): keep the published parts as they are.
                log.warning("WAL range %d-%d is incomplete; keeping its published parts unchanged", first, last)
                continue
            earlier = sorted(s for s in by_seq if s < first)
            if earlier:
                self._replay_group([by_seq.pop(s) for s in earlier])
            self._replay_group(group)
        for record in sorted(by_seq.values(), key=lambda r: r.seq):
            self.buffer.add(record.seq, self._decode_record(record))

    def _replay_group(self, records: list[WalRecord]) -> None:
        entries = [BufferedBatch(r.seq, self._decode_record(r), 0, 0.0) for r in records]
        self._write(entries)
        self.wal.set_checkpoint(records[-1].seq)

    def _decode_record(self, record: WalRecord) -> BuiltBatch:
        return self.decode(WireFormat(record.wire_format), record.body, record.received_unix_nano)

    def live_table(self) -> pa.Table | None:
        """Spans acknowledged but not yet in Parquet, for queries (the query engine's ``live`` source)."""
        with self._lock:
            entries = self.buffer.entries()
        return live_table(entries)

    # --- status ---------------------------------------------------------------------------------------------
    def storage_status(self) -> dict[str, object]:
        """How long the oldest WAL write/fsync and the Parquet flush in progress have been running; ``stalled``
        once either passes ``storage_stall_seconds`` (a hung disk: the calls block instead of failing)."""
        wal, flush = self.wal.io.oldest_age(), self.flush_io.oldest_age()
        limit = self.config.storage_stall_seconds
        return {
            "stalled": any(age is not None and age >= limit for age in (wal, flush)),
            "wal_io_seconds": None if wal is None else round(wal, 3),
            "flush_io_seconds": None if flush is None else round(flush, 3),
            "stall_threshold_seconds": limit,
        }

    def status(self) -> dict[str, object]:
        s = self.flush_stats
        wal = self.wal.status()
        storage = self.storage_status()
        # Degraded also while writes fail right now (a full disk: the WAL refuses records, flushes fail) or hang (a
        # stalled disk), so that a monitor polling /health sees why clients get 503s.
        healthy = (not wal["failed"] and not wal["corrupt_segments"] and not wal["write_error"]
                   and s.failing_since_unix is None and not storage["stalled"])
        return {
            "status": "ok" if healthy else "degraded",
            "data_dir": str(self.layout.root),
            "storage": storage,
            "wal": wal,
            "buffer": {
                "pending_spans": self.buffer.pending_spans,
                "pending_bytes": self.buffer.pending_bytes,
                "flushing_bytes": self.buffer.flushing_bytes,
                "limit_bytes": self.config.buffer_limit_bytes,
                "oldest_age_seconds": round(self.buffer.oldest_age(), 3),
            },
            "flush": {
                "flushes": s.flushes,
                "spans_written": s.spans_written,
                "duplicates_dropped": s.duplicates_dropped,
                "parts_written": s.parts_written,
                "last_flush_unix": s.last_flush_unix,
                "last_flush_seconds": s.last_flush_seconds,
                "errors": s.errors,
                "last_error": s.last_error,
                "failing_since_unix": s.failing_since_unix,
            },
            "compaction": self.maintenance.status(),
            "quarantined": list(self.quarantined),
        }


def result_of(built: BuiltBatch) -> AcceptResult:
    """What a client is told about a request that decoded into ``built`` and was logged."""
    return AcceptResult(built.num_spans, built.rejected_spans, _partial_message(built))


def _partial_message(built: BuiltBatch) -> str:
    parts = []
    if built.rejected_spans:
        parts.append(f"{built.rejected_spans} span(s) rejected: " + "; ".join(built.rejected_reasons))
    if built.truncated_values:
        parts.append(f"{built.truncated_values} value(s) longer than the cap were truncated (marked in the value)")
    return " | ".join(parts)
