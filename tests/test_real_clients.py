"""Real clients against the real server: the OpenTelemetry Python SDK and the ``msgtrace-sdk`` package from PyPI.

Each test drives a real client at a ``msgtrace ingest`` subprocess on 127.0.0.1, records what the client itself
says it created (trace/span ids, parents, names, kinds, statuses, attributes, events), then reads the Parquet files
back with plain DuckDB (no msgtrace query code) and checks that every span is stored exactly once and faithfully.

``msgtrace-sdk`` ships a top-level ``msgtrace`` package that would shadow ours, so it is never installed into the
test environment: a session fixture ``pip install --target``s it into a cache directory and the client program runs
in a subprocess with that directory first on ``PYTHONPATH``.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.conftest import Server, parquet_glob

SDK_REQUIREMENT = "msgtrace-sdk==1.2.*"
SDK_CACHE = Path(os.environ.get("MSGTRACE_TEST_SDK_CACHE", Path.home() / ".cache" / "msgtrace-tests" / "sdk-1.2"))
WAIT_SECONDS = 15.0  # upper bound for spans to reach Parquet after the client's flush (flush interval is 0.2 s)

ROW_SQL = """
SELECT trace_id, span_id, parent_span_id, name, kind, status_code, status_message,
       start_time_unix_nano, end_time_unix_nano, service_name, scope_name, scope_version,
       operation, provider, model, input_tokens, output_tokens, total_tokens, cost,
       user_id, session_id, agent_name, tool_name, workflow_name,
       attributes, events, links, resource_attributes
