"""Executes every notebook under notebooks/ top to bottom in a fresh kernel."""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _execute(nb: Any) -> Any:
  """Runs ``nb`` in memory in a new ``python3`` kernel, cwd notebooks/.

  jupyter_client starts the ``python3`` kernel spec, whose command is plain
  ``python``, with ``sys.executable``: the kernel is this interpreter.
  """
  client = nbclient.NotebookClient(
    nb,
    timeout=CELL_TIMEOUT_S,
    kernel_name="python3",
    resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  return client.execute()


def _code_cells(nb: Any) -> list[Any]:
  return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3, NOTEBOOKS


def test_kernel_runs_the_current_interpreter():
  cell = nbformat.v4.new_code_cell("import sys; print(sys.executable)")
  nb = _execute(nbformat.v4.new_notebook(cells=[cell]))
  assert nb.cells[0].outputs[0]["text"].strip() == sys.executable


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_error(path: pathlib.Path):
  nb = nbformat.read(path, as_version=4)
  # A failing cell raises CellExecutionError naming the cell and the error.
  nb = _execute(nb)
  for cell in _code_cells(nb):
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_with_figures(path: pathlib.Path):
  nb = nbformat.read(path, as_version=4)
  cells = _code_cells(nb)
  counts = [cell.execution_count for cell in cells]
  assert counts == list(range(1, len(cells) + 1)), (
    f"{path.name} is not saved fresh from a top-to-bottom run "
    "(python notebooks/execute.py)"
  )
  outputs = [o for cell in cells for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), (
    f"{path.name} has no saved figure"
  )


def test_notebooks_stay_small():
  total = sum(path.stat().st_size for path in NOTEBOOKS)
  assert total < 3 * 2**20, f"notebooks take {total / 2**20:.1f} MiB"
