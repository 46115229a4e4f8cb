"""Running Python in a subprocess, as the tests of scripts and pages do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(
  *args: str,
  cwd: Path | str = ROOT,
  env: dict[str, str] | None = None,
  timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
  """``python *args`` (this interpreter) in ``cwd``, its output captured."""
  return subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=timeout,
    check=False,
  )
