"""Section 1: the jitted train step, what users run in production.

``update`` + ``optax.apply_updates`` in one ``jax.jit``, params and state
donated, the outputs threaded into the next step as in training; for
``rmsprop_jax.rmsprop`` against ``optax.rmsprop`` with the same options and the
floor kernel, interleaved. Each contender's achieved GB/s is the bytes its
step must move divided by its time, and is compared with the machine's
measured streaming bandwidth.
"""

from __future__ import annotations

from typing import Any

import trees
from common import Contender, Timing, gbps, measure, rows_per_variant, torch, verdict
from config import JIT_VS_FLOOR, JIT_VS_OPTAX, Config
from contenders import Loop, TorchStep, floor_train, library_train


def contenders(variant: str, params: Any, grads: Any) -> dict[str, Loop]:
  """rmsprop_jax's and optax's train steps and the floor, for one variant."""
  return {
    "rmsprop_jax": library_train("rmsprop_jax", variant, params, grads),
    "optax": library_train("optax", variant, params, grads),
    "floor": floor_train(variant, params, grads),
  }


def throughput(
  times: dict[str, dict[str, float]], moved: dict[str, int], bandwidth_gbps: float
) -> dict[str, Any]:
  """Per contender: ms, achieved GB/s and its fraction of the bandwidth."""
  row: dict[str, Any] = {}
  for name, nbytes in moved.items():
    ms = times[name]["median_ms"]
    row[f"{name}_ms"] = ms
    row[f"{name}_gbps"] = gbps(nbytes, ms)
    row[f"{name}_of_bandwidth"] = row[f"{name}_gbps"] / bandwidth_gbps
  return row


def _torch_times(
  variant: str, shapes: trees.Shapes, cfg: Config
) -> dict[str, dict[str, float]]:
  if torch is None:
    return {}
  # Measured apart: PyTorch's OpenMP workers spin after each step and would
  # slow down whichever XLA computation runs next. Three samples: it is a
  # reference column, without a target.
  runner: dict[str, Contender] = {"torch": TorchStep(variant, shapes)}
  return measure(runner, Timing(3, 1, cfg.jit_timing.min_block_s))


def bench_one(
  tree: str,
  shapes: trees.Shapes,
  data: tuple[Any, Any],
  variant: str,
  cfg: Config,
  bandwidth_gbps: float,
) -> dict[str, Any]:
  """One tree (its shapes, params and grads), one variant: the row's numbers."""
  params, grads = data
  runners = contenders(variant, params, grads)
  moved = {name: run.moved_bytes for name, run in runners.items()}
  times = measure(dict(runners), cfg.jit_timing)
  del runners
  times.update(_torch_times(variant, shapes, cfg))
  row: dict[str, Any] = {
    "times": times,
    "bytes": moved,
    "bytes_per_step": moved["rmsprop_jax"],
    **throughput(times, moved, bandwidth_gbps),
    "torch_ms": times["torch"]["median_ms"] if "torch" in times else None,
  }
  row["vs_optax"] = row["rmsprop_jax_ms"] / row["optax_ms"]
  row["vs_floor"] = row["rmsprop_jax_ms"] / row["floor_ms"]
  row["pass"] = row["vs_optax"] <= JIT_VS_OPTAX and row["vs_floor"] <= JIT_VS_FLOOR
  return row


def bench_jitted(cfg: Config, bandwidth_gbps: float) -> list[dict[str, Any]]:
  """Every tree of the run, every variant."""

  def one(
    tree: str, shapes: trees.Shapes, data: tuple[Any, Any], variant: str
  ) -> dict[str, Any]:
    return bench_one(tree, shapes, data, variant, cfg, bandwidth_gbps)

  return rows_per_variant("jitted", cfg.trees, one)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One verdict per row: against optax and against the floor."""
  return [
    verdict(
      f"jitted {r['tree']} {r['variant']}: <= {JIT_VS_OPTAX}x optax "
      f"({r['vs_optax']:.2f}x), <= {JIT_VS_FLOOR}x floor ({r['vs_floor']:.2f}x)",
      [r["vs_optax"], r["vs_floor"]],
      r["pass"],
    )
    for r in rows
  ]
