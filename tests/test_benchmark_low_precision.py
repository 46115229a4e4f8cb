"""Smoke test of ``benchmarks/low_precision.py`` and the page that quotes it.

The quick run must complete and report what it claims: every ratio is the one
of the raw numbers it is computed from, and the bytes per parameter are those
of an independent count. The documentation page must show the tables that
the committed full run's JSON renders, verbatim.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import _bench

ROOT = _bench.ROOT
SCRIPT = ROOT / "benchmarks" / "low_precision.py"
PAGE = ROOT / "docs" / "low_precision.md"
METHODS = ("float32", "bfloat16", "kahan", "stochastic")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
  return _bench.python(str(SCRIPT), *args)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
  out = tmp_path_factory.mktemp("low_precision")
  done = _run("--quick", "--out", str(out), "--figures", str(out))
  assert done.returncode == 0, done.stderr[-4000:]
  (path,) = out.glob("low-precision-*-quick.json")
  return json.loads(path.read_text()), out


def test_quick_run_writes_its_json_and_the_figure(quick):
  result, out = quick
  assert result["quick"] is True and result["schema"] == 1
  assert (out / "low_precision.png").stat().st_size > 10_000
  assert (out / f"low-precision-{result['slug']}-quick.json").exists()


def test_quality_ratios_are_those_of_the_final_losses(quick):
  result, _ = quick
  rows = result["quality"]
  assert {(r["problem"], r["lr"]) for r in rows} == {
    (p, lr) for p in ("mlp", "lm") for lr in result["config"]["learning_rates"]
  }
  for r in rows:
    assert set(r["methods"]) == set(METHODS)
    ref = r["methods"]["float32"]["final"]
    for m in METHODS:
      res = r["methods"][m]
      assert len(res["curves"]) == result["config"]["seeds"]
      for curve, final in zip(res["curves"], res["final"], strict=True):
        assert len(curve) == r["steps"] // r["every"] + 1
        assert curve[-1] == final
      assert res["relative"] == pytest.approx(np.mean(res["final"]) / np.mean(ref))
      assert res["relative_per_seed"] == pytest.approx(
        [f / g for f, g in zip(res["final"], ref, strict=True)]
      )


def test_bytes_per_parameter_are_those_of_an_independent_count(quick):
  result, _ = quick
  mem = result["memory"]
  n = mem["params"]
  rows = {r["name"]: r for r in mem["rows"]}
  for r in rows.values():
    assert r["bytes_per_param"] == pytest.approx(
      (r["params_bytes"] + r["state_bytes"]) / n
    )
  # Every parameter in float32: params and nu, 4 bytes each.
  assert rows["float32 params, float32 nu"]["bytes_per_param"] == 8.0
  # Mixed precision: a bfloat16 copy, a float32 master copy and float32 nu.
  assert (
    rows["bfloat16 params + float32 master copy, float32 nu"]["bytes_per_param"] == 10.0
  )
  assert rows["bfloat16 params (plain rounding), float32 nu"]["bytes_per_param"] == 6.0
  # Kahan: bfloat16 params, a bfloat16 compensation, bfloat16 nu.
  assert rows["bfloat16 params + Kahan, bfloat16 nu"]["bytes_per_param"] == 6.0
  # Stochastic: nothing per parameter but a key (2 uint32) and a count (int32).
  stochastic = rows["bfloat16 params + stochastic, bfloat16 nu"]
  assert stochastic["state_bytes"] == 2 * n + 12
  for method in ("Kahan", "stochastic"):
    eight = rows[f"bfloat16 params + {method}, 8-bit nu"]["bytes_per_param"]
    sixteen = rows[f"bfloat16 params + {method}, bfloat16 nu"]["bytes_per_param"]
    assert eight < sixteen


def test_speed_ratios_and_verdicts_follow_from_the_medians(quick):
  result, _ = quick
  sp = result["speed"]
  base = sp["times"]["bfloat16"]["median_ms"]
  for m in METHODS:
    assert sp["vs_bfloat16"][m] == pytest.approx(sp["times"][m]["median_ms"] / base)
  for t in result["targets"]:
    bound = float(re.search(r"<= ([0-9.]+)x", t["name"]).group(1))
    assert t["pass"] == (t["value"] <= bound)


def test_page_quotes_the_tables_of_the_committed_full_run():
  path, stored = _bench.stored_result(PAGE, "low-precision")
  assert stored["quick"] is False
  assert stored["config"]["seeds"] >= 3 and len(stored["config"]["learning_rates"]) == 2
  _bench.assert_report_on_page("low_precision.py", path, PAGE, tables=3)
