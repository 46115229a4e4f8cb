"""Parameters in bfloat16 or float16 that train like float32 ones.

A bfloat16 weight near 1 has neighbours 2**-8 and 2**-7 away, so adding an
update rounds away every step smaller than half that gap: with RMSProp, whose
steps are about the learning rate, a run at lr 1e-3 or 1e-4 loses most or all
of them. :func:`low_precision_params` wraps an optimizer and rounds each new
parameter itself, from a float32 sum, either keeping what the rounding lost
in a compensation buffer (Kahan summation) or rounding stochastically, and
returns the update that makes ``optax.apply_updates`` store exactly that value.

Where the rounding must happen it is written as ``jax.lax.reduce_precision``
(or as arithmetic on the format's grid), never as a pair of ``astype`` calls:
XLA may compute a chain of bfloat16 operations in float32 and delete a
``float32 -> bfloat16 -> float32`` round trip (its excess-precision
simplification), which would silently make the compensation 0.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _compile, _storage
from rmsprop_jax import _validation as v

METHODS = ("kahan", "stochastic")
# The parameter dtypes rounded here: fewer mantissa bits than float32, and an
# IEEE-style format (with infinities) that reduce_precision models.
_HANDLED = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_SEED_LIMIT = 2**32  # jax.random.key folds larger seeds onto these

# Set while low_precision_params initialises the optimizer it wraps, whose
# init would otherwise warn that small steps are lost.
_WRAPPED = contextvars.ContextVar("rmsprop_jax_low_precision_wrapped", default=False)

WARNING_PREFIX = "Low-precision params"


class LowPrecisionState(NamedTuple):
  """The state of :func:`low_precision_params`.

  Attributes:
    inner: the state of the wrapped optimizer.
    compensation: with ``method="kahan"``, what rounding the parameters has
      lost so far, one array per bfloat16 or float16 parameter, in that
      parameter's dtype and sharding; ``optax.MaskedNode()`` for the other
      leaves. ``None`` with ``method="stochastic"``.
    key: with ``method="stochastic"``, the raw data of the PRNG key made from
      ``seed`` (``jax.random.key_data``); ``None`` with ``method="kahan"``.
    count: with ``method="stochastic"``, the number of updates so far (int32
      scalar, saturating), folded into ``key`` at every step; else ``None``.
  """

  inner: optax.OptState
  compensation: optax.Updates | None
  key: jax.Array | None
  count: jax.Array | None  # pyright: ignore[reportIncompatibleMethodOverride]


def handles(dtype: Any) -> bool:
  """Whether a parameter of ``dtype`` is rounded by :func:`low_precision_params`."""
  return jnp.dtype(dtype) in _HANDLED


def _narrower_than_float32(dtype: Any) -> bool:
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    return False
  return jnp.finfo(dtype).nmant < jnp.finfo(jnp.float32).nmant


def _low_precision_leaves(params: Any) -> Iterator[tuple[str, jnp.dtype]]:
  """The path and dtype of every parameter leaf narrower than float32."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and _narrower_than_float32(dtype):
      yield jax.tree_util.keystr(tuple(path)) or "", jnp.dtype(dtype)


def warn_if_low_precision(params: Any) -> None:
  """Warns, once per call, that bfloat16 or float16 params lose small updates.

  Called by the ``init`` of :func:`rmsprop_jax.rmsprop` and the presets; silent
  while :func:`low_precision_params` initialises the optimizer it wraps.
  """
  if _WRAPPED.get():
    return
  found = list(_low_precision_leaves(params))
  if not found:
    return
  path, dtype = found[0]
  more = f" and {len(found) - 1} more leaves" if len(found) > 1 else ""
  dtypes = sorted({d.name for _, d in found})
  # Half the gap above 1: 2**-8 in bfloat16, 2**-11 in float16.
  half_ulp = ", ".join(f"2**{-jnp.finfo(d).nmant - 1} in {d}" for d in dtypes)
  v.warn(
    f"{WARNING_PREFIX}: params{path}{more} ({', '.join(dtypes)}) round every "
    "update to the nearest representable value, so a step smaller than half "
    f"the gap between neighbouring weights is lost (near 1: {half_ulp}), and "
    "with small learning rates training stalls. Wrap the optimizer to keep "
    "those steps: rmsprop_jax.low_precision_params(opt) (Kahan-compensated, 2 "
    "bytes per parameter) or low_precision_params(opt, 'stochastic'); or keep "
    "float32 master weights."
  )


