"""``msgtrace.integration.quick_start`` and ``python -m msgtrace.examples.basic_tracing`` with the real msgtrace SDK.

The test environment has no msgtrace-sdk, so the module builds one virtualenv with this checkout (regular install)
and ``msgtrace-sdk==1.2.*`` from the package index (pip's cache is shared) and runs everything in it as
subprocesses. Network: the package index and 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SDK = "msgtrace-sdk==1.2.*"
INSTALL_TIMEOUT = 300
RUN_TIMEOUT = 90


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith(("MSGTRACE_", "OTEL_"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", COLUMNS="200", **extra)
    return env


def run(*args: str | Path, cwd: Path, timeout: float = RUN_TIMEOUT, check: bool = True,
        **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a virtualenv with this checkout and the msgtrace SDK installed."""
    path = tmp_path_factory.mktemp("integration") / "venv"
    run(sys.executable, "-m", "venv", path, cwd=path.parent, timeout=120)
    run(path / "bin" / "python", "-m", "pip", "install", "--quiet", REPO, SDK, cwd=path.parent,
        timeout=INSTALL_TIMEOUT)
    return path / "bin"


def test_basic_tracing_example(venv: Path, tmp_path: Path) -> None:
    data = tmp_path / "store"
    proc = run(venv / "python", "-m", "msgtrace.examples.basic_tracing", "--port", str(free_port()),
               "--data-dir", data, cwd=tmp_path)
    assert "support_request_flow" in proc.stdout
    assert "gpt-4o-mini" in proc.stdout  # the tree's model column

    traces = json.loads(run(venv / "msgtrace", "list", "--json", "--data-dir", data, cwd=tmp_path).stdout)
    assert len(traces) == 1, traces
    trace = traces[0]
    assert trace["workflow"] == "support_request_flow"
    assert trace["span_count"] == 3 and trace["error_count"] == 0
    assert trace["total_tokens"] > 0 and trace["cost"] > 0

    shown = json.loads(run(venv / "msgtrace", "show", trace["trace_id"], "--json", "--data-dir", data,
                           cwd=tmp_path).stdout)
    nesting = [(span["name"], span["depth"]) for span in shown["spans"]]
    assert nesting == [("support_request_flow", 0), ("answer_question", 1), ("chat gpt-4o-mini", 2)]
    flow, module, call = shown["spans"]
    assert module["parent_id"] == flow["span_id"] and call["parent_id"] == module["span_id"]
    assert call["model"] == "gpt-4o-mini"


QUICK_START_FIRST = """
import sys
from msgtrace.integration import quick_start

port, data_dir = int(sys.argv[1]), sys.argv[2]
observer = quick_start(port=port, data_dir=data_dir)
assert observer.started and observer.url == f"http://127.0.0.1:{port}", observer
again = quick_start(port=port, data_dir=data_dir)  # something answers /health now: reused, not started
assert not again.started and again.data_dir == observer.data_dir, again

from msgtrace.sdk import Spans

with Spans.span_context("quick-start-check") as span:
    trace_id = format(span.get_span_context().trace_id, "032x")
assert observer.flush()
observer.stop()
assert observer.process is None
summary = observer.store.trace_summary(trace_id)
print(trace_id, summary["workflow"], summary["span_count"])
"""


def test_quick_start_then_sdk_stores_spans(venv: Path, tmp_path: Path) -> None:
    data = tmp_path / "store"
    proc = run(venv / "python", "-W", "error::RuntimeWarning", "-c", QUICK_START_FIRST, str(free_port()), data,
               cwd=tmp_path)
    trace_id, workflow, spans = proc.stdout.split()
    assert (workflow, spans) == ("quick-start-check", "1")
    traces = json.loads(run(venv / "msgtrace", "list", "--json", "--data-dir", data, cwd=tmp_path).stdout)
    assert [t["trace_id"] for t in traces] == [trace_id]


SDK_FIRST = """
import json, sys, warnings
import msgtrace.sdk  # too early: telemetry is off in this environment, so its tracer is a no-op
from msgtrace.integration import quick_start

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    observer = quick_start(port=int(sys.argv[1]), data_dir=sys.argv[2])
observer.stop()
print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))
"""


def test_sdk_imported_first_warns(venv: Path, tmp_path: Path) -> None:
    proc = run(venv / "python", "-c", SDK_FIRST, str(free_port()), tmp_path / "store", cwd=tmp_path)
    caught = json.loads(proc.stdout)
    assert len(caught) == 1, caught
    category, message = caught[0]
    assert category == "RuntimeWarning"
    assert "msgtrace.sdk was imported before quick_start" in message
    assert "call msgtrace.integration.quick_start() before importing msgtrace.sdk / msgflux" in message

    # Uncaught, the warning reaches stderr; the program goes on.
    script = "import sys, msgtrace.sdk, msgtrace.integration as i; i.quick_start(int(sys.argv[1]), sys.argv[2]).stop()"
    proc = run(venv / "python", "-c", script, str(free_port()), tmp_path / "store2", cwd=tmp_path)
    assert "RuntimeWarning: msgtrace.sdk was imported before quick_start" in proc.stderr