FROM read_parquet(?, hive_partitioning=true)
"""


# ---------------------------------------------------------------------------------------------------------------------
# What a client created, as plain JSON-able dicts. These two functions are also pasted into the msgtrace-sdk client
# program (see SDK_CLIENT), so both clients are described the same way.


def _plain(value):  # noqa: ANN001, ANN202 - pasted into the client program as is
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def describe_span(span):  # noqa: ANN001, ANN201 - pasted into the client program as is
    ctx, parent = span.context, span.parent
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "status_code": span.status.status_code.name,
        "status_message": span.status.description or None,
        "start": span.start_time,
        "end": span.end_time,
        "scope": [span.instrumentation_scope.name, span.instrumentation_scope.version],
        "attributes": {k: _plain(v) for k, v in (span.attributes or {}).items()},
        "events": [
            {"name": e.name, "time": e.timestamp, "attributes": {k: _plain(v) for k, v in (e.attributes or {}).items()}}
            for e in span.events
        ],
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x"),
             "attributes": {k: _plain(v) for k, v in (link.attributes or {}).items()}}
            for link in span.links
        ],
        "resource": {k: _plain(v) for k, v in span.resource.attributes.items()},
    }


# ---------------------------------------------------------------------------------------------------------------------
# Reading back and comparing


def count_stored(data_dir: Path) -> int:
    try:
        return duckdb.connect().execute(
            "SELECT count(*) FROM read_parquet(?, hive_partitioning=true)", [parquet_glob(data_dir)]
        ).fetchall()[0][0]
    except duckdb.Error:  # no file yet (or, defensively, one being replaced)
        return 0


def wait_for_spans(data_dir: Path, expected: int, timeout: float = WAIT_SECONDS) -> int:
    """Poll the Parquet files until ``expected`` spans are there (or more, or the time is up); return the count."""
    deadline = time.monotonic() + timeout
    while True:
        n = count_stored(data_dir)
        if n >= expected or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def stored_rows(data_dir: Path) -> list[dict[str, Any]]:
    cur = duckdb.connect().execute(ROW_SQL, [parquet_glob(data_dir)])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _typed_mismatch(where: str, key: str, want: Any, got: dict[str, Any] | None) -> str | None:
    """Compare one client attribute value with the stored ``attr_value`` struct; return a message if they differ."""
    if got is None:
        return f"{where}: attribute {key!r} missing"
    if isinstance(want, bool):
        ok = got["type"] == "bool" and got["bool"] is want
    elif isinstance(want, int):
        ok = got["type"] == "int" and got["int"] == want
    elif isinstance(want, float):
        ok = got["type"] == "double" and got["double"] == want
    elif isinstance(want, str):
        ok = got["type"] == "string" and got["str"] == want
    elif isinstance(want, list):
        ok = got["type"] == "array" and got["json"] is not None and json.loads(got["json"]) == want
    else:
        return f"{where}: attribute {key!r} has an unexpected client type {type(want)}"
    return None if ok else f"{where}: attribute {key!r}: sent {want!r}, stored {got!r}"


def _attr_mismatches(where: str, want: dict[str, Any], got: dict[str, Any] | None) -> list[str]:
    got = got or {}
    problems = [_typed_mismatch(where, k, v, got.get(k)) for k, v in want.items()]
    return [p for p in problems if p]


def assert_stored_exactly(rows: list[dict[str, Any]], spans: list[dict[str, Any]], service_name: str) -> dict:
    """Every client span stored exactly once, nothing else stored, and each stored row equal to what was sent."""
    counts = Counter((r["trace_id"], r["span_id"]) for r in rows)
    duplicates = {k: c for k, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} spans stored more than once, e.g. {list(duplicates.items())[:5]}"
    sent = {(s["trace_id"], s["span_id"]): s for s in spans}
    assert len(sent) == len(spans), "the client reported the same span twice"
    missing = sent.keys() - counts.keys()
    extra = counts.keys() - sent.keys()
    assert not missing, f"{len(missing)} of {len(sent)} spans never stored, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} stored spans the client never made, e.g. {sorted(extra)[:5]}"

    by_id = {(r["trace_id"], r["span_id"]): r for r in rows}
    problems: list[str] = []
    for key, s in sent.items():
        r = by_id[key]
        where = f"span {s['name']!r} {key[1]}"
        for column, want in (("parent_span_id", s["parent_span_id"]), ("name", s["name"]), ("kind", s["kind"]),
                             ("status_code", s["status_code"]), ("start_time_unix_nano", s["start"]),
                             ("end_time_unix_nano", s["end"]), ("service_name", service_name),
                             ("scope_name", s["scope"][0]), ("scope_version", s["scope"][1] or None)):
            if r[column] != want:
                problems.append(f"{where}: {column}: sent {want!r}, stored {r[column]!r}")
        if (r["status_message"] or None) != s["status_message"]:
            problems.append(f"{where}: status_message: sent {s['status_message']!r}, stored {r['status_message']!r}")
        problems += _attr_mismatches(where, s["attributes"], r["attributes"])
        problems += _attr_mismatches(f"{where} resource", s["resource"], r["resource_attributes"])
        if len(r["attributes"] or {}) != len(s["attributes"]):
            problems.append(f"{where}: attribute keys: sent {sorted(s['attributes'])}, stored {sorted(r['attributes'])}")
        events = r["events"] or []
        if [(e["name"], e["time_unix_nano"]) for e in events] != [(e["name"], e["time"]) for e in s["events"]]:
            problems.append(f"{where}: events: sent {s['events']!r}, stored {events!r}")
        else:
            for i, (want_e, got_e) in enumerate(zip(s["events"], events, strict=True)):
                problems += _attr_mismatches(f"{where} event {i}", want_e["attributes"], got_e["attributes"])
        links = r["links"] or []
        if [(x["trace_id"], x["span_id"]) for x in links] != [(x["trace_id"], x["span_id"]) for x in s["links"]]:
            problems.append(f"{where}: links: sent {s['links']!r}, stored {links!r}")
        else:
            for i, (want_l, got_l) in enumerate(zip(s["links"], links, strict=True)):
                problems += _attr_mismatches(f"{where} link {i}", want_l["attributes"], got_l["attributes"])
    assert not problems, f"{len(problems)} differences, first ones:\n" + "\n".join(problems[:15])
    return by_id


# ---------------------------------------------------------------------------------------------------------------------
# 1. The OpenTelemetry Python SDK with its OTLP/HTTP protobuf exporter, in this process


class RecordingOTLPExporter(OTLPSpanExporter):
    """The real OTLP/HTTP exporter, remembering how each export went (BatchSpanProcessor only logs failures)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[tuple[int, SpanExportResult]] = []

    def export(self, spans: Any) -> SpanExportResult:
        result = super().export(spans)
        self.results.append((len(spans), result))
        return result


