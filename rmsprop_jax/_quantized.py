r"""Block-wise 8-bit storage of optimizer-state leaves.

With ``state_dtype=jnp.float8_e4m3fn`` (or ``jnp.float8_e5m2``) every state
leaf of at least :data:`MIN_SIZE` elements is kept as a :class:`QuantizedArray`:
one float8 *code* per element plus one float32 *scale* per block of at most
:data:`BLOCK_SIZE` consecutive elements of the last axis. The value of an
element is ``code * scale``; the arithmetic of the update happens in float32.

Design:

* **Layout.** Blocks run along the last axis and never cross a row, so a leaf
  sharded on any other axis (e.g. FSDP on axis 0) keeps whole blocks on every
  shard and encoding needs no communication. A last axis shorter than
  :data:`BLOCK_SIZE` is a single block; a longer one ends in a partial block.
  Codes keep the leaf's own shape, scales have shape ``shape[:-1] + (blocks,)``.
* **What is stored.** ``nu`` is stored as ``a = sqrt(nu)`` ("sqrt" kind): the
  step divides by ``sqrt(nu)`` anyway, and the root halves the dynamic range,
  so eight orders of magnitude of ``nu`` need only four of float8 range.
  ``mu`` and ``trace`` are stored as themselves ("signed" kind).
* **Scale.** A power of two per block, ``2^k``, the least that puts the block
  maximum at or below ``F``, the largest finite float8 number: the maximum
  lands in the top binade, and the block keeps the whole float8 range below
  it (e4m3fn: ~2^17, e5m2: ~2^31), less at most one binade.
* **Rounding.** ``a`` is rounded *stochastically* to the float8 mantissa
  width, with random bits hashed from the value's own float32 bits:
  unbiased, so that slow moving averages (``decay`` close to 1) still move
  when a step changes them by less than half a float8 step (round-to-nearest
  would freeze them, rounding up would never let them decay), and
  deterministic, so that runs are bit-reproducible, eager equals jit and a
  sharded run equals an unsharded one. A power-of-two scale makes ``a / 2^k``
  then exact, except in the float8 subnormal range, where the "sqrt" kind
  rounds *up* (a positive ``nu`` is never stored as zero: a flushed ``nu``
  would turn the step into ``g / sqrt(eps)``) and the "signed" kind rounds
  stochastically again. One store keeps the decoded ``nu`` at least
  ``(8/9)^2 ≈ 0.79`` (e4m3fn) or ``(4/5)^2 = 0.64`` (e5m2) times its input:
  one step grows by at most 1.13x (e4m3fn) or 1.25x (e5m2).
* **Speed.** Rounding before scaling also makes the intermediate between
  the two passes over ``a`` (block maximum, then codes) exactly
  representable in bfloat16, half the memory traffic of float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

#: Elements per block (along the last axis).
BLOCK_SIZE = 256
#: Leaves with fewer elements than this keep full-precision state, as in
#: bitsandbytes: their scales would cost more than the codes save.
MIN_SIZE = 4096

Kind = Literal["sqrt", "signed"]

_FLOAT8_NAMES = (
  "float8_e4m3fn",
  "float8_e5m2",
  "float8_e4m3fnuz",
  "float8_e5m2fnuz",
  "float8_e4m3b11fnuz",
  "float8_e4m3",
  "float8_e3m4",
)
#: The 8-bit float dtypes whose state is stored block-quantized.
FLOAT8_DTYPES: tuple[np.dtype, ...] = tuple(
  np.dtype(getattr(jnp, n)) for n in _FLOAT8_NAMES if hasattr(jnp, n)
)


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """A block-quantized state leaf (a pytree node with two array children).

  Attributes:
    codes: float8 codes, shaped like the parameter.
    scales: float32 per-block scales, shaped ``shape[:-1] + (blocks,)``.
    shape: the logical shape (the parameter's).
    kind: ``"sqrt"`` when ``codes * scales`` is the root of the stored value
      (``nu``), ``"signed"`` when it is the value itself (``mu``, ``trace``).
    dtype: the float8 dtype of the codes (what ``state_dtype`` asked for).
  """

  codes: Any
  scales: Any
  shape: tuple[int, ...]
  kind: Kind
  dtype: np.dtype

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    """Bytes held by the codes and the scales together."""
    return int(self.codes.nbytes) + int(self.scales.nbytes)


jax.tree_util.register_dataclass(
  QuantizedArray,
  data_fields=["codes", "scales"],
  meta_fields=["shape", "kind", "dtype"],
)


def is_float8(dtype: Any) -> bool:
  """Whether ``dtype`` is one of the block-quantized 8-bit float dtypes."""
  return dtype is not None and np.dtype(dtype) in FLOAT8_DTYPES


def applies(shape: tuple[int, ...], state_dtype: Any) -> bool:
  """Whether a real state leaf of ``shape`` is stored quantized."""
  return is_float8(state_dtype) and math.prod(shape) >= MIN_SIZE


def block_size(shape: tuple[int, ...]) -> int:
  """Elements per block for a leaf of ``shape`` (the last axis if shorter)."""
  return max(1, min(BLOCK_SIZE, shape[-1] if shape else 1))


def num_blocks(shape: tuple[int, ...]) -> int:
  """Blocks per row of a leaf of ``shape``."""
  n = shape[-1] if shape else 1
  return max(1, -(-n // block_size(shape)))


def _rows_view(x: jax.Array) -> jax.Array:
  """``x`` (ndim >= 1) as ``shape[:-1] + (blocks, block)``, zero-padded."""
  b, nb = block_size(x.shape), num_blocks(x.shape)
  pad = nb * b - x.shape[-1]
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], nb, b)


def _expand(scales: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Per-block ``scales`` broadcast back to one value per element."""
  b = block_size(shape)
  full = jnp.broadcast_to(scales[..., None], (*scales.shape, b))
  full = full.reshape(*scales.shape[:-1], scales.shape[-1] * b)
  return full[..., : shape[-1]]


def _block_absmax(a: jax.Array) -> jax.Array:
  """``max |a|`` over the last axis.

  Halving the axis with elementwise maxima of its two halves, down to 16
  lanes, lets XLA's CPU backend read the bfloat16 intermediate directly;
  a plain float reduction goes to a library kernel that wants a float32
  copy of ``a`` in memory first. The result is the same maximum.
  """
  m = jnp.abs(a)
  while m.shape[-1] > 16 and m.shape[-1] % 2 == 0:
    half = m.shape[-1] // 2
    m = jnp.maximum(m[..., :half], m[..., half:])
  return jnp.max(m, axis=-1)


def _mul_hash(bits: jax.Array) -> jax.Array:
  """A multiplicative hash of 32 bits: its high bits depend on all of them."""
  return bits * jnp.uint32(0x9E3779B1)


def _round_mantissa(x: jax.Array, mbits: int) -> jax.Array:
  """``x`` (float32) stochastically rounded to ``mbits`` mantissa bits.

  The ``d = 23 - mbits`` low mantissa bits are cut after adding ``d`` random
  bits, so the value rounds up with probability equal to the discarded
  fraction (a carry moves into the exponent, as it should). The random bits
  are the high bits of a hash of ``x``'s own bits: deterministic, and
  unrelated to the fraction they round. The result has at most 8
  significant bits, so bfloat16 holds it exactly.
  """
  drop = 23 - mbits
  bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)
  noise = _mul_hash(bits) >> (32 - drop)
  rounded = (bits + noise) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
  out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
  return jnp.where(x < 0, -out, out)


