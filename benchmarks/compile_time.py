"""Section 3: time to lower and compile a fresh jitted ``update``.

``jax.jit(update).lower(...)`` and ``.compile()`` of a new function, with
every JAX cache cleared first, for trees of many small leaves (the
compile-bound case). The verdict uses process CPU time, which on a shared
machine measures the work done rather than the neighbours.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import jax
import trees
from common import Tree, optimizer, verdict
from config import COMPILE_VS_OPTAX, Config

LIBS = ("rmsprop_jax", "optax")


def compile_once(lib: str, variant: str, grads: Tree, params: Tree) -> dict[str, float]:
  """Wall and CPU seconds to lower and compile a fresh jitted update.

  All of JAX's caches are cleared first, so nothing traced or compiled by an
  earlier measurement (of either library) is reused.
  """
  jax.clear_caches()
  opt = optimizer(lib, variant)
  state = opt.init(params)
  fn = jax.jit(lambda g, s, p: opt.update(g, s, p), donate_argnums=1)
  w0, c0 = time.perf_counter(), time.process_time()
  lowered = fn.lower(grads, state, params)
  w1 = time.perf_counter()
  lowered.compile()
  w2, c2 = time.perf_counter(), time.process_time()
  return {"lower": w1 - w0, "compile": w2 - w1, "cpu": c2 - c0}


def _medians(lib: str, xs: list[dict[str, float]]) -> dict[str, float]:
  row = {
    f"{lib}_{key}_ms": 1e3 * statistics.median(x[key] for x in xs)
    for key in ("lower", "compile", "cpu")
  }
  row[f"{lib}_total_ms"] = 1e3 * statistics.median(
    x["lower"] + x["compile"] for x in xs
  )
  return row


def bench_case(
  n_leaves: int, variant: str, repeats: int, data: tuple[Tree, Tree]
) -> dict[str, Any]:
  """Medians over ``repeats`` compiles of each library, alternating the order."""
  grads, params = data
  samples: dict[str, list[dict[str, float]]] = {lib: [] for lib in LIBS}
  for r in range(repeats):
    for lib in LIBS[:: 1 if r % 2 == 0 else -1]:
      samples[lib].append(compile_once(lib, variant, grads, params))
  row: dict[str, Any] = {"leaves": n_leaves, "variant": variant}
  for lib, xs in samples.items():
    row.update(_medians(lib, xs))
  row["vs_optax"] = row["rmsprop_jax_total_ms"] / row["optax_total_ms"]
  # The verdict uses CPU time: on a shared machine wall time mostly measures
  # the neighbours, CPU time the work done.
  row["cpu_vs_optax"] = row["rmsprop_jax_cpu_ms"] / row["optax_cpu_ms"]
  row["pass"] = row["cpu_vs_optax"] <= COMPILE_VS_OPTAX
  return row


def bench_compile(cfg: Config) -> list[dict[str, Any]]:
  """Every compile case of the run."""
  rows = []
  for n_leaves, variants, repeats in cfg.compile_cases:
    shapes = trees.uniform(n_leaves, (32, 32))
    data = trees.materialise(shapes, 0.5), trees.materialise(shapes, 1.0)
    for lib in LIBS:  # warm-up: first-use costs of XLA
      compile_once(lib, "plain", *data)
    for variant in variants:
      rows.append(bench_case(n_leaves, variant, repeats, data))
      print(f"  [compile] {n_leaves} / {variant} done", file=sys.stderr, flush=True)
  jax.clear_caches()
  return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One verdict per row, on CPU time."""
  return [
    verdict(
      f"compile {r['leaves']} leaves {r['variant']}: CPU time <= "
      f"{COMPILE_VS_OPTAX}x optax ({r['cpu_vs_optax']:.2f}x)",
      r["cpu_vs_optax"],
      r["pass"],
    )
    for r in rows
  ]
