"""What every benchmark shares: options, timing, the machine, rows, tables.

Timing interleaves the contenders (round-robin, the order rotated at every
round), so that a slow drift of a shared machine affects them alike, and
summarises each contender by the median (and quartiles) of its samples.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import optax
import trees

import rmsprop_jax

try:  # optional contender
  import torch  # pyright: ignore[reportMissingImports]
except ImportError:  # pragma: no cover - depends on the environment
  torch = None

Tree = Any  # a pytree of arrays

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


def optimizer(lib: str, variant: str, **extra: Any) -> optax.GradientTransformation:
  """``rmsprop_jax.rmsprop`` or ``optax.rmsprop`` with a variant's options."""
  kwargs = {**VARIANTS[variant], **extra}
  if lib == "rmsprop_jax":
    return rmsprop_jax.rmsprop(LR, **kwargs)
  return optax.rmsprop(LR, **kwargs)


def tree_bytes(tree: Tree) -> int:
  """Bytes held by the arrays of a pytree."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------


class Contender(Protocol):
  """One step of a contender: ``__call__`` starts it, ``wait`` blocks on it."""

  def __call__(self) -> None: ...

  def wait(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Timing:
  """How many samples to take, and of how many steps each."""

  repeats: int  # rounds over all contenders, the order rotated every round
  samples: int  # at least this many samples per contender and round
  min_block_s: float = 0.0  # fast steps get more samples, to fill this per round
  calls: int = 1  # steps per sample, waited on once at its end


def measure(
  runners: dict[str, Contender], timing: Timing
) -> dict[str, dict[str, float]]:
  """Per-step time in ms of each contender: median, quartiles, minimum, CPU.

  Every contender runs twice first (compile, allocate, warm the caches); the
  first run's time is reported as ``first_call_s`` (compilation included), the
  second's sets how many samples of it fill ``timing.min_block_s``. ``cpu_ms``
  is the median of the process CPU time per step (all threads), which on a
  shared machine ignores the time spent descheduled.
  """
  warm = {name: _warm_up(run) for name, run in runners.items()}
  # A median of a handful of millisecond steps on a shared machine is mostly
  # noise: fast steps get more samples (at most 200 per round).
  samples = {
    name: max(timing.samples, min(200, int(timing.min_block_s / second)))
    for name, (_, second) in warm.items()
  }
  wall: dict[str, list[float]] = {name: [] for name in runners}
  cpu: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for r in range(timing.repeats):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      for _ in range(samples[name]):
        w, c = _sample(runners[name], timing.calls)
        wall[name].append(w)
        cpu[name].append(c)
  out = {name: summary(wall[name], cpu[name]) for name in runners}
  for name, (first, _) in warm.items():
    out[name]["first_call_s"] = first
  return out


def _warm_up(run: Contender) -> tuple[float, float]:
  """Seconds of the first and of the second step."""
  seconds = []
  for _ in range(2):
    t0 = time.perf_counter()
    run()
    run.wait()
    seconds.append(time.perf_counter() - t0)
  return seconds[0], seconds[1]


def _sample(run: Contender, calls: int) -> tuple[float, float]:
  """Wall and process CPU milliseconds per step of ``calls`` steps."""
  c0 = time.process_time()
  t0 = time.perf_counter()
  for _ in range(calls):
    run()
  run.wait()
  t1 = time.perf_counter()
  c1 = time.process_time()
  return (t1 - t0) * 1e3 / calls, (c1 - c0) * 1e3 / calls


def summary(wall: Sequence[float], cpu: Sequence[float]) -> dict[str, float]:
  """Median, quartiles and minimum of the wall times, median of the CPU times."""
  qs = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
  return {
    "median_ms": statistics.median(wall),
    "q1_ms": qs[0],
    "q3_ms": qs[2],
    "min_ms": min(wall),
    "cpu_ms": statistics.median(cpu),
  }


def gbps(nbytes: int, ms: float) -> float:
  """Bytes per millisecond as GB/s (10^9 bytes per second)."""
  return nbytes / ms / 1e6


# --------------------------------------------------------------------------
# The machine.
# --------------------------------------------------------------------------


def cpu_model() -> str:
  """The processor's model name (``lscpu``), else what ``platform`` knows."""
  cpu = platform.processor() or platform.machine()
  try:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True)
  except (OSError, subprocess.CalledProcessError):
    return cpu
  for line in lscpu.stdout.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return cpu


