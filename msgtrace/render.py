"""How the CLI shows query results: Rich tables and trees for people, JSON and CSV for scripts.

Everything here takes plain data (Arrow tables from :class:`~msgtrace.query.store.Store`'s ``*_result`` methods, or
rows already converted by :func:`rows`) and writes to stdout; notes and warnings go to stderr so that stdout stays
one clean document. Data is always wrapped in :class:`rich.text.Text`, never interpreted as Rich markup.

JSON conventions (``--json``): timestamps are ISO 8601 UTC strings with nanoseconds and a ``Z``
(``2026-11-24T20:42:04.800691919Z``), dates ``YYYY-MM-DD``, bytes base64, maps objects, non-finite floats
strings (``"NaN"``); in ``show --json`` every attribute map is ``{key: value}`` with the value in its natural JSON
type (arrays and key-value lists parsed back from their JSON text).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from msgtrace.schema import within_window

if TYPE_CHECKING:
    import pyarrow as pa

DIGITS_PER_UNIT = {"s": 0, "ms": 3, "us": 6, "ns": 9}
ATTRIBUTE_COLUMNS = ("attributes", "resource_attributes", "scope_attributes")
CELL_LIMIT = 120  # characters of one value shown in a table cell
ATTRIBUTE_LIMIT = 300  # characters of one attribute value shown by `show`
EIGHTHS = " ▏▎▍▌▋▊▉█"  # left-aligned partial blocks, 0/8 … 8/8 of a cell


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def note(message: str) -> None:
    """A remark about the output (truncation, pagination) on stderr, so stdout stays parseable."""
    console(stderr=True).print(Text(message, style="dim"))


# --- conversion to plain Python -------------------------------------------------------------------------------
def rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of an Arrow table as JSON-ready dicts (see the module docstring for the conventions).

    Unlike ``Table.to_pylist()``, nanosecond timestamps keep their nanoseconds and need no pandas.
    """
    names = _unique(table.column_names)
    columns = [_column(col) for col in table.columns]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)] if columns else []


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen.setdefault(name, 0)
        out.append(name)
    return out


def _column(col: pa.ChunkedArray) -> list[Any]:
    import pyarrow as pa

    kind = col.type
    if pa.types.is_timestamp(kind):
        digits = DIGITS_PER_UNIT[kind.unit]
        return [None if v is None else iso_time(v, digits) for v in col.cast(pa.int64()).to_pylist()]
    safe_type = _without_nanos(kind)
    if safe_type != kind:  # nested or time/duration values in ns: Python's datetime stops at microseconds
        col = col.cast(safe_type, safe=False)
    return [plain(v) for v in col.to_pylist(maps_as_pydicts="lossy")]


def _without_nanos(kind: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if pa.types.is_timestamp(kind) and kind.unit == "ns":
        return pa.timestamp("us", kind.tz)
    if pa.types.is_time64(kind) and kind.unit == "ns":
        return pa.time64("us")
    if pa.types.is_duration(kind) and kind.unit == "ns":
        return pa.duration("us")
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_without_nanos(f.type)) for f in kind])
    if pa.types.is_map(kind):
        return pa.map_(_without_nanos(kind.key_type), _without_nanos(kind.item_type))
    if pa.types.is_large_list(kind):
        return pa.large_list(kind.value_field.with_type(_without_nanos(kind.value_type)))
    if pa.types.is_fixed_size_list(kind):
        return pa.list_(kind.value_field.with_type(_without_nanos(kind.value_type)), kind.list_size)
    if pa.types.is_list(kind):
        return pa.list_(kind.value_field.with_type(_without_nanos(kind.value_type)))
    return kind


def plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds") + "Z"
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if type(value).__name__ == "MonthDayNano":  # an SQL INTERVAL: ISO 8601 duration
        months, days, nanos = value
        return f"P{months}M{days}DT{nanos / 1e9:g}S"
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


