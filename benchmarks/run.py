"""Benchmarks rmsprop_jax against optax, a memory-bandwidth floor and PyTorch.

Usage::

  python benchmarks/run.py                # full run, a few minutes on 2 cores
  python benchmarks/run.py --quick        # seconds-long smoke run
  python benchmarks/run.py --json out.json

Sections (see benchmarks/README.md for what each measures and why):

1. jitted ``update`` (the production case) vs ``optax.rmsprop`` and the floor;
2. eager ``update`` (no user ``jit``, the notebook case) vs ``optax.rmsprop``;
3. compile time (lower + compile) vs ``optax.rmsprop``;
4. optimizer-state bytes per parameter and the compiled step's temporaries.

Contenders are interleaved (round-robin, rotating the order every repeat) in
one process, so slow drifts of a shared machine hit all of them alike; every
number is a median over the repeated samples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trees  # noqa: E402

import rmsprop_jax  # noqa: E402

try:  # optional contender
  import torch  # pyright: ignore[reportMissingImports]
except ImportError:  # pragma: no cover - depends on the environment
  torch = None

# The three configurations the targets are stated for. Everything else is left
# at the shared defaults (lr 1e-3, decay 0.9, eps 1e-8, eps inside the root).
VARIANTS: dict[str, dict[str, Any]] = {
  "plain": {},
  "momentum": {"momentum": 0.9},
  "centered": {"centered": True},
}
# State arrays per parameter besides nu: the trace or the first moment.
EXTRA_STATE = {"plain": 0, "momentum": 1, "centered": 1}
LR = 1e-3
Tree = Any  # a pytree of arrays

# Targets; the tolerances absorb the run-to-run noise of a shared machine.
JIT_VS_OPTAX = 1.05
JIT_VS_FLOOR = 1.10
EAGER_SPEEDUP = 10.0
EAGER_MIN_LEAVES = 100
COMPILE_VS_OPTAX = 1.05


@dataclasses.dataclass
class Config:
  """Sizes and repeat counts of one run."""

  trees: dict[str, trees.Shapes]
  eager_trees: dict[str, trees.Shapes]
  compile_cases: tuple[
    tuple[int, tuple[str, ...], int], ...
  ]  # leaves, variants, repeats
  memory_tree: str
  jit_repeats: int
  jit_steps: int
  eager_repeats: int
  eager_steps: int
  min_block_s: float  # fast steps are repeated to fill this many seconds


def full_config() -> Config:
  big = {
    "1 leaf 16M": trees.single_leaf(16 * 1024 * 1024),
    "ResNet-50": trees.resnet50(),
    "GPT-2-style": trees.transformer(),
  }
  return Config(
    trees=big,
    # No single leaf here: the eager target is about many leaves, and optax's
    # eager step on 16M parameters takes seconds.
    eager_trees={
      "100 x (64,64)": trees.uniform(100),
      "ResNet-50": big["ResNet-50"],
      "GPT-2-style": big["GPT-2-style"],
    },
    # Compile times of ~0.3 s vary by 5-10% on a shared machine: medians of 7.
    compile_cases=((100, tuple(VARIANTS), 7), (1000, ("plain",), 3)),
    memory_tree="ResNet-50",
    jit_repeats=10,
    jit_steps=1,
    eager_repeats=5,
    eager_steps=1,
    min_block_s=0.2,
  )


def quick_config() -> Config:
  # A smoke run: tiny trees with few distinct shapes, since compiling (not
  # running) dominates at this size.
  small = {
    "1 leaf 64K": trees.single_leaf(64 * 1024),
    "32 x (32,32)": trees.uniform(32, (32, 32)),
  }
  return Config(
    trees=small,
    eager_trees={"100 x (16,16)": trees.uniform(100, (16, 16))},
    compile_cases=((10, tuple(VARIANTS), 1), (100, ("plain",), 1)),
    memory_tree="32 x (32,32)",
    jit_repeats=2,
    jit_steps=2,
    eager_repeats=1,
    eager_steps=2,
    min_block_s=0.02,
  )


# --------------------------------------------------------------------------
# Contenders. Each is a zero-argument callable doing one step (and waiting for
# it); it keeps its own state, so a donated state is threaded like in training.
# --------------------------------------------------------------------------


def _optimizer(lib: str, variant: str, **extra: Any) -> optax.GradientTransformation:
  kwargs = {**VARIANTS[variant], **extra}
  if lib == "rmsprop_jax":
    return rmsprop_jax.rmsprop(LR, **kwargs)
  return optax.rmsprop(LR, **kwargs)


class OptaxStep:
  """One ``update`` call of an optax-style optimizer, jitted or eager.

  Jitted, the state is donated: XLA may then write the new state into the old
  buffers, as a training loop that jits its step with donation does.
  """

  def __init__(
    self, opt: optax.GradientTransformation, grads: Tree, params: Tree, jit: bool
  ):
    self.grads, self.params = grads, params
    self.state = opt.init(params)
    if jit:
      self.fn = jax.jit(lambda g, s, p: opt.update(g, s, p), donate_argnums=1)
    else:
      self.fn = opt.update

  def __call__(self) -> None:
    updates, self.state = self.fn(self.grads, self.state, self.params)
    jax.block_until_ready((updates, self.state))


def floor_update(
  grads: Tree, state: tuple[Tree, ...], params: Tree
) -> tuple[Tree, tuple[Tree, ...]]:
  """The floor: RMSProp's memory traffic and data flow, without its arithmetic.

  Reads the gradient and every state array, writes every state array and an
  update -- the bytes an RMSProp step must move -- with one operation per
  output element: ``state_i + g`` for each state array and ``g - new_state_0``
  for the update, which (like RMSProp's update) needs the new first state
  array. The data flow matters to XLA's schedule: with two outputs that do not
  depend on each other, the CPU backend inserts copies around the donated
  buffers and the "floor" becomes slower than RMSProp itself.
  """
  del params
  new_state = tuple(jax.tree.map(jnp.add, s, grads) for s in state)
  updates = jax.tree.map(jnp.subtract, grads, new_state[0])
  return updates, new_state


class FloorStep(OptaxStep):
  """The floor kernel, jitted with the state donated like the optimizers."""

  def __init__(self, variant: str, grads: Tree, params: Tree):
    self.grads, self.params = grads, params
    n_state = 1 + EXTRA_STATE[variant]
    self.state = tuple(jax.tree.map(jnp.zeros_like, params) for _ in range(n_state))
    self.fn = jax.jit(floor_update, donate_argnums=1)


class TorchStep:
  """``torch.optim.RMSprop(foreach=True).step()`` on the same shapes."""

  def __init__(self, variant: str, shapes: trees.Shapes):
    assert torch is not None
    kwargs = {"momentum": 0.9} if variant == "momentum" else {}
    params = []
    for name, shape in shapes.items():
      one = {name: shape}  # same values as the JAX contenders get
      p = torch.tensor(np.asarray(trees.materialise(one, 1.0)[name]))
      p.grad = torch.tensor(np.asarray(trees.materialise(one, 0.5)[name]))
      params.append(p)
    self.opt = torch.optim.RMSprop(
      params,
      lr=LR,
      alpha=0.9,
      eps=1e-8,
      centered=variant == "centered",
      foreach=True,
      **kwargs,
    )

  def __call__(self) -> None:
    assert torch is not None
    with torch.no_grad():
      self.opt.step()


def measure(
  runners: dict[str, Callable[[], None]],
  repeats: int,
  steps: int,
  min_block_s: float,
) -> dict[str, dict[str, float]]:
  """Median (and quartiles) of per-step wall time in ms, interleaved."""
  per_call = {}
  for name, run in runners.items():  # compile, allocate, warm the caches
    run()
    t0 = time.perf_counter()
    run()
    per_call[name] = time.perf_counter() - t0
  # Fast steps get more samples (min_block_s of them per block): a median
  # of a handful of millisecond calls on a shared machine is mostly noise.
  steps = max(steps, min(200, int(min_block_s / max(per_call.values()))))
  samples: dict[str, list[float]] = {k: [] for k in runners}
  names = list(runners)
  for r in range(repeats):
    order = names[r % len(names) :] + names[: r % len(names)]
    for name in order:
      for _ in range(steps):
        t0 = time.perf_counter()
        runners[name]()
        samples[name].append((time.perf_counter() - t0) * 1e3)
  return {k: _summary(v) for k, v in samples.items()}


def _summary(xs: Sequence[float]) -> dict[str, float]:
  qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
  return {"median_ms": statistics.median(xs), "q1_ms": qs[0], "q3_ms": qs[2]}


def floor_bytes(n_params: int, variant: str) -> int:
  """Bytes the floor moves per step: read g and k state arrays, write k + u."""
  arrays = 2 * (1 + 1 + EXTRA_STATE[variant])
  return 4 * n_params * arrays


# --------------------------------------------------------------------------
# Sections.
# --------------------------------------------------------------------------


def bench_jitted(cfg: Config) -> list[dict[str, Any]]:
  rows = []
  for tree_name, shapes in cfg.trees.items():
    params = trees.materialise(shapes, 1.0)
    grads = trees.materialise(shapes, 0.5)
    n = trees.count(shapes)
    for variant in VARIANTS:
      runners: dict[str, Callable[[], None]] = {
        "rmsprop_jax": OptaxStep(
          _optimizer("rmsprop_jax", variant), grads, params, True
        ),
        "optax": OptaxStep(_optimizer("optax", variant), grads, params, True),
        "floor": FloorStep(variant, grads, params),
      }
      t = measure(runners, cfg.jit_repeats, cfg.jit_steps, cfg.min_block_s)
      del runners
      if torch is not None:
        # Measured apart: PyTorch's OpenMP workers spin after each step and
        # would slow down whichever XLA computation runs next. Three samples:
        # it is a reference column, without a target.
        torch_step = {"torch": TorchStep(variant, shapes)}
        t.update(measure(torch_step, 3, 1, cfg.min_block_s))
      ms = {k: v["median_ms"] for k, v in t.items()}
      nbytes = floor_bytes(n, variant)
      row = {
        "tree": tree_name,
        "leaves": len(shapes),
        "params": n,
        "variant": variant,
        "times": t,
        "rmsprop_jax_ms": ms["rmsprop_jax"],
        "optax_ms": ms["optax"],
        "floor_ms": ms["floor"],
        "torch_ms": ms.get("torch"),
        "vs_optax": ms["rmsprop_jax"] / ms["optax"],
        "vs_floor": ms["rmsprop_jax"] / ms["floor"],
        "rmsprop_jax_gbps": nbytes / ms["rmsprop_jax"] / 1e6,
        "floor_gbps": nbytes / ms["floor"] / 1e6,
      }
      row["pass"] = row["vs_optax"] <= JIT_VS_OPTAX and row["vs_floor"] <= JIT_VS_FLOOR
      rows.append(row)
      _print_progress("jitted", row)
  return rows


def bench_eager(cfg: Config) -> list[dict[str, Any]]:
  rows = []
  for tree_name, shapes in cfg.eager_trees.items():
    params = trees.materialise(shapes, 1.0)
    grads = trees.materialise(shapes, 0.5)
    for variant in VARIANTS:
      runners = {
        lib: OptaxStep(_optimizer(lib, variant), grads, params, False)
        for lib in ("rmsprop_jax", "optax")
      }
      t = measure(runners, cfg.eager_repeats, cfg.eager_steps, cfg.min_block_s)
      ms = {k: v["median_ms"] for k, v in t.items()}
      row = {
        "tree": tree_name,
        "leaves": len(shapes),
        "params": trees.count(shapes),
        "variant": variant,
        "times": t,
        "rmsprop_jax_ms": ms["rmsprop_jax"],
        "optax_ms": ms["optax"],
        "speedup": ms["optax"] / ms["rmsprop_jax"],
      }
      row["target_applies"] = len(shapes) >= EAGER_MIN_LEAVES
      row["pass"] = row["speedup"] >= EAGER_SPEEDUP if row["target_applies"] else None
      rows.append(row)
      _print_progress("eager", row)
  return rows


def _compile_once(
  lib: str, variant: str, grads: Tree, params: Tree
) -> dict[str, float]:
  """Wall and CPU seconds to lower and compile a fresh jitted update.

  All of JAX's caches are cleared first, so nothing traced or compiled by an
  earlier measurement (of either library) is reused.
  """
  jax.clear_caches()
  opt = _optimizer(lib, variant)
  state = opt.init(params)
  fn = jax.jit(lambda g, s, p: opt.update(g, s, p), donate_argnums=1)
  w0, c0 = time.perf_counter(), time.process_time()
  lowered = fn.lower(grads, state, params)
  w1 = time.perf_counter()
  lowered.compile()
  w2, c2 = time.perf_counter(), time.process_time()
  return {"lower": w1 - w0, "compile": w2 - w1, "cpu": c2 - c0}


def bench_compile(cfg: Config) -> list[dict[str, Any]]:
  rows = []
  for n_leaves, variants, repeats in cfg.compile_cases:
    shapes = trees.uniform(n_leaves, (32, 32))
    params = trees.materialise(shapes, 1.0)
    grads = trees.materialise(shapes, 0.5)
    for lib in ("rmsprop_jax", "optax"):  # warm-up: first-use costs of XLA
      _compile_once(lib, "plain", grads, params)
    for variant in variants:
      samples: dict[str, list[dict[str, float]]] = {"rmsprop_jax": [], "optax": []}
      for r in range(repeats):
        order = ["rmsprop_jax", "optax"][:: 1 if r % 2 == 0 else -1]
        for lib in order:
          samples[lib].append(_compile_once(lib, variant, grads, params))
      row: dict[str, Any] = {"leaves": n_leaves, "variant": variant}
      for lib, xs in samples.items():
        for key in ("lower", "compile", "cpu"):
          row[f"{lib}_{key}_ms"] = 1e3 * statistics.median(x[key] for x in xs)
        row[f"{lib}_total_ms"] = 1e3 * statistics.median(
          x["lower"] + x["compile"] for x in xs
        )
      row["vs_optax"] = row["rmsprop_jax_total_ms"] / row["optax_total_ms"]
      # The verdict uses CPU time: on a shared machine wall time mostly
      # measures the neighbours, CPU time the work done.
      row["cpu_vs_optax"] = row["rmsprop_jax_cpu_ms"] / row["optax_cpu_ms"]
      row["pass"] = row["cpu_vs_optax"] <= COMPILE_VS_OPTAX
      rows.append(row)
      _print_progress("compile", row)
  jax.clear_caches()
  return rows


def _tree_bytes(tree: Tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _state_row(
  lib: str, variant: str, state_dtype: Any, params: Tree, n: int
) -> dict[str, Any]:
  if lib == "optax" and state_dtype is not None:
    return {
      "lib": lib,
      "variant": variant,
      "state_dtype": "bfloat16",
      "supported": False,
    }
  extra = {"state_dtype": state_dtype} if state_dtype else {}
  with warnings.catch_warnings():
    # Only the state's size is measured here: the advice against centred
    # RMSProp with bfloat16 state does not apply.
    warnings.simplefilter("ignore", UserWarning)
    state = _optimizer(lib, variant, **extra).init(params)
  leaves = jax.tree.leaves(state)
  # Per-parameter arrays are those with a parameter's shape; the rest (the step
  # count) is a fixed handful of bytes however large the model.
  big = [x for x in leaves if x.size > 1]
  fixed = [x for x in leaves if x.size <= 1]
  return {
    "lib": lib,
    "variant": variant,
    "state_dtype": "bfloat16" if state_dtype is not None else "float32",
    "supported": True,
    "bytes_per_param": _tree_bytes(big) / n,
    "fixed_bytes": _tree_bytes(fixed),
    "arrays_per_param_leaf": len(big) / len(jax.tree.leaves(params)),
  }


def _train_step(opt: optax.GradientTransformation) -> Any:
  def step(params: Tree, state: Tree, grads: Tree) -> tuple[Tree, Tree]:
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def bench_memory(cfg: Config) -> dict[str, Any]:
  shapes = cfg.trees[cfg.memory_tree]
  params = trees.materialise(shapes, 1.0)
  grads = trees.materialise(shapes, 0.5)
  n = trees.count(shapes)
  state_rows = []
  for variant in VARIANTS:
    for state_dtype in (None, jnp.bfloat16):
      for lib in ("rmsprop_jax", "optax"):
        state_rows.append(_state_row(lib, variant, state_dtype, params, n))
  step_rows = []
  for variant in VARIANTS:
    row: dict[str, Any] = {"tree": cfg.memory_tree, "variant": variant}
    for lib in ("rmsprop_jax", "optax"):
      opt = _optimizer(lib, variant)
      state = opt.init(params)
      mem = _train_step(opt).lower(params, state, grads).compile().memory_analysis()
      row[lib] = {
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
      }
    row["param_bytes"] = 4 * n
    rj, ox = row["rmsprop_jax"]["temp_bytes"], row["optax"]["temp_bytes"]
    row["pass"] = rj <= ox or rj <= 0.01 * row["param_bytes"]
    step_rows.append(row)
  return {"tree": cfg.memory_tree, "params": n, "state": state_rows, "step": step_rows}


def memory_targets(memory: dict[str, Any]) -> list[dict[str, Any]]:
  """The state-size targets: one float32 accumulator for plain, half in bf16."""
  rj = {
    (r["variant"], r["state_dtype"]): r
    for r in memory["state"]
    if r["lib"] == "rmsprop_jax"
  }
  ox = {
    (r["variant"], r["state_dtype"]): r for r in memory["state"] if r["lib"] == "optax"
  }
  out = []
  for variant in VARIANTS:
    f32 = rj[(variant, "float32")]["bytes_per_param"]
    want = 4.0 * (1 + EXTRA_STATE[variant])
    out.append(
      {
        "name": f"state {variant} float32 == {want:g} B/param (optax "
        f"{ox[(variant, 'float32')]['bytes_per_param']:g})",
        "value": f32,
        "pass": f32 == want,
      }
    )
    bf = rj[(variant, "bfloat16")]["bytes_per_param"]
    out.append(
      {
        "name": f"state {variant} bfloat16 == {want / 2:g} B/param",
        "value": bf,
        "pass": bf == want / 2,
      }
    )
  plain = rj[("plain", "float32")]
  out.append(
    {
      "name": "plain: one accumulator array per parameter leaf",
      "value": plain["arrays_per_param_leaf"],
      "pass": plain["arrays_per_param_leaf"] == 1.0,
    }
  )
  for row in memory["step"]:
    out.append(
      {
        "name": f"train step {row['variant']} (donated) temp bytes <= optax's or ~0",
        "value": row["rmsprop_jax"]["temp_bytes"],
        "pass": row["pass"],
      }
    )
  return out


# --------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------


def _print_progress(section: str, row: dict[str, Any]) -> None:
  label = f"{row.get('tree', row.get('leaves'))} / {row['variant']}"
  print(f"  [{section}] {label} done", file=sys.stderr, flush=True)


def _mark(ok: bool | None) -> str:
  return "" if ok is None else ("PASS" if ok else "MISS")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  lines = []
  for j, r in enumerate(cells):
    lines.append(
      "  ".join(
        c.rjust(w) if i else c.ljust(w)
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
      )
    )
    if j == 0:
      lines.append("  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _fmt_ms(x: float | None) -> str:
  if x is None:
    return "-"
  return f"{x:.3g}" if x < 10 else f"{x:.0f}"


def report(result: dict[str, Any]) -> str:
  m = result["machine"]
  out = [
    f"rmsprop_jax benchmarks -- {m['cpu']} ({m['cores']} cores), "
    f"jax {m['jax']}, optax {m['optax']}, torch {m['torch'] or 'not installed'}",
    "",
    "1. Jitted update, state donated (ms per step, median; GB/s = floor bytes / time)",
  ]
  has_torch = any(r["torch_ms"] is not None for r in result["jitted"])
  headers = ["tree", "variant", "rmsprop_jax", "optax", "floor"]
  headers += ["torch"] if has_torch else []
  headers += ["/optax", "/floor", "GB/s", "floor GB/s", "target"]
  rows = []
  for r in result["jitted"]:
    row = [
      r["tree"],
      r["variant"],
      _fmt_ms(r["rmsprop_jax_ms"]),
      _fmt_ms(r["optax_ms"]),
    ]
    row += [_fmt_ms(r["floor_ms"])] + ([_fmt_ms(r["torch_ms"])] if has_torch else [])
    row += [
      f"{r['vs_optax']:.2f}x",
      f"{r['vs_floor']:.2f}x",
      f"{r['rmsprop_jax_gbps']:.1f}",
      f"{r['floor_gbps']:.1f}",
      _mark(r["pass"]),
    ]
    rows.append(row)
  out += [_table(headers, rows), ""]
  out.append("2. Eager update, no user jit (ms per step, median)")
  rows = [
    [
      f"{r['tree']} ({r['leaves']} leaves)",
      r["variant"],
      _fmt_ms(r["rmsprop_jax_ms"]),
      _fmt_ms(r["optax_ms"]),
      f"{r['speedup']:.1f}x",
      _mark(r["pass"]),
    ]
    for r in result["eager"]
  ]
  out += [
    _table(
      ["tree", "variant", "rmsprop_jax", "optax", "speedup", "target"],
      rows,
    ),
    "",
  ]
  out.append(
    "3. Compile time of the jitted update, caches cleared "
    "(ms, median; verdict on CPU time)"
  )
  rows = [
    [
      r["leaves"],
      r["variant"],
      f"{r['rmsprop_jax_lower_ms']:.0f} + {r['rmsprop_jax_compile_ms']:.0f}",
      f"{r['optax_lower_ms']:.0f} + {r['optax_compile_ms']:.0f}",
      f"{r['vs_optax']:.2f}x",
      f"{r['rmsprop_jax_cpu_ms']:.0f}",
      f"{r['optax_cpu_ms']:.0f}",
      f"{r['cpu_vs_optax']:.2f}x",
      _mark(r["pass"]),
    ]
    for r in result["compile"]
  ]
  hdr = [
    "leaves",
    "variant",
    "rmsprop_jax lower+compile",
    "optax lower+compile",
    "wall ratio",
    "rmsprop_jax CPU",
    "optax CPU",
    "CPU ratio",
    "target",
  ]
  out += [_table(hdr, rows), ""]
  mem = result["memory"]
  out.append(f"4. Memory ({mem['tree']}, {mem['params']:,} params)")
  rows = []
  for r in mem["state"]:
    if not r["supported"]:
      rows.append([r["lib"], r["variant"], r["state_dtype"], "unsupported", "-", "-"])
    else:
      rows.append(
        [
          r["lib"],
          r["variant"],
          r["state_dtype"],
          f"{r['bytes_per_param']:g}",
          f"{r['arrays_per_param_leaf']:g}",
          r["fixed_bytes"],
        ]
      )
  out += [
    _table(
      ["library", "variant", "state dtype", "B/param", "arrays/leaf", "+ fixed B"], rows
    ),
    "",
  ]
  rows = [
    [
      r["variant"],
      f"{r['rmsprop_jax']['temp_bytes']:,}",
      f"{r['optax']['temp_bytes']:,}",
      f"{r['rmsprop_jax']['alias_bytes']:,}",
      f"{r['optax']['alias_bytes']:,}",
      _mark(r["pass"]),
    ]
    for r in mem["step"]
  ]
  hdr = [
    "train step",
    "rmsprop_jax temp B",
    "optax temp B",
    "rmsprop_jax aliased B",
    "optax aliased B",
    "target",
  ]
  out += [_table(hdr, rows), ""]
  out.append("Targets")
  rows = [[t["name"], _mark(t["pass"])] for t in result["targets"]]
  out += [_table(["target", ""], rows)]
  n_miss = sum(not t["pass"] for t in result["targets"])
  out.append(f"\n{len(result['targets']) - n_miss} PASS, {n_miss} MISS")
  return "\n".join(out)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
  out = []
  for r in result["jitted"]:
    out.append(
      {
        "name": f"jitted {r['tree']} {r['variant']}: <= {JIT_VS_OPTAX}x optax "
        f"({r['vs_optax']:.2f}x), <= {JIT_VS_FLOOR}x floor ({r['vs_floor']:.2f}x)",
        "value": [r["vs_optax"], r["vs_floor"]],
        "pass": r["pass"],
      }
    )
  for r in result["eager"]:
    if r["target_applies"]:
      out.append(
        {
          "name": f"eager {r['tree']} {r['variant']}: >= {EAGER_SPEEDUP:g}x faster "
          f"than optax ({r['speedup']:.1f}x)",
          "value": r["speedup"],
          "pass": r["pass"],
        }
      )
  for r in result["compile"]:
    out.append(
      {
        "name": f"compile {r['leaves']} leaves {r['variant']}: CPU time <= "
        f"{COMPILE_VS_OPTAX}x optax ({r['cpu_vs_optax']:.2f}x)",
        "value": r["cpu_vs_optax"],
        "pass": r["pass"],
      }
    )
  if result["memory"]["state"]:
    out += memory_targets(result["memory"])
  return out


def machine() -> dict[str, Any]:
  cpu = platform.processor() or platform.machine()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    for line in lscpu.splitlines():
      if line.startswith("Model name:"):
        cpu = line.split(":", 1)[1].strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  import os

  return {
    "cpu": cpu,
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "optax": optax.__version__,
    "rmsprop_jax": rmsprop_jax.__version__,
    "torch": torch.__version__ if torch is not None else None,
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, 1-2 repeats")
  parser.add_argument("--json", type=Path, help="also write the results here")
  parser.add_argument(
    "--sections",
    default="jitted,eager,compile,memory",
    help="comma-separated subset of jitted,eager,compile,memory",
  )
  args = parser.parse_args(argv)
  cfg = quick_config() if args.quick else full_config()
  sections = set(args.sections.split(","))
  t0 = time.perf_counter()
  result: dict[str, Any] = {"machine": machine(), "quick": args.quick}
  result["jitted"] = bench_jitted(cfg) if "jitted" in sections else []
  result["eager"] = bench_eager(cfg) if "eager" in sections else []
  result["compile"] = bench_compile(cfg) if "compile" in sections else []
  if "memory" in sections:
    result["memory"] = bench_memory(cfg)
  else:
    result["memory"] = {"tree": None, "params": 0, "state": [], "step": []}
  result["targets"] = targets(result)
  result["seconds"] = time.perf_counter() - t0
  print(report(result))
  print(f"({result['seconds']:.0f} s)")
  if args.json is not None:
    args.json.write_text(json.dumps(result, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
