"""The write-ahead log: what makes a 200 mean "kept".

A request's body is appended (and fsynced, per policy) before its 200 is sent; after a crash, every record past the
checkpoint is decoded again and flushed. Records hold the request body as received (after decompression), its wire
format and its receive time, which is all :func:`msgtrace.ingest.decode.decode_request` needs to rebuild the same rows.

    wal/
      00000000000000000001.wal   segment: records 1..k (the name is the first sequence number it may hold)
      00000000000000000420.wal   the active segment, appended to
      checkpoint                 "records up to N are in Parquet" (written atomically after a flush)

    record = u32 body length | u32 CRC-32 of the rest | u64 seq | i64 received_unix_nano | u8 wire format | body

Invariants: sequence numbers increase by one across segments; a segment is deleted only once the checkpoint covers
its last record; the active segment is never deleted. At open, a torn record at the tail of the newest segment
(a crash mid-write) is truncated away and counted; a bad record anywhere else is corruption: the segment is copied to
``quarantine/``, the records before the bad one are kept, and it is reported in ``/health`` (never a crash loop).

Group commit (fsync policy ``batch``): ``sync(seq)`` waits on one mutex; whoever holds it fsyncs everything written
so far, so requests that arrive together share one fsync and each still returns only once its record is on disk.

Every write and fsync runs under :attr:`WriteAheadLog.io` (:mod:`msgtrace.storage.iowatch`), so ``/health`` can
tell how long the oldest one has been blocked on a hung disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from msgtrace.errors import StorageUnavailable
from msgtrace.storage.files import fsync_dir, write_bytes_atomic
from msgtrace.storage.iowatch import IoWatch

_HEADER = struct.Struct("<IIQqB")
_CRC_PART = struct.Struct("<QqB")
SEGMENT_SUFFIX = ".wal"
MAX_RECORD_BYTES = 1 << 31


@dataclass(frozen=True)
class WalRecord:
    seq: int
    received_unix_nano: int
    wire_format: int
    body: bytes


@dataclass
class WalStats:
    truncated_tail_records: int = 0
    corrupt_segments: list[str] = field(default_factory=list)
    replayed_records: int = 0


def _header(seq: int, received: int, fmt: int, body: bytes | bytearray) -> bytes:
    """The record's header; the body follows it unchanged (written with it in one ``writev``, not copied)."""
    rest = _CRC_PART.pack(seq, received, fmt)
    crc = zlib.crc32(body, zlib.crc32(rest))
    return _HEADER.pack(len(body), crc, seq, received, fmt)


