"""How optimizer-state leaves are stored and read back.

The core works in a *compute* dtype (at least float32) and hands each state
leaf to this module to be stored in the *storage* dtype the user asked for
(``state_dtype``). Keeping the two apart is what lets fp16/bf16 gradients
accumulate in float32 and lets bfloat16 state halve the memory while the
arithmetic stays in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


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
  dtype = jnp.promote_types(real_dtype(param_dtype), jnp.float32)
  if state_dtype is not None and jnp.dtype(state_dtype).itemsize > dtype.itemsize:
    dtype = jnp.promote_types(dtype, state_dtype)
  return jnp.dtype(dtype)


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
  return jnp.dtype(jnp.complex128 if real.itemsize > 4 else jnp.complex64)


def filled_like(param: jax.Array, value: Any, dtype: Any) -> jax.Array:
  """An array shaped (and placed) like ``param``, filled with ``value``."""
  return jnp.full_like(param, value, dtype=dtype)


def init_leaf(
    param: jax.Array, value: Any, state_dtype: jnp.dtype | None, *, is_nu: bool
) -> jax.Array:
  """A new state leaf for ``param``, filled with ``value``."""
  dtype = storage_dtype(param.dtype, state_dtype, is_nu=is_nu)
  return filled_like(param, value, dtype)


def load(stored: jax.Array, dtype: Any) -> jax.Array:
  """Reads a stored state leaf in the compute dtype ``dtype``."""
  if jnp.issubdtype(stored.dtype, jnp.complexfloating):
    dtype = jnp.result_type(dtype, jnp.complex64)
  return stored.astype(dtype)


def store(value: jax.Array, like: jax.Array) -> jax.Array:
  """Writes ``value`` back in the storage layout of ``like``."""
  return value.astype(like.dtype)


def logical_shape(stored: Any) -> tuple[int, ...]:
  """The shape of the parameter a stored leaf belongs to."""
  return tuple(stored.shape)