N_TRACES = 24
STEPS = 3


def make_otel_traces(tracer: trace_api.Tracer) -> None:
    """24 nested traces of 12-13 spans: every span kind, every attribute type, events, links, OK and ERROR."""
    for t in range(N_TRACES):
        with tracer.start_as_current_span(
            "GET /orders/{id}", kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET", "http.response.status_code": 200, "trace.index": t,
                "sample.ratio": 0.25 + t, "cache.hit": t % 2 == 0, "big.int": 2**62 - t, "negative.int": -7,
                "tags": ("orders", "read", "résumé ✓"), "shards": (1, 2, 3 + t), "weights": (0.5, 1.25, -3.0),
                "flags": (True, False, True), "empty.str": "",
            },
        ) as root:
            root.add_event("request.received", {"bytes": 512 + t, "client": "curl/8", "tls": True})
            for c in range(STEPS):
                with tracer.start_as_current_span(f"step {c}", attributes={"step.index": c}) as step:
                    step.add_event("step.started", {"index": c, "labels": ("a", "b"), "ratio": c / 4})
                    with tracer.start_as_current_span(
                        "SELECT orders", kind=SpanKind.CLIENT,
                        attributes={"db.system": "postgresql", "db.rows": c * 10 + t, "db.query.text": "SELECT 1"},
                    ) as query:
                        query.set_status(Status(StatusCode.OK))
                    with tracer.start_as_current_span("publish order", kind=SpanKind.PRODUCER) as publish:
                        publish.set_attribute("messaging.destination.name", f"orders-{c}")
                    with tracer.start_as_current_span(
                        "consume order", kind=SpanKind.CONSUMER,
                        links=[Link(publish.get_span_context(), {"messaging.batch": True, "link.index": c})],
                    ):
                        pass
            if t % 3 == 0:
                try:
                    with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as charge:
                        charge.set_attribute("payment.amount", 12.5)
                        raise ValueError(f"card declined #{t}")  # recorded as an exception event, status ERROR
                except ValueError:
                    pass
            if t % 4 == 0:
                with tracer.start_as_current_span("validate") as bad:
                    try:
                        raise KeyError("order_id")
                    except KeyError as exc:
                        bad.record_exception(exc, attributes={"validation.field": "order_id"})
                        bad.set_status(Status(StatusCode.ERROR, "missing order_id"))


def expected_otel_span_count() -> int:
    charged = len([t for t in range(N_TRACES) if t % 3 == 0])
    validated = len([t for t in range(N_TRACES) if t % 4 == 0])
    return N_TRACES * (1 + STEPS * 4) + charged + validated


