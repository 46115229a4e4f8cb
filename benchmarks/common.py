"""What every benchmark shares: the contenders' options, timing, the machine.

Timing interleaves the contenders (round-robin, the order rotated at every
round), so that a slow drift of a shared machine affects them alike, and
summarises each contender by the median (and quartiles) of its samples.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import optax

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
  """Per-step wall time in ms of each contender: median and quartiles.

  Every contender runs twice first (compile, allocate, warm the caches); the
  first run's time is reported as ``first_call_s`` (compilation included), the
  second's sets how many samples fill ``timing.min_block_s``.
  """
  warm = {name: _warm_up(run) for name, run in runners.items()}
  slowest = max(second for _, second in warm.values())
  # A median of a handful of millisecond steps on a shared machine is mostly
  # noise: fast steps get more samples (at most 200 per round).
  samples = max(timing.samples, min(200, int(timing.min_block_s / slowest)))
  times: dict[str, list[float]] = {name: [] for name in runners}
  names = list(runners)
  for r in range(timing.repeats):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      for _ in range(samples):
        times[name].append(_sample(runners[name], timing.calls))
  out = {name: summary(xs) for name, xs in times.items()}
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


def _sample(run: Contender, calls: int) -> float:
  t0 = time.perf_counter()
  for _ in range(calls):
    run()
  run.wait()
  return (time.perf_counter() - t0) * 1e3 / calls


def summary(xs: Sequence[float]) -> dict[str, float]:
  """Median and quartiles (ms) of a list of samples."""
  qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
  return {"median_ms": statistics.median(xs), "q1_ms": qs[0], "q3_ms": qs[2]}


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


def machine() -> dict[str, Any]:
  """The host: processor, cores, OS, backend and library versions."""
  return {
    "cpu": cpu_model(),
    "cores": os.cpu_count(),
    "platform": platform.platform(),
    "backend": jax.default_backend(),
    **versions(),
  }


# --------------------------------------------------------------------------
# Text output.
# --------------------------------------------------------------------------


def mark(ok: bool | None) -> str:
  """A verdict as shown in the tables."""
  return "" if ok is None else ("PASS" if ok else "MISS")


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
