r"""Block-wise 8-bit storage of optimizer-state leaves.

With an 8-bit float ``state_dtype`` every state leaf of at least
:data:`MIN_SIZE` elements is a :class:`QuantizedArray`: one float8 code per
element and one power-of-two float32 scale per block of at most
:data:`BLOCK_SIZE` elements along the last axis (so sharding any other axis
keeps blocks whole). ``nu`` is stored as its root. Values are rounded with a
deterministic dither, so runs are bit-reproducible on every path. The design,
and why each choice keeps the steps close to float32 state, is on the
documentation's "Low-memory state" page.
"""

from __future__ import annotations

import dataclasses
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
    """Number of dimensions of the logical (parameter) shape."""
    return len(self.shape)

  @property
  def size(self) -> int:
    """Number of elements of the logical (parameter) shape."""
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


#: Low mantissa bits of a stored scale that hold the block's store counter.
_COUNTER_MASK = (1 << 23) - 1


def _dither(counter: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  r"""Per-element uint32 dither ``frac(t φ + i ψ) · 2^32``.

  ``t`` is the block's store counter and ``i`` the element's flat index. For
  one element, successive stores see a Weyl sequence, the most evenly spread
  sequence in [0, 1): its rounding errors cancel over time instead of adding
  up like a random walk, and a repeated value is not rounded the same way
  forever.
  """
  index = jnp.zeros(shape, jnp.uint32)
  for axis, n in enumerate(shape):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    index = index * jnp.uint32(n) + iota
  per_block = counter * jnp.uint32(0x9E3779B9)
  return _expand(per_block, shape) + index * jnp.uint32(0xC2B2AE35)


def _round_mantissa(x: jax.Array, mbits: int, dither: jax.Array) -> jax.Array:
  """``x`` (float32) stochastically rounded to ``mbits`` mantissa bits.

  The ``d = 23 - mbits`` low mantissa bits are cut after adding ``d`` bits
  of ``dither`` (see :func:`_dither`), so the value rounds up for a share of
  dithers equal to the discarded fraction ``f`` (a carry moves into the
  exponent, as it should): unbiased, deterministic, and unrelated to the
  fraction it rounds. The result has at most 8 significant bits, so
  bfloat16 holds it exactly.
  """
  drop = 23 - mbits
  bits = jax.lax.bitcast_convert_type(jnp.abs(x), jnp.uint32)
  noise = dither >> (32 - drop)
  rounded = (bits + noise) & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)
  out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
  return jnp.where(x < 0, -out, out)


#: ``κ``: the root of a shrinking ``nu`` also rounds up outright for a share
#: ``κ (1 - nu_new / nu_old)`` of dithers (see :func:`_round_root`).
ROOT_PUSH = 0.5


def _round_root(
  a: jax.Array, mbits: int, dither: jax.Array, nu_old: jax.Array | None
) -> jax.Array:
  r"""``a = sqrt(nu) >= 0`` (float32) rounded to ``mbits`` mantissa bits.

  Between grid points ``L <= a < H`` it rounds up for a share
  ``(a - L) / (H - L) * H / a`` of dithers, which makes ``1 / result``, the
  step, unbiased (so the stored root cannot drift down while ``nu`` decays),
  plus ``ROOT_PUSH * (1 - a**2 / nu_old)`` while ``nu`` shrinks.

  Args:
    a: the root, non-negative float32.
    mbits: mantissa bits of the float8 format.
    dither: uint32 dither from :func:`_dither`.
    nu_old: the decoded ``nu`` this store replaces (``None``: no push).
  """
  drop = 23 - mbits
  bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
  lo = jax.lax.bitcast_convert_type(
    bits & jnp.uint32(~((1 << drop) - 1) & 0xFFFFFFFF), jnp.float32
  )
  binade = jax.lax.bitcast_convert_type(bits & jnp.uint32(0x7F800000), jnp.float32)
  ulp = binade * jnp.float32(2.0**-mbits)
  hi = lo + ulp
  u = (dither >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)  # [0, 1)
  # u < f H / a, without a division: u a (H - L) < (a - L) H.
  up = u * a * ulp < (a - lo) * hi
  if nu_old is not None:
    # u >= 1 - push, without a division: (1 - u) nu_old < κ (nu_old - a²).
    push = (1 - u) * nu_old < jnp.float32(ROOT_PUSH) * (nu_old - a * a)
    up = up | (push & (a > lo))
  return jnp.where(up, hi, lo)


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


