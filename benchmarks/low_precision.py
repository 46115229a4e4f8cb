"""Low-precision parameters: held-out loss, step time and bytes per parameter.

Compares RMSProp on float32 parameters with bfloat16 parameters updated by
plain rounding (``bfloat16``), by ``low_precision_params(..., "kahan")`` and
by ``low_precision_params(..., "stochastic")``:

* quality: held-out loss curves of two tasks of ``tasks.py``, at two learning
  rates and several seeds, every method from the same initialisation (its
  float32 values rounded) on the same batches, the model computing in
  float32 (``tasks.train``):

  - ``regression``: a 2-layer tanh MLP (32-64-1) regressing a random tanh
    teacher's output plus Gaussian noise;
  - ``text``: a 2-layer causal transformer (d=64, 4 heads) predicting the
    next character of text from a small seeded grammar, with number
    agreement between subject and verb;

* speed: the jitted train step (``update`` + ``optax.apply_updates``, params
  and state donated) of each method on a 4.3M-parameter decoder layout,
  interleaved, against plain bfloat16 rounding;
* memory: bytes per parameter of parameters plus optimizer state, each the
  sum of the real arrays' ``nbytes`` over the parameter count, from float32
  parameters down to bfloat16 with 8-bit state.

Usage::

  python benchmarks/low_precision.py                 # full run, ~10 min on 2 cores
  python benchmarks/low_precision.py --quick         # smoke run, seconds
  python benchmarks/low_precision.py --figures DIR   # also draw DIR/low_precision.png
  python benchmarks/low_precision.py --out DIR       # JSON folder (benchmarks/results)
  python benchmarks/low_precision.py --report FILE   # the tables of a stored JSON

It writes ``<out>/low-precision-<machine>.json`` (``-quick`` appended with
``--quick``) and prints the Markdown tables that docs/low_precision.md quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tasks
import trees
from common import Timing, machine, measure, verdict_lines, write_result
from contenders import Loop, train_step

import rmsprop_jax

SCHEMA = 1
RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("float32", "bfloat16", "kahan", "stochastic")
# Targets: final held-out loss relative to float32 parameters, and the step
# time relative to plain bfloat16 rounding.
QUALITY_TARGETS = {"kahan": 1.02, "stochastic": 1.10}
STEP_TIME_TARGET = 1.3


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes, step counts and repeats of one run."""

  seeds: int
  learning_rates: tuple[float, ...]
  mlp_steps: int
  lm_steps: int
  every: int  # held-out loss every this many steps
  lm: dict[str, int]  # the text task's sizes (``tasks.TextTask``)
  speed_tree: trees.Shapes
  timing: Timing


def full_config() -> Config:
  return Config(
    seeds=3,
    learning_rates=(1e-3, 1e-4),
    mlp_steps=3000,
    lm_steps=1000,
    every=100,
    lm={"d": 64, "heads": 4, "layers": 2, "seq": 32, "batch": 16, "chars": 200_000},
    speed_tree=trees.transformer(d_model=256, n_layer=4, vocab=4096, ctx=256),
    timing=Timing(repeats=10, samples=1, min_block_s=0.2),
  )


def quick_config() -> Config:
  return dataclasses.replace(
    full_config(),
    seeds=1,
    learning_rates=(1e-3,),  # each compiles every method's step anew
    mlp_steps=40,
    lm_steps=20,
    every=10,
    lm={"d": 16, "heads": 2, "layers": 1, "seq": 16, "batch": 4, "chars": 5_000},
    speed_tree=trees.transformer(d_model=32, n_layer=1, vocab=256, ctx=32),
    timing=Timing(repeats=2, samples=2),
  )


def optimizer(method: str, lr: Any, seed: int = 0, **kwargs: Any) -> Any:
  """RMSProp (defaults: decay 0.9, eps 1e-8) for a method's parameters."""
  inner = rmsprop_jax.rmsprop(lr, **kwargs)
  if method in ("float32", "bfloat16"):
    return inner
  return rmsprop_jax.low_precision_params(inner, method, seed=seed)


