"""How optimizer-state leaves are stored and read back.

The core works in a *compute* dtype (at least float32) and hands each state
leaf to this module to be stored in the *storage* dtype the user asked for
(``state_dtype``). Keeping the two apart is what lets fp16/bf16 gradients
accumulate in float32 and lets bfloat16 state halve the memory while the
arithmetic stays in float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.core import Tracer
from jax.sharding import NamedSharding, PartitionSpec

from rmsprop_jax import _compile, _quantized, _rule


def real_dtype(dtype: Any) -> jnp.dtype:
  """The real counterpart of ``dtype`` (float32 for complex64)."""
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    return jnp.finfo(dtype).dtype
  return dtype


def compute_dtype(param_dtype: Any, state_dtype: jnp.dtype | None) -> jnp.dtype:
  """The real dtype the statistics of one leaf are computed in.

  Half-precision leaves are promoted to float32 before squaring: |g|² of an
  fp16 gradient of 300 already overflows fp16.
  """
  candidates = [jnp.dtype(jnp.float32), real_dtype(param_dtype)]
  if state_dtype is not None:
    candidates.append(jnp.dtype(state_dtype))
  # The widest float of the three (the first, float32, on a tie).
  dtype = max(
    (d for d in candidates if jnp.issubdtype(d, jnp.floating)), key=lambda d: d.itemsize
  )
  # NumPy float64 parameters without x64 get float32 state, as jnp arrays would.
  return canonical_dtype(dtype)


def complex_dtype(real: Any) -> jnp.dtype:
  """The complex dtype of ``real``'s precision (complex64 for float32)."""
  return jnp.dtype(jnp.complex128 if jnp.dtype(real).itemsize > 4 else jnp.complex64)


def storage_dtype(
  param_dtype: Any, state_dtype: jnp.dtype | None, *, is_nu: bool
) -> jnp.dtype:
  """The dtype a state leaf is stored in.

  ``nu`` is always real. ``mu`` and ``trace`` of a complex leaf stay complex;
  ``state_dtype`` then picks only their precision.
  """
  compute = compute_dtype(param_dtype, state_dtype)
  real = jnp.dtype(state_dtype) if state_dtype is not None else compute
  if is_nu or not jnp.issubdtype(param_dtype, jnp.complexfloating):
    return real
  return complex_dtype(real)


def replicated(value: jax.Array, params: Any) -> jax.Array:
  """A scalar replicated over the params' mesh, when they have one.

  Without this an eager ``init`` of mesh-sharded params leaves the scalar on
  device 0, and a jitted step whose ``out_shardings`` mirror the state then
  fails with "incompatible devices".
  """
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(leaf, Tracer) and isinstance(sharding, NamedSharding):
      return jax.device_put(value, NamedSharding(sharding.mesh, PartitionSpec()))
  return value


def filled_like(param: jax.Array, value: Any, dtype: Any) -> jax.Array:
  """An array shaped, and sharded, like ``param``, filled with ``value``.

  A traced ``param`` (``jax.jit(opt.init)`` on an ``Auto`` mesh) carries no
  sharding, so a constant fill would be placed by the compiler's default.
  The fill is therefore computed *from* ``param``: ``|Re(p)| * 0``, with
  non-finite entries replaced by 0, plus ``value``. That is exactly
  ``value`` bit for bit, and sharding propagation gives it ``param``'s
  layout (XLA may not fold ``x * 0`` for floats, so the dependency stays).

  Args:
    param: the parameter leaf (any floating or complex dtype and shape).
    value: the fill value, a scalar.
    dtype: the dtype of the result.
  """
  dtype = jnp.dtype(dtype)
  if not isinstance(param, Tracer):
    return jnp.full_like(param, value, dtype=dtype)
  zero = jnp.abs(jnp.real(param)) * 0
  zero = jnp.where(jnp.isfinite(zero), zero, 0).astype(dtype)
  return zero + jnp.asarray(value, dtype)


def as_array(x: Any) -> Any:
  """``x`` itself if it is an array (or a tracer), else ``jnp.asarray(x)``.

  Python and NumPy scalars are parameter leaves too, as in optax.
  """
  return x if hasattr(x, "shape") and hasattr(x, "dtype") else jnp.asarray(x)


def canonical_dtype(dtype: Any) -> jnp.dtype:
  """The dtype JAX gives an array of ``dtype`` (float32 for float64 without x64)."""
  return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))