# ----------------------------------------------------------------- rounding
#
# bfloat16 is the upper half of a float32, so rounding a float32 to it is
# integer arithmetic on the bits: about half the cost of reduce_precision on
# a CPU, and just as opaque to XLA's float simplifications.

_BF16 = jnp.dtype(jnp.bfloat16)
_LOW_HALF = 0xFFFF


def _bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _from_bits(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(
    bits & jnp.uint32(~_LOW_HALF & 0xFFFFFFFF), jnp.float32
  )


def _is_bfloat16_of_float32(x: jax.Array, dtype: Any) -> bool:
  return jnp.dtype(dtype) == _BF16 and x.dtype == jnp.float32


def cast_exact(x: jax.Array, dtype: Any) -> jax.Array:
  """``x``, already a value of ``dtype``, as a ``dtype`` array.

  For bfloat16 that is the upper half of the float32 bits: cheaper than a
  conversion, which would check for NaN and round again.
  """
  if _is_bfloat16_of_float32(x, dtype):
    return jax.lax.bitcast_convert_type((_bits(x) >> 16).astype(jnp.uint16), _BF16)
  return x.astype(dtype)


def round_nearest(x: jax.Array, dtype: Any) -> jax.Array:
  """``x`` rounded to the nearest ``dtype`` value (ties to even), in x's dtype.

  The same value as ``x.astype(dtype).astype(x.dtype)``, but XLA cannot
  delete it as an excess-precision round trip. From float32 to bfloat16 it
  adds half a bfloat16 gap (less one unit, plus the kept bit for ties to
  even) to the bits and drops the low half; otherwise it is
  ``reduce_precision``, which flushes the subnormals of a format with fewer
  exponent bits than ``x``'s (float16's below 2**-14): they lie on a uniform
  grid and are rounded on it instead.
  """
  if jnp.dtype(dtype) == x.dtype:
    return x
  if _is_bfloat16_of_float32(x, dtype):
    bits = _bits(x)
    return _from_bits(bits + (jnp.uint32(0x7FFF) + ((bits >> 16) & 1)))
  info = jnp.finfo(dtype)
  y = jax.lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)
  if info.nexp >= jnp.finfo(x.dtype).nexp:
    return y
  tiny = jnp.asarray(info.smallest_subnormal, x.dtype)
  subnormal = jnp.round(x / tiny) * tiny  # a power of two: exact scaling
  smallest_normal = jnp.asarray(info.smallest_normal, x.dtype)
  return jnp.where(jnp.abs(x) < smallest_normal, subnormal, y)


def _pow2(exponent: jax.Array, dtype: Any) -> jax.Array:
  """2**exponent in ``dtype``, exactly, built from its bits (normal range only)."""
  info = jnp.finfo(dtype)
  uint = jnp.dtype(f"uint{info.bits}")
  biased = (exponent + (info.maxexp - 1)).astype(uint)
  return jax.lax.bitcast_convert_type(biased << info.nmant, dtype)


def _scale(x: jax.Array, shift: jax.Array) -> jax.Array:
  """x * 2**shift, exactly, in two normal factors (shift may exceed the range)."""
  half = shift // 2
  return x * _pow2(half, x.dtype) * _pow2(shift - half, x.dtype)


def uniform_from_bits(bits: jax.Array, dtype: Any) -> jax.Array:
  """Uniform numbers in [0, 1) on a grid of 2**-24 from 32 random bits."""
  return (bits >> 8).astype(dtype) * jnp.asarray(2.0**-24, dtype)


