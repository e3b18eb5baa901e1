"""The notebooks in notebooks/ run end to end in a real kernel, and show what they say.

Each notebook is executed with nbclient on an ipykernel that runs this very
interpreter (a kernel spec written to a temporary folder and put first on
``JUPYTER_PATH``, so no other installed "python3" kernel can be picked up). The
kernel inherits the test's environment, so its ``DASKFLOW_HOME`` is the test's
temporary home. The assertions read specific outputs: the quickstart's value
and card, the cache hits of the second run, the ratio the benchmark prints.
The committed notebooks must have no outputs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
# The kernel and the widgets run in the kernel's process, not here: present is enough. Importing
# them at collection cost each xdist process about 0.2 s of CPU, also the one that runs no notebook.
for _needed in ("ipykernel", "ipywidgets"):
    if importlib.util.find_spec(_needed) is None:
        pytest.skip(f"could not import {_needed!r}: the notebook tests need it", allow_module_level=True)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
KERNEL = "daskflow-notebook-test"
CELL_TIMEOUT_S = 120
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ipykernel import kernelspec

    prefix = tmp_path_factory.mktemp("kernels")
    kernelspec.install(kernel_name=KERNEL, prefix=str(prefix))  # argv: this sys.executable
    return prefix / "share" / "jupyter"


def execute(
    name: str,
    kernel_path: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    sizes: dict[str, str] | None = None,
) -> Any:
    """Run notebook ``name``; ``sizes`` replaces source lines (e.g. a benchmark's ``N = 1_000``)
    before it runs, so a test can run the same cells small. Each line must be in the notebook once."""
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for line, replacement in (sizes or {}).items():
        cells = [c for c in notebook.cells if c.cell_type == "code" and line in c.source.splitlines()]
        assert len(cells) == 1 and cells[0].source.splitlines().count(line) == 1, f"{name}: {line!r} not found once"
        cells[0].source = "\n".join(replacement if part == line else part for part in cells[0].source.splitlines())
    client = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def text_of(cell: Any) -> str:
    """A code cell's printed text, results and HTML, in order."""
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("execute_result", "display_data"):
            data = output["data"]
            parts.append(data.get("text/html", "") + data.get("text/plain", ""))
    return "".join(parts)


def cell_with(notebook: Any, source_part: str) -> Any:
    [cell] = [c for c in notebook.cells if c.cell_type == "code" and source_part in c.source]
    return cell


def all_text(notebook: Any) -> str:
    return "\n".join(text_of(c) for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_caching.ipynb", "03_benchmark.ipynb"])
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" for c in notebook.cells)


@pytest.mark.timeout(240)
def test_quickstart(kernel_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("01_quickstart.ipynb", kernel_path, tmp_path, monkeypatch)

    run_cell = cell_with(notebook, 'result = etl(["orders"')
    assert "result: 29" in text_of(run_cell)  # 6 + 9 + 8 + 6 rows
    # The live progress display: an ipywidgets box in the output of the cell that ran the flow.
    assert any(WIDGET_VIEW in output.get("data", {}) for output in run_cell.outputs)

    card = text_of(cell_with(notebook, "return_state=True)\nstate"))
    assert 'class="daskflow-card"' in card and "Completed" in card
    assert "5 total: 5" in card  # 2 extract + 2 rows_in + 1 total
    [run_id] = re.findall(r"daskflow runs report (\S+) -o", card)
    dashboard = re.search(r"dashboard: (http\S+)", all_text(notebook))
    assert dashboard is not None and f'href="{dashboard.group(1)}"' in card  # the run used that cluster

    record = text_of(cell_with(notebook, "run = state.flow_run"))
    assert "value: 15" in record and f"run id: {run_id}" in record
    assert "'extract': 2, 'rows_in': 2, 'total': 1" in record

    history = text_of(cell_with(notebook, "RunStore() as store"))
    assert "stored: " in history and "Completed 5 task runs" in history and run_id in history

    cli = text_of(cell_with(notebook, "daskflow_cli"))
    assert "$ daskflow runs ls" in cli and "quickstart-etl" in cli and run_id[:8] in cli


@pytest.mark.timeout(240)
def test_caching(kernel_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = execute("02_caching.ipynb", kernel_path, tmp_path, monkeypatch)
    text = all_text(notebook)
    assert "first run: 0 hits, 12 misses" in text
    assert "second run: 12 hits, 0 misses" in text
    second_card = text_of(cell_with(notebook, "second = monthly_report"))
    assert "12 hits, 0 misses" in second_card and "Cached" in second_card
    assert "partitions: 12" in text and "rows read back: 336" in text  # 12 months x 28 days


@pytest.mark.timeout(240)
def test_benchmark(kernel_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The notebook's cells at a tenth of its size, once: the test checks what they print, never
    # the timings, which a reader runs the notebook for (about a minute of the suite otherwise).
    small = {"N = 1_000": "N = 100", "REPEATS = 3": "REPEATS = 1"}
    notebook = execute("03_benchmark.ipynb", kernel_path, tmp_path, monkeypatch, sizes=small)
    text = all_text(notebook)
    match = re.search(r"N=100: daskflow / raw Dask client\.map ratio (\d+\.\d+)x", text)
    assert match is not None, text
    assert float(match.group(1)) > 0
    for contender in ("daskflow", "raw Dask client.map", "raw Dask delayed"):
        assert re.search(rf"{re.escape(contender)}\s+\d+\.\d+ s", text), contender
