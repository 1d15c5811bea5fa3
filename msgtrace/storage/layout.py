"""The data directory, the one place that knows file and folder names.

    <data_dir>/
      LOCK                                   held (flock) by the one process that writes here
      spans/date=YYYY-MM-DD/<first>-<last>.parquet
                                             hive layout; <first>-<last> is the WAL sequence range the part holds,
                                             so replaying a range after a crash overwrites instead of duplicating
      wal/<first-seq>.wal                    write-ahead log segments (see msgtrace.ingest.wal)
      wal/checkpoint                         every WAL record up to this sequence number is in spans/
      spans/date=YYYY-MM-DD/c-<time>-<n>.parquet
                                             compacted parts (msgtrace.storage.compactor)
      traces/date=YYYY-MM-DD/c-<time>-<n>.parquet
                                             the trace rows of each compacted part (sql/25_traces.sql)
      retired.json                           parts replaced by compaction or dropped by retention, hidden from
                                             readers until deleted after a grace period (msgtrace.storage.retired)
      deletes/<time>-<pid>-<id>.parquet      tombstones: trace ids hidden from every view (msgtrace.storage.deletes)
      quarantine/                            temp files, unreadable parts and corrupt WAL segments moved aside
      staging/                               a running compaction's decoded inputs (Arrow IPC), deleted after it

Readers glob ``spans/*/*.parquet`` minus the retired parts: a file is only ever visible there under its final name
once complete.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

PART_SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"
_PART = re.compile(r"^(\d{20})-(\d{20})\.parquet$")
COMPACTED_PREFIX = "c-"
_EPOCH = dt.date(1970, 1, 1)


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def spans_dir(self) -> Path:
        return self.root / "spans"

    @property
    def wal_dir(self) -> Path:
        return self.root / "wal"

    @property
    def deletes_dir(self) -> Path:
        return self.root / "deletes"

    def delete_files(self) -> list[Path]:
        return sorted(self.deletes_dir.glob(f"*{PART_SUFFIX}"))

    @property
    def retired_path(self) -> Path:
        return self.root / "retired.json"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def lock_path(self) -> Path:
        return self.root / "LOCK"

    @property
    def parquet_glob(self) -> str:
        """What DuckDB's ``read_parquet`` and Polars' ``scan_parquet`` are pointed at."""
        return str(self.spans_dir / "*" / f"*{PART_SUFFIX}")

    def create(self) -> None:
        for path in (self.spans_dir, self.wal_dir, self.quarantine_dir):
            path.mkdir(parents=True, exist_ok=True)

    def day_dir(self, day: int) -> Path:
        return self.spans_dir / f"date={day_to_date(day).isoformat()}"

    def part_path(self, day: int, first_seq: int, last_seq: int) -> Path:
        return self.day_dir(day) / part_name(first_seq, last_seq)

    def parts(self) -> list[Path]:
        """Every part on disk, retired or not (readers want :func:`msgtrace.storage.retired.visible_parts`)."""
        return sorted(self.spans_dir.glob(f"date=*/*{PART_SUFFIX}"))

    @property
    def summaries_dir(self) -> Path:
        return self.root / "traces"

    def summary_path(self, part: Path) -> Path | None:
        """Where the trace rows of a compacted part are stored (``traces/date=…/<part name>``); None for others."""
        if not part.name.startswith(COMPACTED_PREFIX):
            return None
        return self.summaries_dir / part.parent.name / part.name

    def compacted_path(self, day: int, stamp_ns: int, n: int) -> Path:
        return self.day_dir(day) / f"{COMPACTED_PREFIX}{stamp_ns:020d}-{n:04d}{PART_SUFFIX}"


def part_name(first_seq: int, last_seq: int) -> str:
    return f"{first_seq:020d}-{last_seq:020d}{PART_SUFFIX}"


def part_range(path: Path) -> tuple[int, int] | None:
    """The WAL range a flushed part holds, or None for parts named otherwise (e.g. compacted ones)."""
    match = _PART.match(path.name)
    return (int(match[1]), int(match[2])) if match else None


def day_to_date(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day)


def date_to_day(date: dt.date) -> int:
    return (date - _EPOCH).days


def part_day(path: Path) -> int | None:
    """The partition day of a part from its directory name (``date=YYYY-MM-DD``), or None."""
    name = path.parent.name
    if not name.startswith("date="):
        return None
    try:
        return date_to_day(dt.date.fromisoformat(name[5:]))
    except ValueError:
        return None
