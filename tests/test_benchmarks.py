"""Smoke test of the benchmark script: it runs and reports every section.

Timings are never asserted (the machine is shared and noisy); only that the
quick run completes and that its JSON report has the documented structure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
SECTIONS = ("machine", "jitted", "eager", "compile", "memory", "targets")
VARIANTS = {"plain", "momentum", "centered"}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
  out = tmp_path_factory.mktemp("bench") / "quick.json"
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "PASS" in proc.stdout or "MISS" in proc.stdout
  return json.loads(out.read_text())


def test_quick_run_reports_every_section(quick_report: dict[str, Any]) -> None:
  for section in SECTIONS:
    assert quick_report[section], f"section {section!r} is empty"


def test_jitted_rows_cover_all_variants_and_three_contenders(
  quick_report: dict[str, Any],
) -> None:
  rows = quick_report["jitted"]
  assert {r["variant"] for r in rows} == VARIANTS
  for r in rows:
    for key in ("rmsprop_jax_ms", "optax_ms", "floor_ms"):
      assert r[key] > 0
    # The ratios are recomputed here from the raw medians.
    assert r["vs_optax"] == pytest.approx(r["rmsprop_jax_ms"] / r["optax_ms"])
    assert r["vs_floor"] == pytest.approx(r["rmsprop_jax_ms"] / r["floor_ms"])


def test_eager_and_compile_rows_cover_all_variants(
  quick_report: dict[str, Any],
) -> None:
  assert {r["variant"] for r in quick_report["eager"]} == VARIANTS
  assert {r["variant"] for r in quick_report["compile"]} >= VARIANTS
  for r in quick_report["compile"]:
    assert r["rmsprop_jax_total_ms"] > 0 and r["optax_total_ms"] > 0


def test_state_bytes_match_the_state_the_optimizer_allocates(
  quick_report: dict[str, Any],
) -> None:
  # Independent count: float32 nu (+ one more array for momentum or centring),
  # each 4 bytes per parameter; bfloat16 storage halves it.
  expected = {"plain": 4.0, "momentum": 8.0, "centered": 8.0}
  for r in quick_report["memory"]["state"]:
    if r["lib"] == "rmsprop_jax":
      scale = 0.5 if r["state_dtype"] == "bfloat16" else 1.0
      assert r["bytes_per_param"] == expected[r["variant"]] * scale


def test_every_target_has_a_verdict(quick_report: dict[str, Any]) -> None:
  for t in quick_report["targets"]:
    assert isinstance(t["pass"], bool), t