def iso_time(ticks: int, digits: int = 9) -> str:
    """Seconds/ms/µs/ns (``digits`` 0/3/6/9) since the epoch as ISO 8601 UTC keeping every digit, e.g.
    ``2026-11-24T20:42:04.800691Z`` (µs) or ``2026-11-24T20:42:04.800691919Z`` (ns)."""
    seconds, fraction = divmod(ticks, 10**digits)
    text = (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")
    return text + (f".{fraction:0{digits}d}" if digits else "") + "Z"


def attribute_value(value: dict[str, Any] | None) -> Any:
    """A stored attribute value (the typed ``attr_value`` struct, already plain) as its natural JSON value."""
    if not isinstance(value, dict):
        return value
    kind = value.get("type")
    if kind in ("array", "kvlist"):
        try:
            return json.loads(value.get("json") or "null")
        except ValueError:
            return value.get("json")
    field = {"string": "str", "bool": "bool", "int": "int", "double": "double", "bytes": "bytes"}.get(kind or "")
    return value.get(field) if field else None


def simplify_span(span: dict[str, Any]) -> dict[str, Any]:
    """A span row with its attribute maps (and those of its events and links) as ``{key: value}``."""
    out = dict(span)
    for name in ATTRIBUTE_COLUMNS:
        if isinstance(out.get(name), dict):
            out[name] = {k: attribute_value(v) for k, v in out[name].items()}
    for name in ("events", "links"):
        if isinstance(out.get(name), list):
            out[name] = [{**item, "attributes": {k: attribute_value(v) for k, v in
                                                 (item.get("attributes") or {}).items()}}
                         for item in out[name] if isinstance(item, dict)]
    return out


def attribute_text(value: Any) -> str:
    """An attribute value as one line of text for a terminal."""
    plain = attribute_value(value)
    if plain is None:
        return ""
    if isinstance(plain, str):
        return plain
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if isinstance(plain, int | float):
        return str(plain)
    return json.dumps(plain, ensure_ascii=False)


# --- output -----------------------------------------------------------------------------------------------------
def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def print_csv(table: pa.Table) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_unique(table.column_names))
    for row in rows(table):
        writer.writerow(["" if v is None else _cell_json(v) if isinstance(v, dict | list) else v
                         for v in row.values()])
    sys.stdout.write(out.getvalue())


def _cell_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- formatting of single values --------------------------------------------------------------------------------
def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    size = abs(ms)
    if size >= 1000:
        return f"{ms:,.0f} ms"
    if size >= 100:
        return f"{ms:.0f} ms"
    if size >= 10:
        return f"{ms:.1f} ms"
    if size >= 1:
        return f"{ms:.2f} ms"
    return f"{ms:.3f} ms"


def fmt_duration(ms: float | None) -> str:
    """A span's or trace's duration; one whose end precedes its start (a client's clock, stored raw) says so
    instead of showing a negative time."""
    return "end < start" if ms is not None and ms < 0 else fmt_ms(ms)


def fmt_int(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def fmt_cost(cost: float | None, decimals: int | None = None) -> str:
    if cost is None:
        return ""
    if decimals is not None:
        return f"${cost:,.{decimals}f}"
    if abs(cost) >= 1:
        return f"${cost:,.2f}"
    if abs(cost) >= 0.01:
        return f"${cost:.4f}"
    return f"${cost:.6f}"


def fmt_time(iso: str | None, precision: int = 0) -> str:
    """``2026-11-24T20:42:04.800691919Z`` → ``2026-11-24 20:42:04`` (or with ``precision`` decimals)."""
    if not iso:
        return ""
    text = iso.rstrip("Z").replace("T", " ")
    whole, _, fraction = text.partition(".")
    return whole + (f".{fraction[:precision]}" if precision and fraction else "")


def fmt_value(value: Any, limit: int = CELL_LIMIT) -> Text:
    """Any plain value as one table cell (NULL dim, nested values as compact JSON, long text cut)."""
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = (f"{value:.6f}".rstrip("0").rstrip(".") if 1e-4 <= abs(value) < 1e12 else f"{value:.6g}")
    elif isinstance(value, dict | list):
        text = _cell_json(value)
    else:
        text = str(value)
    return Text(_shorten(text, limit))


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split()) if ("\n" in text or "\r" in text or "\t" in text) else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


Column = tuple[str | Text, str, bool, int]  # header, justify, flexible (a name: may be cut), drop order (0: keep)


