"""What the OTLP receive paths let in, how much at once, and the counts of where the rest was refused.

    request ─► Content-Type, Content-Encoding ─────────────────────────────────────► 415
            ─► Content-Length over max_request_bytes ────────────────────────────────► 413
            ─► Ingestor.admit(): buffer or WAL budget used up, WAL storage stalled ───► 503
            ─► in-flight budget: take Content-Length bytes (1 MiB if unknown) ──────────► 503
            ─► decode queue longer than MAX_QUEUE_SECONDS with this request ─────────► 503
            ══ nothing above reads a byte of the body: the excess of a burst costs a header parse ══
            ─► read the body (413 past max_request_bytes; a body of unknown length grows
               its share of the budget as it arrives, 503 when the budget is used up)
            ─► decode gate (decode_concurrency at once): decompress, decode, append to the WAL
            ─► fsync (group commit, outside the gate) ─► 200

Why a gate as well as a byte budget: a request's peak memory is set by decoding, ~6x its protobuf (upb's copy,
the Python values, the Arrow batch), and a gzip body's size after inflating is unknown until then. Decoding one
request at a time bounds that to one request's worth, while the others wait holding only their bodies (which the
in-flight budget counts). The WAL append is inside the gate so that, on a hung WAL disk, requests queue as bodies
rather than as decoded batches; the fsync is outside it so that requests still share one (group commit).

Why a queue limit in seconds: bytes waiting say nothing of how long they will wait. Gzip bodies take ~3x longer per
wire byte to decode, and a 2-core machine under a burst decoded ~16 MiB/s: with only the byte budget, 200s came after
a median of 7-10 s (tests/test_burst.py), past the 10 s OTel exporters wait, which then resend a batch the server
kept. Each request's decode time is estimated from its Content-Length and the recent rate, in wire bytes per second,
of requests sent the same way (compressed or not), so the ratio of a compressed body counts by itself.

``/health`` shows the counters as ``ingest``: a 503 for load is counted in ``refused_unread`` and never in
``decoded``, which is what tests/test_burst.py holds the server to.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

log = logging.getLogger("msgtrace.server")

# Refusals are logged at most this often, with how many there were since the last line: a burst refuses hundreds of
# requests a second (tests/test_burst.py), and a line for each only buries the news.
REFUSAL_LOG_SECONDS = 10.0
# A request is refused when the ones ahead of it would take longer than this to decode (estimated): a client waits
# about this long plus its own decode for its answer, well inside the 10 s OTel exporters give a request.
MAX_QUEUE_SECONDS = 2.0
_RATE_WINDOW = 16  # requests the decode rate is measured over
# What a body of unknown length (chunked, no Content-Length: e.g. behind a proxy that streams request bodies)
# reserves at first; it takes more, doubling, as it arrives. Reserving the whole body limit (64 MiB) let only two
# such requests in at once with the default 128 MiB in-flight budget.
UNKNOWN_LENGTH_FIRST = 2**20
# The rate assumed until requests have been decoded: what a 2-core machine decoded in a burst, in wire bytes (gzip
# bodies of ~3:1 took as long as the plain ones three times their size).
_FIRST_RATE = {False: (16 * 2**20, 1.0), True: (6 * 2**20, 1.0)}


class ByteBudget:
    """Bytes of request bodies held in memory at once; over budget, requests are refused before being read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def try_take(self, n: int, held: int = 0) -> bool:
        """Take ``n`` more for a holder of ``held`` (0: a new one). A holder alone may pass the limit: a body larger
        than the budget is still let in when nothing else is in flight."""
        with self._lock:
            if self.used > held and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


@dataclass
class Ticket:
    """One admitted request's share: in-flight bytes reserved, and its estimated decode seconds in the queue."""

    reserved: int
    compressed: bool
    queued: float = 0.0
    in_queue: bool = False


