"""The server's background upkeep of the store: retention, then compaction, every ``compaction_interval`` seconds.

One thread, at a lower CPU priority than ingest. Runs only in the process that holds the data directory's lock (the
server); ``msgtrace compact`` and ``msgtrace prune`` do the same work on demand when no server runs.

A pass is put off while ingest is overloaded (``busy``: it refused a request for load since the last look, one
interval ago): a merge adds hundreds of MB (a piece of 32,768 spans held twice, DuckDB, the writer), and on top of an
ingest burst at its budgets a pass took the server from ~600 MB to 1.7 GB (tests/test_burst.py, measured before
merges were cut into pieces). Parts stay readable meanwhile; the pass runs once the burst is over. Under an overload that never ends, queries slow down as small parts pile up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from msgtrace.config import IngestConfig
from msgtrace.storage.compactor import Compactor, retention_cutoff
from msgtrace.storage.layout import StoreLayout

log = logging.getLogger("msgtrace.maintenance")


class Maintenance:
    def __init__(self, layout: StoreLayout, config: IngestConfig, checkpoint: Callable[[], int],
                 busy: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.busy = busy
        self.compactor = Compactor(layout, config.compaction_settings(), checkpoint=checkpoint)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.deferred = 0  # passes put off because ingest was overloaded
        self.pruned_days: list[str] = []
        self.errors = 0
        self.last_error: str | None = None
        self.last_pass_unix: float | None = None

    @property
    def enabled(self) -> bool:
        return self.config.compaction_interval > 0

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="msgtrace-maintenance", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass (a compaction in progress finishes: its outputs are published or not)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def run_once(self) -> None:
        if self.config.retention_days:
            report = self.compactor.prune(retention_cutoff(self.config.retention_days))
            if report.days:
                log.info("retention: dropped %s (%d spans)", ", ".join(report.days), report.spans)
                self.pruned_days.extend(report.days)
        report = self.compactor.run()
        if report.input_files:
            log.info("compacted %d files (%d spans) of %d day(s) into %d in %.1f s", report.input_files,
                     report.input_rows, report.days, report.output_files, report.seconds)
        self.passes += 1
        self.last_pass_unix = time.time()

    def _loop(self) -> None:
        lower_priority()  # threads this one starts (the compaction workers) inherit it
        while not self._stop.wait(self.config.compaction_interval):
            if self.busy():
                self.deferred += 1
                continue
            try:
                self.run_once()
            except Exception as exc:  # keep serving; the next pass retries, /health shows the error
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("compaction pass failed; retrying in %.0f s", self.config.compaction_interval)

    def status(self) -> dict[str, object]:
        totals = self.compactor.totals.as_dict()
        last = self.compactor.last.as_dict() if self.compactor.last is not None else None
        return {
            "enabled": self.enabled,
            "interval_seconds": self.config.compaction_interval,
            "retention_days": self.config.retention_days or None,
            "passes": self.passes,
            "deferred_passes": self.deferred,
            "last_pass_unix": self.last_pass_unix,
            "last": last,
            "totals": totals,
            "pruned_days": self.pruned_days[-30:],
            "errors": self.errors,
            "last_error": self.last_error,
        }


def lower_priority() -> None:
    """Run the calling thread at a lower CPU priority (Linux: per thread), so ingest keeps the CPU it needs."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