def init_leaf(
  param: jax.Array,
  value: Any,
  state_dtype: jnp.dtype | None,
  *,
  is_nu: bool,
  quantize: bool = True,
) -> Any:
  """A new state leaf for ``param``, filled with ``value``.

  With an 8-bit float ``state_dtype``, a real leaf of at least
  ``_quantized.MIN_SIZE`` elements becomes a ``QuantizedArray`` (``nu``
  stored as its root), unless ``quantize`` is False; other leaves keep
  full-precision storage.
  """
  if _quantized.is_float8(state_dtype):
    real = is_nu or not jnp.issubdtype(param.dtype, jnp.complexfloating)
    if quantize and real and _quantized.applies(tuple(param.shape), state_dtype):
      kind = "sqrt" if is_nu else "signed"
      return _compile.run(
        _quantized_fill_jit, _quantized_fill, param, value, dtype=state_dtype, kind=kind
      )
    state_dtype = None
  dtype = storage_dtype(param.dtype, state_dtype, is_nu=is_nu)
  return filled_like(param, value, dtype)


def _quantized_fill(
  param: jax.Array, value: Any, *, dtype: Any, kind: _quantized.Kind
) -> _quantized.QuantizedArray:
  """``value`` everywhere, encoded: codes and scales take ``param``'s sharding."""
  return _quantized.encode(filled_like(param, value, jnp.float32), dtype, kind)


_quantized_fill_jit = jax.jit(_quantized_fill, static_argnames=("dtype", "kind"))


def load(stored: Any, dtype: Any) -> jax.Array:
  """Reads a stored state leaf in the compute dtype ``dtype``."""
  if isinstance(stored, _quantized.QuantizedArray):
    return _quantized.decode(stored).astype(dtype)
  if jnp.issubdtype(stored.dtype, jnp.complexfloating):
    dtype = complex_dtype(dtype)
  return stored.astype(dtype)


def store(value: jax.Array, like: Any) -> Any:
  """Writes ``value`` back in the storage layout of ``like``."""
  if isinstance(like, _quantized.QuantizedArray):
    return _quantized.encode(value, like.dtype, like.kind, like)
  return value.astype(like.dtype)


def holds_exactly(stored: Any, dtype: Any) -> bool:
  """Whether ``stored`` keeps values of the compute ``dtype`` as they are.

  Full-precision storage in the compute dtype itself: ``load`` and ``store``
  are then the identity, bit for bit.
  """
  if isinstance(stored, _quantized.QuantizedArray):
    return False
  return real_dtype(stored.dtype) == jnp.dtype(dtype)


def keep_rows(rows: jax.Array, new: Any, old: Any) -> Any:
  """``new`` where ``rows`` is True, else ``old``: stored values, bit for bit.

  A block-quantized leaf keeps the codes and scales of its untouched rows
  (with their store counters), which works when every block lies within one
  row: leaves of two or more axes, whose blocks run along the last one.
  """
  if isinstance(new, _quantized.QuantizedArray):
    if len(new.shape) < 2:
      raise ValueError(
        f"lazy_rows marks a 1-D leaf of shape {new.shape} whose state is "
        "block-quantized: its 8-bit blocks span many rows, so an untouched row "
        "cannot keep its stored value. init of an optimizer with lazy_rows "
        "keeps such leaves in full precision: call init with this optimizer."
      )
    return dataclasses.replace(
      new,
      codes=_select_rows(rows, new.codes, old.codes),
      scales=_select_rows(rows, new.scales, old.scales),
    )
  return _select_rows(rows, new, old)


def _select_rows(rows: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
  return jnp.where(_rule.along_rows(rows, new.ndim), new, old)


def check_full_precision(stored: Any, name: str, keeper: str) -> None:
  """Refuses a block-quantized leaf where ``keeper`` needs the values themselves."""
  if isinstance(stored, _quantized.QuantizedArray):
    raise TypeError(
      f"{name} is block-quantized ({jnp.dtype(stored.dtype).name} state); "
      f"{keeper} full-precision state, so convert the state of an optimizer "
      "with state_dtype=None (float32) or jnp.bfloat16."
    )


def dtype_of(stored: Any) -> Any:
  """The storage dtype of a state leaf (``None`` for a missing one)."""
  return getattr(stored, "dtype", None)


def logical_shape(stored: Any) -> tuple[int, ...]:
  """The shape of the parameter a stored leaf belongs to."""
  return tuple(stored.shape)
