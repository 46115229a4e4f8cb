"""Low-precision optimizer state: memory, speed and training-curve parity.

Compares ``rmsprop(..., state_dtype=...)`` for float32 (the default), bfloat16
and the block-quantized 8-bit formats:

* memory: bytes of optimizer state per parameter of a 4.72M-parameter model
  (an 8192x256 embedding and four dense layers), from the state's leaves;
* speed: the jitted train step of that model (``update`` +
  ``optax.apply_updates``, params and state donated), the state dtypes
  interleaved, with ``common.measure``;
* parity: held-out loss curves of two tasks of ``tasks.py`` (an MLP
  classifier on a noisy teacher, a small causal transformer language model on
  a Markov source), several seeds each, float32 state against 8-bit state.

Usage::

  python benchmarks/low_memory.py                      # full run, minutes on a CPU
  python benchmarks/low_memory.py --quick              # smoke run, seconds
  python benchmarks/low_memory.py --plots docs/images  # also draw the figure

Writes every number to ``<out>/low-memory-<machine>.json`` (``--out``, by
default ``benchmarks/results``; ``-quick.json`` with ``--quick``) and prints
the tables; draws ``low_memory_parity.png`` only into the folder ``--plots``
names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tasks
import trees
from common import LR, Timing, fmt_ms, machine, measure, table, tree_bytes
from contenders import library_train

import rmsprop_jax

SCHEMA = 1
RESULTS = Path(__file__).resolve().parent / "results"
FIGURE = "low_memory_parity.png"
STATE_DTYPES: dict[str, Any] = {
  "float32": None,
  "bfloat16": jnp.bfloat16,
  "float8_e4m3fn": jnp.float8_e4m3fn,
  "float8_e5m2": jnp.float8_e5m2,
}
DECAY = 0.99  # of the parity runs: the 8-bit state's hardest case is slow decay


# The two tasks of the parity runs (tasks.py holds more).
PARITY_TASKS = ("mlp", "lm")


@dataclasses.dataclass(frozen=True)
class Setup:
  """The model, repeat counts and training runs of one run."""

  model: trees.Shapes  # of the memory and speed measurements
  timing: Timing
  tasks: tuple[str, ...]
  dtypes: tuple[str, ...]  # state dtypes of the parity runs, float32 first
  seeds: int
  steps: int
  every: int  # steps between two held-out losses


def full_setup() -> Setup:
  return Setup(
    # 4.72M parameters: an embedding and a stack of dense layers.
    model={"embed": (8192, 256), **trees.dense((256, 1024, 1024, 1024, 256))},
    timing=Timing(repeats=15, samples=3, calls=5),
    tasks=PARITY_TASKS,
    dtypes=("float32", "float8_e4m3fn", "float8_e5m2"),
    seeds=3,
    steps=2000,
    every=100,
  )


def quick_setup() -> Setup:
  # Still leaves of >= 4096 elements, so that the 8-bit state is quantized.
  return Setup(
    model={"embed": (512, 64), **trees.dense((64, 128, 64))},
    timing=Timing(repeats=2, samples=2, calls=2),
    tasks=PARITY_TASKS,
    dtypes=("float32", "float8_e4m3fn"),
    seeds=1,
    steps=20,
    every=10,
  )


# --------------------------------------------------------------------------
# Memory and speed.
# --------------------------------------------------------------------------


def bytes_per_param(shapes: trees.Shapes, state_dtype: Any, **options: Any) -> float:
  """Bytes of ``rmsprop_jax.rmsprop``'s state per parameter, scales included.

  From the shapes and dtypes of the state's leaves (``jax.eval_shape``: the
  bytes a real ``init`` allocates, without allocating them).
  """
  params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
  with warnings.catch_warnings():
    # Only the size is measured: the advice against centred RMSProp with
    # bfloat16 state does not apply.
    warnings.simplefilter("ignore", UserWarning)
    opt = rmsprop_jax.rmsprop(LR, state_dtype=state_dtype, **options)
  state = jax.eval_shape(opt.init, params)
  return tree_bytes(state) / trees.count(shapes)


def bench_memory(shapes: trees.Shapes) -> list[dict[str, Any]]:
  """Per state dtype: plain RMSProp (nu) and with momentum and centring too."""
  return [
    {
      "state_dtype": name,
      "plain": bytes_per_param(shapes, dtype),
      "momentum_centered": bytes_per_param(shapes, dtype, momentum=0.9, centered=True),
    }
    for name, dtype in STATE_DTYPES.items()
  ]


def bench_speed(shapes: trees.Shapes, timing: Timing) -> dict[str, Any]:
  """The donated train step per state dtype, interleaved; ratios to float32."""
  params = trees.materialise(shapes, 1.0)
  grads = trees.materialise(shapes, 0.5)
  runners = {
    name: library_train("rmsprop_jax", "plain", params, grads, state_dtype=dtype)
    for name, dtype in STATE_DTYPES.items()
  }
  times = measure(dict(runners), timing)
  ref = times["float32"]
  return {
    name: {
      **t,
      "vs_float32": {
        key: t[f"{key}_ms"] / ref[f"{key}_ms"] for key in ("min", "median", "cpu")
      },
    }
    for name, t in times.items()
  }


# --------------------------------------------------------------------------
# Parity.
# --------------------------------------------------------------------------


def parity_runs(name: str, setup: Setup) -> dict[str, Any]:
  """One task's held-out loss curves, every parity dtype and seed."""
  curves: dict[str, list[list[float]]] = {dtype: [] for dtype in setup.dtypes}
  for seed in range(setup.seeds):
    task = tasks.make_task(name, seed)
    for dtype in setup.dtypes:
      t0 = time.perf_counter()
      opt = rmsprop_jax.rmsprop(
        task.learning_rate, decay=DECAY, eps=1e-8, state_dtype=STATE_DTYPES[dtype]
      )
      losses = tasks.train(task, opt, seed, setup.steps, setup.every)
      curves[dtype].append(losses.tolist())
      print(
        f"  [parity] {name} {dtype} seed {seed}: final loss {losses[-1]:.4f} "
        f"({time.perf_counter() - t0:.0f} s)",
        file=sys.stderr,
        flush=True,
      )
  task = tasks.TASKS[name]
  return {
    "name": task.name,
    "learning_rate": task.learning_rate,
    "decay": DECAY,
    "steps": list(range(0, setup.steps + 1, setup.every)),
    "dtypes": {
      dtype: parity_summary(curves[dtype], curves["float32"]) for dtype in curves
    },
  }