def round_stochastic(x: jax.Array, dtype: Any, bits: jax.Array) -> jax.Array:
  """``x`` rounded to one of its two ``dtype`` neighbours, in x's dtype.

  The upper neighbour (in magnitude) is taken with probability equal to x's
  distance from the lower one over their gap, so the expected result is
  ``x``. ``bits`` are 32 random bits per element. From float32 to bfloat16,
  16 of them are added to the bits that bfloat16 drops, and a carry rounds
  up: exactly unbiased. Otherwise ``x`` is scaled by a power of two so that
  the format's grid around it becomes the integers, and compared with a
  uniform number: unbiased to within 2**-24 of the gap.
  """
  if _is_bfloat16_of_float32(x, dtype):
    return _from_bits(_bits(x) + (bits >> 16))
  info = jnp.finfo(dtype)
  _, exponent = jnp.frexp(x)  # |x| in [2**(e-1), 2**e)
  # Below the normal range the subnormals are one uniform grid.
  shift = info.nmant - jnp.maximum(exponent - 1, info.minexp)
  scaled = _scale(x, shift)
  below = jnp.floor(scaled)
  up = uniform_from_bits(bits, x.dtype) < scaled - below
  # Past the format's largest value the upper neighbour is an infinity.
  return round_nearest(_scale(below + up.astype(x.dtype), -shift), dtype)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective integer hash of uint32 words (lowbias32, C. Wellons, 2018)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _element_index(shape: tuple[int, ...]) -> jax.Array:
  """Each element's row-major index (mod 2**32), built to shard like a param."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    index = index + iota * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


def element_bits(shape: tuple[int, ...], word: jax.Array) -> jax.Array:
  """32 random bits per element from one random ``word`` of the leaf and step.

  Drawing them with ``jax.random.bits`` costs about 30 times a whole RMSProp
  step on a CPU. Here the key gives each leaf and step a uniform word, and a
  bijective hash of it plus the element's index spreads it over the
  elements: each element's bits are then exactly uniform, and independent
  from step to step, which is all unbiased rounding needs; the hash only
  decorrelates neighbours within a step.
  """
  golden = jnp.uint32(0x9E3779B9)  # a Weyl sequence over the indices
  return _mix32(_element_index(shape) * golden + word)


# ----------------------------------------------------------------- one leaf


def _compute_dtype(update: jax.Array) -> jnp.dtype:
  """float32, or the update's own dtype where it is wider (float64)."""
  return _storage.compute_dtype(update.dtype, None)


def _step_to(new: jax.Array, p: jax.Array, update: jax.Array) -> jax.Array:
  """``new - p`` in the inner update's dtype, rounded explicitly.

  Optax wrappers (``apply_if_finite``) expect an update of the gradient's
  dtype, so a bfloat16 update stays bfloat16. Its rounding is written out:
  were XLA to keep it in excess precision, the parameter would land somewhere
  other than where the compensation assumes.
  """
  return round_nearest(new - p, update.dtype)


