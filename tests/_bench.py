"""What the tests of the benchmark scripts share: where they are, their modules,
running them, and the stored results the documentation quotes."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from tests._process import python

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["python"]  # re-exported for the benchmarks' tests
BENCH = ROOT / "benchmarks"


def module(name: str) -> ModuleType:
  """A module of benchmarks/, which import each other by their flat names."""
  sys.path.insert(0, str(BENCH))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.remove(str(BENCH))


def only_json(folder: Path) -> tuple[Path, dict[str, Any]]:
  """The one JSON file a run wrote into ``folder``, and its content."""
  files = list(folder.iterdir())
  assert len(files) == 1, files
  return files[0], json.loads(files[0].read_text())


def stored_result(page: Path, kind: str) -> tuple[Path, dict[str, Any]]:
  """The ``benchmarks/results/<kind>-*.json`` that ``page`` names (only one)."""
  (name,) = set(
    re.findall(rf"benchmarks/results/({kind}-[a-z0-9-]+\.json)", page.read_text())
  )
  path = BENCH / "results" / name
  return path, json.loads(path.read_text())


def assert_report_on_page(script: str, stored: Path, page: Path, tables: int) -> None:
  """The Markdown tables ``script --report stored`` prints stand on ``page``."""
  done = python(str(BENCH / script), "--report", str(stored), timeout=120)
  assert done.returncode == 0, done.stderr[-4000:]
  found = re.findall(r"(?:^\|.*\|\n)+", done.stdout + "\n", re.M)
  assert len(found) == tables
  text = page.read_text()
  for table in found:
    assert table in text, f"{page.name} lacks the table\n{table}"
