"""msgtrace installed next to the msgtrace-sdk wheel, which ships its own top-level ``msgtrace`` package.

Each test builds fresh virtualenvs and installs this checkout (regular or editable) and ``msgtrace-sdk`` from
the package index in both orders; see ``msgtrace/_import_hook/_msgtrace_path.py`` for the import hook that makes this work.
Network: the package index (pip's cache is shared) and 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SDK = "msgtrace-sdk==1.2.*"
INSTALL_TIMEOUT = 300

TRACED = """
from opentelemetry import trace
from msgtrace.sdk import Spans
with Spans.span_context("packaging-check") as span:
    print(format(span.get_span_context().trace_id, "032x"))
assert trace.get_tracer_provider().force_flush(10_000)
"""

CHECK = """
import msgtrace, msgtrace.cli, msgtrace.query.store, msgtrace.server.run, msgtrace.sdk, msgtrace.version
from msgtrace.sdk import tracer
assert msgtrace.__version__ == "0.1.0", msgtrace.__version__
assert msgtrace.version.__version__.startswith("1.2."), msgtrace.version.__version__
assert msgtrace.Store is msgtrace.query.store.Store and callable(msgtrace.open)
print(msgtrace.__version__, msgtrace.open)
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run(*args: str | Path, cwd: Path, timeout: float = 120, **env: str) -> str:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        run(sys.executable, "-m", "venv", path, cwd=path.parent, timeout=120)
        self.bin = path / "bin"
        self.python = self.bin / "python"

    def pip(self, *args: str | Path) -> None:
        run(self.python, "-m", "pip", *args, "--quiet", cwd=self.path.parent, timeout=INSTALL_TIMEOUT)

    def install_ours(self, wheel: Path, editable: bool) -> None:
        if editable:
            self.pip("install", "-e", REPO)
        else:
            self.pip("install", wheel)

    def py(self, code: str, **env: str) -> str:
        return run(self.python, "-c", code, cwd=self.path.parent, **env)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, REPO, cwd=out,
        timeout=INSTALL_TIMEOUT)
    (built,) = out.glob("msgtrace-*.whl")
    return built


def ingest_and_list(venv: Venv, tmp: Path) -> None:
    """A program traced with msgtrace.sdk sends to this venv's `msgtrace ingest`; `msgtrace list` shows it."""
    data, port = tmp / "data", free_port()
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(
        [str(venv.bin / "msgtrace"), "ingest", "--port", str(port), "--data-dir", str(data), "--log-level",
         "warning"], cwd=tmp, env=_env(MSGTRACE_FLUSH_INTERVAL="0.2"), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "ingest server did not start"
            time.sleep(0.1)
        trace_id = venv.py(TRACED, MSGTRACE_TELEMETRY_ENABLED="true", MSGTRACE_SERVICE_NAME="packaging-check",
                           MSGTRACE_OTLP_ENDPOINT=f"http://127.0.0.1:{port}/v1/traces").strip()
        server.send_signal(signal.SIGTERM)  # flushes to Parquet
        assert server.wait(timeout=30) == 0, (tmp / "server.log").read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
        log.close()
    traces = json.loads(run(venv.bin / "msgtrace", "list", "--json", "--data-dir", data, cwd=tmp))
    assert trace_id in json.dumps(traces), traces


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
@pytest.mark.parametrize("ours_first", [True, False], ids=["ours-then-sdk", "sdk-then-ours"])
def test_installed_with_msgtrace_sdk(tmp_path: Path, wheel: Path, editable: bool, ours_first: bool) -> None:
    venv = Venv(tmp_path / "venv")
    if ours_first:
        venv.install_ours(wheel, editable)
        venv.pip("install", SDK)
    else:
        venv.pip("install", SDK)
        venv.install_ours(wheel, editable)
    assert venv.py(CHECK).startswith("0.1.0 <function open")
    if editable:  # an editable install reads sql/ from the checkout: no stale copy in site-packages
        assert not list(venv.path.glob("lib/python*/site-packages/msgtrace/sql"))
    ingest_and_list(venv, tmp_path)
    assert run(venv.bin / "msgtrace", "--version", cwd=tmp_path).strip().endswith("0.1.0")


def test_uninstalling_either_leaves_the_other_working(tmp_path: Path, wheel: Path) -> None:
    """Both wheels own site-packages/msgtrace/__init__.py; removing one must not break the other."""
    venv = Venv(tmp_path / "venv")
    venv.install_ours(wheel, editable=False)
    venv.pip("install", SDK)  # overwrites our __init__.py; uninstalling it deletes that file
    venv.pip("uninstall", "--yes", "msgtrace-sdk")
    assert venv.py("import msgtrace; print(msgtrace.__version__, msgtrace.open, msgtrace.Store)").startswith(
        "0.1.0 <function open")
    with pytest.raises(AssertionError, match="No module named 'msgtrace.sdk'"):
        venv.py("import msgtrace.sdk")
    assert run(venv.bin / "msgtrace", "--version", cwd=tmp_path).strip().endswith("0.1.0")

    venv.pip("install", SDK)
    venv.pip("uninstall", "--yes", "msgtrace")  # deletes __init__.py (the SDK's), our hook and our modules
    out = venv.py("import msgtrace.sdk, msgtrace.version; print(msgtrace.version.__version__, msgtrace.sdk.tracer)")
    assert out.startswith("1.2."), out