def versions() -> dict[str, Any]:
  """Versions of Python and of the libraries that are measured."""
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": importlib.metadata.version("jaxlib"),
    "optax": optax.__version__,
    "rmsprop_jax": rmsprop_jax.__version__,
    "torch": torch.__version__ if torch is not None else None,
  }


def slugify(text: str) -> str:
  """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine() -> dict[str, Any]:
  """The host: processor, cores, OS, backend, library versions, a file-name slug.

  The slug names result files: ``cpu-<model>-<cores>core`` on a CPU
  (``cpu-amd-epyc-2core``), the device kind on an accelerator.
  """
  out = {
    "cpu": cpu_model(),
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "backend": jax.default_backend(),
    **versions(),
  }
  if out["backend"] == "cpu":
    out["slug"] = f"cpu-{slugify(out['cpu'])}-{out['cores']}core"
  else:
    out["slug"] = slugify(jax.devices()[0].device_kind)
  return out


# --------------------------------------------------------------------------
# Rows and verdicts.
# --------------------------------------------------------------------------


def rows_per_variant(
  section: str,
  shapes_by_tree: dict[str, trees.Shapes],
  bench_one: Callable[[str, trees.Shapes, tuple[Tree, Tree], str], dict[str, Any]],
) -> list[dict[str, Any]]:
  """A row per tree and variant: what it is, then ``bench_one``'s numbers.

  ``bench_one(tree, shapes, (params, grads), variant)`` measures; the row
  starts with the tree's name, its leaves and parameters, and the variant.
  The parameters (around 1) and gradients (around 0.5) are made once per tree;
  progress goes to stderr.
  """
  rows = []
  for tree, shapes in shapes_by_tree.items():
    data = trees.materialise(shapes, 1.0), trees.materialise(shapes, 0.5)
    head = {"tree": tree, "leaves": len(shapes), "params": trees.count(shapes)}
    for variant in VARIANTS:
      rows.append(
        {**head, "variant": variant, **bench_one(tree, shapes, data, variant)}
      )
      print(f"  [{section}] {tree} / {variant} done", file=sys.stderr, flush=True)
  return rows


def verdict(name: str, value: Any, ok: bool) -> dict[str, Any]:
  """One target of the run: what it says, the measured value, PASS or MISS."""
  return {"name": name, "value": value, "pass": ok}


# --------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------


def write_result(result: dict[str, Any], folder: Path, stem: str, quick: bool) -> Path:
  """Writes ``<folder>/<stem>.json`` (``<stem>-quick.json`` for a smoke run).

  A smoke run never overwrites a full one. Prints the path and the run's
  seconds; returns the path.
  """
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / f"{stem}{'-quick' if quick else ''}.json"
  path.write_text(json.dumps(result, indent=1))
  print(f"wrote {os.path.normpath(path)} ({result['seconds']:.0f} s)")
  return path


def mark(ok: bool | None) -> str:
  """A verdict as shown in the tables."""
  return "" if ok is None else ("PASS" if ok else "MISS")


def verdict_lines(targets: Sequence[dict[str, Any]], digits: int = 3) -> list[str]:
  """A line per target: PASS or MISS, what it states, the measured value."""
  return [f"{mark(t['pass'])}  {t['name']}: {t['value']:.{digits}f}" for t in targets]


def fmt_ms(x: float | None) -> str:
  """Milliseconds with three significant digits, or ``-`` when absent."""
  if x is None:
    return "-"
  return f"{x:.3g}" if x < 10 else f"{x:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A plain-text table: first column left-aligned, the others right-aligned."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

  def line(r: Sequence[str]) -> str:
    return "  ".join(
      c.rjust(w) if i else c.ljust(w)
      for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )

  rule = "  ".join("-" * w for w in widths)
  return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])
