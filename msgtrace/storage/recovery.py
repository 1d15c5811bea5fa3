"""Start-up checks of the Parquet store: nothing partial or unreadable is ever globbed by a reader.

Leftover temp files (a flush interrupted before its rename) and ``.parquet`` files without a valid footer are moved
to ``quarantine/`` with their day in the name, and reported in ``/health``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq

from msgtrace.storage.layout import PART_SUFFIX, TEMP_SUFFIX, StoreLayout

_MAGIC = b"PAR1"


def quarantine(layout: StoreLayout, path: Path, reason: str) -> Path:
    layout.quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = layout.quarantine_dir / f"{path.parent.name}__{path.name}"
    n = 1
    while target.exists():
        target = layout.quarantine_dir / f"{path.parent.name}__{path.name}.{n}"
        n += 1
    os.replace(path, target)
    (target.with_name(target.name + ".reason")).write_text(reason + "\n")
    return target


def quarantine_bad_parts(layout: StoreLayout) -> list[str]:
    """Move temp files and unreadable Parquet files aside; returns what was moved, for ``/health``."""
    moved: list[str] = []
    if not layout.spans_dir.exists():
        return moved
    for day_dir in sorted(layout.spans_dir.iterdir()):
        if not day_dir.is_dir():
            continue
        for path in sorted(day_dir.iterdir()):
            if path.name.endswith(TEMP_SUFFIX):
                moved.append(str(quarantine(layout, path, "temp file left by an interrupted flush")))
            elif path.name.endswith(PART_SUFFIX) and (problem := _check_parquet(path)):
                moved.append(str(quarantine(layout, path, problem)))
    return moved


def _check_parquet(path: Path) -> str | None:
    size = path.stat().st_size
    if size < 12:
        return "too short to be a Parquet file"
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(size - 4)
        tail = f.read(4)
    if head != _MAGIC or tail != _MAGIC:
        return "no Parquet magic at start or end (partial write)"
    try:
        pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        return f"unreadable Parquet footer: {exc}"
    return None
