"""Benchmarks rmsprop_jax against optax, a memory-bandwidth floor and PyTorch.

Usage::

  python benchmarks/run.py                # full run, a few minutes on 2 cores
  python benchmarks/run.py --quick        # seconds-long smoke run
  python benchmarks/run.py --json out.json
  python benchmarks/run.py --sections jitted,memory

Sections (see benchmarks/README.md for what each measures and why):

1. ``jitted.py``: the jitted train step (params and state donated) vs
   ``optax.rmsprop`` and the floor, against the measured streaming bandwidth;
2. ``eager.py``: ``update`` without a user ``jit`` (the notebook case) vs
   JAX's dispatch floor and ``optax.rmsprop``;
3. ``compile_time.py``: lower + compile time vs ``optax.rmsprop``;
4. ``memory.py``: optimizer-state bytes per parameter and the compiled train
   step's temporaries.

Contenders are interleaved (round-robin, rotating the order every repeat) in
one process, so slow drifts of a shared machine hit all of them alike; every
number is a median over the repeated samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import compile_time
import eager
import jitted
import memory
import report
from common import machine
from config import Config, full_config, quick_config
from contenders import stream_bandwidth

SECTIONS = ("jitted", "eager", "compile", "memory")
NO_MEMORY = {"tree": None, "params": 0, "state": [], "step": []}


def run(cfg: Config, sections: set[str]) -> dict[str, Any]:
  """Every selected section; the others stay empty."""
  result: dict[str, Any] = {"machine": machine(), "jitted": [], "eager": []}
  if "jitted" in sections:
    bandwidth = stream_bandwidth(cfg.stream_bytes, cfg.stream_timing)
    result["machine"]["bandwidth"] = bandwidth
    result["jitted"] = jitted.bench_jitted(cfg, bandwidth["reference_gbps"])
  if "eager" in sections:
    result["eager"] = eager.bench_eager(cfg)
  result["compile"] = compile_time.bench_compile(cfg) if "compile" in sections else []
  result["memory"] = memory.bench_memory(cfg) if "memory" in sections else NO_MEMORY
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, 1-2 repeats")
  parser.add_argument("--json", type=Path, help="also write the results here")
  parser.add_argument(
    "--sections",
    default=",".join(SECTIONS),
    help=f"comma-separated subset of {','.join(SECTIONS)}",
  )
  args = parser.parse_args(argv)
  sections = set(args.sections.split(","))
  if not sections <= set(SECTIONS):
    parser.error(f"unknown sections: {sorted(sections - set(SECTIONS))}")
  t0 = time.perf_counter()
  result = run(quick_config() if args.quick else full_config(), sections)
  result["quick"] = args.quick
  result["targets"] = report.targets(result)
  result["seconds"] = time.perf_counter() - t0
  print(report.report(result))
  print(f"({result['seconds']:.0f} s)")
  if args.json is not None:
    args.json.write_text(json.dumps(result, indent=1, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(main())
