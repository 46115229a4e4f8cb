"""Section 4: optimizer-state bytes and the compiled train step's buffers.

The state's bytes per parameter, from the sizes of its leaves (plain,
momentum, centred; float32 and bfloat16 state), and
``compiled.memory_analysis()`` of a whole jitted train step (params and state
donated): its temporary bytes and the bytes aliased to donated inputs.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import trees
from common import EXTRA_STATE, VARIANTS, Tree, optimizer, tree_bytes, verdict
from config import Config
from contenders import train_step

LIBS = ("rmsprop_jax", "optax")


def state_row(
  lib: str, variant: str, state_dtype: Any, params: Tree, n: int
) -> dict[str, Any]:
  """The state's bytes per parameter, its fixed bytes, its arrays per leaf."""
  row: dict[str, Any] = {
    "lib": lib,
    "variant": variant,
    "state_dtype": "bfloat16" if state_dtype is not None else "float32",
    "supported": lib == "rmsprop_jax" or state_dtype is None,
  }
  if not row["supported"]:  # optax has no state_dtype
    return row
  extra = {"state_dtype": state_dtype} if state_dtype else {}
  with warnings.catch_warnings():
    # Only the state's size is measured here: the advice against centred
    # RMSProp with bfloat16 state does not apply.
    warnings.simplefilter("ignore", UserWarning)
    state = optimizer(lib, variant, **extra).init(params)
  leaves = jax.tree.leaves(state)
  # Per-parameter arrays are those with a parameter's shape; the rest (the step
  # count) is a fixed handful of bytes however large the model.
  big = [x for x in leaves if x.size > 1]
  row["bytes_per_param"] = tree_bytes(big) / n
  row["fixed_bytes"] = tree_bytes([x for x in leaves if x.size <= 1])
  row["arrays_per_param_leaf"] = len(big) / len(jax.tree.leaves(params))
  return row


def step_row(tree: str, variant: str, params: Tree, grads: Tree) -> dict[str, Any]:
  """``memory_analysis()`` of both libraries' donated train steps."""
  row: dict[str, Any] = {"tree": tree, "variant": variant}
  for lib in LIBS:
    opt = optimizer(lib, variant)
    step = jax.jit(train_step(opt), donate_argnums=(0, 1))
    mem = step.lower(params, opt.init(params), grads).compile().memory_analysis()
    if mem is None:
      raise RuntimeError(f"no memory analysis on {jax.default_backend()}")
    row[lib] = {
      "temp_bytes": int(mem.temp_size_in_bytes),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
    }
  row["param_bytes"] = tree_bytes(params)
  rj, ox = row["rmsprop_jax"]["temp_bytes"], row["optax"]["temp_bytes"]
  row["pass"] = rj <= ox or rj <= 0.01 * row["param_bytes"]
  return row


def bench_memory(cfg: Config) -> dict[str, Any]:
  """State sizes of every variant and dtype; the train step's buffers."""
  shapes = cfg.trees[cfg.memory_tree]
  params = trees.materialise(shapes, 1.0)
  grads = trees.materialise(shapes, 0.5)
  n = trees.count(shapes)
  state_rows = [
    state_row(lib, variant, state_dtype, params, n)
    for variant in VARIANTS
    for state_dtype in (None, jnp.bfloat16)
    for lib in LIBS
  ]
  step_rows = [step_row(cfg.memory_tree, v, params, grads) for v in VARIANTS]
  return {"tree": cfg.memory_tree, "params": n, "state": state_rows, "step": step_rows}


def targets(memory: dict[str, Any]) -> list[dict[str, Any]]:
  """One float32 accumulator per parameter for plain, half in bfloat16."""
  if not memory["state"]:
    return []
  by_key = {(r["lib"], r["variant"], r["state_dtype"]): r for r in memory["state"]}
  out = []
  for variant in VARIANTS:
    want = 4.0 * (1 + EXTRA_STATE[variant])
    f32 = by_key[("rmsprop_jax", variant, "float32")]["bytes_per_param"]
    ox = by_key[("optax", variant, "float32")]["bytes_per_param"]
    name = f"state {variant} float32 == {want:g} B/param (optax {ox:g})"
    out.append(verdict(name, f32, f32 == want))
    bf = by_key[("rmsprop_jax", variant, "bfloat16")]["bytes_per_param"]
    out.append(
      verdict(f"state {variant} bfloat16 == {want / 2:g} B/param", bf, bf == want / 2)
    )
  arrays = by_key[("rmsprop_jax", "plain", "float32")]["arrays_per_param_leaf"]
  out.append(
    verdict("plain: one accumulator array per parameter leaf", arrays, arrays == 1.0)
  )
  for row in memory["step"]:
    name = f"train step {row['variant']} (donated) temp bytes <= optax's or ~0"
    out.append(verdict(name, row["rmsprop_jax"]["temp_bytes"], row["pass"]))
  return out