def parity_summary(
  losses: list[list[float]], reference: list[list[float]]
) -> dict[str, Any]:
  """The curves, the final losses and their largest relative difference."""
  final = np.array([run[-1] for run in losses])
  ref = np.array([run[-1] for run in reference])
  return {
    "losses": losses,
    "final": final.tolist(),
    "worst_rel_diff": float(np.max(np.abs(final - ref) / ref)),
  }


# --------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
  """The run's tables: memory, speed, parity."""
  m, model = result["machine"], result["model"]
  out = [
    f"Low-precision state -- {m['cpu']} ({m['cores']} cores), "
    f"backend {m['backend']}, jax {m['jax']}",
    "",
    f"Memory and speed: {model['params'] / 1e6:.2f}M parameters, "
    f"{model['leaves']} leaves (ms per donated train step, plain RMSProp)",
  ]
  rows = []
  for mem in result["memory"]:
    t = result["speed"][mem["state_dtype"]]
    ms = " / ".join(fmt_ms(t[f"{k}_ms"]) for k in ("min", "median", "cpu"))
    ratio = " / ".join(f"{t['vs_float32'][k]:.2f}x" for k in ("min", "median", "cpu"))
    rows.append(
      [
        mem["state_dtype"],
        f"{mem['plain']:.4f}",
        f"{mem['momentum_centered']:.4f}",
        ms,
        ratio,
      ]
    )
  headers = ["state dtype", "B/param", "B/param (mom.+centred)"]
  headers += ["ms min / median / CPU", "vs float32"]
  out += [table(headers, rows), ""]
  for task in result["parity"].values():
    steps = task["steps"][-1]
    seeds = len(task["dtypes"]["float32"]["final"])
    out.append(f"Parity: {task['name']}, {steps} steps, {seeds} seeds")
    rows = [
      [
        dtype,
        ", ".join(f"{x:.4f}" for x in d["final"]),
        f"{100 * d['worst_rel_diff']:.2f} %",
      ]
      for dtype, d in task["dtypes"].items()
    ]
    out += [table(["state dtype", "final loss", "worst vs float32"], rows), ""]
  return "\n".join(out)


def plot(result: dict[str, Any], folder: Path) -> Path:
  """Held-out loss against step, a panel per task, a band over the seeds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  parity = result["parity"]
  fig, axes = plt.subplots(1, len(parity), figsize=(6 * len(parity), 4))
  styles = {
    "float32": ("k", "-"),
    "bfloat16": ("tab:green", ":"),
    "float8_e4m3fn": ("tab:orange", "--"),
    "float8_e5m2": ("tab:blue", "-."),
  }
  for ax, task in zip(np.atleast_1d(axes), parity.values(), strict=True):
    for dtype, d in task["dtypes"].items():
      runs = np.asarray(d["losses"])
      color, ls = styles[dtype]
      label = dtype + (" (default)" if dtype == "float32" else "")
      ax.plot(task["steps"], runs.mean(0), color=color, ls=ls, label=label)
      ax.fill_between(task["steps"], runs.min(0), runs.max(0), color=color, alpha=0.15)
    seeds = len(task["dtypes"]["float32"]["losses"])
    ax.set_title(f"{task['name']}: held-out loss, {seeds} seeds")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("RMSProp state in float32 vs 8 bits (band: min-max over seeds)")
  fig.tight_layout()
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / FIGURE
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def run(setup: Setup) -> dict[str, Any]:
  """Every measurement of ``setup``."""
  return {
    "schema": SCHEMA,
    "machine": machine(),
    "model": {
      "shapes": setup.model,
      "params": trees.count(setup.model),
      "leaves": len(setup.model),
    },
    "timing": dataclasses.asdict(setup.timing),
    "memory": bench_memory(setup.model),
    "speed": bench_speed(setup.model, setup.timing),
    "parity": {name: parity_runs(name, setup) for name in setup.tasks},
  }


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
  parser.add_argument("--out", type=Path, default=RESULTS, help="JSON folder")
  parser.add_argument("--plots", type=Path, help=f"draw {FIGURE} into this folder")
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  result = run(quick_setup() if args.quick else full_setup())
  result["quick"] = args.quick
  result["seconds"] = time.perf_counter() - t0
  args.out.mkdir(parents=True, exist_ok=True)
  suffix = "-quick" if args.quick else ""
  path = args.out / f"low-memory-{result['machine']['slug']}{suffix}.json"
  path.write_text(json.dumps(result, indent=1))
  print(report(result))
  print(f"({result['seconds']:.0f} s; wrote {path})")
  if args.plots is not None:
    print(f"drew {plot(result, args.plots)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