@pytest.mark.parametrize(
    "compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate], ids=lambda c: c.value
)
def test_opentelemetry_sdk_exporter(server: Server, data_dir: Path, compression: Compression) -> None:
    service = f"otel-sdk-{compression.value}"
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
    exporter = RecordingOTLPExporter(endpoint=f"{server.url}/v1/traces", compression=compression, timeout=10,
                                     session=session)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # Small batches so one run makes several requests to the server.
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=100, schedule_delay_millis=50))
    try:
        make_otel_traces(provider.get_tracer("tests.real_clients", "1.2.3"))
        assert provider.force_flush(timeout_millis=15_000)
    finally:
        provider.shutdown()

    finished: list[ReadableSpan] = list(memory.get_finished_spans())
    spans = [describe_span(s) for s in finished]
    expected = expected_otel_span_count()
    assert len(spans) == expected
    assert sum(n for n, _ in exporter.results) == expected
    assert all(r is SpanExportResult.SUCCESS for _, r in exporter.results), exporter.results
    assert len(exporter.results) >= 3

    # The periodic flush alone gets everything to Parquet; stopping the server afterwards must not add duplicates.
    assert wait_for_spans(data_dir, expected) == expected, server.log.read_text()[-2000:]
    assert server.stop() == 0
    by_id = assert_stored_exactly(stored_rows(data_dir), spans, service)

    # A few spot checks of the columns, independent of the generic comparison above.
    roots = [r for r in by_id.values() if r["parent_span_id"] is None]
    assert len(roots) == N_TRACES == len({r["trace_id"] for r in by_id.values()})
    assert {r["name"] for r in roots} == {"GET /orders/{id}"} and {r["kind"] for r in roots} == {"SERVER"}
    assert all(len(r["trace_id"]) == 32 and len(r["span_id"]) == 16 for r in by_id.values())
    assert Counter(r["kind"] for r in by_id.values()) == Counter(s["kind"] for s in spans)
    root = min(roots, key=lambda r: r["attributes"]["trace.index"]["int"])
    assert root["attributes"]["tags"]["type"] == "array"
    assert json.loads(root["attributes"]["tags"]["json"]) == ["orders", "read", "résumé ✓"]
    assert json.loads(root["attributes"]["weights"]["json"]) == [0.5, 1.25, -3.0]
    assert root["attributes"]["sample.ratio"] == {**root["attributes"]["sample.ratio"], "type": "double", "double": 0.25}
    assert root["resource_attributes"]["deployment.environment"]["str"] == "test"
    charges = [r for r in by_id.values() if r["name"] == "charge card"]
    assert charges and all(r["status_code"] == "ERROR" for r in charges)
    for r in charges:
        (event,) = r["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"]["str"] == "ValueError"
        assert event["attributes"]["exception.message"]["str"].startswith("card declined #")
        assert "Traceback" in event["attributes"]["exception.stacktrace"]["str"]
    validations = [r for r in by_id.values() if r["name"] == "validate"]
    assert validations and {(r["status_code"], r["status_message"]) for r in validations} == {
        ("ERROR", "missing order_id")}
    assert {r["status_code"] for r in by_id.values() if r["name"] == "SELECT orders"} == {"OK"}
    assert {r["status_code"] for r in by_id.values() if r["name"] == "publish order"} == {"UNSET"}


# ---------------------------------------------------------------------------------------------------------------------
# 2. msgtrace-sdk 1.2.x from PyPI, in a subprocess (its top-level ``msgtrace`` package would shadow ours)


@pytest.fixture(scope="session")
def msgtrace_sdk_dir() -> Path:
    """``msgtrace-sdk`` 1.2.x unpacked (no deps) into a cache directory, installed once and then reused."""
    marker = SDK_CACHE / "msgtrace" / "sdk" / "__init__.py"
    if not marker.exists():
        SDK_CACHE.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="sdk-", dir=SDK_CACHE.parent))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                 "--no-deps", "--target", str(staging), SDK_REQUIREMENT],
                capture_output=True, text=True, timeout=180,
            )
            assert proc.returncode == 0, f"pip install {SDK_REQUIREMENT} failed:\n{proc.stdout}\n{proc.stderr}"
            try:
                staging.rename(SDK_CACHE)  # atomic; loses harmlessly to a concurrent run that got there first
            except OSError:
                if not marker.exists():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    assert marker.exists()
    return SDK_CACHE