def _to_codes(
  y: jax.Array, dtype: np.dtype, kind: Kind, dither: jax.Array
) -> jax.Array:
  """Float8 codes of ``|y| <= max(dtype)`` that has ``m`` mantissa bits.

  Normal float8 range (``|y| >= 2^emin``): ``y`` is on the grid, and its code
  is its float32 bit pattern cut to the top ``m`` mantissa bits with the
  exponent re-biased, ``(bits >> (23 - m)) - ((127 + emin - 1) << m)``.
  Subnormal range: the grid step is ``2^(emin - m)``; "sqrt" (``nu``) rounds
  up, so a positive value never becomes zero, "signed" rounds
  stochastically with a dither hashed from ``y`` and ``dither``. The codes are assembled
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
    u = (_mul_hash(bits ^ dither) >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    sub = jnp.floor(t + u)
  is_sub = a < jnp.float32(2.0**emin)
  top = int(np.array(info.max, dtype).view(np.uint8))
  code = jnp.minimum(jnp.where(is_sub, sub.astype(jnp.int32), normal), top)
  if kind == "signed":
    # No negative zero: it is NaN in the "fnuz" formats.
    code = jnp.where((y < 0) & (code > 0), code | 0x80, code)
  return jax.lax.bitcast_convert_type(code.astype(jnp.uint8), dtype)


def encode(
  value: jax.Array, dtype: Any, kind: Kind, prev: QuantizedArray | None = None
) -> QuantizedArray:
  """Quantizes ``value`` (the real state, any float dtype) block-wise.

  ``a`` (the value, or the root of ``nu``) is rounded to the float8 mantissa
  width first; the block's power-of-two scale then maps it onto the float8
  grid exactly (except in the subnormal range), and the intermediate fits
  bfloat16 without loss.

  Args:
    value: the state leaf in its compute dtype; non-negative for "sqrt".
    dtype: a float8 dtype from :data:`FLOAT8_DTYPES`.
    kind: "sqrt" to store ``sqrt(value)`` (for ``nu``), "signed" for the value.
    prev: the leaf this one replaces, if any: its scales' store counters,
      plus one, set the new dither.

  Returns:
    A :class:`QuantizedArray` with ``decode(result) ≈ value``.
  """
  dtype = np.dtype(dtype)
  shape = tuple(value.shape)
  if not shape:
    raise ValueError("encode needs an array with at least one axis.")
  info = jnp.finfo(dtype)
  x = value.astype(jnp.float32)
  nb = (*shape[:-1], num_blocks(shape))
  counter = jnp.zeros(nb, jnp.uint32)
  if prev is not None:
    old = jax.lax.bitcast_convert_type(prev.scales, jnp.uint32)
    counter = (old + 1) & jnp.uint32(_COUNTER_MASK)
  dither = _dither(counter, shape)
  a = jnp.sqrt(jnp.maximum(x, 0.0)) if kind == "sqrt" else x
  if kind == "sqrt":
    # nu_new / nu_old: decay under a zero gradient, ~1 under a steady one.
    nu_old = None if prev is None else decode(prev)
    a = _round_root(a, int(info.nmant), dither, nu_old)
  else:
    a = _round_mantissa(a, int(info.nmant), dither)
  a = a.astype(jnp.bfloat16)  # exact
  a = _rows_view(a).astype(jnp.float32)
  absmax = _block_absmax(a)
  k = _block_exponent(absmax, float(info.max))
  # A block whose scale would not be a normal float32 holds nothing that
  # float32 state could hold either (|a| < 1e-35): store zeros.
  ok = (absmax > 0) & (k >= -126) & (k <= 126)
  k = jnp.where(ok, k, 0)
  codes = _to_codes(a * _pow2(-k)[..., None], dtype, kind, _rows_view(dither))
  codes = codes.reshape(*shape[:-1], -1)[..., : shape[-1]]
  return QuantizedArray(
    codes=codes,
    scales=_with_counter(jnp.where(ok, _pow2(k), 0.0), counter),
    shape=shape,
    kind=kind,
    dtype=dtype,
  )


def _with_counter(scales: jax.Array, counter: jax.Array) -> jax.Array:
  """Powers of two (or 0) with ``counter`` in their zero mantissa bits."""
  bits = jax.lax.bitcast_convert_type(scales, jnp.uint32) | counter
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def scale_values(scales: jax.Array) -> jax.Array:
  """The power-of-two scales themselves, without the store counter."""
  bits = jax.lax.bitcast_convert_type(scales, jnp.uint32)
  bits = bits & jnp.uint32(~_COUNTER_MASK & 0xFFFFFFFF)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def decode(q: QuantizedArray) -> jax.Array:
  """The float32 value of a :class:`QuantizedArray` (``nu`` for "sqrt")."""
  a = q.codes.astype(jnp.float32) * _expand(scale_values(q.scales), q.shape)
  return a * a if q.kind == "sqrt" else a