def _fitted(width: int, columns: Sequence[Column], cells: list[list[Text]], min_flex: int = 8,
            drop_empty: bool = True) -> Table:
    """A table of one-line cells that fits ``width``.

    Columns with no value in any row go; if the rest cannot fit, the columns with the highest drop order go next.
    Fixed columns (numbers, times, ids) keep their natural width; flexible ones (names) share what is left, the
    widest cut first, with "…".
    """
    keep = [i for i in range(len(columns)) if i == 0 or not drop_empty or any(row[i].plain for row in cells)]

    def natural(i: int) -> int:
        header = columns[i][0]
        return max([Text(header).cell_len if isinstance(header, str) else header.cell_len]
                   + [row[i].cell_len for row in cells])

    def minimum(ids: list[int]) -> int:
        return sum(min(natural(i), min_flex) if columns[i][2] else natural(i) for i in ids) + 2 * (len(ids) - 1)

    while minimum(keep) > width and any(columns[i][3] for i in keep):
        keep.remove(max(keep, key=lambda i: columns[i][3]))
    widths = {i: natural(i) for i in keep}
    flexible = [i for i in keep if columns[i][2]]
    room = width - 2 * (len(keep) - 1) - sum(w for i, w in widths.items() if i not in flexible)
    if sum(widths[i] for i in flexible) > room:
        cap = max(widths[i] for i in flexible)
        while cap > min_flex and sum(min(widths[i], cap) for i in flexible) > room:
            cap -= 1
        for i in flexible:
            widths[i] = min(widths[i], cap)
    # a one-character right padding plus SIMPLE_HEAD's blank divider: two characters between columns
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    for i in keep:
        header, justify, _, _ = columns[i]
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                         width=widths[i])
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    return table


def _cost_decimals(costs: Iterable[float | None]) -> int:
    """Decimals that show two significant digits of the smallest cost in a column (2 to 6)."""
    smallest = min((abs(c) for c in costs if c), default=1.0)
    return max(2, min(6, math.ceil(-math.log10(smallest)) + 1)) if smallest < 1 else 2


# --- msgtrace list ------------------------------------------------------------------------------------------------
def trace_list(traces: list[dict[str, Any]], *, limit: int, offset: int) -> None:
    out = console()
    if not traces:
        out.print(Text("No traces match." if offset == 0 else "No more traces.", style="dim"))
        return
    decimals = _cost_decimals(t.get("cost") for t in traces)
    cells = []
    for t in traces:
        errors = t.get("error_count") or 0
        cells.append([
            Text(fmt_time(t.get("start_time"))), Text(t["trace_id"], style="cyan"),
            Text(t.get("workflow") or ""), Text(t.get("service_name") or "", style="dim"),
            Text(fmt_int(t.get("span_count"))),
            Text(fmt_int(errors), style="bold red") if errors else Text("0", style="dim"),
            Text(fmt_duration(t.get("duration_ms"))), Text(fmt_int(t.get("total_tokens"))),
            Text(fmt_cost(t.get("cost"), decimals)),
        ])
    columns: list[Column] = [
        ("Start (UTC)", "left", False, 0), ("Trace ID", "left", False, 0), ("Workflow", "left", True, 0),
        ("Service", "left", True, 3), ("Spans", "right", False, 0), ("Errors", "right", False, 0),
        ("Duration", "right", False, 0), ("Tokens", "right", False, 2), ("Cost", "right", False, 1)]
    table = _fitted(out.width, columns, cells)
    out.print(table)
    shown = f"traces {offset + 1}–{offset + len(traces)}"
    more = f"; more with --offset {offset + limit}" if len(traces) == limit else ""
    note(f"{shown}{more}; details: msgtrace show TRACE_ID")


