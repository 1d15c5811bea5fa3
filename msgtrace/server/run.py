"""Runs the ingest server: take the data directory, recover, then serve with uvicorn until SIGTERM/SIGINT.

The data directory is locked and the WAL replayed *before* the port is bound, so a second server on the same
directory fails at once with a clear message instead of answering requests it cannot keep.

Restarts without refused connections: a supervisor may hold the listening socket and hand it to the server, as
systemd socket activation does (``LISTEN_PID`` = the server's pid, ``LISTEN_FDS=1``, the socket on fd 3; e.g. a
``msgtrace.socket`` unit with ``ListenStream=127.0.0.1:4321``). Across a restart the port then keeps accepting:
connections wait in the kernel's backlog until the new process serves them, instead of being refused. That matters
because OpenTelemetry Python exporters before 1.45 drop a batch at once when the connection is refused (they retry
503s, not that), and 1.45+ make their last try 5.6-8.4 s after the first refusal (tests/test_exporters_trouble.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket

import uvicorn

from msgtrace.config import IngestConfig
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.server.app import create_app

log = logging.getLogger("msgtrace.server")


SD_LISTEN_FDS_START = 3  # the first socket systemd hands over


def inherited_socket() -> socket.socket | None:
    """The listening socket a supervisor handed over (systemd's protocol, see the module docstring), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None  # not meant for this process (e.g. inherited from a parent that was activated)
    count = os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # never passed on to child processes
    if count != "1":
        raise ValueError(f"LISTEN_FDS={count!r}: msgtrace serves exactly one handed-over socket")
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)  # family and type are read from the descriptor
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError("the handed-over socket (fd 3) is not a TCP socket")
    return sock


def serve(config: IngestConfig, *, log_level: str = "info", access_log: bool = False) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = inherited_socket()
    if sock is not None:
        # The socket's address is the one served: the Host checks (msgtrace/server/hosts.py) must know it.
        host, port = sock.getsockname()[:2]
        config = dataclasses.replace(config, host=host, port=port)
        log.info("serving on %s:%d, a socket handed over by the supervisor", host, port)
    ingestor = Ingestor(config)
    ingestor.start()  # raises DataDirLocked
    status = ingestor.status()
    log.info("data dir %s: replayed %d WAL record(s), %d quarantined file(s)", config.data_dir,
             ingestor.wal.stats.replayed_records, len(status["quarantined"]))  # type: ignore[arg-type]
    try:
        server = uvicorn.Server(uvicorn.Config(
            create_app(ingestor), host=config.host, port=config.port, log_level=log_level,
            access_log=access_log, lifespan="on", timeout_graceful_shutdown=10,
        ))
        # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler that was installed before it
        # ran; a no-op one here makes a clean, flushed shutdown exit with status 0 instead of dying by signal.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        ingestor.close()  # idempotent: the lifespan normally closed it already
