"""Durable file operations: fsync a file or directory, and publish a file atomically.

Publishing protocol (a reader never sees a partial file under its final name):
write ``<name>.tmp`` → fsync it → rename to ``<name>`` → fsync the directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from msgtrace.storage.layout import TEMP_SUFFIX


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(final: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, then make its result appear at ``final`` atomically and durably."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + TEMP_SUFFIX)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    publish(final, lambda tmp: tmp.write_bytes(data))