# --- msgtrace show ------------------------------------------------------------------------------------------------
def trace_tree(summary: dict[str, Any], spans: list[dict[str, Any]], *, attributes: bool = False) -> None:
    """A trace as a tree: a header, one row per span in tree order (guides show the nesting, a bar places the span
    on the trace's time axis), then the errors and, for a one-span trace or with ``attributes``, each span's
    attributes and events."""
    out = console()
    out.print(_header(summary))
    width = out.width
    bar_width = 40 if width >= 160 else 30 if width >= 130 else 20 if width >= 100 else 16
    start, end = _time_axis(summary, spans)
    decimals = _cost_decimals(span.get("cost") for span in spans)
    cells = [[_label(span, guide), _bar(span, start, end, bar_width), Text(fmt_duration(span.get("duration_ms"))),
              _status(span.get("status_code")), Text(span.get("model") or "", style="magenta"),
              Text(fmt_int(_tokens(span))), Text(fmt_cost(span.get("cost"), decimals))]
             for span, guide in zip(spans, _guides(spans), strict=True)]
    columns: list[Column] = [
        ("Span", "left", True, 0), (Text(f"0 ↦ {fmt_ms((end - start) / 1e6)}"), "left", False, 4),
        ("Duration", "right", False, 0), ("Status", "left", False, 0), ("Model", "left", True, 3),
        ("Tokens", "right", False, 2), ("Cost", "right", False, 1)]
    table = _fitted(width, columns, cells, min_flex=12)
    out.print(table)
    missing = (summary.get("span_count") or len(spans)) - len(spans)
    if missing > 0:
        note(f"{_plural(missing, 'span')} of this trace sit on a parent cycle and are not in the tree "
             "(see msgtrace sql \"SELECT * FROM spans WHERE trace_id = '…'\")")
    _errors(out, spans)
    if attributes or len(spans) == 1:
        _details(out, spans)


def _header(summary: dict[str, Any]) -> Text:
    errors = summary.get("error_count") or 0
    head = Text()
    head.append("Trace ", style="bold").append(summary.get("trace_id") or "", style="bold cyan")
    head.append("  ").append(summary.get("workflow") or "", style="bold")
    if summary.get("service_name"):
        head.append("  ·  ").append(summary["service_name"], style="dim")
    head.append("\n")
    parts: list[Text] = [Text(f"started {fmt_time(summary.get('start_time'), 3)} UTC")]
    if summary.get("duration_ms") is not None:  # none when a time is past what a timestamp holds (year 2262)
        parts.append(Text(fmt_duration(summary["duration_ms"]), style="bold"))
    parts += [Text(_plural(summary.get("span_count") or 0, "span")),
              Text(_plural(errors, "error"), style="bold red" if errors else "green")]
    if summary.get("total_tokens") is not None:
        parts.append(Text(f"{fmt_int(summary['total_tokens'])} tokens"))
    if summary.get("cost") is not None:
        parts.append(Text(fmt_cost(summary["cost"])))
    head.append_text(Text("  ·  ").join(parts))
    who = [f"{label} {summary[key]}" for key, label in (("user_id", "user"), ("session_id", "session"))
           if summary.get(key)]
    if who:
        head.append("\n" + "  ·  ".join(who), style="dim")
    return head


def _time_axis(summary: dict[str, Any], spans: list[dict[str, Any]]) -> tuple[int, int]:
    """The first and last time of the trace's timeline. Times a clock got far wrong (:func:`_off_clock`) are left
    out unless all are: one span starting at 0 stretched the axis over 56 years and squeezed every other bar into
    one character. Their bars are pinned to the axis' edges."""
    starts = [s["start_time_unix_nano"] for s in spans if not _off_clock(s, "start_time_unix_nano")]
    ends = [s["end_time_unix_nano"] for s in spans if not _off_clock(s, "end_time_unix_nano")]
    if not starts:
        starts = [s["start_time_unix_nano"] for s in spans if s.get("start_time_unix_nano") is not None]
        ends = [s["end_time_unix_nano"] for s in spans if s.get("end_time_unix_nano") is not None]
    start = min(starts, default=summary.get("start_time_unix_nano") or 0)
    end = max([*ends, *starts], default=start)
    return start, end


def _off_clock(span: dict[str, Any], column: str) -> bool:
    """Whether the span's time in ``column`` is missing or lies outside the partition window around the span's day
    (:func:`msgtrace.schema.within_window`): a client clock at 0, in year 2200, an end never set."""
    value, day = span.get(column), span.get("date")
    if value is None:
        return True
    if not day:
        return False
    return not within_window(value, (dt.date.fromisoformat(day) - dt.date(1970, 1, 1)).days)


