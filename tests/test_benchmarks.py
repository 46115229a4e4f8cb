"""Smoke tests of the benchmark scripts: they run and report what they claim.

Timings are never asserted (the machine is shared and noisy). What is checked:
the quick runs complete; their JSON has the documented structure; every
derived number (ratios, GB/s, fractions of the bandwidth, overheads, verdicts)
agrees with the raw medians it is computed from; and the bytes a train step
must move, or the optimizer state holds, agree with an independent count.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import rmsprop_jax
from tests import _bench

ROOT, BENCH = _bench.ROOT, _bench.BENCH
SECTIONS = ("machine", "jitted", "eager", "compile", "memory", "targets")
VARIANTS = {"plain", "momentum", "centered"}
STATE_ARRAYS = {"plain": 1, "momentum": 2, "centered": 2}
LIBS = ("rmsprop_jax", "optax", "floor")
EAGER = ("rmsprop_jax", "floor", "optax")


def _start(*args: str) -> subprocess.Popen[str]:
  return subprocess.Popen(
    [sys.executable, *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=ROOT,
  )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
  try:
    stdout, stderr = proc.communicate(timeout=180)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return proc.returncode, stdout, stderr


def _finished_json(
  quick_runs: dict[str, Any], name: str
) -> tuple[Path, dict[str, Any], str]:
  """The quick run ``name``, waited for: its one JSON file, content and stdout."""
  proc, out = quick_runs[name]
  returncode, stdout, stderr = _finish(proc)
  assert returncode == 0, stderr[-4000:]
  return (*_bench.only_json(out), stdout)


@pytest.fixture(scope="module")
def quick_runs(
  tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.Popen[str], Path]]:
  """The quick runs, started together: each mostly keeps one core busy."""
  json_out = tmp_path_factory.mktemp("bench") / "quick.json"
  profile_dir = tmp_path_factory.mktemp("accelerator")
  low_memory_dir = tmp_path_factory.mktemp("low_memory")
  embedding_dir = tmp_path_factory.mktemp("embedding")
  run_py = _start(str(BENCH / "run.py"), "--quick", "--json", str(json_out))
  accel = _start(str(BENCH / "accelerator.py"), "--quick", "--out", str(profile_dir))
  low_memory = _start(
    str(BENCH / "low_memory.py"),
    "--quick",
    "--out",
    str(low_memory_dir / "json"),
    "--plots",
    str(low_memory_dir / "plots"),
  )
  embedding = _start(
    str(BENCH / "embedding.py"), "--quick", "--out", str(embedding_dir)
  )
  return {
    "run": (run_py, json_out),
    "accelerator": (accel, profile_dir),
    "low_memory": (low_memory, low_memory_dir),
    "embedding": (embedding, embedding_dir),
  }


def float32_step_bytes(n: int, variant: str) -> int:
  """Read params, grads and the state arrays; write params and the state."""
  return 4 * n * (1 + 1 + STATE_ARRAYS[variant]) + 4 * n * (1 + STATE_ARRAYS[variant])


def approx(x: float) -> Any:
  return pytest.approx(x, rel=1e-9)


def rows_and_medians(
  rows: list[dict[str, Any]],
  names: tuple[str, ...],
  ratios: dict[str, tuple[str, str]],
) -> list[tuple[dict[str, Any], dict[str, float]]]:
  """Each row with the raw median time of each of ``names``.

  Asserts first that the rows cover every variant, that each row's
  ``<name>_ms`` is that raw median (and positive), and that its entry
  ``key`` of ``ratios = {key: (a, b)}`` is the median of ``a`` over that of
  ``b``.
  """
  assert {r["variant"] for r in rows} == VARIANTS
  out = []
  for r in rows:
    ms = {name: r["times"][name]["median_ms"] for name in names}
    for name in names:
      assert r[f"{name}_ms"] == ms[name] > 0
    for key, (a, b) in ratios.items():
      assert r[key] == approx(ms[a] / ms[b]), key
    out.append((r, ms))
  return out


# --------------------------------------------------------------------------
# benchmarks/run.py --quick
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(quick_runs: dict[str, Any]) -> tuple[dict[str, Any], str]:
  proc, out = quick_runs["run"]
  returncode, stdout, stderr = _finish(proc)
  assert returncode == 0, stderr[-4000:]
  return json.loads(out.read_text()), stdout


@pytest.fixture(scope="module")
def quick_report(quick_run: tuple[dict[str, Any], str]) -> dict[str, Any]:
  return quick_run[0]


def test_quick_run_reports_every_section(quick_report: dict[str, Any]) -> None:
  for section in SECTIONS:
    assert quick_report[section], f"section {section!r} is empty"


def test_jitted_ratios_are_those_of_the_raw_medians(
  quick_report: dict[str, Any],
) -> None:
  ratios = {"vs_optax": ("rmsprop_jax", "optax"), "vs_floor": ("rmsprop_jax", "floor")}
  for r, _ in rows_and_medians(quick_report["jitted"], LIBS, ratios):
    assert r["pass"] == (r["vs_optax"] <= 1.05 and r["vs_floor"] <= 1.10)


def test_jitted_bytes_per_step_match_an_independent_count(
  quick_report: dict[str, Any],
) -> None:
  for r in quick_report["jitted"]:
    want = float32_step_bytes(r["params"], r["variant"])
    assert r["bytes_per_step"] == want
    assert r["bytes"] == {lib: want for lib in LIBS}


def test_jitted_bandwidth_figures_are_bytes_over_time(
  quick_report: dict[str, Any],
) -> None:
  bw = quick_report["machine"]["bandwidth"]
  assert bw["copy"]["bytes"] == 2 * bw["array_bytes"]
  assert bw["triad"]["bytes"] == 3 * bw["array_bytes"]
  for kernel in ("copy", "triad"):
    k = bw[kernel]
    assert k["gbps"] == approx(k["bytes"] / k["median_ms"] / 1e6)
  assert bw["reference_gbps"] == bw["copy"]["gbps"]
  for r in quick_report["jitted"]:
    for lib in LIBS:
      achieved = r["bytes"][lib] / r[f"{lib}_ms"] / 1e6
      assert r[f"{lib}_gbps"] == approx(achieved)
      assert r[f"{lib}_of_bandwidth"] == approx(achieved / bw["reference_gbps"])


def test_every_time_summarises_its_samples(quick_report: dict[str, Any]) -> None:
  for r in quick_report["jitted"] + quick_report["eager"]:
    for t in r["times"].values():
      # (the quartiles are interpolated: q1 may lie below the minimum)
      assert 0 < t["min_ms"] <= t["median_ms"]
      assert t["q1_ms"] <= t["median_ms"] <= t["q3_ms"]
      assert t["cpu_ms"] >= 0 and t["first_call_s"] > 0


def test_eager_ratios_and_overheads_are_those_of_the_raw_medians(
  quick_report: dict[str, Any],
) -> None:
  ratios = {"speedup": ("optax", "rmsprop_jax"), "vs_floor": ("rmsprop_jax", "floor")}
  rows = rows_and_medians(quick_report["eager"], EAGER, ratios)
  for r, ms in rows:
    overhead = (ms["rmsprop_jax"] - ms["floor"]) / r["leaves"] * 1000
    assert r["overhead_us_per_leaf"] == approx(overhead)
    assert r["target_applies"] == (r["leaves"] >= 100)
    assert r["pass"] == (r["speedup"] >= 10 if r["target_applies"] else None)
    if r["variant"] == "centered":
      assert not r["floor_target_applies"]
    want = r["vs_floor"] <= 1.2 if r["floor_target_applies"] else None
    assert r["floor_pass"] == want
  # The floor target holds on both trees of small leaves, plain and momentum.
  stated = {(r["tree"], r["variant"]) for r, _ in rows if r["floor_target_applies"]}
  assert {v for _, v in stated} == {"plain", "momentum"} and len(stated) == 4


def test_eager_floor_takes_and_returns_the_arrays_of_the_update() -> None:
  common = _bench.module("common")
  contenders = _bench.module("contenders")
  params = {"w": jnp.ones((8, 8)), "b": jnp.ones((8,))}
  grads = {"w": jnp.full((8, 8), 0.5), "b": jnp.full((8,), 0.5)}
  for variant in sorted(VARIANTS):
    opt = common.optimizer("rmsprop_jax", variant)
    update = contenders.EagerUpdate(opt, params, grads)
    floor = contenders.EagerFloor(opt, params, grads)
    for run in (update, floor):
      run()
      run.wait()
    got = jax.tree.map(jnp.shape, (floor.updates, floor.state))
    want = jax.tree.map(jnp.shape, (update.updates, update.state))
    assert got == want, variant
    assert len(jax.tree.leaves(floor.state)) == 2 * STATE_ARRAYS[variant]


def test_compile_ratios_are_those_of_the_raw_medians(
  quick_report: dict[str, Any],
) -> None:
  assert {r["variant"] for r in quick_report["compile"]} >= VARIANTS
  for r in quick_report["compile"]:
    assert r["rmsprop_jax_total_ms"] > 0 and r["optax_total_ms"] > 0
    assert r["vs_optax"] == approx(r["rmsprop_jax_total_ms"] / r["optax_total_ms"])
    assert r["cpu_vs_optax"] == approx(r["rmsprop_jax_cpu_ms"] / r["optax_cpu_ms"])
    assert r["pass"] == (r["cpu_vs_optax"] <= 1.05)


def test_state_bytes_match_the_state_the_optimizer_allocates(
  quick_report: dict[str, Any],
) -> None:
  # Independent count: float32 nu (+ one more array for momentum or centring),
  # each 4 bytes per parameter; bfloat16 storage halves it.
  for r in quick_report["memory"]["state"]:
    if r["lib"] == "rmsprop_jax":
      scale = 0.5 if r["state_dtype"] == "bfloat16" else 1.0
      assert r["bytes_per_param"] == 4.0 * STATE_ARRAYS[r["variant"]] * scale


def test_every_row_has_its_verdict_and_the_summary_counts_them(
  quick_run: tuple[dict[str, Any], str],
) -> None:
  report, stdout = quick_run
  n_eager = sum(
    r["target_applies"] + r["floor_target_applies"] for r in report["eager"]
  )
  n_rows = len(report["jitted"]) + n_eager + len(report["compile"])
  # 6 state sizes, one accumulator per leaf, 3 train steps' temporaries
  assert len(report["targets"]) == n_rows + 6 + 1 + 3
  for t in report["targets"]:
    assert isinstance(t["pass"], bool), t
  n_pass = sum(t["pass"] for t in report["targets"])
  assert f"{n_pass} PASS, {len(report['targets']) - n_pass} MISS" in stdout


# --------------------------------------------------------------------------
# benchmarks/accelerator.py --quick (on whatever device the tests run)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profile(quick_runs: dict[str, Any]) -> dict[str, Any]:
  path, result, stdout = _finished_json(quick_runs, "accelerator")
  assert path.name == f"{result['device']['slug']}-quick.json"
  assert str(path) in stdout
  return result


def test_profile_describes_the_device(profile: dict[str, Any]) -> None:
  assert profile["schema"] == 1 and profile["quick"] is True
  device = profile["device"]
  dev = jax.devices()[0]
  assert device["platform"] == dev.platform
  assert device["device_kind"] == dev.device_kind
  assert device["jax"] == jax.__version__
  assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", device["slug"])
  if dev.platform == "cpu":
    assert device["slug"].startswith("cpu-")
    assert device["nvidia_smi"] is None


def test_profile_bandwidth_is_bytes_read_and_written_over_time(
  profile: dict[str, Any],
) -> None:
  bw = profile["bandwidth"]
  assert bw["copy"]["bytes"] == 2 * bw["array_bytes"]
  assert bw["reference_gbps"] == approx(
    bw["copy"]["bytes"] / bw["copy"]["median_ms"] / 1e6
  )


def test_profile_covers_every_tree_variant_and_state_dtype(
  profile: dict[str, Any],
) -> None:
  rows = profile["steps"]
  trees = {r["tree"] for r in rows}
  assert len(rows) == 3 * len(trees) and len(trees) >= 2
  for r in rows:
    names = set(r["contenders"])
    assert names >= set(LIBS)
    extra = {"rmsprop_jax bfloat16", "rmsprop_jax float8_e4m3fn"}
    assert names - set(LIBS) == (extra if r["variant"] == "plain" else set())
    assert set(r["state_dtype_vs_float32"]) == {n.split()[1] for n in names - set(LIBS)}


def test_profile_ratios_and_rates_are_those_of_the_raw_medians(
  profile: dict[str, Any],
) -> None:
  copy = profile["bandwidth"]["reference_gbps"]
  for r in profile["steps"]:
    c = r["contenders"]
    ms = {name: x["median_ms"] for name, x in c.items()}
    assert r["vs_optax"] == approx(ms["rmsprop_jax"] / ms["optax"])
    assert r["vs_floor"] == approx(ms["rmsprop_jax"] / ms["floor"])
    for dtype, ratio in r["state_dtype_vs_float32"].items():
      assert ratio == approx(ms[f"rmsprop_jax {dtype}"] / ms["rmsprop_jax"])
    for x in c.values():
      assert x["q1_ms"] <= x["median_ms"] <= x["q3_ms"]
      assert x["gbps"] == approx(x["bytes_per_step"] / x["median_ms"] / 1e6)
      assert x["of_copy"] == approx(x["gbps"] / copy)


def test_profile_bytes_per_step_match_an_independent_count(
  profile: dict[str, Any],
) -> None:
  for r in profile["steps"]:
    n, c = r["params"], r["contenders"]
    for lib in LIBS:
      assert c[lib]["bytes_per_step"] == float32_step_bytes(n, r["variant"])
    if r["variant"] != "plain":
      continue
    # params read and written, grads read (float32); nu read and written.
    assert c["rmsprop_jax bfloat16"]["bytes_per_step"] == 12 * n + 2 * 2 * n
    # float8: a byte per parameter plus block scales, or float32 for small leaves.
    f8 = c["rmsprop_jax float8_e4m3fn"]["bytes_per_step"]
    assert 12 * n + 2 * n < f8 < 12 * n + 2 * 4 * n


def test_profile_float8_bytes_match_the_state_the_optimizer_allocates(
  profile: dict[str, Any],
) -> None:
  row = next(
    r for r in profile["steps"] if r["leaves"] == 1 and r["variant"] == "plain"
  )
  n = row["params"]
  opt = rmsprop_jax.rmsprop(1e-3, state_dtype=jnp.float8_e4m3fn)
  state = opt.init({"w": jnp.zeros((n,))})
  nu_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  want = 12 * n + 2 * nu_bytes
  assert row["contenders"]["rmsprop_jax float8_e4m3fn"]["bytes_per_step"] == want


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the guard is for CPUs")
def test_full_profile_on_a_cpu_stops_with_a_message(tmp_path: Path) -> None:
  returncode, _, stderr = _finish(
    _start(str(BENCH / "accelerator.py"), "--out", str(tmp_path))
  )
  assert returncode == 2
  assert "--quick" in stderr and "--allow-cpu" in stderr
  assert not list(tmp_path.iterdir())


def test_device_names_become_file_names() -> None:
  slugify = _bench.module("common").slugify
  assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
  assert slugify("TPU v5 lite") == "tpu-v5-lite"
  assert slugify("Intel(R) Xeon(R) Processor") == "intel-r-xeon-r-processor"


# --------------------------------------------------------------------------
# benchmarks/low_memory.py --quick --plots DIR
# --------------------------------------------------------------------------

LOW_MEMORY_DTYPES = {"float32", "bfloat16", "float8_e4m3fn", "float8_e5m2"}


@pytest.fixture(scope="module")
def low_memory(quick_runs: dict[str, Any]) -> dict[str, Any]:
  proc, out = quick_runs["low_memory"]
  returncode, stdout, stderr = _finish(proc)
  assert returncode == 0, stderr[-4000:]
  files = list((out / "json").iterdir())
  assert len(files) == 1, files
  result = json.loads(files[0].read_text())
  assert files[0].name == f"low-memory-{result['machine']['slug']}-quick.json"
  assert str(files[0]) in stdout
  # The figure goes where --plots says, and nowhere else.
  assert [p.name for p in (out / "plots").iterdir()] == ["low_memory_parity.png"]
  assert (out / "plots" / "low_memory_parity.png").read_bytes()[
    :8
  ] == b"\x89PNG\r\n\x1a\n"
  return result


def test_low_memory_describes_the_run(low_memory: dict[str, Any]) -> None:
  assert low_memory["schema"] == 1 and low_memory["quick"] is True
  m = low_memory["machine"]
  assert m["jax"] == jax.__version__ and m["rmsprop_jax"] == rmsprop_jax.__version__
  assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m["slug"])
  if m["backend"] == "cpu":
    assert (
      m["slug"] == f"cpu-{_bench.module('common').slugify(m['cpu'])}-{m['cores']}core"
    )
  model = low_memory["model"]
  assert model["params"] == sum(math.prod(s) for s in model["shapes"].values())
  assert model["leaves"] == len(model["shapes"])


def float8_state_bytes(shape: tuple[int, ...]) -> int:
  """Bytes of one leaf's 8-bit state array: codes and block scales.

  One byte per element and a float32 scale per block of at most 256 elements
  of a row of the last axis; leaves under 4096 elements stay float32.
  """
  n = math.prod(shape)
  if n < 4096:
    return 4 * n
  rows, last = n // shape[-1], shape[-1]
  return n + 4 * rows * math.ceil(last / 256)


def test_low_memory_state_bytes_match_an_independent_count(
  low_memory: dict[str, Any],
) -> None:
  shapes = [tuple(s) for s in low_memory["model"]["shapes"].values()]
  n = low_memory["model"]["params"]
  f8 = sum(float8_state_bytes(s) for s in shapes) / n
  want = {"float32": 4.0, "bfloat16": 2.0, "float8_e4m3fn": f8, "float8_e5m2": f8}
  rows = {r["state_dtype"]: r for r in low_memory["memory"]}
  assert set(rows) == LOW_MEMORY_DTYPES
  for dtype, r in rows.items():
    assert r["plain"] == approx(want[dtype])
    # nu, mu and the trace: three arrays of the same layout.
    assert r["momentum_centered"] == approx(3 * want[dtype])


def test_low_memory_speed_ratios_are_those_of_the_raw_times(
  low_memory: dict[str, Any],
) -> None:
  speed = low_memory["speed"]
  assert set(speed) == LOW_MEMORY_DTYPES
  for t in speed.values():
    assert 0 < t["min_ms"] <= t["median_ms"]
    assert t["q1_ms"] <= t["median_ms"] <= t["q3_ms"]
    for key in ("min", "median", "cpu"):
      ratio = t[f"{key}_ms"] / speed["float32"][f"{key}_ms"]
      assert t["vs_float32"][key] == approx(ratio)
  assert speed["float32"]["vs_float32"] == {"min": 1.0, "median": 1.0, "cpu": 1.0}


def test_low_memory_parity_curves_start_together_and_fall(
  low_memory: dict[str, Any],
) -> None:
  parity = low_memory["parity"]
  assert set(parity) == {"mlp", "lm"}
  for task in parity.values():
    steps = task["steps"]
    assert steps[0] == 0 and len(set(steps)) == len(steps) > 1
    ref = task["dtypes"]["float32"]
    assert ref["worst_rel_diff"] == 0.0
    assert len(task["dtypes"]) >= 2, "float32 and at least one 8-bit format"
    for d in task["dtypes"].values():
      for run, final, first in zip(d["losses"], d["final"], ref["losses"], strict=True):
        assert len(run) == len(steps) and all(math.isfinite(x) for x in run)
        assert run[0] == first[0], "same seed: the same initial parameters"
        assert run[-1] == final < run[0], "training lowers the held-out loss"
      rel = [abs(f - r) / r for f, r in zip(d["final"], ref["final"], strict=True)]
      assert d["worst_rel_diff"] == approx(max(rel))


# --------------------------------------------------------------------------
# benchmarks/embedding.py --quick
# --------------------------------------------------------------------------

PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"


@pytest.fixture(scope="module")
def embedding(quick_runs: dict[str, Any]) -> dict[str, Any]:
  path, result, _ = _finished_json(quick_runs, "embedding")
  assert path.name == f"embedding-{result['machine']['slug']}-quick.json"
  assert result["schema"] == 1 and result["quick"] is True
  return result


def test_embedding_covers_every_variant_with_both_steps(
  embedding: dict[str, Any],
) -> None:
  assert [r["variant"] for r in embedding["steps"]] == ["plain", "momentum", "centered"]
  for r in embedding["steps"]:
    assert set(r["times"]) == {"dense", "lazy"}
    for t in r["times"].values():
      assert 0 < t["min_ms"] <= t["median_ms"] and t["first_call_s"] > 0


def test_embedding_ratios_and_rates_are_those_of_the_raw_medians(
  embedding: dict[str, Any],
) -> None:
  copy = embedding["machine"]["bandwidth"]["reference_gbps"]
  for r in embedding["steps"]:
    ms = {name: r["times"][name]["median_ms"] for name in ("dense", "lazy")}
    assert r["dense_ms"] == ms["dense"] and r["lazy_ms"] == ms["lazy"]
    assert r["vs_dense"] == approx(ms["lazy"] / ms["dense"])
    for name in ms:
      assert r["gbps"][name] == approx(r["bytes"][name] / ms[name] / 1e6)
      assert r["of_bandwidth"][name] == approx(r["gbps"][name] / copy)
    assert r["pass"] == (r["vs_dense"] <= 1.3)
  assert [t["pass"] for t in embedding["targets"]] == [
    r["pass"] for r in embedding["steps"]
  ]


def test_embedding_bytes_match_an_independent_count(embedding: dict[str, Any]) -> None:
  c = embedding["config"]
  n = c["rows"] * c["width"]
  assert 0 < c["touched_rows"] <= c["lookups"] < c["rows"]
  for r in embedding["steps"]:
    dense = float32_step_bytes(n, r["variant"])
    assert r["bytes"]["dense"] == dense
    # The gradient read once, then the touched rows' params and state.
    touched = (dense - 4 * n) * c["touched_rows"] / c["rows"]
    assert r["bytes"]["lazy"] == pytest.approx(4 * n + touched, abs=1)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's loop structure")
def test_embedding_lazy_step_updates_the_table_in_place(
  embedding: dict[str, Any],
) -> None:
  # A copy would be a fresh table-sized buffer every step; the lazy step adds
  # one loop (the row test) to the dense step's.
  for r in embedding["steps"]:
    dense, lazy = r["hlo"]["dense"], r["hlo"]["lazy"]
    assert dense["copies"] == lazy["copies"] == 0, r["variant"]
    assert lazy["fusions"] == dense["fusions"] + 1, r["variant"]


def test_performance_page_quotes_the_committed_embedding_run() -> None:
  path, stored = _bench.stored_result(PERFORMANCE_PAGE, "embedding")
  assert stored["quick"] is False and stored["config"]["rows"] == 1_000_000
  _bench.assert_report_on_page("embedding.py", path, PERFORMANCE_PAGE, tables=2)
