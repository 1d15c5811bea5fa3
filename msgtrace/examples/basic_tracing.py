"""Trace a small LLM workflow into a local msgtrace store, offline, then query it.

    pip install msgtrace-sdk
    python -m msgtrace.examples.basic_tracing [--port 4321] [--data-dir DIR]

:func:`msgtrace.integration.quick_start` starts (or reuses) ``msgtrace ingest`` and points the msgtrace SDK at it,
*before* ``msgtrace.sdk`` is imported. The workflow is a flow span ``support_request_flow`` with a module
``answer_question`` and, inside it, an LLM call ``chat gpt-4o-mini`` to a stand-in model (no API, no network)
that carries the gen_ai model, token and cost attributes. The trace list and the trace's tree are then read
back from the store with ``msgtrace.open``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from typing import Any

from msgtrace.examples import ArgumentParser, bounded_int

WORKFLOW = "support_request_flow"
MODEL = "gpt-4o-mini"
PRICE_PER_TOKEN = {"input": 0.15 / 1e6, "output": 0.60 / 1e6}  # USD


def fake_model(prompt: str) -> dict[str, Any]:
    """Stand-in for an LLM API call: a canned answer and its token usage."""
    time.sleep(0.02)
    answer = "You can reset your password from Settings → Security → Reset password."
    return {"text": answer, "model": MODEL, "input_tokens": len(prompt.split()) * 4,
            "output_tokens": len(answer.split()) * 2, "finish_reason": "stop"}


def run_workflow(question: str) -> tuple[str, str]:
    """Answer ``question`` under a traced flow; returns the answer and the trace id."""
    from opentelemetry.trace import use_span

    from msgtrace.sdk import MsgTraceAttributes as Attrs
    from msgtrace.sdk import Spans

    with Spans.init_flow(WORKFLOW) as flow, use_span(flow):
        Attrs.set_workflow_name(WORKFLOW)
        Attrs.set_user_id("user-42")
        Attrs.set_session_id("session-7f3a")
        with Spans.init_module("answer_question") as module, use_span(module):
            Attrs.set_module_name("answer_question")
            Attrs.set_module_type("agent")
            prompt = f"You are a support agent. Answer briefly.\nUser: {question}"
            with Spans.span_context(f"chat {MODEL}") as call, use_span(call):
                Attrs.set_operation_name("chat")
                Attrs.set_system("openai")
                Attrs.set_model(MODEL)
                Attrs.set_temperature(0.2)
                Attrs.set_prompt(prompt)
                reply = fake_model(prompt)
                Attrs.set_response_model(reply["model"])
                Attrs.set_finish_reason(reply["finish_reason"])
                Attrs.set_usage(input_tokens=reply["input_tokens"], output_tokens=reply["output_tokens"])
                Attrs.set_cost(input_cost=reply["input_tokens"] * PRICE_PER_TOKEN["input"],
                               output_cost=reply["output_tokens"] * PRICE_PER_TOKEN["output"])
                Attrs.set_completion(reply["text"])
        return reply["text"], format(flow.get_span_context().trace_id, "032x")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser("python -m msgtrace.examples.basic_tracing", __doc__)  # one-line usage errors
    parser.add_argument("--port", type=bounded_int(1, 65535), default=4321, help="msgtrace ingest port (default 4321)")
    parser.add_argument("--data-dir", default=None, help="store directory (default: MSGTRACE_DATA_DIR or "
                                                         "~/.local/share/msgtrace)")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("msgtrace.sdk") is None:
        sys.exit("this example needs the msgtrace SDK: pip install msgtrace-sdk")

    from msgtrace import render
    from msgtrace.integration import quick_start

    observer = quick_start(port=args.port, data_dir=args.data_dir)  # before msgtrace.sdk is imported
    print(f"msgtrace: {observer.url} ({'started' if observer.started else 'reused'}), data in {observer.data_dir}")
    answer, trace_id = run_workflow("How do I reset my password?")
    print(f"answer: {answer}\ntrace {trace_id} of workflow {WORKFLOW}")
    if not observer.flush():
        sys.exit("could not export the spans to msgtrace (see the messages above)")
    if observer.started:
        observer.stop()  # the server writes its buffered spans to Parquet as it shuts down
    store = observer.store
    summary = _wait_for_trace(store, trace_id)
    render.trace_list(render.rows(store.traces_result(limit=5).table), limit=5, offset=0)
    spans = [render.simplify_span(span) for span in render.rows(store.tree_result(trace_id).table)]
    render.trace_tree(render.plain(summary), spans)
    observer.stop()


def _wait_for_trace(store: Any, trace_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The trace's summary once its 3 spans are in the store (a reused server publishes them at its next flush)."""
    from msgtrace.query.store import TraceNotFound

    deadline = time.monotonic() + timeout
    while True:
        store.refresh()
        with contextlib.suppress(TraceNotFound):
            summary = store.trace_summary(trace_id)
            if (summary.get("span_count") or 0) >= 3:
                return summary
        if time.monotonic() > deadline:
            sys.exit(f"trace {trace_id} did not reach {store.data_dir} within {timeout:g} s")
        time.sleep(0.25)


if __name__ == "__main__":
    main()
