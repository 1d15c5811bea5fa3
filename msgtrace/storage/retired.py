"""Retired parts: files replaced by compaction or dropped by retention, hidden from readers before they are deleted.

A part cannot simply be deleted when compaction replaces it: a running query has expanded its file list already and
would fail opening it. So the swap happens in three steps, each leaving the store readable and correct:

1. the compactor lists its outputs as ``pending`` in ``retired.json``, then publishes them
   (``spans/date=…/c-….parquet`` and their trace rows under ``traces/``): readers leave pending files out;
2. one atomic replace of the list makes the outputs visible and retires the inputs: every query started after it
   reads the outputs, every query started before it the inputs (a reader never sees both, or neither);
3. after a grace period longer than any query may run, it deletes the inputs and then drops them from the list.

A compaction that fails or crashes before step 2 leaves pending outputs; the next one deletes them.

Readers (the query engine) read the list, glob the parts, and read the list again: the result is consistent when
the list did not change in between (see :func:`visible_parts`). The DuckDB shell applies the same list in SQL
(``sql/00_source.sql``). Only the process holding the data directory's lock changes the list.

``retired.json``::

    {"files": [{"path": "spans/date=2026-11-20/00000000000000000001-00000000000000000009.parquet",
                "retired_at": 1795000000.0}],
     "pending": ["spans/date=2026-11-20/c-01795000000000000000-0000.parquet"]}
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from msgtrace.storage.files import fsync_dir, write_bytes_atomic
from msgtrace.storage.layout import StoreLayout


@dataclass(frozen=True)
class RetiredList:
    files: dict[str, float]  # path relative to the data directory → unix time it was retired
    version: tuple[int, int] | None  # (inode, mtime_ns) of the list file when read; None when absent
    pending: frozenset[str] = frozenset()  # compaction outputs being written: not visible yet

    def hides(self, layout: StoreLayout, path: Path) -> bool:
        return relative(layout, path) in self.files


def relative(layout: StoreLayout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def _version(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def read(layout: StoreLayout) -> RetiredList:
    path = layout.retired_path
    for _ in range(5):
        before = _version(path)
        if before is None:
            return RetiredList({}, None)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        if _version(path) == before:
            return RetiredList({e["path"]: float(e["retired_at"]) for e in doc.get("files", [])}, before,
                               frozenset(doc.get("pending", [])))
    raise RuntimeError(f"{path} keeps changing while being read")


def write(layout: StoreLayout, files: dict[str, float], pending: frozenset[str] | set[str] = frozenset()) -> None:
    doc: dict[str, object] = {"files": [{"path": p, "retired_at": t} for p, t in sorted(files.items())]}
    if pending:
        doc["pending"] = sorted(pending)
    write_bytes_atomic(layout.retired_path, json.dumps(doc, indent=1).encode() + b"\n")


def visible_parts(layout: StoreLayout) -> list[Path]:
    """The Parquet parts a query may read now: every part under ``spans/`` that is not retired.

    The list is read before and after the glob. If it did not change, the glob saw a state between two list updates,
    which is always consistent: outputs of a compaction are published before their inputs are retired, and retired
    files are deleted before they leave the list. If it changed, read again.
    """
    for _ in range(20):
        retired = read(layout)
        parts = layout.parts()
        if _version(layout.retired_path) == retired.version:
            return [p for p in parts
                    if (rel := relative(layout, p)) not in retired.files and rel not in retired.pending]
    raise RuntimeError("the list of retired parts keeps changing; is something rewriting it in a loop?")


def retire(layout: StoreLayout, paths: list[Path], now: float | None = None) -> None:
    """Hide ``paths`` from every new query (step 2). The caller holds the data directory's lock."""
    swap(layout, [], paths, now)


def add_pending(layout: StoreLayout, paths: list[Path]) -> None:
    """Announce compaction outputs before writing them: hidden from readers until :func:`swap` (step 1)."""
    current = read(layout)
    write(layout, dict(current.files), current.pending | {relative(layout, p) for p in paths})


def swap(layout: StoreLayout, outputs: list[Path], inputs: list[Path], now: float | None = None) -> None:
    """In one atomic write, make ``outputs`` visible and retire ``inputs`` (step 2): a reader sees either side,
    never both, never neither."""
    current = read(layout)
    files = dict(current.files)
    stamp = time.time() if now is None else now
    for path in inputs:
        files.setdefault(relative(layout, path), stamp)
    write(layout, files, current.pending - {relative(layout, p) for p in outputs})


def drop_pending(layout: StoreLayout) -> int:
    """Delete outputs of a compaction that never swapped (it failed or crashed): their inputs are still visible."""
    current = read(layout)
    for rel in current.pending:
        for path in (layout.root / rel, layout.summary_path(layout.root / rel)):
            if path is not None:
                path.unlink(missing_ok=True)
    if current.pending:
        write(layout, dict(current.files))
    return len(current.pending)


def purge(layout: StoreLayout, grace_seconds: float, now: float | None = None) -> int:
    """Delete retired files older than the grace period, then forget them (step 3); returns how many went.

    Day directories left empty are removed too (a pruned day disappears from the layout).
    """
    retired = read(layout)
    cutoff = (time.time() if now is None else now) - grace_seconds
    expired = [p for p, t in retired.files.items() if t <= cutoff]
    if not expired:
        return 0
    dirs = set()
    for rel in expired:
        path = layout.root / rel
        for doomed in (path, layout.summary_path(path)):  # a compacted part goes with its trace rows
            if doomed is not None:
                doomed.unlink(missing_ok=True)
                dirs.add(doomed.parent)
    for directory in dirs:
        if directory.exists():
            fsync_dir(directory)
    write(layout, {p: t for p, t in retired.files.items() if p not in set(expired)}, retired.pending)
    for directory in dirs:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty
    return len(expired)