def param_dtype(method: str) -> Any:
  return jnp.float32 if method == "float32" else jnp.bfloat16


@contextlib.contextmanager
def _plain_bfloat16_on_purpose() -> Generator[None]:
  """Plain bfloat16 parameters are measured on purpose: init need not warn."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Low-precision params")
    yield


def init_state(method: str, lr: float, seed: int, params: Any, **kwargs: Any) -> Any:
  with _plain_bfloat16_on_purpose():
    return optimizer(method, lr, seed, **kwargs).init(params)


def cast(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(lambda p: p.astype(dtype), tree)


# ----------------------------------------------------------------- quality

# The page's problem names, the tasks.py task each trains, its figure title
# (filled in with the text task's sizes).
PROBLEMS = {
  "mlp": ("regression", "2-layer tanh MLP (32-64-1), regression"),
  "lm": ("text", "{layers}-layer causal transformer (d={d}), next character"),
}


def train(
  task: Any, method: str, lr: float, seed: int, steps: int, every: int
) -> list[float]:
  """Held-out loss of one method at step 0 and after every ``every`` steps."""
  with _plain_bfloat16_on_purpose():
    opt = optimizer(method, lr, seed)
    losses = tasks.train(task, opt, seed, steps, every, param_dtype(method))
  return losses.tolist()


def quality(cfg: Config, log: Callable[[str], None]) -> list[dict[str, Any]]:
  """Curves, final losses and ratios to float32 for every problem and lr."""
  rows = []
  for name, (task_name, _) in PROBLEMS.items():
    steps = cfg.mlp_steps if name == "mlp" else cfg.lm_steps
    options = cfg.lm if name == "lm" else {}
    problems = [
      tasks.make_task(task_name, seed, **options) for seed in range(cfg.seeds)
    ]
    for lr in cfg.learning_rates:
      curves: dict[str, list[list[float]]] = {m: [] for m in METHODS}
      for seed, task in enumerate(problems):
        for m in METHODS:
          t0 = time.perf_counter()
          curve = train(task, m, lr, seed, steps, cfg.every)
          curves[m].append(curve)
          log(
            f"  {name} lr={lr:g} seed {seed} {m:10s} held-out {curve[-1]:.4f} "
            f"({time.perf_counter() - t0:.1f} s)"
          )
      rows.append(quality_row(name, lr, steps, cfg.every, curves))
  return rows


def quality_row(
  name: str, lr: float, steps: int, every: int, curves: dict[str, list[list[float]]]
) -> dict[str, Any]:
  """One problem and lr: each method's curves, finals and ratio to float32."""
  ref = [c[-1] for c in curves["float32"]]
  methods = {}
  for m, runs in curves.items():
    final = [c[-1] for c in runs]
    methods[m] = {
      "curves": runs,
      "final": final,
      "relative": float(np.mean(final) / np.mean(ref)),
      "relative_per_seed": [f / r for f, r in zip(final, ref, strict=True)],
    }
  return {"problem": name, "lr": lr, "steps": steps, "every": every, "methods": methods}


# ----------------------------------------------------------------- speed, memory


def speed(cfg: Config) -> dict[str, Any]:
  """Median ms of each method's donated train step, interleaved."""
  shapes = cfg.speed_tree
  runners = {}
  for m in METHODS:
    dtype = param_dtype(m)
    params = cast(trees.materialise(shapes, 0.5), dtype)
    grads = cast(trees.materialise(shapes, 1e-3), dtype)
    opt = optimizer(m, 1e-3)
    runners[m] = Loop(
      train_step(opt), (params, init_state(m, 1e-3, 0, params)), (grads,)
    )
  times = measure(runners, cfg.timing)
  base = times["bfloat16"]["median_ms"]
  return {
    "params": trees.count(shapes),
    "leaves": len(shapes),
    "times": times,
    "vs_bfloat16": {m: times[m]["median_ms"] / base for m in METHODS},
  }