def kahan_leaf(
  param: jax.Array, update: jax.Array, compensation: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The update that lands on the rounded compensated sum; the new compensation.

  ``optax.apply_updates`` stores ``(param + update).astype(param.dtype)``,
  the sum taken in float32 (bfloat16 additions are float32 additions
  rounded once). When ``new - param`` has no value in the update's dtype (a
  jump past zero or to more than twice the value, with bfloat16 updates) no
  update lands exactly on ``new``; the compensation is computed from the
  value that is really stored, so it absorbs the difference.
  """
  dtype = _compute_dtype(update)
  p = param.astype(dtype)
  exact = p + (update.astype(dtype) + compensation.astype(dtype))
  new = round_nearest(exact, param.dtype)
  step = _step_to(new, p, update)
  landed = round_nearest(p + step, param.dtype)  # what apply_updates stores
  lost = exact - landed
  # A NaN or an overflow is the step's to report, not the buffer's to keep.
  lost = round_nearest(jnp.where(jnp.isfinite(lost), lost, 0), param.dtype)
  return cast_exact(step, update.dtype), cast_exact(lost, param.dtype)


def stochastic_leaf(param: jax.Array, update: jax.Array, word: jax.Array) -> jax.Array:
  """The update that lands on the stochastically rounded new value."""
  dtype = _compute_dtype(update)
  p = param.astype(dtype)
  exact = p + update.astype(dtype)
  new = round_stochastic(exact, param.dtype, element_bits(param.shape, word))
  return cast_exact(_step_to(new, p, update), update.dtype)


class _Leaves(NamedTuple):
  """The handled leaves of one update, flat."""

  params: list[jax.Array]
  updates: list[jax.Array]
  compensations: list[jax.Array] | None


def _finish(
  leaves: _Leaves, key: jax.Array | None, count: jax.Array | None, *, method: str
) -> tuple[list[jax.Array], list[jax.Array] | None, jax.Array | None]:
  """The final updates of the handled leaves, as one computation."""
  if method == "kahan":
    assert leaves.compensations is not None
    pairs = [
      kahan_leaf(p, u, c)
      for p, u, c in zip(
        leaves.params, leaves.updates, leaves.compensations, strict=True
      )
    ]
    return [s for s, _ in pairs], [c for _, c in pairs], count
  assert key is not None and count is not None
  step_key = jax.random.fold_in(jax.random.wrap_key_data(key), count)
  words = jax.random.bits(step_key, (len(leaves.params),), jnp.uint32)
  steps = [
    stochastic_leaf(p, u, words[i])
    for i, (p, u) in enumerate(zip(leaves.params, leaves.updates, strict=True))
  ]
  return steps, None, jnp.asarray(optax.safe_increment(count))


_finish_jit = jax.jit(_finish, static_argnames=("method",))


# ----------------------------------------------------------------- the wrapper


def _check_inner(inner: Any) -> None:
  if callable(getattr(inner, "init", None)) and callable(
    getattr(inner, "update", None)
  ):
    return
  hint = ""
  if callable(inner):
    hint = " It looks like a function: call it, e.g. rmsprop_jax.rmsprop(1e-3)."
  raise TypeError(
    "inner must be an optax GradientTransformation (an object with init and "
    f"update), such as rmsprop_jax.rmsprop(1e-3) or an optax chain; got "
    f"{inner!r:.80} of type {type(inner).__name__}.{hint}"
  )


def _check_method(method: Any) -> str:
  if isinstance(method, str) and method in METHODS:
    return method
  raise ValueError(
    f"method must be one of {', '.join(repr(m) for m in METHODS)}; got "
    f"method={method!r}."
  )


def _check_seed(seed: Any) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise TypeError(
      f"seed must be an int in [0, 2**32); got {seed!r} of type {type(seed).__name__}."
    )
  if not 0 <= seed < _SEED_LIMIT:
    raise ValueError(
      f"seed must be an int in [0, 2**32) (larger seeds give the same keys as "
      f"smaller ones); got seed={seed}."
    )
  return int(seed)


def _check_param_dtypes(params: Any) -> None:
  for path, dtype in _low_precision_leaves(params):
    if not handles(dtype):
      raise TypeError(
        f"params{path} has dtype {dtype.name}; low_precision_params rounds "
        "bfloat16 and float16 parameters (float32 and float64 ones pass "
        "through). Keep 8-bit parameters out of the optimised tree."
      )


def _init_compensation(params: Any) -> Any:
  def zeros(p: Any) -> Any:
    if not handles(jnp.result_type(p)):
      return optax.MaskedNode()
    return _storage.filled_like(p, 0, p.dtype)

  return jax.tree.map(zeros, params)


def _checked_state(state: Any, method: str) -> LowPrecisionState:
  if not isinstance(state, LowPrecisionState):
    raise TypeError(
      "state must be the LowPrecisionState returned by "
      f"low_precision_params(...).init; got {type(state).__name__}."
    )
  made_by = "stochastic" if state.compensation is None else "kahan"
  if made_by != method or (method == "stochastic" and state.key is None):
    raise ValueError(
      f"This state was created by low_precision_params(..., method={made_by!r}) "
      f"but this optimizer has method={method!r}: call init with this optimizer."
    )
  return state


def _compensation_leaves(
  params: Any, leaves_p: Sequence[Any], rounded: Sequence[bool], compensation: Any
) -> list[Any]:
  """The compensation array of every rounded leaf, checked against params."""
  comps = v.flatten_like(params, compensation, "params", "state.compensation")
  paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  out = []
  for path, p, r, c in zip(paths, leaves_p, rounded, comps, strict=True):
    where = jax.tree_util.keystr(tuple(path))
    dtype = jnp.result_type(p)
    has = hasattr(c, "shape") and hasattr(c, "dtype")
    if r != has:
      raise ValueError(
        f"state.compensation{where} holds {'a' if has else 'no'} compensation "
        f"but params{where} is {dtype.name}: the state was created for params "
        "of other dtypes. Call init with these params."
      )
    if not has:
      continue
    if tuple(c.shape) != tuple(jnp.shape(p)):
      raise ValueError(
        f"Shape mismatch at params{where}: params has shape {tuple(jnp.shape(p))} "
        f"but state.compensation has shape {tuple(c.shape)}. Call init with "
        "these params."
      )
    out.append(c)
  return out


def low_precision_params(
  inner: optax.GradientTransformation,
  method: str = "kahan",
  *,
  seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps the small steps of bfloat16 and float16 parameters.

  Rounding :math:`\theta + u` to a 16-bit format loses any step smaller than
  half the gap between neighbouring weights: for bfloat16 weights near 1,
  every step below :math:`2^{-8}`. This wrapper forms the new value of each
  bfloat16 or float16 parameter in float32 and rounds it itself:

  - ``"kahan"`` (compensated summation): with :math:`c` what earlier
    roundings lost,

    .. math::

      x = \theta + (u + c), \qquad \theta' = \operatorname{rn}(x), \qquad
      c' = x - \theta'

    so the parameter follows the float32 sum to within one rounding. ``c`` is
    kept in the parameter's dtype: 2 bytes per parameter.
  - ``"stochastic"``: :math:`\theta' = x` rounded up or down at random with
    the probabilities that make :math:`E[\theta'] = x`; nothing is kept per
    parameter, only a PRNG key and a step count.

  It returns :math:`\theta' - \theta` in the dtype of the inner optimizer's
  update, and ``optax.apply_updates`` (which adds in float32 and casts back)
  stores exactly :math:`\theta'`. The one exception is a jump whose
  difference has no value in a 16-bit update (past zero, or to more than
  twice the value, needing more than 8 significant bits): the parameter then
  lands on the nearest value such an update reaches, and ``"kahan"`` keeps
  the rest in its compensation, so the next step arrives. Float32 and
  float64 leaves pass through untouched.

  Put it last in a chain (anything after it changes the update it rounded),
  apply its updates with ``optax.apply_updates``, and pass ``params`` to
  ``update``. It wraps any transformation: :func:`rmsprop`, a preset, an
  optax chain, ``optax.inject_hyperparams(...)``; ``optax.apply_if_finite``
  may wrap it.

  Args:
    inner: the optimizer whose updates are applied.
    method: ``"kahan"`` (default) or ``"stochastic"``.
    seed: the seed of stochastic rounding's random bits, an int in
      ``[0, 2**32)``; unused by ``"kahan"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`LowPrecisionState`.

  Raises:
    TypeError: ``inner`` is not a transformation, or ``seed`` not an int; at
      ``init``, a parameter in an 8-bit float format.
    ValueError: an unknown ``method``, ``seed`` out of range; at ``update``,
      no ``params`` or a state made for other params or another method.

  Examples:
    >>> import jax.numpy as jnp, optax, rmsprop_jax
    >>> opt = rmsprop_jax.low_precision_params(optax.sgd(1e-3))
    >>> params = jnp.ones(2, jnp.bfloat16)
    >>> state = opt.init(params)
    >>> for _ in range(100):  # each step is below bfloat16's resolution at 1
    ...   updates, state = opt.update(-jnp.ones(2), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params  # 1.1 to bfloat16's precision; plain rounding stays at 1
    Array([1.10156, 1.10156], dtype=bfloat16)

  References:
    - Kahan, "Further remarks on reducing truncation errors", Communications
      of the ACM 8(1), 1965.
    - Zamirai, Zhang, Aberger and De Sa, "Revisiting BFloat16 Training",
      arXiv:2010.06192, 2020.
  """
  _check_inner(inner)
  method = _check_method(method)
  seed = _check_seed(seed)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> optax.OptState:
    _check_param_dtypes(params)
    token = _WRAPPED.set(True)
    try:
      inner_state = inner.init(params)
    finally:
      _WRAPPED.reset(token)
    if method == "kahan":
      state = LowPrecisionState(inner_state, _init_compensation(params), None, None)
    else:
      key = jax.random.key_data(jax.random.key(seed))
      count = jnp.zeros([], jnp.int32)
      state = LowPrecisionState(
        inner_state,
        None,
        _storage.replicated(key, params),
        _storage.replicated(count, params),
      )
    return cast(optax.OptState, state)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    if params is None:
      raise ValueError(
        "low_precision_params needs params: it rounds each new parameter "
        "itself. Call update(grads, state, params)."
      )
    st = _checked_state(state, method)
    inner_updates, inner_state = inner.update(updates, st.inner, params, **extra_args)
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_u = v.flatten_like(params, inner_updates, "params", "updates")
    rounded = [handles(jnp.result_type(p)) for p in leaves_p]
    handled = [i for i, r in enumerate(rounded) if r]
    comps = None
    if method == "kahan":
      comps = _compensation_leaves(params, leaves_p, rounded, st.compensation)
    leaves = _Leaves(
      [leaves_p[i] for i in handled], [leaves_u[i] for i in handled], comps
    )
    steps, new_comps, count = _compile.run(
      _finish_jit, _finish, leaves, st.key, st.count, method=method
    )
    out = list(leaves_u)
    for i, s in zip(handled, steps, strict=True):
      out[i] = s
    compensation = None
    if new_comps is not None:
      filled = iter(new_comps)
      compensation = treedef.unflatten(
        [next(filled) if r else optax.MaskedNode() for r in rounded]
      )
    new_state = LowPrecisionState(inner_state, compensation, st.key, count)
    return treedef.unflatten(out), cast(optax.OptState, new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