def _block_exponent(absmax: jax.Array, fmax: float) -> jax.Array:
  """The least ``k`` with ``absmax <= fmax * 2^k`` (int32, exact).

  Both have few mantissa bits; comparing the mantissa fields decides whether
  the binade of ``absmax`` fits under ``fmax`` or needs one more power of 2.
  """
  bits = jax.lax.bitcast_convert_type(absmax, jnp.uint32)
  exponent = (bits >> 23).astype(jnp.int32) - 127
  fbits = int(np.array(fmax, np.float32).view(np.uint32))
  fexp = (fbits >> 23) - 127
  over = (bits & 0x7FFFFF) > (fbits & 0x7FFFFF)
  return exponent - fexp + over.astype(jnp.int32)


def _pow2(k: jax.Array) -> jax.Array:
  """``2^k`` for int32 ``k`` in [-126, 127], from its float32 bit pattern."""
  return jax.lax.bitcast_convert_type(((k + 127) << 23).astype(jnp.uint32), jnp.float32)


def _to_codes(y: jax.Array, dtype: np.dtype, kind: Kind) -> jax.Array:
  """Float8 codes of ``|y| <= max(dtype)`` that has ``m`` mantissa bits.

  Normal float8 range (``|y| >= 2^emin``): ``y`` is on the grid, and its code
  is its float32 bit pattern cut to the top ``m`` mantissa bits with the
  exponent re-biased, ``(bits >> (23 - m)) - ((127 + emin - 1) << m)``.
  Subnormal range: the grid step is ``2^(emin - m)``; "sqrt" (``nu``) rounds
  up, so a positive value never becomes zero, "signed" rounds
  stochastically with a dither hashed from ``y``. The codes are assembled
  from integers: exact, and several times faster than XLA's conversion on
  CPU.
  """
  info = jnp.finfo(dtype)
  emin, mbits = int(info.minexp), int(info.nmant)
  a = jnp.abs(y)
  bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
  normal = (bits >> (23 - mbits)).astype(jnp.int32) - ((127 + emin - 1) << mbits)
  t = a * jnp.float32(2.0 ** (mbits - emin))
  if kind == "sqrt":
    sub = jnp.ceil(t)
  else:
    u = (_mul_hash(bits) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    sub = jnp.floor(t + u)
  is_sub = a < jnp.float32(2.0**emin)
  top = int(np.array(info.max, dtype).view(np.uint8))
  code = jnp.minimum(jnp.where(is_sub, sub.astype(jnp.int32), normal), top)
  if kind == "signed":
    # No negative zero: it is NaN in the "fnuz" formats.
    code = jnp.where((y < 0) & (code > 0), code | 0x80, code)
  return jax.lax.bitcast_convert_type(code.astype(jnp.uint8), dtype)


@functools.partial(jax.jit, static_argnames=("dtype", "kind"))
def encode(value: jax.Array, dtype: Any, kind: Kind) -> QuantizedArray:
  """Quantizes ``value`` (the real state, any float dtype) block-wise.

  Three steps: (1) ``a`` (the value, or the root of ``nu``) is rounded
  stochastically to the float8 mantissa width, in float32; (2) per block,
  the scale is the power of two ``2^k`` that puts the block maximum in the
  top binade of the float8 format; (3) ``a / 2^k`` is then on the float8
  grid (exact, a power-of-two scaling) except in the subnormal range.
  Rounding before scaling is what a power-of-two scale allows, and it lets
  the intermediate between the two passes over ``a`` (maximum, then codes)
  be bfloat16 without any loss: half the memory traffic of float32.

  Args:
    value: the state leaf in its compute dtype; non-negative for "sqrt".
    dtype: a float8 dtype from :data:`FLOAT8_DTYPES`.
    kind: "sqrt" to store ``sqrt(value)`` (for ``nu``), "signed" for the value.

  Returns:
    A :class:`QuantizedArray` with ``decode(result) ≈ value``.

  Compiled once per shape (one fused computation instead of a dozen eager
  operations when ``init`` runs eagerly); inlined when called under ``jit``.
  """
  dtype = np.dtype(dtype)
  shape = tuple(value.shape)
  if not shape:
    raise ValueError("encode needs an array with at least one axis.")
  info = jnp.finfo(dtype)
  x = value.astype(jnp.float32)
  a = jnp.sqrt(jnp.maximum(x, 0.0)) if kind == "sqrt" else x
  a = _round_mantissa(a, int(info.nmant)).astype(jnp.bfloat16)  # exact
  a = _rows_view(a).astype(jnp.float32)
  absmax = _block_absmax(a)
  k = _block_exponent(absmax, float(info.max))
  # A block whose scale would not be a normal float32 holds nothing that
  # float32 state could hold either (|a| < 1e-35): store zeros.
  ok = (absmax > 0) & (k >= -126) & (k <= 126)
  k = jnp.where(ok, k, 0)
  codes = _to_codes(a * _pow2(-k)[..., None], dtype, kind)
  codes = codes.reshape(*shape[:-1], -1)[..., : shape[-1]]
  return QuantizedArray(
    codes=codes,
    scales=jnp.where(ok, _pow2(k), 0.0),
    shape=shape,
    kind=kind,
    dtype=dtype,
  )


@jax.jit
def decode(q: QuantizedArray) -> jax.Array:
  """The float32 value of a :class:`QuantizedArray` (``nu`` for "sqrt")."""
  a = q.codes.astype(jnp.float32) * _expand(q.scales, q.shape)
  return a * a if q.kind == "sqrt" else a
