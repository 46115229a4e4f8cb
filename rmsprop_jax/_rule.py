"""The RMSProp update rule for one array: every option is one visible branch.

Pure functions of arrays and scalars, in the compute dtype. Trees, storage
formats, validation and dispatch live in ``_transform.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Rule(NamedTuple):
  """The structural options, fixed when the optimizer is built."""

  eps_in_sqrt: bool = True
  centered: bool = False
  bias_correction: bool = False
  nesterov: bool = False
  lr_in_momentum: bool = True
  maximize: bool = False
  caution: bool = False
  scale_only: bool = False  # scale_by_rms: return s = g / d, no learning rate


class Hyper(NamedTuple):
  """The numeric hyper-parameters as given; ``None`` where an option is off."""

  learning_rate: Any  # None for scale_by_rms and for a schedule
  decay: Any
  eps: Any
  initial_scale: Any
  momentum: Any = None
  coupled_weight_decay: Any = None  # L2: wd * p added to the gradient
  decoupled_weight_decay: Any = None  # -lr * wd * p added to the update
  max_lr: Any = None  # corrected decoupled decay: scaled by lr**2 / max_lr


def weight_decay(value: Any, *, decoupled: bool) -> dict[str, Any]:
  """``Hyper``'s field for a weight decay of ``value``: coupled (L2) or decoupled."""
  return {"decoupled_weight_decay" if decoupled else "coupled_weight_decay": value}


class Scalars(NamedTuple):
  """One step's hyper-parameters in the compute dtype; ``None`` where off."""

  decay: jax.Array
  one_minus_decay: jax.Array
  eps: jax.Array
  lr: jax.Array
  neg_lr: jax.Array
  bias: jax.Array | None  # 1 - decay**(k + 1), with bias correction
  momentum: jax.Array | None
  coupled_wd: jax.Array | None
  decoupled_wd: jax.Array | None  # the decay's factor, lr (or lr**2/max_lr) * wd


def scalars(
  h: Hyper, lr: jax.Array, count: jax.Array | None, rule: Rule, dtype: Any
) -> Scalars:
  """Derives one step's scalars once per compute dtype, not once per leaf.

  ``count`` is the step count after this update (``k + 1``).
  """
  cast = lambda x: jnp.asarray(x).astype(dtype)
  maybe = lambda x: None if x is None else cast(x)
  decay, lr = cast(h.decay), cast(lr)
  bias = None
  if rule.bias_correction and count is not None:
    bias = 1 - decay ** count.astype(dtype)
  decoupled = maybe(h.decoupled_weight_decay)
  if decoupled is not None:
    scale = lr if h.max_lr is None else lr * lr / cast(h.max_lr)
    decoupled = scale * decoupled
  return Scalars(
    decay=decay,
    one_minus_decay=1 - decay,
    eps=cast(h.eps),
    lr=lr,
    neg_lr=-lr,
    bias=bias,
    momentum=maybe(h.momentum),
    coupled_wd=maybe(h.coupled_weight_decay),
    decoupled_wd=decoupled,
  )


class Step(NamedTuple):
  """One leaf's step: the update and the new state; ``None`` where off."""

  update: jax.Array
  nu: jax.Array
  mu: Any
  trace: Any
  rows: Any  # lazy rows: which rows (indices along axis 0) have a gradient


