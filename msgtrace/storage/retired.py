"""Retired parts: files replaced by compaction or dropped by retention, hidden from readers before they are deleted.

A part cannot simply be deleted when compaction replaces it: a running query has expanded its file list already and
would fail opening it. So the swap happens in three steps, each leaving the store readable and correct:

1. the compactor publishes its outputs (``spans/date=…/c-….parquet``); for a moment a reader may see a span both
   in an output and in an input — the ``spans`` view collapses such duplicates (``sql/10_spans.sql``);
2. it adds the inputs to ``retired.json`` in one atomic replace: from then on every new query leaves them out;
3. after a grace period longer than any query may run, it deletes the files and then drops them from the list.

Readers (the query engine) read the list, glob the parts, and read the list again: the result is consistent when
the list did not change in between (see :func:`visible_parts`). The DuckDB shell applies the same list in SQL
(``sql/00_source.sql``). Only the process holding the data directory's lock changes the list.

``retired.json``::

    {"files": [{"path": "spans/date=2026-11-20/00000000000000000001-00000000000000000009.parquet",
                "retired_at": 1795000000.0}]}
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
            return RetiredList({e["path"]: float(e["retired_at"]) for e in doc.get("files", [])}, before)
    raise RuntimeError(f"{path} keeps changing while being read")


def write(layout: StoreLayout, files: dict[str, float]) -> None:
    doc = {"files": [{"path": p, "retired_at": t} for p, t in sorted(files.items())]}
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
            return [p for p in parts if relative(layout, p) not in retired.files]
    raise RuntimeError("the list of retired parts keeps changing; is something rewriting it in a loop?")


def retire(layout: StoreLayout, paths: list[Path], now: float | None = None) -> None:
    """Hide ``paths`` from every new query (step 2). The caller holds the data directory's lock."""
    if not paths:
        return
    files = dict(read(layout).files)
    stamp = time.time() if now is None else now
    for path in paths:
        files.setdefault(relative(layout, path), stamp)
    write(layout, files)


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
        path.unlink(missing_ok=True)
        dirs.add(path.parent)
    for directory in dirs:
        if directory.exists():
            fsync_dir(directory)
    write(layout, {p: t for p, t in retired.files.items() if p not in set(expired)})
    for directory in dirs:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only succeeds when empty
    return len(expired)