def _guides(spans: list[dict[str, Any]]) -> list[str]:
    """The tree guides ("├─ ", "│  ", "└─ ") in front of each span's name, from depth and parent_id."""
    last_child: dict[Any, int] = {}  # parent id → index of its last child in tree order
    for i, span in enumerate(spans):
        if (span.get("depth") or 0) > 0:
            last_child[span.get("parent_id")] = i
    guides, open_levels = [], []  # open_levels[k]: does the ancestor at depth k+1 have siblings still to come?
    for i, span in enumerate(spans):
        depth = span.get("depth") or 0
        if depth == 0:
            guides.append("")
            open_levels = []
            continue
        is_last = last_child.get(span.get("parent_id")) == i
        del open_levels[depth - 1:]
        prefix = "".join("│  " if more else "   " for more in open_levels)
        guides.append(prefix + ("└─ " if is_last else "├─ "))
        open_levels.append(not is_last)
    return guides


def _label(span: dict[str, Any], guide: str) -> Text:
    error = span.get("status_code") == "ERROR"
    style = "bold red" if error else "bold" if (span.get("depth") or 0) == 0 else ""
    label = Text(guide, style="dim").append(span.get("name") or "(unnamed)", style=style)
    if span.get("orphan"):
        label.append(" ⚠ parent missing", style="yellow")
    if _off_clock(span, "start_time_unix_nano") or _off_clock(span, "end_time_unix_nano"):
        label.append(" ⚠ clock off", style="yellow")
    return label


