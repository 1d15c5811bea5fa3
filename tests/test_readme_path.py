"""The README, followed as a new user would, in a fresh virtualenv.

Install with the README's commands (``pip install .`` from the clone, then ``pip install ".[msgflux]"``), start
``msgtrace ingest`` in the background, send spans from a msgtrace-SDK program and from msgflux programs (a plain
agent, and the ``agent_tracing`` example; offline: a stand-in model), then look at them with ``msgtrace list``,
``show`` and ``stats --by workflow``, the README's DuckDB shell command and its Polars code. Every command is one
the README shows; a check on the README text fails first when one goes missing. The settings go through the
environment variables the README documents: ``MSGTRACE_PORT`` (a free port) and ``MSGTRACE_DATA_DIR`` (a temporary
store) for the server and the CLI, ``MSGTRACE_TELEMETRY_ENABLED`` and ``MSGTRACE_OTLP_ENDPOINT`` for the clients.

Network: the package index (pip's cache is shared) and 127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.test_integration import INSTALL_TIMEOUT, REPO, _env, run

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
DEMO_TRACE = "2696f4701a86a3602fc274ae431deec3"  # the trace id in the README's examples
FLUSH_WAIT = 30.0  # seconds for spans to reach Parquet (the server flushes every 5 s by default)


def documented(text: str) -> str:
    """``text``, after checking the README says it."""
    assert text in README, f"the README no longer says {text!r}"
    return text


def readme_line(prefix: str) -> str:
    """The README's command line that starts with ``prefix``, without its trailing comment."""
    lines = [line for line in README.splitlines() if line.startswith(prefix)]
    assert lines, f"no README line starts with {prefix!r}"
    return re.sub(r"\s+#.*$", "", lines[0]).strip()


