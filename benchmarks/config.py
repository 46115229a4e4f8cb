"""Sizes, repeat counts and targets of ``run.py`` (full and ``--quick``)."""

from __future__ import annotations

import dataclasses

import trees
from common import VARIANTS, Timing

# Targets; the tolerances absorb the run-to-run noise of a shared machine.
JIT_VS_OPTAX = 1.05
JIT_VS_FLOOR = 1.10
EAGER_SPEEDUP = 10.0
EAGER_MIN_LEAVES = 100
# An eager update within this factor of JAX's dispatch floor (a jitted call
# taking and returning the same arrays, trivial body), on the trees of many
# small leaves named in ``Config.eager_floor_trees``, for these variants.
EAGER_VS_FLOOR = 1.2
EAGER_FLOOR_VARIANTS = ("plain", "momentum")
COMPILE_VS_OPTAX = 1.05


@dataclasses.dataclass
class Config:
  """Sizes and repeat counts of one run."""

  trees: dict[str, trees.Shapes]
  eager_trees: dict[str, trees.Shapes]
  eager_floor_trees: tuple[str, ...]  # eager trees the floor target is stated for
  # (leaves, variants, repeats) of each compile-time case
  compile_cases: tuple[tuple[int, tuple[str, ...], int], ...]
  memory_tree: str
  stream_bytes: int  # size of each array of the bandwidth kernels
  stream_timing: Timing
  jit_timing: Timing
  eager_timing: Timing


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
      "100 x (w (64,64), b (64,))": trees.dense((64,) * 101),
      "100 x (64,64)": trees.uniform(100),
      "ResNet-50": big["ResNet-50"],
      "GPT-2-style": big["GPT-2-style"],
    },
    eager_floor_trees=("100 x (w (64,64), b (64,))", "100 x (64,64)"),
    # Compile times of ~0.3 s vary by 5-10% on a shared machine: medians of 7.
    compile_cases=((100, tuple(VARIANTS), 7), (1000, ("plain",), 3)),
    memory_tree="ResNet-50",
    # Far larger than any cache, so that the kernels stream from memory.
    stream_bytes=256 * 1024 * 1024,
    stream_timing=Timing(repeats=5, samples=1, min_block_s=0.2),
    jit_timing=Timing(repeats=10, samples=1, min_block_s=0.2),
    eager_timing=Timing(repeats=5, samples=1, min_block_s=0.2),
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
    eager_trees={
      "100 x (w (16,16), b (16,))": trees.dense((16,) * 101),
      "100 x (16,16)": trees.uniform(100, (16, 16)),
    },
    eager_floor_trees=("100 x (w (16,16), b (16,))", "100 x (16,16)"),
    compile_cases=((10, tuple(VARIANTS), 1), (100, ("plain",), 1)),
    memory_tree="32 x (32,32)",
    stream_bytes=4 * 1024 * 1024,
    stream_timing=Timing(repeats=2, samples=2),
    jit_timing=Timing(repeats=2, samples=2, min_block_s=0.02),
    eager_timing=Timing(repeats=1, samples=2, min_block_s=0.02),
  )