def update(
  g: jax.Array,
  nu: jax.Array,
  mu: Any,
  trace: Any,
  p: Any,
  sc: Scalars,
  rule: Rule,
  lazy: bool = False,
) -> Step:
  """One RMSProp step of one leaf.

  ``mu`` and ``trace`` are ``None`` where centring or momentum is off, and the
  parameter ``p`` where weight decay is off for this leaf. With ``lazy`` (a
  leaf of ``lazy_rows``), a row whose gradient is zero everywhere does not
  move: its update is 0 and its statistics keep their values here, and the
  caller keeps their stored bits, as TF's sparse kernels leave the rows an
  embedding lookup did not touch.
  """
  if rule.maximize:
    g = -g
  if sc.coupled_wd is not None:
    g = g + sc.coupled_wd * p
  rows = touched_rows(g) if lazy else None
  keep = _row_keeper(rows)
  nu = keep(sc.one_minus_decay * abs_sq(g) + sc.decay * nu, nu)
  var = nu if sc.bias is None else nu / sc.bias
  if rule.centered:
    mu = keep(sc.one_minus_decay * g + sc.decay * mu, mu)
    mu_hat = mu if sc.bias is None else mu / sc.bias
    # A difference of two nearly equal numbers when the gradient barely
    # varies: rounding can make it negative and its root NaN.
    var = jnp.maximum(var - abs_sq(mu_hat), 0)
  if rule.eps_in_sqrt:
    s = g * jax.lax.rsqrt(var + sc.eps)
  else:
    s = g / (jnp.sqrt(var) + sc.eps)
  if rule.scale_only:
    return Step(s, nu, mu, None, None)
  u, trace = _with_momentum(s, trace, sc, rule, keep)
  if rule.caution:
    u = _cautious(u, g)
  if sc.decoupled_wd is not None:
    u = u - sc.decoupled_wd * p
  if rows is not None:
    u = jnp.where(along_rows(rows, u.ndim), u, jnp.zeros_like(u))
  return Step(u, nu, mu, trace, rows)


def _with_momentum(
  s: jax.Array, trace: Any, sc: Scalars, rule: Rule, keep: Keep
) -> tuple[jax.Array, Any]:
  """The update from ``s``; ``trace`` is the buffer with the update's sign.

  Keeping the libraries' buffer ``b`` negated makes the update *be* the new
  buffer without Nesterov: one kernel per leaf fewer. Negation is exact.
  """
  if sc.momentum is None:
    return sc.neg_lr * s, None
  m = sc.momentum
  if rule.lr_in_momentum:  # optax, Keras, TF: b <- m b + lr s
    trace = keep(m * trace + sc.neg_lr * s, trace)
    return (sc.neg_lr * s + m * trace if rule.nesterov else trace), trace
  trace = keep(m * trace - s, trace)  # PyTorch: b <- m b + s, and the step is lr b
  return (sc.lr * (m * trace - s) if rule.nesterov else sc.lr * trace), trace


Keep = Callable[[jax.Array, jax.Array], jax.Array]


def _row_keeper(rows: jax.Array | None) -> Keep:
  """``keep(new, old)``: ``new`` in the touched ``rows``, ``old`` elsewhere.

  The identity without lazy rows. Keeping the rows of each statistic before
  the step reads it (not only when it is stored) makes the step's input the
  stored array itself: XLA then updates the state in place and reads it
  back, where it would otherwise copy the old state to compute the step
  from, and an untouched row is a store of the value just loaded.
  """
  if rows is None:
    return lambda new, old: new
  return lambda new, old: jnp.where(along_rows(rows, new.ndim), new, old)


def _cautious(u: jax.Array, g: jax.Array) -> jax.Array:
  """Zeroes the update where it climbs the gradient, rescaled per leaf.

  Cautious optimizers (Liang et al., 2024): the kept entries are divided by
  their share of the leaf, floored at 1e-3, as timm does.
  """
  keep = (jnp.real(jnp.conj(u) * g) < 0).astype(abs_sq(g).dtype)
  return u * (keep / jnp.maximum(jnp.mean(keep), 1e-3))


def abs_sq(x: jax.Array) -> jax.Array:
  """``|x|**2``, real for complex ``x``."""
  if jnp.iscomplexobj(x):
    return (x.conj() * x).real
  return x * x


def touched_rows(g: jax.Array) -> jax.Array:
  """Whether each row (index along axis 0) of ``g`` has a non-zero entry.

  The reduction runs within a row, so a leaf sharded over its rows needs no
  communication.
  """
  axes = tuple(range(1, g.ndim))
  if jnp.iscomplexobj(g):
    return jnp.any(g != 0, axis=axes)
  # A sum of magnitudes is 0 exactly when every entry is (no term cancels
  # another, a NaN stays NaN): the same test as any(g != 0), but a reduction
  # that reads g directly, where any() first writes a mask of g's size.
  return jnp.sum(jnp.abs(g), axis=axes) != 0


def along_rows(rows: jax.Array, ndim: int) -> jax.Array:
  """``rows`` shaped to broadcast against an array of ``ndim`` axes."""
  return rows.reshape(rows.shape + (1,) * (ndim - 1))
