"""Parameter-tree shapes for the benchmarks: real model layouts, no weights.

Only shapes and dtypes matter for an optimizer benchmark, so every tree is a
dict of float32 arrays filled with a constant pattern.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Shapes = dict[str, tuple[int, ...]]


def single_leaf(n: int) -> Shapes:
  """One flat leaf of ``n`` parameters (the memory-bandwidth case)."""
  return {"w": (n,)}


def _bn(prefix: str, c: int) -> Iterator[tuple[str, tuple[int, ...]]]:
  yield f"{prefix}/bn/scale", (c,)
  yield f"{prefix}/bn/bias", (c,)


def resnet50(width_div: int = 1, classes: int = 1000) -> Shapes:
  """The parameter shapes of ResNet-50 (He et al., 2016; torchvision layout).

  Conv kernels are HWIO, batch norm contributes a scale and a bias per layer
  (its running statistics are not parameters). ``width_div`` divides every
  channel count, for the seconds-long smoke run.

  With ``width_div=1``: 161 leaves, 25.6M parameters.
  """
  d = width_div
  shapes: Shapes = {"stem/conv": (7, 7, 3, 64 // d)}
  shapes.update(_bn("stem", 64 // d))
  cin = 64 // d
  for stage, (blocks, width) in enumerate(
    zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)
  ):
    w = width // d
    for b in range(blocks):
      p = f"stage{stage + 1}/block{b + 1}"
      shapes[f"{p}/conv1"] = (1, 1, cin, w)
      shapes.update(_bn(f"{p}/conv1", w))
      shapes[f"{p}/conv2"] = (3, 3, w, w)
      shapes.update(_bn(f"{p}/conv2", w))
      shapes[f"{p}/conv3"] = (1, 1, w, 4 * w)
      shapes.update(_bn(f"{p}/conv3", 4 * w))
      if b == 0:  # projection shortcut: the channel count changes
        shapes[f"{p}/downsample"] = (1, 1, cin, 4 * w)
        shapes.update(_bn(f"{p}/downsample", 4 * w))
      cin = 4 * w
  shapes["fc/kernel"] = (cin, classes)
  shapes["fc/bias"] = (classes,)
  return shapes


def transformer(
  d_model: int = 512, n_layer: int = 12, vocab: int = 8192, ctx: int = 1024
) -> Shapes:
  """A GPT-2-style decoder: token and position embeddings, ``n_layer`` blocks.

  Each block has two layer norms, separate q/k/v/output projections (kernel and
  bias each) and a 4x MLP: 16 leaves per block. The GPT-2-small layout is
  ``d_model=768, vocab=50257``; the default is narrower so that the full
  benchmark fits a few minutes on a laptop-class CPU.

  With the defaults: 196 leaves, 42.5M parameters.
  """
  d = d_model
  shapes: Shapes = {"wte": (vocab, d), "wpe": (ctx, d)}
  for i in range(n_layer):
    p = f"h{i:02d}"
    for ln in ("ln1", "ln2"):
      shapes[f"{p}/{ln}/scale"] = (d,)
      shapes[f"{p}/{ln}/bias"] = (d,)
    for proj in ("q", "k", "v", "o"):
      shapes[f"{p}/attn/{proj}/kernel"] = (d, d)
      shapes[f"{p}/attn/{proj}/bias"] = (d,)
    shapes[f"{p}/mlp/fc/kernel"] = (d, 4 * d)
    shapes[f"{p}/mlp/fc/bias"] = (4 * d,)
    shapes[f"{p}/mlp/proj/kernel"] = (4 * d, d)
    shapes[f"{p}/mlp/proj/bias"] = (d,)
  shapes["ln_f/scale"] = (d,)
  shapes["ln_f/bias"] = (d,)
  return shapes


GPT2_SIZES = {"small": (768, 12), "medium": (1024, 24), "large": (1280, 36)}


def gpt2(size: str = "small") -> Shapes:
  """GPT-2's own layout (Radford et al., 2019): vocabulary 50257, context 1024.

  Sizes (width, blocks): small (768, 12): 196 leaves, 124.4M parameters;
  medium (1024, 24): 388 leaves, 354.8M; large (1280, 36): 580 leaves, 774.0M.
  The accelerator profile uses these; ``transformer()``'s narrower default
  suits a CPU.
  """
  d_model, n_layer = GPT2_SIZES[size]
  return transformer(d_model, n_layer, vocab=50257, ctx=1024)


def dense(sizes: Sequence[int], prefix: str = "dense") -> Shapes:
  """Dense layers ``sizes[0] -> sizes[1] -> ...``: a kernel ``w`` and a bias ``b`` each.

  ``dense((64,) * 101)`` is 100 layers of a (64, 64) kernel and a (64,) bias.
  """
  shapes: Shapes = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
    shapes[f"{prefix}{i:03d}/w"] = (n_in, n_out)
    shapes[f"{prefix}{i:03d}/b"] = (n_out,)
  return shapes


def uniform(n_leaves: int, shape: tuple[int, ...] = (64, 64)) -> Shapes:
  """``n_leaves`` leaves of one shape (the dispatch- and compile-bound case)."""
  return {f"p{i:04d}": shape for i in range(n_leaves)}


def count(shapes: Shapes) -> int:
  """Total number of parameters."""
  return sum(math.prod(s) for s in shapes.values())


def materialise(shapes: Shapes, value: float) -> dict[str, jnp.ndarray]:
  """A tree of float32 arrays with the given shapes.

  The values vary along each leaf (a smooth pattern around ``value``) so that
  no contender can profit from constant inputs.
  """
  out = {}
  for name, shape in shapes.items():
    n = math.prod(shape)
    x = value * (1.0 + 0.5 * np.sin(np.arange(n, dtype=np.float32) * 1e-3))
    out[name] = jnp.asarray(x.reshape(shape))
  return out


@functools.partial(jax.jit, static_argnums=0)
def _pattern(shape: tuple[int, ...], value: jax.Array) -> jax.Array:
  # float32 indices round above 2^24; the pattern still varies along the leaf.
  i = jnp.arange(math.prod(shape), dtype=jnp.float32)
  return (value * (1.0 + 0.5 * jnp.sin(i * 1e-3))).reshape(shape)


def materialise_on_device(shapes: Shapes, value: float) -> dict[str, jax.Array]:
  """Like :func:`materialise`, computed on the default device.

  For trees of hundreds of millions of parameters, where filling them on the
  host and copying them over would take longer than the benchmark.
  """
  v = jnp.float32(value)
  return {name: _pattern(shape, v) for name, shape in shapes.items()}
