"""Re-executes the notebooks in place, so that their saved outputs are current.

Usage (from the repository root, with ``pip install ".[demo]" jupyter``)::

  python notebooks/execute.py                        # every notebook
  python notebooks/execute.py notebooks/01_quickstart.ipynb

Each notebook runs top to bottom in a fresh ``python3`` kernel with this folder
as its working directory; the first error stops it and nothing is written.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def execute(path: pathlib.Path, timeout: int = 600) -> float:
  """Executes the notebook at ``path`` in place; returns the seconds it took."""
  nb = nbformat.read(path, as_version=4)
  start = time.perf_counter()
  nbclient.NotebookClient(
    nb,
    timeout=timeout,
    kernel_name="python3",
    resources={"metadata": {"path": str(HERE)}},
  ).execute()
  elapsed = time.perf_counter() - start
  nbformat.write(nb, path)
  return elapsed


def main(argv: list[str]) -> int:
  """Executes the notebooks named in ``argv``, or all of them."""
  paths = [pathlib.Path(a) for a in argv] or sorted(HERE.glob("*.ipynb"))
  for path in paths:
    print(f"{path.name}: {execute(path):.1f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