SDK_CLIENT_BODY = r'''
import asyncio
import json
import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import msgtrace
import msgtrace.version  # the SDK's own version module (msgtrace.__version__ is the store's when both are installed)
import msgtrace.sdk  # reads MSGTRACE_* now and installs its own global TracerProvider with an OTLP exporter
from msgtrace.sdk import (MsgTraceAttributes as A, Spans, add_flow_step_event, add_model_request_event,
                          add_model_response_event, add_tool_call_event, add_tool_result_event)
from msgtrace.sdk.tracer import tracer_manager

provider = trace.get_tracer_provider()
memory = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(memory))


def active(span):
    """Make ``span`` current so the SDK's helpers (and child spans) see it; the SDK itself records errors."""
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def support_flow(i):
    with Spans.init_flow("support_request_flow", **{"request.index": i}) as flow, active(flow):
        A.set_workflow_name("support_request")
        A.set_workflow_id(f"wf-{i}")
        A.set_user_id(f"user-{i}")
        A.set_session_id(f"session-{i}")
        add_flow_step_event(1, note="start")
        with Spans.init_module("intent_classifier") as module, active(module):
            A.set_module_name("intent_classifier")
            A.set_module_type("Classifier")
        with Spans.init_module("support_agent") as agent, active(agent):
            A.set_agent_name("support_agent")
            A.set_module_type("Agent")
            with Spans.span_context("chat gpt-fake", **{"llm.attempt": 1}) as llm, active(llm):
                A.set_operation_name("chat")
                A.set_provider_name("openai")
                A.set_model("gpt-fake")
                A.set_temperature(0.2)
                add_model_request_event(model="gpt-fake", message_count=2)
                A.set_usage(input_tokens=100 + i, output_tokens=20 + i)
                A.set_cost(input_cost=0.001 * (i + 1), output_cost=0.002 * (i + 1))
                A.set_finish_reason("stop")
                add_model_response_event("text", length=42)
            with Spans.span_context("tool get_weather") as tool, active(tool):
                A.set_operation_name("tool")
                A.set_tool_name("get_weather")
                A.set_tool_call_id(f"call-{i}")
                A.set_tool_call_arguments({"city": "Paris"})
                add_tool_call_event("get_weather", f"call-{i}", {"city": "Paris"})
                A.set_tool_response({"temp_c": 21})
                add_tool_result_event("get_weather", f"call-{i}", result="sunny")
            try:
                with Spans.span_context("tool broken_tool") as broken, active(broken):
                    A.set_tool_name("broken_tool")
                    raise RuntimeError(f"tool failed {i}")
            except RuntimeError:
                pass
        if i == 2:
            raise ValueError("flow aborted")


async def batch_flow():
    async with Spans.ainit_flow("async_batch_flow") as flow:
        with active(flow):
            A.set_workflow_name("batch")

            async def item(k):
                async with Spans.ainit_module(f"item_{k}") as module:
                    with active(module):
                        A.set_custom("item.payload", {"k": k})
                        await asyncio.sleep(0.001 * (3 - k))

            await asyncio.gather(*(item(k) for k in range(3)))


for i in range(3):
    try:
        support_flow(i)
    except ValueError:
        pass
asyncio.run(batch_flow())

ok = provider.force_flush(15_000)
tracer_manager.shutdown()
json.dump({"sdk_file": msgtrace.sdk.__file__, "sdk_version": msgtrace.version.__version__, "flushed": ok,
           "spans": [describe_span(s) for s in memory.get_finished_spans()]}, sys.stdout)
'''


def sdk_client_program() -> str:
    helpers = inspect.getsource(_plain) + "\n\n" + inspect.getsource(describe_span)
    return textwrap.dedent(SDK_CLIENT_BODY).replace("provider = trace", helpers + "\n\nprovider = trace", 1)


@pytest.fixture
def sdk_env(msgtrace_sdk_dir: Path, server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "MSGTRACE_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(msgtrace_sdk_dir), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "MSGTRACE_TELEMETRY_ENABLED": "true",
        "MSGTRACE_OTLP_ENDPOINT": f"{server.url}/api/v1/traces/export",
        "MSGTRACE_SERVICE_NAME": "msgtrace-sdk-real-client",
        "PYTHONWARNINGS": "default",
    })
    return env


