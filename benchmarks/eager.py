"""Section 2: ``update`` called eagerly, without any user ``jit``.

The notebook case: ``opt.update(grads, state, params)`` called directly, the
state threaded from call to call, for ``rmsprop_jax.rmsprop`` against JAX's
own dispatch floor (a jitted function taking and returning the same arrays,
with a trivial body) and ``optax.rmsprop`` with the same options, interleaved.
What the floor cannot explain is host overhead; it is reported per leaf.
"""

from __future__ import annotations

from typing import Any

import trees
from common import Contender, Tree, measure, optimizer, rows_per_variant, verdict
from config import (
  EAGER_FLOOR_VARIANTS,
  EAGER_MIN_LEAVES,
  EAGER_SPEEDUP,
  EAGER_VS_FLOOR,
  Config,
)
from contenders import EagerFloor, EagerUpdate


def bench_one(
  tree: str, shapes: trees.Shapes, data: tuple[Tree, Tree], variant: str, cfg: Config
) -> dict[str, Any]:
  """One tree, one variant: both libraries and the floor, the row's numbers."""
  params, grads = data
  ours = optimizer("rmsprop_jax", variant)
  runners: dict[str, Contender] = {
    "rmsprop_jax": EagerUpdate(ours, params, grads),
    "floor": EagerFloor(ours, params, grads),
    "optax": EagerUpdate(optimizer("optax", variant), params, grads),
  }
  times = measure(runners, cfg.eager_timing)
  row: dict[str, Any] = {
    "times": times,
    **{f"{name}_ms": t["median_ms"] for name, t in times.items()},
  }
  row["vs_floor"] = row["rmsprop_jax_ms"] / row["floor_ms"]
  row["overhead_us_per_leaf"] = (
    (row["rmsprop_jax_ms"] - row["floor_ms"]) / len(shapes) * 1e3
  )
  row["speedup"] = row["optax_ms"] / row["rmsprop_jax_ms"]
  row["target_applies"] = len(shapes) >= EAGER_MIN_LEAVES
  row["pass"] = row["speedup"] >= EAGER_SPEEDUP if row["target_applies"] else None
  row["floor_target_applies"] = (
    tree in cfg.eager_floor_trees and variant in EAGER_FLOOR_VARIANTS
  )
  row["floor_pass"] = (
    row["vs_floor"] <= EAGER_VS_FLOOR if row["floor_target_applies"] else None
  )
  return row


def bench_eager(cfg: Config) -> list[dict[str, Any]]:
  """Every eager tree of the run, every variant."""

  def one(
    tree: str, shapes: trees.Shapes, data: tuple[Tree, Tree], variant: str
  ) -> dict[str, Any]:
    return bench_one(tree, shapes, data, variant, cfg)

  return rows_per_variant("eager", cfg.eager_trees, one)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Verdicts: the speed-up over optax, the ratio to the dispatch floor.

  The first on trees of at least ``EAGER_MIN_LEAVES`` leaves, the second on the
  trees and variants it is stated for.
  """
  out = []
  for r in rows:
    name = f"eager {r['tree']} {r['variant']}"
    if r["target_applies"]:
      said = f"{name}: >= {EAGER_SPEEDUP:g}x faster than optax ({r['speedup']:.1f}x)"
      out.append(verdict(said, r["speedup"], r["pass"]))
    if r["floor_target_applies"]:
      said = f"{name}: <= {EAGER_VS_FLOOR:g}x the dispatch floor ({r['vs_floor']:.2f}x)"
      out.append(verdict(said, r["vs_floor"], r["floor_pass"]))
  return out
