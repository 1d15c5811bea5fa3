"""The documented DuckDB-shell command, run exactly as a user types it: `msgtrace duckdb` opens the real `duckdb`
shell (from the duckdb-cli package) on the store with every view defined."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from tests.conftest import CAPTURES, capture

MSGTRACE = str(Path(sys.executable).parent / "msgtrace")  # the console script installed with the package


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("shell") / "data"
    ingestor = Ingestor(IngestConfig(data_dir=data_dir))
    ingestor.start()
    for name in CAPTURES:
        ingestor.accept(WireFormat.PROTOBUF, capture(name)[2], time.time_ns())
    ingestor.close()
    return data_dir


def shell(store_dir: Path, *args: str, stdin: str | None = None) -> list[dict[str, str]]:
    result = subprocess.run([MSGTRACE, "duckdb", "--data-dir", str(store_dir), "-csv", *args], input=stdin,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_every_view_is_defined(store_dir: Path) -> None:
    rows = shell(store_dir, "-c", "SELECT count(*) AS spans, count(DISTINCT trace_id) AS traces FROM spans")
    assert rows == [{"spans": "46", "traces": "26"}]
    rows = shell(store_dir, "-c", "SELECT workflow, span_count, status FROM traces "
                                  "WHERE trace_id = '2696f4701a86a3602fc274ae431deec3'")
    assert rows == [{"workflow": "support_request_flow", "span_count": "11", "status": "ERROR"}]
    tree = shell(store_dir, "-c", "SELECT depth, name FROM span_tree('2696f4701a86a3602fc274ae431deec3')")
    assert [(r["depth"], r["name"]) for r in tree][:3] == [("0", "support_request_flow"), ("1", "intent_classifier"),
                                                          ("1", "support_agent")]
    stats = shell(store_dir, "-c", "SELECT key, count FROM stats('model', NULL, NULL)")
    assert stats == [{"key": "gpt-fake", "count": "1"}]
    attrs = shell(store_dir, "-c", "SELECT attr_text(attributes['user.id']) AS u FROM spans "
                                   "WHERE attributes['user.id'] IS NOT NULL")
    assert attrs == [{"u": "user-42"}]


def test_sql_piped_to_stdin(store_dir: Path) -> None:
    assert shell(store_dir, stdin="SELECT count(*) AS n FROM traces;\n") == [{"n": "26"}]


def test_help_and_a_missing_store(tmp_path: Path) -> None:
    assert subprocess.run([MSGTRACE, "duckdb", "--help"], capture_output=True, timeout=30).returncode == 0
    result = subprocess.run([MSGTRACE, "duckdb", "--data-dir", str(tmp_path / "none")], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("msgtrace: error: no msgtrace store at")
