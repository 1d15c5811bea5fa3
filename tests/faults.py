"""Shared by the fault tests (test_disk_full, test_stall, test_exporters_trouble, test_burst): a real filesystem to
fill up or freeze, the count of what the store holds, read with plain DuckDB, the peak RSS of a server, and a clock
the test process's own garbage collector cannot stop (:func:`collector_paused`).

:class:`LoopFilesystem` is a loop-mounted ext4 image that a test fills up (disk full) or freezes (a stalled disk),
with no mocks anywhere between the server and the kernel.

    fs = LoopFilesystem(image=tmp_path / "fs.img", mountpoint=data_dir / "spans", size_mib=64)
    fs.mount()                  # truncate + mkfs.ext4 + mount -o loop; pytest.skip (with the reason) if impossible
    fs.fill()                   # a ballast file takes every free block: the next write gets ENOSPC
    fs.fill_inodes()            # ballast files take every free inode: the next file created gets ENOSPC
    fs.free()                   # delete the ballast
    with fs.frozen(limit=30):   # fsfreeze: writes block (the writer sits in D state) until thawed
        ...
    fs.unmount()
    with LoopFilesystem(...) as fs:   # mount() ... unmount()
        ...

Mounting needs root and a loop device; where either is missing the test is skipped with the reason. A freeze is
held by a helper process that thaws the filesystem by itself after ``limit`` seconds, so a test that dies (or a
pytest that is killed) never leaves a process stuck on a frozen disk for longer than that.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Self

import duckdb
import httpx
import psutil
import pytest

import msgtrace
from msgtrace.storage.layout import StoreLayout
from msgtrace.storage.retired import visible_parts

TOOLS = ("mkfs.ext4", "mount", "umount", "fsfreeze")


class LoopFilesystem:
    def __init__(self, image: Path, mountpoint: Path, size_mib: int, inodes: int = 4096) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mib = size_mib
        self.inodes = inodes
        self.ballast = mountpoint / "ballast"
        self.ballast_dir = mountpoint / "ballast.d"
        self.mounted = False
        self._freezer: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        """Create and mount the filesystem, or skip the test saying why that is impossible here."""
        if os.geteuid() != 0:
            pytest.skip("mounting a loop filesystem needs root")
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"mounting a loop filesystem needs {', '.join(missing)}")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.image.open("wb") as f:
            f.truncate(self.size_mib * 1024 * 1024)
        # -m 0: no blocks reserved for root (the server runs as root here and would otherwise fill those too).
        self._run_or_skip(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(self.inodes), str(self.image)])
        self._run_or_skip(["mount", "-o", "loop,noatime", str(self.image), str(self.mountpoint)])
        self.mounted = True
        (self.mountpoint / "lost+found").rmdir()  # an empty directory the store has no use for

    def __enter__(self) -> LoopFilesystem:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def _run_or_skip(self, args: list[str]) -> None:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a loop filesystem here: {' '.join(args)}: {proc.stderr.strip()[:300]}")

    # --- disk full ----------------------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Write a ballast file until the filesystem refuses another byte (or only about ``leave`` bytes are
        free); returns its size."""
        written = 0
        goal = self.free_bytes() - leave if leave else None
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
                block = b"\0" * chunk
                while goal is None or written + chunk <= goal:
                    try:
                        written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        finally:
            os.close(fd)
        return written

    def fill_inodes(self) -> int:
        """Create empty ballast files until no inode is left; returns how many."""
        self.ballast_dir.mkdir(exist_ok=True)
        n = 0
        while True:
            try:
                os.close(os.open(self.ballast_dir / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return n
            n += 1

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)
        if self.ballast_dir.exists():
            shutil.rmtree(self.ballast_dir)

    # --- a stalled disk -----------------------------------------------------------------------------------------
    @contextmanager
    def frozen(self, limit: float = 30.0) -> Iterator[None]:
        """Freeze the filesystem for the block; a helper process thaws it after ``limit`` seconds regardless."""
        self.freeze(limit)
        try:
            yield
        finally:
            self.thaw()

    def freeze(self, limit: float = 30.0) -> None:
        assert self._freezer is None, "already frozen"
        mp = str(self.mountpoint)
        self._freezer = subprocess.Popen(
            ["sh", "-c", f'fsfreeze --freeze "$1" || exit 1; echo frozen; sleep {limit:.0f}; fsfreeze --unfreeze "$1"',
             "freezer", mp],
            stdout=subprocess.PIPE, start_new_session=True,
        )
        assert self._freezer.stdout is not None
        if self._freezer.stdout.readline().strip() != b"frozen":
            self._freezer.wait(10)
            self._freezer = None
            raise RuntimeError(f"fsfreeze --freeze {mp} failed")

    def thaw(self) -> None:
        if self._freezer is None:
            return
        # Stop the helper first (its own later thaw must not undo a freeze that comes after this one), then thaw.
        os.killpg(self._freezer.pid, signal.SIGKILL)
        self._freezer.wait(10)
        if self._freezer.stdout is not None:
            self._freezer.stdout.close()
        self._freezer = None
        subprocess.run(["fsfreeze", "--unfreeze", str(self.mountpoint)], capture_output=True, timeout=30)

    # --- teardown -----------------------------------------------------------------------------------------------
    def unmount(self) -> None:
        if not self.mounted:
            return
        self.thaw()
        for _ in range(50):  # a process that just exited may still hold a file open for a moment
            if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        self.mounted = False
        self.image.unlink(missing_ok=True)


def stored_span_counts(data_dir: Path) -> dict[str, int]:
    """span_id (hex) → how many rows hold it, over the Parquet parts a reader sees, read with plain DuckDB.

    The parts are the files under ``spans/`` less those compaction has retired (replaced, awaiting deletion after
    a grace period) or is still writing, as listed in ``retired.json``: the same rule the DuckDB shell applies
    (``sql/00_source.sql``). Globbing everything would count a compacted span twice for those minutes.
    """
    parts = [str(p) for p in visible_parts(StoreLayout(data_dir))]
    if not parts:
        return {}
    rows = duckdb.connect().execute("SELECT span_id, count(*) FROM read_parquet(?) GROUP BY span_id",
                                    [parts]).fetchall()
    return dict(rows)


def assert_stored_once(data_dir: Path, acked: Iterable[tuple[int, int]], sent: Iterable[tuple[int, int]],
                       spans_per_request: int) -> int:
    """Every acknowledged request stored whole, exactly once, and nothing that was not sent: plain DuckDB over the
    files, then the store's own ``spans`` view. A request is named by its spans' ids: (client + 1, request number)
    in their first 5 bytes. Returns how many spans are stored."""
    counts = {bytes.fromhex(span_id): n for span_id, n in stored_span_counts(data_dir).items()}
    twice = [k.hex() for k, n in counts.items() if n != 1]
    assert not twice, f"{len(twice)} span(s) stored more than once, e.g. {twice[:3]}"
    per_request = Counter((k[0] - 1, int.from_bytes(k[1:5], "big")) for k in counts)
    missing = set(acked) - set(per_request)
    assert not missing, f"{len(missing)} acknowledged request(s) lost, e.g. {sorted(missing)[:3]}"
    unsent = set(per_request) - set(sent)
    assert not unsent, f"{len(unsent)} request(s) stored that were never sent or were refused, e.g. {sorted(unsent)[:3]}"
    assert set(per_request.values()) <= {spans_per_request}  # whole requests only
    with msgtrace.open(data_dir) as store:
        viewed = store.query("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").table.to_pylist()
    assert viewed == [{"n": len(counts), "d": len(counts)}]
    return len(counts)


def check_parts_readable(data_dir: Path) -> int:
    """Open every file under ``spans/`` with plain DuckDB (a torn file fails here); returns how many there are."""
    parts = sorted((data_dir / "spans").glob("*/*.parquet"))
    con = duckdb.connect()
    for part in parts:
        con.execute("SELECT count(*) FROM read_parquet(?)", [str(part)]).fetchall()
    return len(parts)


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in the test process inside ``with``: for a test that times the server's answers.

    A full collection of the pytest process (~92,000 tracked objects) took 54-122 ms on the loaded 2-core machine
    and stops every thread of the process, the clocks included: a /health poll measured at 147 ms coincided with a
    122 ms collection here while a watchdog inside the server saw no pause over 30 ms. Reference counting still
    frees what the load loops drop; the windows this wraps are bounded (at most a few minutes)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Answer(NamedTuple):
    sent: float  # monotonic time the request was sent
    answered: float  # monotonic time its answer arrived
    status: int
    retry_after: str | None


class ClientThreads:
    """``clients`` threads, each running ``self._run(client)`` until ``stop`` is set. A context manager: they run
    inside ``with``."""

    def __init__(self, clients: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self, client: int) -> None:
        raise NotImplementedError


class LoadClients(ClientThreads):
    """``clients`` threads POSTing new spans back to back (``body(client, seq)``, one request every ``pause``
    seconds each); a refused request is not resent, so an acked one must be stored. Records every answer, the
    acked requests and anything but a 200 or 503 (``bad``). A context manager: the load runs inside ``with``."""

    def __init__(self, url: str, body: Callable[[int, int], bytes], clients: int, pause: float) -> None:
        self.url, self.body, self.clients, self.pause = url, body, clients, pause
        self.sent: set[tuple[int, int]] = set()
        self.acked: dict[tuple[int, int], float] = {}  # request -> monotonic time of its 200
        self.answers: list[Answer] = []
        self.bad: list[str] = []
        self.lock = threading.Lock()
        super().__init__(clients)

    def _run(self, client: int) -> None:
        seq = 0
        with httpx.Client(timeout=10.0) as http:
            while not self.stop.is_set():
                body = self.body(client, seq)
                with self.lock:
                    self.sent.add((client, seq))
                started = time.monotonic()
                try:
                    response = http.post(f"{self.url}/v1/traces", content=body,
                                         headers={"Content-Type": "application/x-protobuf"})
                except httpx.HTTPError as exc:
                    self.bad.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.1)
                else:
                    now = time.monotonic()
                    with self.lock:
                        self.answers.append(Answer(started, now, response.status_code,
                                                   response.headers.get("retry-after")))
                        if response.status_code == 200:
                            self.acked[(client, seq)] = now
                    if response.status_code not in (200, 503):
                        self.bad.append(f"{response.status_code}: {response.text[:300]}")
                seq += 1
                time.sleep(self.pause)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return True
            time.sleep(0.02)
        return False

    def served_since(self, t: float) -> int:
        """How many clients got a 200 after ``t``."""
        return len({c for (c, _), at in self.acked.items() if at > t})


class RssSampler(threading.Thread):
    """Peak RSS of a process and its children, sampled every ``interval`` seconds until :meth:`stop`;
    ``first`` is the first sample. The children are listed once a second (listing scans all of /proc)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.first = self.peak = self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        children: list[psutil.Process] = []
        listed_at = 0.0
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                if started - listed_at >= 1.0:
                    children, listed_at = self.proc.children(recursive=True), started
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            for child in children:
                with contextlib.suppress(psutil.Error):  # a child may have exited since it was listed
                    rss += child.memory_info().rss
            self.first = self.first or rss
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(max(0.0, started + self.interval - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join()