def _bar(span: dict[str, Any], start: int, end: int, width: int) -> Text:
    total = end - start
    s, e = span.get("start_time_unix_nano"), span.get("end_time_unix_nano")
    if s is None or e is None:
        return Text("")
    if total <= 0:
        left, eighths = 0, width * 8
    else:
        left = min(width - 1, max(0, int((s - start) / total * width)))
        eighths = max(1, round(max(0, e - s) / total * width * 8))
        eighths = min(eighths, (width - left) * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (EIGHTHS[part] if part else "")
    if span.get("status_code") == "ERROR":
        style = "red"
    elif span.get("model"):
        style = "magenta"
    elif span.get("tool_name"):
        style = "yellow"
    else:
        style = "cyan"
    text = Text("·" * left, style="dim").append(bar, style=style)
    return text.append("·" * (width - len(text)), style="dim")


def _status(code: str | None) -> Text:
    if code == "ERROR":
        return Text("ERROR", style="bold red")
    if code == "OK":
        return Text("OK", style="green")
    return Text("–", style="dim")


def _tokens(span: dict[str, Any]) -> int | None:
    if span.get("total_tokens") is not None:
        return span["total_tokens"]
    parts = [span.get("input_tokens"), span.get("output_tokens")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def _errors(out: Console, spans: list[dict[str, Any]]) -> None:
    failed = [s for s in spans if s.get("status_code") == "ERROR"]
    if not failed:
        return
    out.print(Text("\nErrors", style="bold red"))
    for span in failed:
        line = Text("  ✖ ", style="red").append(span.get("name") or "", style="bold")
        line.append(f"  {span.get('span_id')}", style="dim")
        if span.get("status_message"):
            line.append(f"  {_shorten(span['status_message'], ATTRIBUTE_LIMIT)}")
        out.print(line)
        for message in _exceptions(span)[:1]:  # SDKs often record the same exception twice
            out.print(Text(f"      {message}", style="red"))


def _exceptions(span: dict[str, Any]) -> list[str]:
    found = []
    for event in span.get("events") or []:
        if event.get("name") != "exception":
            continue
        attrs = event.get("attributes") or {}
        kind = attribute_text(attrs.get("exception.type"))
        message = attribute_text(attrs.get("exception.message"))
        found.append(_shorten(": ".join(p for p in (kind, message) if p), ATTRIBUTE_LIMIT))
    return found


KEY_FIELDS = (("kind", "kind"), ("service_name", "service"), ("scope_name", "scope"), ("operation", "operation"),
              ("provider", "provider"), ("model", "model"), ("agent_name", "agent"), ("tool_name", "tool"),
              ("input_tokens", "input tokens"), ("output_tokens", "output tokens"), ("user_id", "user"),
              ("session_id", "session"))


def _details(out: Console, spans: Iterable[dict[str, Any]]) -> None:
    """Every span's key fields, attributes and events (the view for one-span traces and ``--attributes``)."""
    seen_resources: list[Any] = []
    for span in spans:
        out.print()
        title = Text(span.get("name") or "(unnamed)", style="bold red" if span.get("status_code") == "ERROR"
                     else "bold")
        out.print(title.append(f"  span {span.get('span_id')}", style="dim"))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        fields = [(label, span.get(key)) for key, label in KEY_FIELDS if span.get(key) not in (None, "")]
        status = span.get("status_code")
        fields.insert(1, ("status", f"{status}: {span['status_message']}" if span.get("status_message")
                          else status))
        for label, value in fields:
            grid.add_row(label, Text(_shorten(str(value), ATTRIBUTE_LIMIT)))
        for key, value in sorted((span.get("attributes") or {}).items()):
            grid.add_row(Text(key), Text(_shorten(attribute_text(value), ATTRIBUTE_LIMIT)))
        for event in span.get("events") or []:
            attrs = event.get("attributes") or {}
            summary = ", ".join(f"{k}={_shorten(attribute_text(v), 80)}" for k, v in attrs.items()
                                if k != "exception.stacktrace")
            grid.add_row(Text("event", style="dim"), Text(f"{event.get('name')}  {summary}".rstrip()))
        resource = span.get("resource_attributes") or {}
        if resource and resource not in seen_resources:
            seen_resources.append(resource)
            for key, value in sorted(resource.items()):
                grid.add_row(Text(f"resource {key}", style="dim"), Text(_shorten(attribute_text(value), 120)))
        out.print(grid)


# --- msgtrace stats -----------------------------------------------------------------------------------------------
def stats_table(stats: list[dict[str, Any]], by: str) -> None:
    out = console()
    unit = "traces" if by in ("workflow", "day") else "spans"
    if not stats:
        out.print(Text(f"No {unit} in this range.", style="dim"))
        return
    decimals = _cost_decimals(row.get("cost") for row in stats)
    cells = []
    for row in stats:
        errors = row.get("errors") or 0
        rate = row.get("error_rate")
        key = row.get(by)
        cells.append([
            Text(str(key)) if key is not None else Text("(none)", style="dim"),
            Text(fmt_int(row.get("count"))),
            Text(fmt_int(errors), style="red" if errors else "dim"),
            Text("" if rate is None else f"{rate * 100:.1f} %", style="red" if errors else "dim"),
            Text(fmt_ms(row.get("p50_ms"))), Text(fmt_ms(row.get("p95_ms"))), Text(fmt_ms(row.get("p99_ms"))),
            Text(fmt_int(row.get("input_tokens"))), Text(fmt_int(row.get("output_tokens"))),
            Text(fmt_cost(row.get("cost"), decimals)),
        ])
    columns: list[Column] = [
        (by.capitalize(), "left", True, 0), ("Count", "right", False, 0), ("Errors", "right", False, 0),
        ("Error %", "right", False, 0), ("p50", "right", False, 3), ("p95", "right", False, 0),
        ("p99", "right", False, 4), ("In tokens", "right", False, 2), ("Out tokens", "right", False, 2),
        ("Cost", "right", False, 1)]
    out.print(Text(f"{_plural(len(stats), by)} · count = {unit}", style="dim"))
    table = _fitted(out.width, columns, cells, min_flex=12)
    out.print(table)


# --- msgtrace sql -------------------------------------------------------------------------------------------------
def result_table(table: pa.Table) -> None:
    """Any SQL result: numbers and times at full width, right-aligned numbers; text and nested values cut to fit."""
    import pyarrow as pa

    columns: list[Column] = []
    for field, name in zip(table.schema, _unique(table.column_names), strict=True):
        kind = field.type
        number = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        fixed = number or pa.types.is_temporal(kind) or pa.types.is_boolean(kind)
        columns.append((Text(name), "right" if number else "left", not fixed, 0))
    cells = [[fmt_value(v, limit=80) for v in row.values()] for row in rows(table)]
    console().print(_fitted(console().width, columns, cells, min_flex=6, drop_empty=False))
    note(_plural(table.num_rows, "row"))
