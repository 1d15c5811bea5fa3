"""Disk operations in progress and since when: how ``/health`` tells a hung disk from an idle one.

A write or fsync on a hung disk (a frozen filesystem, a dead NFS server, a failing device) does not fail: it blocks,
for minutes or for ever, and every counter of errors stays at zero. What shows it is the age of the oldest operation
still in progress. The WAL and the flusher wrap their disk work in :meth:`IoWatch.track`; ``/health`` reads
:meth:`IoWatch.oldest_age` without waiting on any lock the blocked thread may hold.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class IoWatch:
    def __init__(self) -> None:
        self._started: dict[int, float] = {}  # token → monotonic start of an operation in progress
        self._tokens = itertools.count()
        self._lock = threading.Lock()  # held only to add or remove an entry, never across the operation

    @contextmanager
    def track(self) -> Iterator[None]:
        token = next(self._tokens)
        with self._lock:
            self._started[token] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._started[token]

    def oldest_age(self) -> float | None:
        """Seconds the oldest operation in progress has been running, or None when none is."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return None if oldest is None else time.monotonic() - oldest