class Admission:
    """The in-flight budget, the decode gate and queue, and the counters of one server (event-loop side only)."""

    def __init__(self, max_inflight_bytes: int, decode_concurrency: int) -> None:
        self.inflight = ByteBudget(max_inflight_bytes)
        self.decode_concurrency = decode_concurrency
        self.gate = asyncio.Semaphore(decode_concurrency)
        self.queued = 0.0  # estimated decode seconds of the requests admitted and not yet through the gate
        self.queue_length = 0  # how many requests that is (the first one in an empty queue is never refused)
        self._rates = {kind: collections.deque([first], maxlen=_RATE_WINDOW)  # (wire bytes, seconds) per request
                       for kind, first in _FIRST_RATE.items()}
        self.waiting = 0  # bodies read, waiting for the gate
        self.refused_unread = 0  # 413/415/503 answered before a byte of the body was read
        self.decoded = 0  # bodies that went through the gate (decompressed and decoded, whatever came of it)
        self.accepted = 0  # 200s
        self._unlogged = 0  # refusals since the last log line
        self._logged_at = -REFUSAL_LOG_SECONDS

    def log_refusal(self, reason: str) -> None:
        """Log a 503 as a warning, at most once per ``REFUSAL_LOG_SECONDS``, counting those not logged."""
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at < REFUSAL_LOG_SECONDS:
            return
        more = f" ({self._unlogged - 1} more since the last report)" if self._unlogged > 1 else ""
        log.warning("ingest refused: %s%s", reason, more)
        self._unlogged, self._logged_at = 0, now

    def admit(self, declared: int | None, body_limit: int, compressed: bool) -> Ticket | str:
        """Before the body is read: a ticket (give it back with :meth:`release`), or why the request is refused.
        A body of unknown length reserves ``UNKNOWN_LENGTH_FIRST`` (see :meth:`grow`); it joins the queue once
        read."""
        estimate = self.decode_seconds(declared or 0, compressed)
        if self.queue_length and self.queue_seconds(estimate) > MAX_QUEUE_SECONDS:
            return f"decoding is {self.queue_seconds():.1f} s behind"
        reserved = declared if declared is not None else min(body_limit, UNKNOWN_LENGTH_FIRST)
        if not self.inflight.try_take(reserved):
            return "too many request bytes in flight"
        ticket = Ticket(reserved, compressed)
        self._enqueue(ticket, estimate)
        return ticket

    def grow(self, ticket: Ticket, size: int) -> bool:
        """A body of unknown length has ``size`` bytes so far: make its share at least that (doubling), or False
        when the in-flight budget has no room for it (the request is then refused, part-read: 503)."""
        if size <= ticket.reserved:
            return True
        extra = max(size, 2 * ticket.reserved) - ticket.reserved
        if not self.inflight.try_take(extra, held=ticket.reserved):
            return False
        ticket.reserved += extra
        return True

    def decode_seconds(self, size: int, compressed: bool) -> float:
        """Estimated seconds to decode a body of ``size`` wire bytes, at the recent rate of its kind."""
        rate = self._rates[compressed]
        return size * sum(s for _, s in rate) / max(sum(n for n, _ in rate), 1)

    def queue_seconds(self, extra: float = 0.0) -> float:
        """Estimated seconds until the requests admitted (and ``extra`` seconds more) are decoded."""
        return (self.queued + extra) / self.decode_concurrency

    @asynccontextmanager
    async def decoding(self, ticket: Ticket, size: int) -> AsyncIterator[None]:
        """Wait for a place in the decode gate, then hold it for the block; ``size``: the body's wire bytes."""
        self._enqueue(ticket, self.decode_seconds(size, ticket.compressed))  # (the estimate from its real size)
        self.waiting += 1
        try:
            await self.gate.acquire()
        finally:
            self.waiting -= 1
        started = time.monotonic()
        try:
            self.decoded += 1
            yield
        finally:
            self.gate.release()
            self._rates[ticket.compressed].append((size, time.monotonic() - started))
            self._dequeue(ticket)

    def release(self, ticket: Ticket) -> None:
        """The request is answered: give back what it held (whatever stage it reached)."""
        self.inflight.give(ticket.reserved)
        ticket.reserved = 0
        self._dequeue(ticket)

    def _enqueue(self, ticket: Ticket, estimate: float) -> None:
        self.queued += estimate - ticket.queued
        ticket.queued = estimate
        if not ticket.in_queue:
            ticket.in_queue = True
            self.queue_length += 1

    def _dequeue(self, ticket: Ticket) -> None:
        if ticket.in_queue:
            ticket.in_queue = False
            self.queue_length -= 1
            self.queued = self.queued - ticket.queued if self.queue_length else 0.0  # no rounding left over
            ticket.queued = 0.0

    def status(self) -> dict[str, object]:
        return {
            "inflight_bytes": self.inflight.used,
            "inflight_limit_bytes": self.inflight.limit,
            "waiting_to_decode": self.waiting,
            "queue_seconds": round(self.queue_seconds(), 3),
            "decode_concurrency": self.decode_concurrency,
            "refused_unread": self.refused_unread,
            "requests_decoded": self.decoded,
            "requests_accepted": self.accepted,
        }
