"""Runnable examples, each one command, offline:

    python -m msgtrace.examples.basic_tracing    # the msgtrace SDK: one traced workflow with an LLM call
    python -m msgtrace.examples.agent_tracing    # msgflux agents with tools and a stand-in model
    python -m msgtrace.examples.query_traces     # msgtrace.open(), Polars and SQL over a store

Each takes ``--help``. :class:`ArgumentParser` is their command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error like the ``msgtrace`` CLI: one line on stderr, exit status 2."""

    def __init__(self, prog: str, doc: str | None) -> None:
        super().__init__(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high:,}, got {value:,}")
        return value

    return parse
