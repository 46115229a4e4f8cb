"""Accelerator profile: the jitted train step on GPU-sized trees.

Usage::

  python benchmarks/accelerator.py             # on a GPU or TPU: sized for < 4 min
  python benchmarks/accelerator.py --quick     # tiny trees, seconds (CPU too)
  python benchmarks/accelerator.py --out DIR   # where the JSON goes

On ``jax.devices()[0]`` it measures the device's copy bandwidth, then for every
tree and variant the jitted train step (``update`` + ``optax.apply_updates``,
params and state donated) of rmsprop_jax, optax and the floor, interleaved;
for plain RMSProp also rmsprop_jax with bfloat16 and float8_e4m3fn state.
It prints the tables and writes ``<out>/<device>.json`` (``<device>-quick.json``
with ``--quick``). Without ``--quick`` on a CPU it stops with a message unless
``--allow-cpu`` is given: the full trees are sized for an accelerator.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import accelerator_report
import jax.numpy as jnp
import jitted
import trees
from common import VARIANTS, Timing, gbps, measure
from contenders import Loop, library_train, stream_bandwidth
from device import describe_device, memory_stat

SCHEMA = 1
RESULTS = Path(__file__).resolve().parent / "results"
# Low-precision state, timed against float32 for plain RMSProp.
STATE_DTYPES = {"bfloat16": jnp.bfloat16, "float8_e4m3fn": jnp.float8_e4m3fn}


@dataclasses.dataclass(frozen=True)
class Profile:
  """The trees and repeat counts of one run."""

  trees: dict[str, trees.Shapes]
  stream_bytes: int  # size of each array of the bandwidth kernels
  stream_timing: Timing
  step_timing: Timing


def full_profile() -> Profile:
  # At most ~16 GB of device memory at once (GPT-2 medium, momentum: params,
  # grads, and three contenders' params and two state arrays): a 40 GB GPU
  # holds it. Compiling the 33 train steps takes most of the time.
  return Profile(
    trees={
      "1 leaf 256M": trees.single_leaf(256 * 2**20),
      "ResNet-50": trees.resnet50(),
      "GPT-2 medium": trees.gpt2("medium"),
    },
    stream_bytes=2**30,
    stream_timing=Timing(repeats=5, samples=3, calls=20),
    step_timing=Timing(repeats=5, samples=3, calls=10),
  )


def quick_profile() -> Profile:
  return Profile(
    trees={
      "1 leaf 64K": trees.single_leaf(64 * 1024),
      "4 x (64,64)": trees.uniform(4, (64, 64)),
    },
    stream_bytes=4 * 2**20,
    stream_timing=Timing(repeats=2, samples=2, calls=2),
    step_timing=Timing(repeats=2, samples=1, calls=2),
  )


# --------------------------------------------------------------------------
# The train steps.
# --------------------------------------------------------------------------


def contenders(variant: str, params: Any, grads: Any) -> dict[str, Loop]:
  """rmsprop_jax, optax and the floor; for plain also low-precision state."""
  runners = jitted.contenders(variant, params, grads)
  if variant == "plain":
    for name, dtype in STATE_DTYPES.items():
      runners[f"rmsprop_jax {name}"] = library_train(
        "rmsprop_jax", variant, params, grads, state_dtype=dtype
      )
  return runners


def state_dtype(contender: str) -> str:
  """``rmsprop_jax bfloat16`` -> ``bfloat16``; float32 for the others."""
  return contender.split(" ")[1] if " " in contender else "float32"


def contender_row(
  name: str, nbytes: int, times: dict[str, float], copy_gbps: float
) -> dict[str, Any]:
  """One contender's times, bytes per step, GB/s and fraction of the copy's."""
  achieved = gbps(nbytes, times["median_ms"])
  return {
    "state_dtype": state_dtype(name),
    "bytes_per_step": nbytes,
    **times,
    "gbps": achieved,
    "of_copy": achieved / copy_gbps,
  }


def bench_group(
  tree: str, shapes: trees.Shapes, variant: str, profile: Profile, copy_gbps: float
) -> dict[str, Any]:
  """One tree, one variant: every contender, interleaved."""
  params = trees.materialise_on_device(shapes, 1.0)
  grads = trees.materialise_on_device(shapes, 0.5)
  runners = contenders(variant, params, grads)
  moved = {name: run.moved_bytes for name, run in runners.items()}
  times = measure(dict(runners), profile.step_timing)
  peak = memory_stat("peak_bytes_in_use")
  del runners, params, grads
  gc.collect()  # free the device memory before the next group
  ms = {name: t["median_ms"] for name, t in times.items()}
  return {
    "tree": tree,
    "leaves": len(shapes),
    "params": trees.count(shapes),
    "variant": variant,
    "contenders": {
      name: contender_row(name, nbytes, times[name], copy_gbps)
      for name, nbytes in moved.items()
    },
    "vs_optax": ms["rmsprop_jax"] / ms["optax"],
    "vs_floor": ms["rmsprop_jax"] / ms["floor"],
    "state_dtype_vs_float32": {
      state_dtype(k): v / ms["rmsprop_jax"] for k, v in ms.items() if " " in k
    },
    "device_peak_bytes": peak,
  }


def bench_all(profile: Profile, copy_gbps: float, t0: float) -> list[dict[str, Any]]:
  """Every tree and variant of the profile, with progress on stderr."""
  rows = []
  for tree, shapes in profile.trees.items():
    for variant in VARIANTS:
      rows.append(bench_group(tree, shapes, variant, profile, copy_gbps))
      elapsed = time.perf_counter() - t0
      print(f"  {tree} / {variant} done ({elapsed:.0f} s)", file=sys.stderr, flush=True)
  return rows


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> Profile:
  profile = quick_profile() if args.quick else full_profile()
  if args.trees:
    names = args.trees.split(",")
    unknown = set(names) - set(profile.trees)
    if unknown:
      raise SystemExit(f"unknown trees {sorted(unknown)}; have {list(profile.trees)}")
    profile = dataclasses.replace(profile, trees={n: profile.trees[n] for n in names})
  return profile


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, seconds")
  parser.add_argument("--out", type=Path, default=RESULTS, help="JSON folder")
  parser.add_argument("--trees", help="comma-separated subset of the trees")
  parser.add_argument(
    "--allow-cpu", action="store_true", help="run the full profile on a CPU anyway"
  )
  args = parser.parse_args(argv)
  profile = _profile(args)
  device = describe_device()
  if device["platform"] == "cpu" and not (args.quick or args.allow_cpu):
    print(
      "The accelerator profile is meant for a GPU or TPU: its trees need ~16 GB "
      "and many minutes on a CPU. Use --quick for a smoke run, benchmarks/run.py "
      "for the CPU benchmarks, or --allow-cpu to run it anyway.",
      file=sys.stderr,
    )
    return 2
  t0 = time.perf_counter()
  bandwidth = stream_bandwidth(profile.stream_bytes, profile.stream_timing)
  steps = bench_all(profile, bandwidth["reference_gbps"], t0)
  result = {
    "schema": SCHEMA,
    "quick": args.quick,
    "device": device,
    "bandwidth": bandwidth,
    "steps": steps,
    "seconds": time.perf_counter() - t0,
  }
  args.out.mkdir(parents=True, exist_ok=True)
  path = args.out / f"{device['slug']}{'-quick' if args.quick else ''}.json"
  path.write_text(json.dumps(result, indent=1))
  print(accelerator_report.report(result))
  print(f"({result['seconds']:.0f} s; wrote {path})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
