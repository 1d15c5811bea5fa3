"""The examples in ``msgtrace/examples/`` run as documented, offline, in a fresh virtualenv with ``.[msgflux]``.

``basic_tracing`` runs in ``tests/test_integration.py``; here ``agent_tracing`` (msgflux agents with a stand-in
model) traces into a store whose traces, spans, tokens and costs are then read back with the CLI, and
``query_traces`` analyses that store and a generated one. The examples run under an audit hook that refuses and
reports any connection or name lookup beyond loopback. Network: the package index (pip's cache is shared) and
127.0.0.1 only.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from msgtrace.examples.agent_tracing import PRICES, SERVICE, WORKFLOW
from msgtrace.synthetic import MODELS
from tests.conftest import free_port
from tests.test_integration import INSTALL_TIMEOUT, REPO, run

pytestmark = pytest.mark.slow

EXAMPLES = ("basic_tracing", "agent_tracing", "query_traces")

# Runs the module argv[1] as __main__ with argv[2:], refusing (and reporting on stderr) every connection and name
# lookup that is not for loopback: the examples must work with no network but 127.0.0.1.
OFFLINE = """
import runpy, sys

def offline(event, args):
    if event == "socket.connect":
        host = args[1][0] if isinstance(args[1], tuple) else "localhost"  # a str address is a local (unix) socket
    elif event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
    else:
        return
    if host not in (None, "127.0.0.1", "::1", "localhost"):
        print(f"NETWORK ACCESS: {event} {args!r}", file=sys.stderr, flush=True)
        raise ConnectionRefusedError(f"offline: {event} {args!r}")

sys.addaudithook(offline)
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a virtualenv with this checkout and its msgflux extra (msgflux 0.5, msgtrace-sdk 1.2)."""
    path = tmp_path_factory.mktemp("examples") / "venv"
    run(sys.executable, "-m", "venv", path, cwd=path.parent, timeout=120)
    run(path / "bin" / "python", "-m", "pip", "install", "--quiet", f"{REPO}[msgflux]", cwd=path.parent,
        timeout=INSTALL_TIMEOUT)
    return path / "bin"


def example(venv: Path, name: str, *args: str | Path, cwd: Path) -> str:
    """Run ``python -m msgtrace.examples.NAME ARGS`` offline; its stdout."""
    proc = run(venv / "python", "-c", OFFLINE, f"msgtrace.examples.{name}", *args, cwd=cwd)
    assert "NETWORK ACCESS" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def cli(venv: Path, *args: str | Path, data: Path) -> Any:
    return json.loads(run(venv / "msgtrace", *args, "--json", "--data-dir", data, cwd=data.parent).stdout)


@pytest.fixture(scope="module")
def agent_store(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store filled by one run of agent_tracing (3 requests), and the run's stdout."""
    data = tmp_path_factory.mktemp("agent") / "store"
    out = example(venv, "agent_tracing", "--port", str(free_port()), "--data-dir", data, cwd=data.parent)
    return data, out


# --- agent_tracing ------------------------------------------------------------------------------------------------
def test_agent_tracing_prints_answers_list_tree_and_stats(agent_store: tuple[Path, str]) -> None:
    _, out = agent_store
    assert "Order A-1001 is shipped" in out
    assert "Order A-1002 can be refunded in full" in out
    assert "could not look that up (no order A-9999)" in out
    assert "The 3 traces of this run" in out
    assert "├─ triage" in out and "│  └─ chat standin-mini" in out and "└─ resolve" in out  # the tree
    assert re.search(r"standin-pro\s+6\s+0\s", out), out  # the per-model stats: 6 calls, no error
    assert re.search(r"standin-mini\s+3\s+0\s", out), out


