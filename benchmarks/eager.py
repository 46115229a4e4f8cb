"""Section 2: ``update`` called eagerly, without any user ``jit``.

The notebook case: ``opt.update(grads, state, params)`` called directly, the
state threaded from call to call, for ``rmsprop_jax.rmsprop`` against
``optax.rmsprop`` with the same options, interleaved.
"""

from __future__ import annotations

import sys
from typing import Any

import trees
from common import VARIANTS, Contender, measure, optimizer
from config import EAGER_MIN_LEAVES, EAGER_SPEEDUP, Config
from contenders import EagerUpdate


def bench_one(
  tree: str, shapes: trees.Shapes, variant: str, cfg: Config
) -> dict[str, Any]:
  """One row: one tree, one variant, both libraries."""
  params = trees.materialise(shapes, 1.0)
  grads = trees.materialise(shapes, 0.5)
  runners: dict[str, Contender] = {
    lib: EagerUpdate(optimizer(lib, variant), params, grads)
    for lib in ("rmsprop_jax", "optax")
  }
  times = measure(runners, cfg.eager_timing)
  row: dict[str, Any] = {
    "tree": tree,
    "leaves": len(shapes),
    "params": trees.count(shapes),
    "variant": variant,
    "times": times,
    "rmsprop_jax_ms": times["rmsprop_jax"]["median_ms"],
    "optax_ms": times["optax"]["median_ms"],
  }
  row["speedup"] = row["optax_ms"] / row["rmsprop_jax_ms"]
  row["target_applies"] = len(shapes) >= EAGER_MIN_LEAVES
  row["pass"] = row["speedup"] >= EAGER_SPEEDUP if row["target_applies"] else None
  return row


def bench_eager(cfg: Config) -> list[dict[str, Any]]:
  """Every eager tree of the run, every variant."""
  rows = []
  for tree, shapes in cfg.eager_trees.items():
    for variant in VARIANTS:
      rows.append(bench_one(tree, shapes, variant, cfg))
      print(f"  [eager] {tree} / {variant} done", file=sys.stderr, flush=True)
  return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """A verdict for each row on a tree of at least ``EAGER_MIN_LEAVES`` leaves."""
  return [
    {
      "name": f"eager {r['tree']} {r['variant']}: >= {EAGER_SPEEDUP:g}x faster "
      f"than optax ({r['speedup']:.1f}x)",
      "value": r["speedup"],
      "pass": r["pass"],
    }
    for r in rows
    if r["target_applies"]
  ]
