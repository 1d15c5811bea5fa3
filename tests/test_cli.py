"""The command line: every command has --help, and a bad argument is one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "msgtrace", *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args", [["--help"], ["ingest", "--help"], ["start", "--help"], []])
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0
    assert "Usage: msgtrace" in result.stdout


def test_ingest_help_names_every_setting() -> None:
    out = run("ingest", "--help").stdout
    for flag in ("--host", "--port", "--data-dir", "--fsync", "--flush-interval", "MSGTRACE_DATA_DIR"):
        assert flag in out


def test_version() -> None:
    from msgtrace import __version__

    assert run("--version").stdout.strip() == f"msgtrace {__version__}"


@pytest.mark.parametrize("args, env, expected", [
    (["ingest", "--port", "abc"], None, "--port"),
    (["ingest", "--port", "70000"], None, "port must be between"),
    (["ingest", "--bogus"], None, "No such option: --bogus"),
    (["nope"], None, "No such command 'nope'"),
    (["ingest", "--fsync", "sometimes"], None, "--fsync must be one of"),
    (["ingest", "--log-level", "loud"], None, "--log-level"),
    (["ingest"], {"MSGTRACE_PORT": "many"}, "MSGTRACE_PORT='many' is not a number"),
    (["ingest"], {"MSGTRACE_FLUSH_INTERVAL": "-1"}, "flush_interval must be positive"),
])
def test_bad_arguments_are_one_line_and_non_zero(args: list[str], env: dict[str, str] | None,
                                                 expected: str) -> None:
    result = run(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("msgtrace: error: ") and expected in lines[0]
    assert "Traceback" not in result.stderr