# Parameter dtype, method, RMSProp state dtype; "master" keeps a float32 copy.
MEMORY_ROWS: dict[str, tuple[str, Any]] = {
  "float32 params, float32 nu": ("float32", None),
  "bfloat16 params + float32 master copy, float32 nu": ("master", None),
  "bfloat16 params (plain rounding), float32 nu": ("bfloat16", None),
  "bfloat16 params + Kahan, bfloat16 nu": ("kahan", jnp.bfloat16),
  "bfloat16 params + Kahan, 8-bit nu": ("kahan", jnp.float8_e4m3fn),
  "bfloat16 params + stochastic, bfloat16 nu": ("stochastic", jnp.bfloat16),
  "bfloat16 params + stochastic, 8-bit nu": ("stochastic", jnp.float8_e4m3fn),
}


def nbytes(tree: Any) -> int:
  return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def memory(cfg: Config) -> dict[str, Any]:
  """Bytes of parameters + optimizer state per parameter, from real arrays."""
  shapes = cfg.speed_tree
  params32 = trees.materialise(shapes, 0.5)
  n = sum(int(p.size) for p in jax.tree.leaves(params32))
  rows = []
  for name, (method, state_dtype) in MEMORY_ROWS.items():
    if method == "master":  # what mixed precision keeps: bf16 copy, f32 master
      params = cast(params32, jnp.bfloat16)
      state = (params32, init_state("float32", 1e-3, 0, params32))
    else:
      params = cast(params32, param_dtype(method))
      state = init_state(method, 1e-3, 0, params, state_dtype=state_dtype)
    p_bytes, s_bytes = nbytes(params), nbytes(state)
    rows.append(
      {
        "name": name,
        "params_bytes": p_bytes,
        "state_bytes": s_bytes,
        "bytes_per_param": (p_bytes + s_bytes) / n,
      }
    )
  return {"params": n, "leaves": len(shapes), "rows": rows}


# ----------------------------------------------------------------- report


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
  out = []
  for row in result["quality"]:
    for m, bound in QUALITY_TARGETS.items():
      value = row["methods"][m]["relative"]
      out.append(
        {
          "name": f"{row['problem']} lr={row['lr']:g}: {m} <= {bound}x float32",
          "value": value,
          "pass": value <= bound,
        }
      )
  for m in ("kahan", "stochastic"):
    value = result["speed"]["vs_bfloat16"][m]
    out.append(
      {
        "name": f"step time: {m} <= {STEP_TIME_TARGET}x plain bfloat16",
        "value": value,
        "pass": value <= STEP_TIME_TARGET,
      }
    )
  return out


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def quality_table(result: dict[str, Any]) -> str:
  rows = []
  for row in result["quality"]:
    ms = row["methods"]
    cells = [
      {"mlp": "MLP", "lm": "LM"}[row["problem"]],
      f"{row['lr']:g}",
      f"{np.mean(ms['float32']['final']):.4f}",
    ]
    for m in METHODS[1:]:
      worst = max(ms[m]["relative_per_seed"])
      cells.append(f"{ms[m]['relative']:.3f}× (≤ {worst:.3f}×)")
    rows.append(cells)
  return _markdown(
    ["problem", "lr", "float32: held-out loss", "bfloat16", "Kahan", "stochastic"],
    rows,
  )


def speed_table(result: dict[str, Any]) -> str:
  sp = result["speed"]
  rows = [
    [m, f"{sp['times'][m]['median_ms']:.2f}", f"{sp['vs_bfloat16'][m]:.2f}×"]
    for m in METHODS
  ]
  return _markdown(["parameters", "ms per step (median)", "vs bfloat16"], rows)


def memory_table(result: dict[str, Any]) -> str:
  mem = result["memory"]
  n = mem["params"]
  rows = [
    [
      r["name"],
      f"{r['params_bytes'] / n:.2f}",
      f"{r['state_bytes'] / n:.2f}",
      f"**{r['bytes_per_param']:.2f}**",
    ]
    for r in mem["rows"]
  ]
  return _markdown(["parameters and state", "params", "state", "bytes / param"], rows)