def test_agent_tracing_stores_one_nested_trace_per_request(venv: Path, agent_store: tuple[Path, str]) -> None:
    data, out = agent_store
    printed = re.findall(r"trace ([0-9a-f]{32})", out)
    assert len(printed) == 3, out
    traces = {t["trace_id"]: t for t in cli(venv, "list", data=data)}
    assert set(traces) == set(printed)
    for trace in traces.values():
        assert (trace["workflow"], trace["root_name"], trace["service_name"]) == (WORKFLOW, WORKFLOW, SERVICE)
        assert trace["models"] == ["standin-mini", "standin-pro"]
        assert trace["total_tokens"] > 0 and trace["cost"] > 0
    status, refund, unknown = (traces[t] for t in printed)
    assert [t["error_count"] for t in (status, refund, unknown)] == [0, 0, 1]
    assert [t["user_id"] for t in (status, refund, unknown)] == ["user-42", "user-7", "user-42"]

    shown = cli(venv, "show", refund["trace_id"], data=data)
    spans = shown["spans"]
    by_id = {span["span_id"]: span for span in spans}
    edges = Counter((span["name"], by_id[span["parent_span_id"]]["name"] if span["parent_span_id"] else None)
                    for span in spans)
    assert edges == Counter({
        (WORKFLOW, None): 1, ("triage", WORKFLOW): 1, ("resolve", WORKFLOW): 1,
        ("Triage Agent", "triage"): 1, ("Generator", "triage"): 1, ("chat standin-mini", "triage"): 1,
        ("Support Agent", "resolve"): 1, ("Generator", "resolve"): 2, ("chat standin-pro", "resolve"): 2,
        ("Support Agent Tool Library", "resolve"): 1, ("scatter_gather", "resolve"): 1,
        ("Get Order Status", "resolve"): 1, ("Check Refund Eligibility", "resolve"): 1,
    })
    assert not any(span["orphan"] for span in spans)
    assert {span["depth"] for span in spans} == {0, 1, 2}
    calls = [span for span in spans if span["name"].startswith("chat ")]
    for call in calls:  # the stand-in's usage and cost, as msgtrace extracted them from the SDK's attributes
        assert call["model"] == call["name"].removeprefix("chat ")
        assert call["input_tokens"] > 0 and call["output_tokens"] > 0
        assert call["total_tokens"] == call["input_tokens"] + call["output_tokens"]
        price_in, price_out = PRICES[call["model"]]
        assert call["cost"] == pytest.approx(call["input_tokens"] * price_in + call["output_tokens"] * price_out)
    assert shown["trace"]["total_tokens"] == sum(call["total_tokens"] for call in calls)
    assert shown["trace"]["cost"] == pytest.approx(sum(call["cost"] for call in calls))

    # Triage labelled the first request order_status, so the support agent did not get the refund tool.
    names = [span["name"] for span in cli(venv, "show", status["trace_id"], data=data)["spans"]]
    assert "Get Order Status" in names and "Check Refund Eligibility" not in names

    # The unknown order: the tool raised, msgflux recorded the error on the tool's span, the agent answered.
    failed = [span for span in cli(venv, "show", unknown["trace_id"], data=data)["spans"]
              if span["status_code"] == "ERROR"]
    assert [(span["name"], span["status_message"]) for span in failed] == [("Get Order Status", "no order A-9999")]
    assert {event["name"] for event in failed[0]["events"]} == {"exception"}


def test_agent_tracing_stats(venv: Path, agent_store: tuple[Path, str]) -> None:
    data, _ = agent_store
    by_model = {row["model"]: row for row in cli(venv, "stats", "--by", "model", data=data)}
    assert {model: (row["count"], row["errors"]) for model, row in by_model.items()} == {
        "standin-mini": (3, 0), "standin-pro": (6, 0)}
    by_workflow = cli(venv, "stats", "--by", "workflow", data=data)
    assert [(row["workflow"], row["count"], row["errors"]) for row in by_workflow] == [(WORKFLOW, 3, 1)]
    total = sum(row["total_tokens"] or 0 for row in by_model.values())
    assert by_workflow[0]["total_tokens"] == total > 0


# --- query_traces -------------------------------------------------------------------------------------------------
def sections(out: str) -> dict[str, list[dict[str, str]]]:
    """The Polars tables query_traces prints, by section title (up to its ':'), as rows of cell texts."""
    found: dict[str, list[dict[str, str]]] = {}
    title = ""
    header: list[str] = []
    for line in out.splitlines():
        if line.startswith("── "):
            title, header = line[3:].split(":")[0], []
            found[title] = []
        elif line.startswith("|"):
            cells = line.strip("|").split("|")
            if not header:
                header = [cell.strip() for cell in cells]
            else:  # the tree's span column keeps its indentation
                found[title].append({name: cell[1:].rstrip() if name == "span" else cell.strip()
                                     for name, cell in zip(header, cells, strict=True)})
    return found


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_query_traces_on_the_agent_store(venv: Path, agent_store: tuple[Path, str]) -> None:
    data, _ = agent_store
    out = example(venv, "query_traces", "--data-dir", data, cwd=data.parent)
    assert f"store: {data}" in out
    tables = sections(out)
    newest = tables["The newest traces"]
    assert len(newest) == 3 and {row["workflow"] for row in newest} == {WORKFLOW}
    assert [row["error_count"] for row in tables["The slowest failed traces"]] == ["1"]
    tree = tables[next(title for title in tables if title.startswith("The slowest trace as a tree"))]
    assert [row["span"] for row in tree][:3] == [WORKFLOW, "  triage", "    Triage Agent"]
    workflows = tables["Per workflow (count = traces)"]
    assert [(row["workflow"], row["count"], row["errors"]) for row in workflows] == [(WORKFLOW, "3", "1")]
    models = {row["model"]: row["count"] for row in tables["Per model (count = LLM calls)"]}
    assert models == {"standin-mini": "3", "standin-pro": "6"}
    failing = tables["The steps that fail most, a Polars LazyFrame"]
    assert [(row["name"], row["spans"], row["errors"]) for row in failing] == [("Get Order Status", "3", "1")]
    spend = tables[next(title for title in tables if title.startswith("Spend per day"))]
    assert sum(number(row["traces"]) for row in spend) == 3  # once each, a run across midnight UTC too
    assert sum(number(row["llm_calls"]) for row in spend) == 9


