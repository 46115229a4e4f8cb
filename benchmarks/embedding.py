"""Embedding tables: the train step with ``lazy_rows`` against the dense one.

A table of 1,000,000 x 64 float32 parameters, of which each step looks up
1 % of the rows (random indices, duplicates allowed); a small loss on the
gathered rows gives the table's gradient, the dense scatter of the lookups,
zero in every row no lookup touched. The jitted train step (``update`` +
``optax.apply_updates``, params and state donated, the outputs fed into the
next step) of ``rmsprop_jax.rmsprop(lr, lazy_rows=True)`` against the same
optimizer without ``lazy_rows``, interleaved, for plain RMSProp, momentum 0.9
and centring; target: the lazy step at most 1.3x the dense one.

Usage::

  python benchmarks/embedding.py                 # full run, about 2 min on 2 cores
  python benchmarks/embedding.py --quick         # smoke run, seconds
  python benchmarks/embedding.py --out DIR       # JSON folder (benchmarks/results)
  python benchmarks/embedding.py --report FILE   # the tables of a stored JSON

It writes ``<out>/embedding-<machine>.json`` (``-quick`` appended with
``--quick``) and prints the Markdown table that docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import (
  LR,
  VARIANTS,
  Timing,
  fmt_ms,
  gbps,
  machine,
  measure,
  verdict_lines,
  write_result,
)
from contenders import Loop, library_train, stream_bandwidth

SCHEMA = 1
RESULTS = Path(__file__).resolve().parent / "results"
CONTENDERS = ("dense", "lazy")
TARGET = 1.3  # the lazy step's time at most this many times the dense one's


@dataclasses.dataclass(frozen=True)
class Config:
  """The table, the lookups and the repeat counts of one run."""

  rows: int
  width: int
  lookups: int  # indices looked up per step
  stream_bytes: int  # size of each array of the bandwidth kernels
  stream_timing: Timing
  timing: Timing


FULL = Config(
  rows=1_000_000,
  width=64,
  lookups=10_000,
  stream_bytes=256 * 1024 * 1024,
  stream_timing=Timing(repeats=5, samples=1, min_block_s=0.2),
  timing=Timing(repeats=10, samples=1, min_block_s=0.5),
)
# A smoke run: a small table, one lookup per 100 rows as in the full run.
QUICK = dataclasses.replace(
  FULL,
  rows=4096,
  width=16,
  lookups=41,
  stream_bytes=4 * 1024 * 1024,
  stream_timing=Timing(repeats=2, samples=2),
  timing=Timing(repeats=2, samples=2),
)


def lookup_gradient(cfg: Config) -> tuple[jax.Array, jax.Array, int]:
  """The table, the gradient of one step's lookups, and the rows they touch.

  The loss is half the mean squared distance of the looked-up rows to random
  targets: its gradient is non-zero in every looked-up row (a row looked up
  twice gets both terms) and zero elsewhere.
  """
  k_table, k_ids, k_targets = jax.random.split(jax.random.key(0), 3)
  table = 0.1 * jax.random.normal(k_table, (cfg.rows, cfg.width))
  ids = jax.random.randint(k_ids, (cfg.lookups,), 0, cfg.rows)
  targets = jax.random.normal(k_targets, (cfg.lookups, cfg.width))

  def loss(t: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(jnp.sum((t[ids] - targets) ** 2, axis=-1))

  grads = jax.jit(jax.grad(loss))(table)
  return table, grads, len(np.unique(np.asarray(ids)))


def compiled_passes(loop: Loop) -> dict[str, int]:
  """Loops over memory in the compiled step: its fusions and its copies.

  Counted in the optimized HLO's entry computation: every fusion is one loop
  over its output, and a copy is a pass XLA adds when an output would
  overwrite an input that another loop still reads.
  """
  text = loop.fn.lower(*loop.carry, *loop.const).compile().as_text() or ""
  entry = text[text.index("\nENTRY") :]
  return {"fusions": entry.count(" fusion("), "copies": entry.count(" copy(")}


def least_bytes(loop: Loop, lazy: bool, touched_fraction: float) -> int:
  """The bytes a step must move: all of the table and state, or the touched rows.

  Dense: read the gradient, the params and every state array, write the
  params and the state. Lazy: read the gradient once (to find the touched
  rows), then only the touched rows' params and state, read and written.
  """
  full = loop.moved_bytes
  if not lazy:
    return full
  grad_bytes = sum(x.nbytes for x in jax.tree.leaves(loop.const))
  return grad_bytes + round(touched_fraction * (full - grad_bytes))


def bench_variant(
  variant: str, data: tuple[jax.Array, jax.Array, int], cfg: Config, bandwidth: float
) -> dict[str, Any]:
  """The dense and the lazy step of one variant, interleaved: one row."""
  table, grads, touched = data
  params, g = {"table": table}, {"table": grads}
  runners = {
    "dense": library_train("rmsprop_jax", variant, params, g),
    "lazy": library_train("rmsprop_jax", variant, params, g, lazy_rows=True),
  }
  moved = {
    name: least_bytes(run, name == "lazy", touched / cfg.rows)
    for name, run in runners.items()
  }
  passes = {name: compiled_passes(run) for name, run in runners.items()}
  times = measure(dict(runners), cfg.timing)
  del runners
  ms = {name: times[name]["median_ms"] for name in CONTENDERS}
  rate = {name: gbps(moved[name], ms[name]) for name in CONTENDERS}
  ratio = ms["lazy"] / ms["dense"]
  return {
    "variant": variant,
    "times": times,
    "dense_ms": ms["dense"],
    "lazy_ms": ms["lazy"],
    "vs_dense": ratio,
    "bytes": moved,
    "gbps": rate,
    "of_bandwidth": {name: rate[name] / bandwidth for name in CONTENDERS},
    "hlo": passes,
    "pass": ratio <= TARGET,
  }


def run(cfg: Config, quick: bool) -> dict[str, Any]:
  t0 = time.perf_counter()
  log = lambda s: print(s, file=sys.stderr, flush=True)
  info = machine()
  log("bandwidth ...")
  info["bandwidth"] = stream_bandwidth(cfg.stream_bytes, cfg.stream_timing)
  data = lookup_gradient(cfg)
  rows = []
  for variant in VARIANTS:
    rows.append(bench_variant(variant, data, cfg, info["bandwidth"]["reference_gbps"]))
    log(f"  [embedding] {variant}: lazy / dense {rows[-1]['vs_dense']:.2f}x")
  return {
    "schema": SCHEMA,
    "quick": quick,
    "machine": info,
    "config": {
      "rows": cfg.rows,
      "width": cfg.width,
      "lookups": cfg.lookups,
      "touched_rows": data[2],
      "learning_rate": LR,
      "variants": VARIANTS,
      "timing": dataclasses.asdict(cfg.timing),
    },
    "steps": rows,
    "targets": [
      {
        "name": f"{r['variant']}: lazy step <= {TARGET}x the dense step",
        "value": r["vs_dense"],
        "pass": r["pass"],
      }
      for r in rows
    ],
    "seconds": time.perf_counter() - t0,
  }


# ----------------------------------------------------------------- report


def _mb(nbytes: int) -> str:
  mb = nbytes / 1e6
  return f"{mb:,.0f} MB" if mb >= 100 else f"{mb:.3g} MB"


def steps_table(result: dict[str, Any]) -> str:
  """Per variant: both steps' ms, their ratio, bytes and achieved GB/s."""
  lines = [
    "| variant | dense step | lazy step | lazy / dense | bytes: dense | bytes: lazy "
    "(least) | dense: GB/s (of copy BW) |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for r in result["steps"]:
    cells = [
      r["variant"],
      f"{fmt_ms(r['dense_ms'])} ms",
      f"{fmt_ms(r['lazy_ms'])} ms",
      f"{r['vs_dense']:.2f}x",
      _mb(r["bytes"]["dense"]),
      _mb(r["bytes"]["lazy"]),
      f"{r['gbps']['dense']:.1f} ({r['of_bandwidth']['dense']:.0%})",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def passes_table(result: dict[str, Any]) -> str:
  """Per variant: the compiled steps' loops over memory (fusions, copies)."""
  lines = [
    "| variant | dense: fusions, copies | lazy: fusions, copies |",
    "|---|---:|---:|",
  ]
  for r in result["steps"]:
    h = r["hlo"]
    cells = [f"{h[c]['fusions']}, {h[c]['copies']}" for c in CONTENDERS]
    lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def report(result: dict[str, Any]) -> str:
  """The tables docs/performance.md quotes, and the verdicts."""
  c = result["config"]
  bw = result["machine"]["bandwidth"]
  lines = [
    f"Table {c['rows']:,} x {c['width']} float32, {c['lookups']:,} lookups per "
    f"step ({c['touched_rows']:,} rows touched); copy bandwidth "
    f"{bw['reference_gbps']:.1f} GB/s. Jitted, donated train step, median:",
    "",
    steps_table(result),
    "",
    "Loops over memory in the compiled steps:",
    "",
    passes_table(result),
    "",
    *verdict_lines(result["targets"], digits=2),
  ]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a small table, seconds")
  parser.add_argument("--out", type=Path, default=RESULTS, help="JSON folder")
  parser.add_argument("--report", type=Path, help="print a stored JSON's tables")
  args = parser.parse_args(argv)
  if args.report is not None:
    result = json.loads(args.report.read_text())
  else:
    result = run(QUICK if args.quick else FULL, args.quick)
    write_result(result, args.out, f"embedding-{result['machine']['slug']}", args.quick)
  print(report(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