def test_msgtrace_sdk_client(server: Server, data_dir: Path, msgtrace_sdk_dir: Path, sdk_env: dict[str, str],
                             tmp_path: Path) -> None:
    program = tmp_path / "msgtrace_sdk_client.py"
    program.write_text(sdk_client_program())
    proc = subprocess.run([sys.executable, str(program)], env=sdk_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Failed to export" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert Path(out["sdk_file"]).resolve().is_relative_to(msgtrace_sdk_dir.resolve()), out["sdk_file"]
    assert out["sdk_version"].startswith("1.2.")
    assert out["flushed"] is True
    spans = out["spans"]

    # The client program made the trees it meant to make (so the checks below check something).
    assert len(spans) == 3 * 6 + 4
    names = {s["span_id"]: s["name"] for s in spans}
    flows = [s for s in spans if s["parent_span_id"] is None]
    assert sorted(s["name"] for s in flows) == ["async_batch_flow"] + ["support_request_flow"] * 3
    assert len({s["trace_id"] for s in spans}) == 4
    for s in spans:
        if s["parent_span_id"] is not None:
            assert s["parent_span_id"] in names, f"{s['name']} has a parent the client never made"
    tree = sorted((names.get(s["parent_span_id"]), s["name"]) for s in spans if s["parent_span_id"])
    assert tree == sorted(
        [("support_request_flow", "intent_classifier"), ("support_request_flow", "support_agent"),
         ("support_agent", "chat gpt-fake"), ("support_agent", "tool get_weather"),
         ("support_agent", "tool broken_tool")] * 3
        + [("async_batch_flow", f"item_{k}") for k in range(3)]
    )

    assert wait_for_spans(data_dir, len(spans)) == len(spans), server.log.read_text()[-2000:]
    assert server.stop() == 0
    by_id = assert_stored_exactly(stored_rows(data_dir), spans, "msgtrace-sdk-real-client")
    rows = list(by_id.values())

    def rows_named(name: str) -> list[dict[str, Any]]:
        return sorted((r for r in rows if r["name"] == name), key=lambda r: r["start_time_unix_nano"])

    llm_ids = set()
    for flow in rows_named("support_request_flow"):
        i = flow["attributes"]["request.index"]["int"]
        assert flow["kind"] == "SERVER" and flow["workflow_name"] == "support_request"
        assert (flow["user_id"], flow["session_id"]) == (f"user-{i}", f"session-{i}")
        assert flow["status_code"] == ("ERROR" if i == 2 else "UNSET")
        assert flow["resource_attributes"]["platform.system"]["type"] == "string"
        in_trace = {r["name"]: r for r in rows if r["trace_id"] == flow["trace_id"]}
        llm = in_trace["chat gpt-fake"]
        llm_ids.add(llm["span_id"])
        assert (llm["operation"], llm["provider"], llm["model"]) == ("chat", "openai", "gpt-fake")
        assert (llm["input_tokens"], llm["output_tokens"], llm["total_tokens"]) == (100 + i, 20 + i, 120 + 2 * i)
        assert llm["cost"] == pytest.approx(0.003 * (i + 1))
        assert llm["parent_span_id"] == in_trace["support_agent"]["span_id"]
        assert in_trace["support_agent"]["agent_name"] == "support_agent"
        assert in_trace["support_agent"]["parent_span_id"] == flow["span_id"]
        assert in_trace["tool get_weather"]["tool_name"] == "get_weather"
        broken = in_trace["tool broken_tool"]
        assert (broken["status_code"], broken["status_message"], broken["tool_name"]) == (
            "ERROR", f"tool failed {i}", "broken_tool")
        (exc,) = [e for e in broken["events"] if e["name"] == "exception"]
        assert exc["attributes"]["exception.type"]["str"] == "RuntimeError"
    assert len(llm_ids) == 3
    (batch,) = rows_named("async_batch_flow")
    assert batch["workflow_name"] == "batch" and batch["kind"] == "SERVER"
    for r in rows:
        if r["name"] not in ("support_request_flow", "async_batch_flow"):
            assert r["workflow_name"] is None, r["name"]
        if r["span_id"] not in llm_ids:
            assert (r["model"], r["input_tokens"], r["output_tokens"], r["cost"]) == (None, None, None, None), r["name"]