def readme_block(heading: str, language: str) -> str:
    """The first ``language`` code block after the README heading ``heading``."""
    start = README.index(f"\n{heading}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block under {heading!r}"
    return match.group(1)


SDK_PROGRAM = """
# A program traced with the msgtrace SDK, configured only by the environment (the README's "Any client" table).
from opentelemetry.trace import use_span
from msgtrace.sdk import MsgTraceAttributes, Spans

with Spans.init_flow("readme_sdk_flow") as flow, use_span(flow):
    MsgTraceAttributes.set_workflow_name("readme_sdk_flow")
    with Spans.span_context("chat gpt-4o-mini") as call, use_span(call):
        MsgTraceAttributes.set_model("gpt-4o-mini")
        MsgTraceAttributes.set_usage(input_tokens=120, output_tokens=30)
        MsgTraceAttributes.set_cost(input_cost=0.000018, output_cost=0.000018)
print(format(flow.get_span_context().trace_id, "032x"))
# no flush: the OpenTelemetry SDK exports what is left when the program exits
"""

MSGFLUX_PROGRAM = """
# A msgflux agent with a tool, configured only by the environment, with the examples' stand-in model.
import msgflux.nn as nn
from msgtrace.examples.agent_tracing import get_order_status, stand_in_model

agent = nn.Agent("readme_agent", stand_in_model("standin-pro"), tools=[get_order_status])
print(agent("Where is my order A-1001?"))
"""

# The README's Python block, run as written (the README's trace id swapped for one of ours); then what its
# statements return, as JSON.
POLARS_PROGRAM = """
import ast, json, sys

body, = sys.argv[1:]
*statements, last = ast.parse(body).body
scope = {}
exec(compile(ast.Module(statements, type_ignores=[]), "README", "exec"), scope)
query = eval(compile(ast.Expression(last.value), "README", "eval"), scope)
store, trace_id = scope["store"], scope["TRACE_ID"]
print(json.dumps({
    "query": query.to_dicts(),
    "traces": store.traces(limit=100).to_dicts(),
    "tree": store.tree(trace_id).select("name", "depth").rows(),
    "stats": store.stats(by="model").to_dicts(),
}, default=str))
"""


@dataclass
class Walk:
    bin: Path
    data_dir: Path
    env: dict[str, str]  # the MSGTRACE_* settings every command gets
    sdk_trace: str
    msgflux_answer: str
    agent_traces: list[str]  # python -m msgtrace.examples.agent_tracing: status, refund, unknown order

    def run(self, *args: str | Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return run(*args, cwd=self.data_dir.parent, **{**self.env, **extra})

    def msgtrace(self, *args: str) -> str:
        return self.run(self.bin / "msgtrace", *args).stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.msgtrace(*args, documented("--json")))


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    root = tmp_path_factory.mktemp("readme")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=root, timeout=120)
    # "With Python 3.11+, from a clone of this repository: pip install ." and, for msgflux, pip install ".[msgflux]"
    for command in (readme_line("pip install ."), documented('pip install ".[msgflux]"')):
        pip, *args = shlex.split(command)
        run(venv / "bin" / pip, *args, "--quiet", cwd=REPO, timeout=INSTALL_TIMEOUT)

    port, data_dir = free_port(), root / "store"
    env = {"MSGTRACE_PORT": str(port), "MSGTRACE_DATA_DIR": str(data_dir)}
    for name in env:
        documented(f"`{name}`")
    ingest = shlex.split(readme_line("msgtrace ingest"))
    log = (root / "ingest.log").open("wb")
    server = subprocess.Popen([venv / "bin" / ingest[0], *ingest[1:]], cwd=root, env=_env(**env), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        _wait_for_health(port, server, root / "ingest.log")
        documented("MSGTRACE_TELEMETRY_ENABLED=true")
        endpoint = documented("MSGTRACE_OTLP_ENDPOINT=http://localhost:4321/api/v1/traces/export").split("=", 1)[1]
        client = {**env, "MSGTRACE_TELEMETRY_ENABLED": "true",
                  "MSGTRACE_OTLP_ENDPOINT": endpoint.replace(":4321", f":{port}")}
        python = venv / "bin" / "python"
        sdk_trace = run(python, "-c", SDK_PROGRAM, cwd=root, **client).stdout.strip()
        msgflux_answer = run(python, "-c", MSGFLUX_PROGRAM, cwd=root, **client).stdout.strip()
        example = shlex.split(readme_line("python -m msgtrace.examples.agent_tracing"))
        out = run(venv / "bin" / example[0], *example[1:], documented("--port"), str(port), cwd=root, **env).stdout
        walk = Walk(venv / "bin", data_dir, env, sdk_trace, msgflux_answer,
                    re.findall(r"trace ([0-9a-f]{32})", out))
        _wait_for_parquet(walk)
        yield walk
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_for_health(port: int, server: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            pytest.fail(f"msgtrace ingest exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"msgtrace ingest did not answer within {timeout:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _wait_for_parquet(walk: Walk) -> None:
    """Until ``msgtrace list`` (which reads the Parquet files) shows every trace sent (the README's 5 s flush)."""
    deadline = time.monotonic() + FLUSH_WAIT
    expected = {walk.sdk_trace, *walk.agent_traces}
    while True:
        traces = walk.cli_json("list")
        workflows = {t["workflow"] for t in traces}
        if expected <= {t["trace_id"] for t in traces} and "Readme Agent" in workflows:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"after {FLUSH_WAIT:g} s, msgtrace list shows {traces}")
        time.sleep(0.5)


def test_the_programs_ran(walk: Walk) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", walk.sdk_trace), walk.sdk_trace
    assert walk.msgflux_answer == "Order A-1001 is shipped (UPS, tomorrow)."
    assert len(walk.agent_traces) == 3


def test_list(walk: Walk) -> None:
    table = walk.msgtrace(documented("msgtrace list")[len("msgtrace "):])  # without the README's filters
    for text in ("readme_sdk_flow", "order_support_flow", "Readme Agent", walk.sdk_trace, *walk.agent_traces):
        assert text in table, table
    traces = {t["trace_id"]: t for t in walk.cli_json("list")}
    assert len(traces) < 20, "more traces than one page of msgtrace list: some may be missing below"
    sdk = traces[walk.sdk_trace]
    assert (sdk["workflow"], sdk["span_count"], sdk["total_tokens"], sdk["models"]) == (
        "readme_sdk_flow", 2, 150, ["gpt-4o-mini"])
    assert sdk["cost"] == pytest.approx(0.000036)
    agent = [traces[t] for t in walk.agent_traces]
    assert [(t["workflow"], t["service_name"], t["error_count"]) for t in agent] == [
        ("order_support_flow", "order-support", 0), ("order_support_flow", "order-support", 0),
        ("order_support_flow", "order-support", 1)]
    # msgflux 0.5 on its own sends each module as a trace of its own: the agent's root is its module span.
    plain = [t for t in traces.values() if t["workflow"] == "Readme Agent"]
    assert len(plain) == 1 and plain[0]["service_name"] == "msgtrace-app"
    assert any(t["workflow"] == "Get Order Status" for t in traces.values())
    assert sum(t["models"] == ["standin-pro"] for t in traces.values() if t["root_name"] == "chat standin-pro") == 2


def test_show(walk: Walk) -> None:
    assert readme_line("msgtrace show").startswith(f"msgtrace show {DEMO_TRACE}")
    tree = walk.msgtrace("show", walk.sdk_trace)
    assert re.search(r"└─ chat gpt-4o-mini .* gpt-4o-mini +150 ", tree), tree
    refund = walk.msgtrace("show", walk.agent_traces[1])
    for line in ("├─ triage", "└─ resolve", "├─ Check Refund Eligibility", "chat standin-pro"):
        assert line in refund, refund
    shown = walk.cli_json("show", walk.agent_traces[2])
    assert [s["name"] for s in shown["spans"] if s["status_code"] == "ERROR"] == ["Get Order Status"]


def test_stats_by_workflow(walk: Walk) -> None:
    assert "msgtrace stats --by" in readme_line("msgtrace stats") and "# or workflow" in README
    table = walk.msgtrace("stats", "--by", "workflow")
    assert re.search(r"order_support_flow +3 +1 ", table), table
    assert re.search(r"readme_sdk_flow +1 +0 ", table), table
    rows = {r["workflow"]: r for r in walk.cli_json("stats", "--by", "workflow")}
    assert (rows["readme_sdk_flow"]["count"], rows["readme_sdk_flow"]["total_tokens"]) == (1, 150)
    assert (rows["order_support_flow"]["count"], rows["order_support_flow"]["errors"]) == (3, 1)
    assert rows["Readme Agent"]["count"] == 1


def test_duckdb_shell(walk: Walk) -> None:
    command = shlex.split(readme_line("msgtrace duckdb -c"))
    out = walk.run(walk.bin / command[0], *command[1:]).stdout
    runs = {cells[0]: int(cells[1]) for cells in
            ([c.strip() for c in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│"))
            if len(cells) == 3 and cells[1].isdigit()}
    assert runs["order_support_flow"] == 3 and runs["readme_sdk_flow"] == 1 and runs["Readme Agent"] == 1, out


def test_polars(walk: Walk) -> None:
    block = readme_block("### Python and Polars", "python")
    assert DEMO_TRACE in block
    trace_id = walk.agent_traces[1]
    body = f"TRACE_ID = {trace_id!r}\n" + block.replace(f'"{DEMO_TRACE}"', "TRACE_ID")
    result = json.loads(walk.run(walk.bin / "python", "-c", POLARS_PROGRAM, body).stdout)
    calls = {row["model"]: row["calls"] for row in result["query"]}
    assert calls == {"gpt-4o-mini": 1, "standin-mini": 3, "standin-pro": 8}  # 6 from the example, 2 plain
    assert {walk.sdk_trace, *walk.agent_traces} <= {t["trace_id"] for t in result["traces"]}
    assert result["tree"][:3] == [["order_support_flow", 0], ["triage", 1], ["Triage Agent", 2]]
    assert {row["model"]: row["count"] for row in result["stats"]} == calls
