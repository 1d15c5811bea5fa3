"""Trace msgflux agents into a local msgtrace store, offline, then list, show and summarise the traces.

    pip install ".[msgflux]"        # msgtrace, msgflux 0.5 and the msgtrace SDK
    python -m msgtrace.examples.agent_tracing [--port 4321] [--data-dir DIR] [--requests 3]

An order-support workflow answers customer requests; each request is one trace:

    order_support_flow              the workflow: a msgtrace SDK flow span with workflow, user and session ids
    ├─ triage                       step 1: the msgflux agent triage_agent labels the request
    │  ├─ Triage Agent, Generator   msgflux's own module spans
    │  └─ chat standin-mini         the model call: model, tokens, cost
    └─ resolve                      step 2: the msgflux agent support_agent answers, calling tools
       ├─ Support Agent, Generator, chat standin-pro           the model asks for tool calls
       ├─ Support Agent Tool Library, scatter_gather, Get Order Status, Check Refund Eligibility
       └─ Generator, chat standin-pro                          the answer

The agents, their tool calls and their spans are msgflux's own code (msgflux.nn.Agent); only the model is a
stand-in: StandInChatModel, a msgflux chat-completion model class (the interface msgflux's providers implement)
that answers from a script instead of an API and records each call as a "chat <model>" span with token counts and
a cost at made-up prices, as an instrumented model client would. Nothing leaves the machine but the spans, sent to
msgtrace on 127.0.0.1.

msgflux 0.5 on msgtrace-sdk 1.2 does not make its spans current, and a msgflux module called while a recording span
is current fails ("Spans.init_module() takes 1 positional argument but 2 were given"). So each step hands its span
to msgflux as a non-recording parent, the way a trace continues from an incoming traceparent header: msgflux starts
its spans as children of the step, in the request's trace. The third request asks about an unknown order: the tool
fails, msgflux records the error on the tool's span, and the agent still answers.
"""

# No `from __future__ import annotations`: msgflux builds the tools' JSON schemas from their real annotations.
import contextlib
import datetime as dt
import importlib.util
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from msgtrace.examples import ArgumentParser, bounded_int

WORKFLOW = "order_support_flow"
SERVICE = "order-support"
TRIAGE_MODEL, SUPPORT_MODEL = "standin-mini", "standin-pro"
# USD per input and per output token: made up (the stand-in costs nothing), in the range of real small/large models
PRICES = {TRIAGE_MODEL: (0.15e-6, 0.60e-6), SUPPORT_MODEL: (2.50e-6, 10.0e-6)}

ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "UPS", "arrives": "tomorrow", "refundable": False},
    "A-1002": {"status": "delivered", "carrier": "DHL", "arrives": "delivered 2 days ago", "refundable": True},
}
REQUESTS = (  # (user id, question), used in turn
    ("user-42", "Where is my order A-1001?"),
    ("user-7", "Order A-1002 arrived broken. Can I get a refund?"),
    ("user-42", "What happened to my order A-9999?"),
)
ORDER_ID = re.compile(r"\b[A-Z]-\d{4}\b")
_call_ids = itertools.count(1)


