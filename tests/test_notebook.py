"""notebooks/analysis.ipynb: committed without outputs, and runs top to bottom on a generated store and on an empty one.

Needs nbformat, nbclient and ipykernel (the ``test`` extra); without the ``python3`` kernel the tests fail, not skip.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
import pytest

import msgtrace
from msgtrace.config import IngestConfig
from msgtrace.ingest.decode import WireFormat
from msgtrace.ingest.pipeline import Ingestor
from msgtrace.synthetic import build_workload

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "analysis.ipynb"
KERNEL = "python3"
DAY_NS = 86_400 * 10**9

# some jupyter_core 5.x releases warn about their coming move to platformdirs whenever jupyter paths are resolved
pytestmark = pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning")


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"the notebook test needs {name} ({e}); install the test extra: pip install -e '.[test]'")


def _build_store(data_dir: Path, n_spans: int) -> None:
    ingestor = Ingestor(IngestConfig(data_dir=data_dir, flush_interval=3600))
    ingestor.start()
    try:
        for body in build_workload(n_spans, 512, seed=11, spread_ns=7 * DAY_NS).bodies:
            ingestor.accept(WireFormat.PROTOBUF, body, time.time_ns())
            if ingestor.buffer.total_bytes > 32 * 2**20:
                ingestor.flush()
    finally:
        ingestor.close()


def _execute(data_dir: Path) -> Any:
    """Run the notebook in a fresh ``python3`` kernel reading ``data_dir``; returns the executed notebook."""
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    kernelspec = _require("jupyter_client.kernelspec")
    try:
        kernelspec.KernelSpecManager().get_kernel_spec(KERNEL)
    except kernelspec.NoSuchKernel:
        pytest.fail(f"no Jupyter kernel named {KERNEL!r}: install ipykernel (part of the test extra: "
                    "pip install -e '.[test]') or run `python -m ipykernel install --user`")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MSGTRACE_DATA_DIR", str(data_dir))
        mp.setenv("MPLBACKEND", "Agg")
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name=KERNEL,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as e:
            pytest.fail(f"a notebook cell failed:\n{e}")
    return nb


def _stdout(nb: Any) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


def _check_clean_run(nb: Any) -> None:
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code), "not every cell ran"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    stderr = [out.text for cell in code for out in cell.outputs if out.output_type == "stream" and out.name == "stderr"]
    assert not stderr, f"the notebook wrote to stderr (a warning?):\n{''.join(stderr)}"


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("notebook-store")
    _build_store(data_dir, 20_000)
    return data_dir


@pytest.fixture(scope="module")
def executed(store_dir: Path) -> Any:
    return _execute(store_dir)


def test_committed_notebook_is_valid_and_stripped() -> None:
    nbformat = _require("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == KERNEL
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and any(cell.cell_type == "markdown" for cell in nb.cells)
    for cell in code:
        assert cell.outputs == [], f"committed with outputs: {cell.source[:80]!r}"
        assert cell.execution_count is None, f"committed with an execution count: {cell.source[:80]!r}"
    source = "\n".join(cell.source for cell in code)
    assert 'os.environ.get("MSGTRACE_DATA_DIR")' in source and "msgtrace.open(" in source


def test_notebook_runs_on_a_generated_store(executed: Any) -> None:
    _check_clean_run(executed)
    tables = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.outputs
              if "text/html" in out.get("data", {})]
    assert len(tables) >= 8  # glance per service, latency, per model, slowest, costliest, 3 error tables, waterfall


def test_notebook_numbers_match_the_store(executed: Any, store_dir: Path) -> None:
    text = _stdout(executed)

    def number(label: str) -> int:
        match = re.search(rf"^{label}\s+([\d,]+)$", text, re.MULTILINE)
        assert match, f"{label!r} not printed:\n{text}"
        return int(match.group(1).replace(",", ""))

    store = msgtrace.open(store_dir)
    try:
        traces = store.traces_frame().select("trace_id", "status").collect()
        spans = store.spans().select(pl.len(), pl.col("is_error").sum()).collect().row(0)
        slowest = store.traces(sort="duration", limit=1)["trace_id"][0]
    finally:
        store.close()

    assert traces.height > 1000
    assert number("traces") == traces.height
    assert number("spans") == spans[0] >= 20_000
    assert number("error traces") == (traces["status"] == "ERROR").sum()
    assert number("error spans") == spans[1] > 0
    assert number("days") >= 7
    assert number("services") == 5
    assert f"{spans[1]:,} error spans in " in text
    assert re.search(rf"^slowest trace: {slowest}\b", text, re.MULTILINE), text


def test_notebook_runs_on_an_empty_store(tmp_path: Path) -> None:
    nb = _execute(tmp_path)
    _check_clean_run(nb)
    text = _stdout(nb)
    assert re.search(r"^traces\s+0$", text, re.MULTILINE), text
    assert "no traces in this store" in text