class WriteAheadLog:
    def __init__(self, directory: Path, fsync_policy: str, segment_bytes: int, quarantine_dir: Path) -> None:
        self.dir = directory
        self.policy = fsync_policy
        self.segment_bytes = segment_bytes
        self.quarantine_dir = quarantine_dir
        self.stats = WalStats()
        self._lock = threading.Lock()  # guards the active segment and the counters below
        self._sync_lock = threading.Lock()  # one fsync at a time; holders cover everyone written before
        self._fd: int | None = None
        self._segment_first = 0
        self._offset = 0
        self._next_seq = 1
        self._written_seq = 0
        self._synced_seq = 0
        self._checkpoint = 0
        self._failed: str | None = None
        self._write_error: str | None = None  # the last append failed (e.g. disk full); cleared by the next one
        self._closed_sizes: dict[Path, int] = {}  # segments not yet retired, other than the active one
        self.io = IoWatch()  # writes and fsyncs in progress (a hung disk shows as an old one)

    # --- opening and replay ---------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def segments(self) -> list[Path]:
        return sorted(p for p in self.dir.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())

    def recover(self) -> Iterator[WalRecord]:
        """Yield every intact record after the checkpoint, in order; repair the tail; then open a new segment."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint = self._read_checkpoint()
        last_seq = self._checkpoint
        segments = self.segments()
        self._closed_sizes = {p: p.stat().st_size for p in segments}
        for i, path in enumerate(segments):
            is_newest = i == len(segments) - 1
            for record in self._read_segment(path, is_newest):
                last_seq = max(last_seq, record.seq)
                if record.seq > self._checkpoint:
                    self.stats.replayed_records += 1
                    yield record
        self._written_seq = self._synced_seq = last_seq
        self._next_seq = last_seq + 1
        self._open_segment()

    def _read_checkpoint(self) -> int:
        try:
            return int((self.dir / "checkpoint").read_text().strip() or 0)
        except FileNotFoundError:
            return 0

    def _read_segment(self, path: Path, is_newest: bool) -> Iterator[WalRecord]:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            problem = None
            if len(data) - pos < _HEADER.size:
                problem = "torn header"
            else:
                length, crc, seq, received, fmt = _HEADER.unpack_from(data, pos)
                end = pos + _HEADER.size + length
                if end > len(data):
                    problem = "torn body"
                else:
                    body = data[pos + _HEADER.size:end]
                    rest = data[pos + 8:pos + _HEADER.size]
                    if zlib.crc32(body, zlib.crc32(rest)) != crc:
                        problem = "checksum mismatch"
            if problem is None:
                yield WalRecord(seq, received, fmt, body)
                pos = end
                continue
            # A bad record: at the end of the newest segment it is a write cut short by a crash (truncate it);
            # anywhere else it is corruption (keep the good prefix, move the segment aside for inspection).
            torn_tail = is_newest and (problem != "checksum mismatch" or end == len(data))
            if torn_tail:
                self.stats.truncated_tail_records += 1
            else:
                self.quarantine_dir.mkdir(parents=True, exist_ok=True)
                target = self.quarantine_dir / f"wal-{path.name}.corrupt-at-{pos}"
                shutil.copyfile(path, target)
                self.stats.corrupt_segments.append(f"{path.name}: {problem} at byte {pos} (copy: {target.name})")
            with path.open("r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
            self._closed_sizes[path] = pos
            return

    # --- appending ------------------------------------------------------------------------------------------
    def _open_segment(self) -> None:
        """Make a segment named by the next sequence number the active one, all or nothing: if the file cannot be
        created or made durable (ENOSPC: out of inodes or directory blocks; EMFILE), OSError propagates and the
        state is unchanged, so the caller's old segment (if any) can stay active."""
        path = self.dir / f"{self._next_seq:020d}{SEGMENT_SUFFIX}"
        existed = path.exists()  # at open: the empty active segment a clean shutdown left
        with self.io.track():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            offset = os.fstat(fd).st_size
            with self.io.track():
                fsync_dir(self.dir)
        except BaseException:
            os.close(fd)
            if not existed:
                # An empty segment left behind would sit between records at replay and mislead set_checkpoint,
                # which takes a segment's last record to be the next segment's name minus one.
                path.unlink(missing_ok=True)
            raise
        self._fd, self._segment_first, self._offset = fd, self._next_seq, offset

    def append(self, wire_format: int, body: bytes | bytearray, received_unix_nano: int) -> int:
        """Write one record (not yet fsynced unless the policy is ``always``); returns its sequence number."""
        if len(body) >= MAX_RECORD_BYTES:
            raise ValueError("record too large for the WAL")
        with self._lock:
            if self._failed:
                raise StorageUnavailable(f"write-ahead log unavailable: {self._failed}")
            assert self._fd is not None
            seq = self._next_seq
            header = _header(seq, received_unix_nano, wire_format, body)
            try:
                with self.io.track():
                    _write_all(self._fd, header, body)
            except OSError as exc:
                # Leave no torn record behind: a later append must not sit after garbage. ENOSPC is recoverable.
                try:
                    os.ftruncate(self._fd, self._offset)
                except OSError:
                    self._failed = f"cannot undo a partial write: {exc}"
                self._write_error = os.strerror(exc.errno or errno.EIO)
                raise StorageUnavailable(f"write-ahead log write failed: {self._write_error}") from None
            self._write_error = None
            self._offset += len(header) + len(body)
            self._next_seq = seq + 1
            self._written_seq = seq
            if self.policy == "always":
                self._fsync_locked()
            return seq

    def sync(self, seq: int) -> None:
        """Return once record ``seq`` is durable under the policy (``none``: at once)."""
        if self.policy != "batch" or self._synced_seq >= seq:
            return
        with self._sync_lock:
            if self._synced_seq >= seq:
                return  # someone else's fsync covered it: the group commit
            if self._failed:
                # Another request's fsync failed while this one waited. Its record may be among the pages the
                # kernel dropped, and a second fsync would report success (the error is reported only once).
                raise StorageUnavailable(f"write-ahead log unavailable: {self._failed}")
            with self._lock:
                fd, target = self._fd, self._written_seq
            try:
                with self.io.track():
                    os.fsync(fd)  # type: ignore[arg-type]
            except OSError as exc:
                # After a failed fsync the kernel may have dropped dirty pages: nothing written can be trusted.
                self._failed = f"fsync failed: {os.strerror(exc.errno or errno.EIO)}"
                raise StorageUnavailable(f"write-ahead log unavailable: {self._failed}") from None
            self._synced_seq = max(self._synced_seq, target)

    def _fsync_locked(self) -> None:
        try:
            with self.io.track():
                os.fsync(self._fd)  # type: ignore[arg-type]
        except OSError as exc:
            self._failed = f"fsync failed: {os.strerror(exc.errno or errno.EIO)}"
            raise StorageUnavailable(f"write-ahead log unavailable: {self._failed}") from None
        self._synced_seq = self._written_seq

    def rotate(self) -> int:
        """Close the active segment (fsynced) and start a new one; returns the last sequence number written."""
        with self._sync_lock, self._lock:
            if self._offset == 0:
                return self._written_seq  # nothing in the active segment: keep it
            self._fsync_locked()
            old_fd, old_path = self._fd, self.dir / f"{self._segment_first:020d}{SEGMENT_SUFFIX}"
            old_size = self._offset
            # The new segment is opened before the old one is closed. When it cannot be created (a full disk can
            # be out of inodes while the open segment still takes writes), the old segment simply stays active;
            # closing first left appends writing to a closed descriptor (EBADF, which failed the WAL for good) or,
            # once the number was reused, into whatever file or socket got it.
            try:
                self._open_segment()
            except OSError as exc:
                raise StorageUnavailable("cannot start a new write-ahead log segment: "
                                         f"{os.strerror(exc.errno or errno.EIO)}") from None
            os.close(old_fd)  # type: ignore[arg-type]
            self._closed_sizes[old_path] = old_size
            return self._written_seq

    # --- retiring -------------------------------------------------------------------------------------------
    def set_checkpoint(self, seq: int) -> None:
        """Record that every record up to ``seq`` is in Parquet, then delete the segments that are all covered."""
        with self.io.track():
            write_bytes_atomic(self.dir / "checkpoint", f"{seq}\n".encode())
        self._checkpoint = seq
        segments = self.segments()
        for path, following in zip(segments, segments[1:], strict=False):
            last_in_segment = int(following.stem) - 1
            if last_in_segment <= seq and int(path.stem) != self._segment_first:
                path.unlink(missing_ok=True)
                self._closed_sizes.pop(path, None)

    @property
    def size_bytes(self) -> int:
        """Bytes of WAL not yet retired (the budget behind 503s)."""
        return sum(self._closed_sizes.values()) + self._offset

    def status(self) -> dict[str, object]:
        return {
            "fsync": self.policy,
            "segments": len(self._closed_sizes) + 1,
            "bytes": self.size_bytes,
            "next_seq": self._next_seq,
            "synced_seq": self._synced_seq if self.policy == "batch" else self._written_seq,
            "checkpoint": self._checkpoint,
            "truncated_tail_records": self.stats.truncated_tail_records,
            "corrupt_segments": list(self.stats.corrupt_segments),
            "failed": self._failed,
            "write_error": self._write_error,
        }

    def close(self) -> None:
        with self._sync_lock, self._lock:
            if self._fd is not None:
                if self.policy != "none":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, *parts: bytes | bytearray) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]
