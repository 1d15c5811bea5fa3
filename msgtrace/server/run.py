"""Runs the ingest server: take the data directory, recover, then serve with uvicorn until SIGTERM/SIGINT.

The data directory is locked and the WAL replayed *before* the port is bound, so a second server on the same
directory fails at once with a clear message instead of answering requests it cannot keep.
"""

from __future__ import annotations

import logging
import signal

import uvicorn

from msgtrace.config import IngestConfig
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.server.app import create_app

log = logging.getLogger("msgtrace.server")


def serve(config: IngestConfig, *, log_level: str = "info", access_log: bool = False) -> None:
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        server.run()
    finally:
        ingestor.close()  # idempotent: the lifespan normally closed it already
