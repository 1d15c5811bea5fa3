"""Summarise a py-spy raw profile (collapsed stacks) of the ingest server: where does server CPU time go?

    python benchmarks/ingest.py --profile /tmp/server.txt          # records it (py-spy record --format raw --threads)
    python benchmarks/profile_summary.py /tmp/server.txt [--top 25]

Prints the share of (non-idle) samples by thread, by pipeline stage (the deepest msgtrace step on the stack), by
function including callees, and by leaf function (self time). py-spy leaves out idle threads, so the shares are of
the time threads were running or runnable (a thread waiting for the GIL counts).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# (stage, test on one frame "func (path:line)"), checked from the leaf of each stack towards its root.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("flush: Parquet write (sort, encode, zstd)", re.compile(r"\bwrite_parts \(|storage/writer\.py")),
    ("flush: duplicate collapse", re.compile(r"Ingestor\._drop_duplicates \(")),
    ("flush: concat/other", re.compile(r"Ingestor\.(_write|flush) \(")),
    ("WAL append (CRC, write)", re.compile(r"WriteAheadLog\.append \(")),
    ("WAL fsync (group commit)", re.compile(r"WriteAheadLog\.sync \(")),
    ("buffer add", re.compile(r"SpanBuffer\.")),
    ("decode: Arrow build (SpanBatchBuilder.build)", re.compile(r"(SpanBatchBuilder\.(build|_llm_columns)|AttrSink\.build) \(")),
    ("decode: per-span LLM mapping (add_span)", re.compile(r"SpanBatchBuilder\.add_span \(")),
    ("decode: attribute walk (_put/_plain)", re.compile(r"^(_put|_plain) \(.*otlp_proto")),
    ("decode: protobuf parse + span walk", re.compile(r"decode_protobuf \(")),
    ("decompress", re.compile(r"\bdecompress \(")),
    ("HTTP: request body read", re.compile(r"read_limited \(")),
    ("HTTP: /health", re.compile(r"\b(health|Ingestor\.status) \(")),
    ("HTTP/ASGI/asyncio (uvicorn, starlette, fastapi, anyio)",
     re.compile(r"(uvicorn|h11|httptools|starlette|fastapi|anyio|asyncio|selectors)[/.]")),
]


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames root→leaf, samples) per line of a py-spy raw file."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        name = thread.split(":", 1)[1].strip() if ":" in thread else ""
        out.append((re.sub(r"\d+$", "", name).strip() or "(unnamed thread)", frames[1:], int(count)))
    return out


def _func(frame: str) -> str:
    """'func (path:line)' → 'func (path)'"""
    return re.sub(r":\d+\)$", ")", frame)


def summarise(path: Path, top: int = 20) -> str:
    rows = parse(path)
    total = sum(c for _, _, c in rows)
    if not total:
        return f"{path}: no samples"
    threads: Counter[str] = Counter()
    stages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for thread, frames, count in rows:
        threads[thread] += count
        stage = "other"
        for frame in reversed(frames):
            hit = next((name for name, rx in STAGES if rx.search(frame)), None)
            if hit:
                stage = hit
                break
        stages[stage] += count
        for f in {_func(f) for f in frames}:
            inclusive[f] += count
        leaf[_func(frames[-1]) if frames else "?"] += count
        own = next((f for f in reversed(frames) if "msgtrace/" in f), None)
        if own:
            lines[own] += count

    def table(title: str, counter: Counter[str], n: int) -> list[str]:
        lines = [f"{title}"]
        for key, c in counter.most_common(n):
            lines.append(f"  {100 * c / total:5.1f} %  {key}")
        return lines

    out = [f"{path}: {total} samples (non-idle threads; at 100 Hz = {total / 100:.1f} thread-seconds)"]
    out += table("by thread:", threads, 10)
    out += table("by pipeline stage (deepest msgtrace step on the stack):", stages, len(STAGES) + 1)
    out += table("by function, including callees:", inclusive, top)
    out += table("by leaf function (self time; C calls are charged to the Python line that made them):", leaf, top)
    out += table("by deepest msgtrace line on the stack:", lines, top)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=20)
    a = p.parse_args()
    print(summarise(a.profile, a.top))


if __name__ == "__main__":
    main()