# --- the tools the support agent may call (plain functions: msgflux reads their signature and docstring) --------
def get_order_status(order_id: str) -> str:
    """Look up where an order is, by its id (like A-1001)."""
    order = ORDERS.get(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    return f"Order {order_id} is {order['status']} ({order['carrier']}, {order['arrives']})."


def check_refund_eligibility(order_id: str) -> str:
    """Tell whether an order can be refunded, by its id (like A-1001)."""
    order = ORDERS.get(order_id)
    if order is None:
        raise LookupError(f"no order {order_id}")
    if order["refundable"]:
        return f"Order {order_id} can be refunded in full; a return label is on its way."
    return f"Order {order_id} cannot be refunded before it is delivered."


# --- the stand-in model -------------------------------------------------------------------------------------------
def scripted_reply(messages: list[dict[str, Any]], tools: list[str]) -> tuple[str, list[tuple[str, dict[str, str]]]]:
    """What the stand-in model answers: a text, or tool calls (name, arguments) when it wants tool results first."""
    task = next((m["content"] for m in messages if m.get("role") == "user"), "")
    task = re.sub(r"</?task>", "", str(task))
    results = [str(m.get("content")) for m in messages if m.get("role") == "tool"]
    if not tools and not results:  # the triage agent: a label
        return ("refund" if "refund" in task.lower() else "order_status"), []
    order = ORDER_ID.search(task)
    if not results and order:
        wanted = ["get_order_status", "check_refund_eligibility"]
        return "", [(name, {"order_id": order.group()}) for name in wanted if name in tools]
    failures = [r.split("failed: ", 1)[1] for r in results if "failed: " in r]
    if failures:
        return f"Sorry, I could not look that up ({'; '.join(failures)}). Could you check the order number?", []
    return " ".join(results) or "Could you tell me your order number (like A-1001)?", []


def _tokens(text: str) -> int:
    """Roughly what a tokenizer would count: one token per four characters."""
    return max(1, len(text) // 4)


def call_stand_in(model_id: str, messages: list[dict[str, Any]], system_prompt: str | None = None,
                  tool_definitions: Any = None, **_: Any) -> Any:
    """One chat completion of the stand-in model: a msgflux ModelResponse, traced as ``chat <model_id>``."""
    from msgflux.core.dotdict import dotdict
    from msgflux.models.response import ModelResponse
    from msgflux.models.tool_call_agg import ToolCallAggregator
    from opentelemetry.trace import use_span

    from msgtrace.sdk import MsgTraceAttributes as Attrs
    from msgtrace.sdk import Spans

    schemas = (tool_definitions.schemas or []) if tool_definitions is not None else []
    tools = [schema["function"]["name"] for schema in schemas]
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt += messages
    with Spans.span_context(f"chat {model_id}") as span, use_span(span):
        Attrs.set_operation_name("chat")
        Attrs.set_system("standin")
        Attrs.set_model(model_id)
        Attrs.set_prompt(json.loads(json.dumps(prompt, default=str)))
        text, calls = scripted_reply(messages, tools)
        wire_calls = [{"id": f"call_{next(_call_ids)}", "type": "function",
                       "function": {"name": name, "arguments": json.dumps(args)}} for name, args in calls]
        input_tokens = _tokens(json.dumps(prompt, default=str) + json.dumps(schemas))
        output_tokens = _tokens(text + json.dumps(wire_calls))
        time.sleep(0.02 + 0.001 * output_tokens)  # a model takes longer for longer answers
        Attrs.set_response_model(model_id)
        Attrs.set_finish_reason("tool_calls" if calls else "stop")
        Attrs.set_usage(input_tokens=input_tokens, output_tokens=output_tokens)
        in_price, out_price = PRICES[model_id]
        Attrs.set_cost(input_cost=input_tokens * in_price, output_cost=output_tokens * out_price)
        if calls:
            Attrs.set_tool_callings(wire_calls)
        else:
            Attrs.set_completion(text)

    response = ModelResponse()
    if calls:
        aggregator = ToolCallAggregator()
        for index, call in enumerate(wire_calls):
            aggregator.process(index, call["id"], call["function"]["name"], call["function"]["arguments"])
        response.set_response_type("tool_call")
        response.add(aggregator)
    else:
        response.set_response_type("text_generation")
        response.add(text)
    response.set_metadata(dotdict(finish_reason="tool_calls" if calls else "stop", usage={
        "prompt_tokens": input_tokens, "completion_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens}))
    return response


def stand_in_model(model_id: str) -> Any:
    """A msgflux chat model (msgflux is imported here, after quick_start) that answers from
    :func:`scripted_reply`: no API, no key, no network."""
    from msgflux.models.base import BaseModel
    from msgflux.models.types import ChatCompletionModel

    class StandInChatModel(BaseModel, ChatCompletionModel):  # type: ignore[misc]
        provider = "standin"

        def __init__(self, model_id: str) -> None:
            self.model_id = model_id
            self._initialize()

        def _initialize(self) -> None:
            pass  # no client to build

        def __call__(self, **kwargs: Any) -> Any:
            return call_stand_in(self.model_id, **kwargs)

    return StandInChatModel(model_id)


# --- the workflow -------------------------------------------------------------------------------------------------
def build_agents() -> tuple[Any, Any]:
    """The two msgflux agents: triage (no tools) and support (two tools)."""
    import msgflux.nn as nn

    triage = nn.Agent("triage_agent", stand_in_model(TRIAGE_MODEL),
                      instructions="Label the customer request: order_status or refund. Answer the label only.")
    support = nn.Agent("support_agent", stand_in_model(SUPPORT_MODEL),
                       instructions="Answer the customer in one or two sentences, using the tools.",
                       tools=[get_order_status, check_refund_eligibility])
    return triage, support


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """A step of the workflow: a module span, handed to msgflux as the parent of the spans it starts inside."""
    from opentelemetry.trace import NonRecordingSpan, use_span

    from msgtrace.sdk import MsgTraceAttributes as Attrs
    from msgtrace.sdk import Spans

    with Spans.init_module(name) as span, use_span(span):
        Attrs.set_module_name(name)
        Attrs.set_module_type("step")
        # msgflux 0.5 fails under a recording current span but parents its spans on a non-recording one
        with use_span(NonRecordingSpan(span.get_span_context())):
            yield


def run_request(triage: Any, support: Any, user_id: str, question: str) -> tuple[str, str]:
    """Answer one customer request under a traced workflow; returns the answer and the trace id."""
    from opentelemetry.trace import use_span

    from msgtrace.sdk import MsgTraceAttributes as Attrs
    from msgtrace.sdk import Spans

    with Spans.init_flow(WORKFLOW) as flow, use_span(flow):
        Attrs.set_workflow_name(WORKFLOW)
        Attrs.set_user_id(user_id)
        Attrs.set_session_id(f"session-{user_id}")
        with step("triage"):
            label = str(triage(question)).strip()
        with step("resolve"):  # only a refund request gets the refund tool
            blocked = [] if label == "refund" else ["check_refund_eligibility"]
            answer = str(support(question, tool_filter={"block": blocked}))
        return answer, format(flow.get_span_context().trace_id, "032x")


# --- the command --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser("python -m msgtrace.examples.agent_tracing", __doc__)
    parser.add_argument("--port", type=bounded_int(1, 65535), default=4321,
                        help="msgtrace ingest port (default 4321; a server running there is reused)")
    parser.add_argument("--data-dir", default=None,
                        help="store directory (default: MSGTRACE_DATA_DIR or ~/.local/share/msgtrace)")
    parser.add_argument("--requests", type=bounded_int(1, 100), default=len(REQUESTS),
                        help=f"customer requests to answer, one trace each (default {len(REQUESTS)})")
    args = parser.parse_args(argv)
    missing = [name for name in ("msgflux", "msgtrace.sdk") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"this example needs {' and '.join(missing)}: pip install 'msgtrace[msgflux]' "
                 "(from a checkout: pip install '.[msgflux]')")

    from msgtrace import render
    from msgtrace.integration import QuickStartError, quick_start

    os.environ.setdefault("MSGTRACE_SERVICE_NAME", SERVICE)  # the SDK reads it with the settings quick_start sets
    try:
        observer = quick_start(port=args.port, data_dir=args.data_dir)  # before msgflux / msgtrace.sdk is imported
    except QuickStartError as e:
        sys.exit(f"msgtrace: {e}")
    print(f"msgtrace: {observer.url} ({'started' if observer.started else 'reused'}), data in {observer.data_dir}")
    triage, support = build_agents()
    started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    trace_ids = []
    for user_id, question in itertools.islice(itertools.cycle(REQUESTS), args.requests):
        answer, trace_id = run_request(triage, support, user_id, question)
        trace_ids.append(trace_id)
        print(f"{user_id}: {question}\n  agent: {answer}\n  trace {trace_id}")
    if not observer.flush():
        sys.exit("could not export the spans to msgtrace (see the messages above)")
    if observer.started:
        observer.stop()  # the server writes its buffered spans to Parquet as it shuts down
    store = observer.store
    summaries = _wait_for_traces(store, trace_ids)

    print(f"\nThe {len(trace_ids)} traces of this run (store.traces):")
    limit = len(trace_ids) + 1  # one more than expected: render.trace_list offers to page only when a page is full
    render.trace_list(render.rows(store.traces_result(workflow=WORKFLOW, since=started, limit=limit).table),
                      limit=limit, offset=0)
    richest = max(summaries, key=lambda s: (s.get("span_count") or 0, s["trace_id"]))
    print("\nThe largest one as a tree (store.tree):")
    spans = [render.simplify_span(span) for span in render.rows(store.tree_result(richest["trace_id"]).table)]
    render.trace_tree(render.plain(richest), spans)
    print("\nPer model (store.stats):")
    render.stats_table(render.rows(store.stats_result("model", since=started).table), "model")
    observer.stop()
    print(f"\nNext: msgtrace list --data-dir {observer.data_dir}\n"
          f"      python -m msgtrace.examples.query_traces --data-dir {observer.data_dir}")


def _wait_for_traces(store: Any, trace_ids: list[str], timeout: float = 15.0) -> list[dict[str, Any]]:
    """The summaries of the traces once each has its root, the workflow span, which ends (and is exported) last.

    A server started here has written everything when it stopped; a reused one publishes at its next flush.
    """
    deadline = time.monotonic() + timeout
    while True:
        store.refresh()
        found = store.query("SELECT * FROM traces WHERE list_contains($ids, trace_id) AND root_name = $root",
                            {"ids": trace_ids, "root": WORKFLOW}).rows()
        if len(found) == len(trace_ids):
            return found
        if time.monotonic() > deadline:
            sys.exit(f"{len(trace_ids) - len(found)} of {len(trace_ids)} traces did not reach {store.data_dir} "
                     f"within {timeout:g} s")
        time.sleep(0.25)


if __name__ == "__main__":
    main()