def test_query_traces_on_a_generated_store(venv: Path, tmp_path: Path) -> None:
    out = example(venv, "query_traces", "--spans", "3000", cwd=tmp_path)
    made = re.search(r"demo store: ([\d,]+) synthetic spans written to (\S+) in", out)
    assert made, out
    assert 3000 <= number(made.group(1)) < 3000 + 512  # whole requests of 512 spans
    assert not Path(made.group(2)).exists()  # deleted at exit
    tables = sections(out)
    newest = tables["The newest traces"]
    assert len(newest) == 5
    assert [row["start_time"] for row in newest] == sorted((row["start_time"] for row in newest), reverse=True)
    failed = tables["The slowest failed traces"]
    assert len(failed) == 3 and all(number(row["error_count"]) >= 1 for row in failed)
    assert [number(row["duration_ms"]) for row in failed] == sorted((number(r["duration_ms"]) for r in failed),
                                                                   reverse=True)
    tree_title = next(title for title in tables if title.startswith("The slowest trace as a tree"))
    assert not tables[tree_title][0]["span"].startswith(" ") and tables[tree_title][1]["span"].startswith("  ")
    workflows = tables["Per workflow (count = traces)"]
    models = tables["Per model (count = LLM calls)"]
    assert {row["model"] for row in models} == {model for _, model, _, _ in MODELS}
    spend = tables[next(title for title in tables if title.startswith("Spend per day"))]
    assert 7 <= len(spend) <= 8  # spread over the last 7 days
    # Three surfaces over one store agree: the stats view, the LazyFrame and the SQL.
    assert sum(number(row["traces"]) for row in spend) == sum(number(row["count"]) for row in workflows)
    assert sum(number(row["llm_calls"]) for row in spend) == sum(number(row["count"]) for row in models)
    failing = tables["The steps that fail most, a Polars LazyFrame"]
    assert 1 <= len(failing) <= 10 and all(number(row["errors"]) >= 1 for row in failing)
    errors = [number(row["errors"]) for row in failing]
    assert errors == sorted(errors, reverse=True)


# --- the command lines --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLES)
def test_help(venv: Path, tmp_path: Path, name: str) -> None:
    out = run(venv / "python", "-m", f"msgtrace.examples.{name}", "--help", cwd=tmp_path).stdout
    assert out.startswith(f"usage: python -m msgtrace.examples.{name} ")
    assert "--data-dir" in out


@pytest.mark.parametrize(("name", "args", "status", "message"), [
    ("agent_tracing", ["--requests", "0"], 2, "argument --requests: expected 1 to 100, got 0"),
    ("agent_tracing", ["--port", "http"], 2, "argument --port: expected an integer, got 'http'"),
    ("agent_tracing", ["--verbose"], 2, "unrecognized arguments: --verbose"),
    ("query_traces", ["--spans", "lots"], 2, "argument --spans: expected an integer, got 'lots'"),
    ("query_traces", ["--spans", "10", "--data-dir", "store"], 2, "--spans sizes the generated demo store"),
    ("query_traces", ["store"], 2, "unrecognized arguments: store"),
    ("query_traces", ["--data-dir", "no-such-store"], 1, "no msgtrace store at"),
])
def test_a_bad_argument_is_one_line(venv: Path, tmp_path: Path, name: str, args: list[str], status: int,
                                    message: str) -> None:
    proc = run(venv / "python", "-m", f"msgtrace.examples.{name}", *args, cwd=tmp_path, check=False)
    assert proc.returncode == status, proc
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"python -m msgtrace.examples.{name}: error: ")
    assert message in proc.stderr