def report(result: dict[str, Any]) -> str:
  """The Markdown tables docs/low_precision.md quotes, and the verdicts."""
  lines = [
    "Held-out loss relative to float32 parameters (mean over seeds; worst seed):",
    "",
    quality_table(result),
    "",
    f"Jitted, donated train step, {result['speed']['params'] / 1e6:.2f}M parameters:",
    "",
    speed_table(result),
    "",
    f"Parameters + optimizer state, {result['memory']['params'] / 1e6:.2f}M parameters:",
    "",
    memory_table(result),
    "",
    *verdict_lines(result["targets"], digits=3),
  ]
  return "\n".join(lines)


STYLES = {
  "float32": ("black", "-"),
  "bfloat16": ("tab:red", ":"),
  "kahan": ("tab:blue", "--"),
  "stochastic": ("tab:orange", "-."),
}


def plot(result: dict[str, Any], path: Path) -> None:
  """Held-out loss curves: a row per problem, a column per learning rate."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["quality"]
  problems = list(dict.fromkeys(r["problem"] for r in rows))
  lrs = list(dict.fromkeys(r["lr"] for r in rows))
  fig, axes = plt.subplots(
    len(problems),
    len(lrs),
    figsize=(5.5 * len(lrs), 3.8 * len(problems)),
    squeeze=False,
  )
  for row in rows:
    ax = axes[problems.index(row["problem"])][lrs.index(row["lr"])]
    for m, res in row["methods"].items():
      runs = np.asarray(res["curves"])
      x = np.arange(runs.shape[1]) * row["every"]
      color, ls = STYLES[m]
      label = f"{m} ({res['relative']:.3f}×)" if m != "float32" else m
      ax.plot(x, runs.mean(0), color=color, ls=ls, label=label)
      ax.fill_between(x, runs.min(0), runs.max(0), color=color, alpha=0.12)
    title = PROBLEMS[row["problem"]][1].format(**result["config"]["lm"])
    ax.set_title(f"{title}\nlr={row['lr']:g}", fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  seeds = len(rows[0]["methods"]["float32"]["final"])
  fig.suptitle(
    f"RMSProp with bfloat16 parameters vs float32 ({seeds} seeds: mean, min-max band)"
  )
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)


def run(cfg: Config, quick: bool) -> dict[str, Any]:
  t0 = time.perf_counter()
  info = machine()
  log = lambda s: print(s, file=sys.stderr, flush=True)
  result: dict[str, Any] = {"schema": SCHEMA, "quick": quick, "machine": info}
  result["slug"] = info["slug"]
  result["config"] = {
    "seeds": cfg.seeds,
    "learning_rates": list(cfg.learning_rates),
    "mlp_steps": cfg.mlp_steps,
    "lm_steps": cfg.lm_steps,
    "every": cfg.every,
    "lm": cfg.lm,
    "tasks": {name: task for name, (task, _) in PROBLEMS.items()},
    "optimizer": "rmsprop_jax.rmsprop(lr) (decay 0.9, eps 1e-8)",
  }
  log("memory ...")
  result["memory"] = memory(cfg)
  log("speed ...")
  result["speed"] = speed(cfg)
  log("quality ...")
  result["quality"] = quality(cfg, log)
  result["targets"] = targets(result)
  result["seconds"] = time.perf_counter() - t0
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
  parser.add_argument("--out", type=Path, default=RESULTS, help="JSON folder")
  parser.add_argument("--figures", type=Path, help="draw low_precision.png here")
  parser.add_argument("--report", type=Path, help="print a stored JSON's tables")
  args = parser.parse_args(argv)
  if args.report is not None:
    result = json.loads(args.report.read_text())
  else:
    result = run(quick_config() if args.quick else full_config(), args.quick)
    write_result(result, args.out, f"low-precision-{result['slug']}", args.quick)
  if args.figures is not None:
    plot(result, args.figures / "low_precision.png")
  print(report(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
