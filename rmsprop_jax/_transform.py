"""The optax transformations: validation, flattening, dispatch and state.

The update rule itself is ``_rule.update``, applied here to every leaf.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax.core import Tracer
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import DTypeLike

from rmsprop_jax import _compile, _rule, _storage
from rmsprop_jax import _validation as v


class RMSPropState(NamedTuple):
  """The state of :func:`rmsprop` and :func:`scale_by_rms`.

  Attributes:
    count: number of updates applied so far (int32 scalar; saturates at the
      int32 maximum instead of wrapping); ``None`` unless a learning-rate
      schedule or bias correction needs it.
    nu: exponential moving average of the squared gradient, one leaf per
      parameter.
    mu: exponential moving average of the gradient; ``None`` unless centred.
    trace: momentum buffer, kept with the sign of the update (the negation of
      PyTorch's, Keras' and TF's buffer); ``None`` unless momentum is enabled.
  """

  count: jax.Array | None  # pyright: ignore[reportIncompatibleMethodOverride]
  nu: optax.Updates
  mu: optax.Updates | None
  trace: optax.Updates | None


@dataclasses.dataclass(frozen=True)
class _Config:
  """What is fixed when the optimizer is built, apart from the numbers."""

  rule: _rule.Rule
  schedule: Callable[[jax.Array], Any] | None

  @property
  def counts(self) -> bool:
    """Whether the state keeps a step count: only what reads it pays for it."""
    return self.schedule is not None or self.rule.bias_correction


class _LeafFacts(NamedTuple):
  """What one update call learns from its arguments, per leaf."""

  decays: tuple[bool, ...] | None  # the weight-decay mask; None: every leaf
  out_dtypes: tuple[str, ...] | None  # the params' dtypes, where they differ


_Leaves = list[Any]
_Outputs = tuple[list[jax.Array], _Leaves, _Leaves, _Leaves]


def _update_leaves(
  grads: list[jax.Array],
  nus: _Leaves,
  mus: _Leaves | None,
  traces: _Leaves | None,
  params: list[jax.Array] | None,
  count: jax.Array | None,
  hyper: _rule.Hyper,
  *,
  config: _Config,
  facts: _LeafFacts,
) -> tuple[_Outputs, jax.Array | None]:
  """Applies the rule to flat lists of leaves, as one computation."""
  lr = hyper.learning_rate
  if config.schedule is not None:
    assert count is not None  # _checked_state refuses a state without one
    lr = config.schedule(count)
  if config.counts and count is not None:
    count = jnp.asarray(optax.safe_increment(count))
  scalars = functools.cache(
    functools.partial(
      _rule.scalars, hyper, jnp.asarray(0.0 if lr is None else lr), count, config.rule
    )
  )
  out: _Outputs = ([], [], [], [])
  for i, g in enumerate(grads):
    decays = params is not None and (facts.decays is None or facts.decays[i])
    results = _update_leaf(
      g,
      nus[i],
      None if mus is None else mus[i],
      None if traces is None else traces[i],
      params[i] if decays and params is not None else None,
      scalars,
      config.rule,
    )
    out_dtype = g.dtype if facts.out_dtypes is None else facts.out_dtypes[i]
    out[0].append(results[0].astype(out_dtype))
    for outputs, new in zip(out[1:], results[1:], strict=True):
      if new is not None:
        outputs.append(new)
  return out, count


def _update_leaf(
  g: jax.Array,
  nu: Any,
  mu: Any,
  trace: Any,
  p: jax.Array | None,
  scalars: Callable[[Any], _rule.Scalars],
  rule: _rule.Rule,
) -> tuple[jax.Array, Any, Any, Any]:
  """Reads one leaf's state in its compute dtype, steps it, stores it back."""
  dtype = _storage.compute_dtype(g.dtype, _storage.dtype_of(nu))
  cdtype = jnp.result_type(dtype, g.dtype)  # complex stays complex
  sc = scalars(dtype)
  if p is None:  # no weight decay on this leaf
    sc = sc._replace(coupled_wd=None, decoupled_wd=None)
  load = lambda x: None if x is None else _storage.load(x, dtype)  # noqa: E731
  u, new_nu, new_mu, new_trace = _rule.update(
    g.astype(cdtype),
    _storage.load(nu, dtype),
    load(mu),
    load(trace),
    None if p is None else p.astype(cdtype),
    sc,
    rule,
  )
  store = lambda x, like: None if like is None else _storage.store(x, like)  # noqa: E731
  return u, store(new_nu, nu), store(new_mu, mu), store(new_trace, trace)


_update_leaves_jit = jax.jit(_update_leaves, static_argnames=("config", "facts"))


def _transformation(
  hyper: _rule.Hyper,
  config: _Config,
  state_dtype: jnp.dtype | None,
  weight_decay_mask: Any,
) -> optax.GradientTransformationExtraArgs:
  """The optax transformation of validated arguments."""

  def init_fn(params: optax.Params) -> optax.OptState:
    v.check_param_leaves(params)

    def fill(value: Any, is_nu: bool) -> optax.Updates:
      return jax.tree.map(
        lambda p: _storage.init_leaf(p, value, state_dtype, is_nu=is_nu), params
      )

    state = RMSPropState(
      count=_replicated_count(params) if config.counts else None,
      nu=fill(hyper.initial_scale, True),
      mu=fill(0.0, False) if config.rule.centered else None,
      trace=fill(0.0, False) if hyper.momentum is not None else None,
    )
    # optax's OptState alias has no room for the None fields of disabled options.
    return cast(optax.OptState, state)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    del extra_args
    st = _checked_state(state, config)
    grads, treedef = jax.tree.flatten(updates)
    leaves_p = None if params is None else _checked_params(updates, grads, params)
    decays = _decays(hyper, params is not None)
    args = (
      grads,
      _state_leaves(updates, grads, st.nu),
      _optional_leaves(updates, st.mu, config.rule.centered, "mu", "centered"),
      _optional_leaves(
        updates, st.trace, hyper.momentum is not None, "trace", "momentum"
      ),
      leaves_p if decays else None,
      st.count,
      hyper,
    )
    facts = _LeafFacts(
      decays=v.broadcast_mask(weight_decay_mask, params)
      if decays and weight_decay_mask is not None
      else None,
      out_dtypes=_out_dtypes(leaves_p, grads),
    )
    (us, nus, mus, traces), count = _compile.run(
      _update_leaves_jit, _update_leaves, *args, config=config, facts=facts
    )
    new_state = RMSPropState(
      count=count,
      nu=treedef.unflatten(nus),
      mu=treedef.unflatten(mus) if config.rule.centered else None,
      trace=treedef.unflatten(traces) if hyper.momentum is not None else None,
    )
    return treedef.unflatten(us), cast(optax.OptState, new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked_state(state: Any, config: _Config) -> RMSPropState:
  if not isinstance(state, RMSPropState):
    raise TypeError(
      f"state must be the RMSPropState returned by init; got {type(state).__name__}."
    )
  if config.counts and state.count is None:
    needs = "a learning-rate schedule" if config.schedule else "bias correction"
    raise ValueError(
      f"state.count is None but {needs} is enabled: this state comes from an "
      "optimizer without a schedule or bias correction; call init with this "
      "one."
    )
  return state


def _state_leaves(updates: Any, grads: list[Any], nu: Any) -> list[Any]:
  nus = v.flatten_like(updates, nu, "updates", "state.nu")
  shapes = [_storage.logical_shape(n) for n in nus]
  v.check_shapes(updates, [g.shape for g in grads], shapes, "updates", "state.nu")
  return nus


def _optional_leaves(
  updates: Any, tree: Any, enabled: bool, field: str, option: str
) -> list[Any] | None:
  if not enabled:
    return None
  if tree is None and jax.tree.leaves(updates):
    raise ValueError(
      f"state.{field} is None but {option} is enabled: the state was "
      f"created by an optimizer without {option}. Call init again with this "
      "optimizer."
    )
  if tree is None:  # init(None): an empty tree has no buffers to keep
    return []
  return v.flatten_like(updates, tree, "updates", f"state.{field}")


def _decays(hyper: _rule.Hyper, has_params: bool) -> bool:
  """Whether weight decay is on; it reads the params, so they must be given."""
  decay = hyper.coupled_weight_decay
  if decay is None:
    decay = hyper.decoupled_weight_decay
  if decay is not None and not has_params:
    raise ValueError(
      f"weight_decay is enabled (weight_decay={decay!r}), so update needs "
      "params: call update(grads, state, params). Under "
      "optax.inject_hyperparams weight_decay is traced even when it is 0: pass "
      "params, or add 'weight_decay' to static_args."
    )
  return decay is not None


def _checked_params(updates: Any, grads: list[Any], params: Any) -> list[Any]:
  leaves = v.flatten_like(updates, params, "updates", "params")
  shapes = [jnp.shape(p) for p in leaves]
  v.check_shapes(updates, [g.shape for g in grads], shapes, "updates", "params")
  return leaves


def _out_dtypes(params: list[Any] | None, grads: list[Any]) -> tuple[str, ...] | None:
  """The params' dtypes, when an update must take them instead of the grads'."""
  if params is None:
    return None
  dtypes = [jax.dtypes.canonicalize_dtype(jnp.result_type(p)) for p in params]
  if all(d == g.dtype for d, g in zip(dtypes, grads, strict=True)):
    return None
  return tuple(d.name for d in dtypes)


def _replicated_count(params: optax.Params) -> jax.Array:
  """A zero step count, replicated over the params' mesh when they have one.

  Without this an eager ``init`` of mesh-sharded params leaves the scalar on
  device 0, and a jitted step whose ``out_shardings`` mirror the state then
  fails with "incompatible devices".
  """
  count = jnp.zeros([], jnp.int32)
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(leaf, Tracer) and isinstance(sharding, NamedSharding):
      return jax.device_put(count, NamedSharding(sharding.mesh, PartitionSpec()))
  return count


def _centered_state_warning(centered: bool, state_dtype: jnp.dtype | None) -> None:
  """Centred RMSProp computes nu - |mu|^2, which low-precision storage cancels."""
  if not centered or state_dtype is None or state_dtype.itemsize >= 4:
    return
  bits = int(jnp.finfo(state_dtype).nmant)
  # Rounding nu and |mu|^2 to the format loses about 2**-(bits + 1) of each, as
  # much as the variance holds once the spread is below 2**-((bits + 1) / 2).
  spread = 100 * 2.0 ** (-(bits + 1) / 2)
  v.warn(
    f"centered=True with state_dtype={state_dtype.name}: the variance "
    f"nu - |mu|^2 is a difference of two rounded numbers, and with a {bits}-bit "
    f"mantissa it rounds to 0 once the gradient's spread is below about "
    f"{spread:.0f}% of its mean, so steps grow towards lr * g / sqrt(eps). "
    "Use float32 state for centred RMSProp."
  )


#: The core's own names: every argument as :func:`rmsprop` spells it.
CORE_NAMES = v.Names(none_means_off=frozenset({"momentum"}))


def build(
  names: v.Names,
  *,
  learning_rate: Any = None,
  decay: Any = 0.9,
  eps: Any = 1e-8,
  initial_scale: Any = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: Any = None,
  nesterov: bool = False,
  bias_correction: bool = False,
  weight_decay: Any = 0.0,
  decoupled_weight_decay: bool = False,
  corrected_weight_decay: bool = False,
  max_lr: Any = None,
  weight_decay_mask: Any = None,
  lr_in_momentum: bool = True,
  maximize: bool = False,
  caution: bool = False,
  state_dtype: Any = None,
  scale_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The one builder behind :func:`rmsprop`, :func:`scale_by_rms` and the presets.

  Every value is checked here, once, and reported under the name the caller's
  API gives it (``names``).
  """
  schedule = learning_rate if callable(learning_rate) else None
  rule = _rule.Rule(
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    bias_correction=bool(bias_correction),
    nesterov=bool(nesterov),
    lr_in_momentum=bool(lr_in_momentum),
    maximize=bool(maximize),
    caution=bool(caution),
    scale_only=bool(scale_only),
  )
  hyper = _rule.Hyper(
    learning_rate=None if schedule or scale_only else learning_rate,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    momentum=momentum,
    max_lr=_corrected_max_lr(
      names, corrected_weight_decay, decoupled_weight_decay, max_lr, learning_rate
    ),
    **_weight_decay(weight_decay, decoupled_weight_decay),
  )
  _check_numbers(names, hyper, weight_decay)
  _check_needs_momentum(names, rule, hyper)
  state_dtype = v.check_state_dtype(state_dtype)
  _centered_state_warning(rule.centered, state_dtype)
  config = _Config(rule=rule, schedule=schedule)
  return _transformation(hyper, config, state_dtype, weight_decay_mask)


def _weight_decay(weight_decay: Any, decoupled: bool) -> dict[str, Any]:
  """The weight-decay field of ``Hyper``; none for a concrete 0."""
  if v.concrete_value(weight_decay) == 0.0:
    return {}
  key = "decoupled_weight_decay" if decoupled else "coupled_weight_decay"
  return {key: weight_decay}


def _check_numbers(names: v.Names, hyper: _rule.Hyper, weight_decay: Any) -> None:
  for key in ("learning_rate", "decay", "eps", "initial_scale", "momentum"):
    value = getattr(hyper, key)
    if value is not None:
      v.check_hyper(names, key, value)
  v.check_hyper(names, "weight_decay", weight_decay)


def _check_needs_momentum(names: v.Names, rule: _rule.Rule, hyper: _rule.Hyper) -> None:
  for option, on in (("nesterov", rule.nesterov), ("caution", rule.caution)):
    if on and hyper.momentum is None:
      raise ValueError(
        f"{names(option)}=True needs {names('momentum')}; got "
        f"{names('momentum')}=None. Pass e.g. {names('momentum')}=0.9."
      )


def _corrected_max_lr(
  names: v.Names, corrected: bool, decoupled: bool, max_lr: Any, learning_rate: Any
) -> Any:
  """The ``max_lr`` of corrected weight decay; ``None`` when that is off."""
  if not corrected:
    if max_lr is not None:
      raise ValueError(
        f"{names('max_lr')} is read only with {names('corrected_weight_decay')}"
        f"=True; got {names('max_lr')}={max_lr!r}."
      )
    return None
  if not decoupled:
    raise ValueError(
      f"{names('corrected_weight_decay')}=True corrects decoupled weight decay; "
      f"pass {names('decoupled_weight_decay')}=True as well."
    )
  if max_lr is None and callable(learning_rate):
    raise ValueError(
      f"{names('corrected_weight_decay')}=True with a learning-rate schedule "
      f"needs {names('max_lr')}, the learning rate the decay is corrected "
      f"against (timm: the lr the optimizer was built with); got "
      f"{names('max_lr')}=None. Pass e.g. {names('max_lr')}=schedule(0)."
    )
  max_lr = learning_rate if max_lr is None else max_lr
  v.check_hyper(names, "max_lr", max_lr)
  return max_lr


def scale_by_rms(
  decay: float | jax.Array = 0.9,
  eps: float | jax.Array = 1e-8,
  *,
  initial_scale: float | jax.Array = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  bias_correction: bool = False,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Divides updates by the root of an average of squared gradients.

  The learning-rate-free building block of :func:`rmsprop`, for optax chains:
  it returns :math:`s = g / d` with :math:`d` the RMSProp denominator (see
  :func:`rmsprop` for the rule). Its state is an :class:`RMSPropState` whose
  ``trace`` is ``None``.

  Args:
    decay: decay rate of the moving averages, in ``[0, 1)``.
    eps: term added to the denominator for numerical stability.
    initial_scale: start value of ``nu`` (1.0 in TF1 and timm's RMSpropTF).
    eps_in_sqrt: whether ``eps`` is added inside the square root (optax, Keras,
      TF) or outside (PyTorch).
    centered: divide by the root of the variance instead of the raw second
      moment (Graves, 2013).
    bias_correction: divide the averages by ``1 - decay^t`` as Adam does.
    state_dtype: storage dtype of ``nu`` and ``mu``; default float32 (float64
      for float64 parameters). Arithmetic stays in at least float32.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax, rmsprop_jax
    >>> opt = optax.chain(rmsprop_jax.scale_by_rms(decay=0.9),
    ...                   optax.scale_by_learning_rate(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state)
    >>> updates
    Array([-0.31622767, -0.31622767], dtype=float32)
  """
  tx = build(
    CORE_NAMES,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    eps_in_sqrt=eps_in_sqrt,
    centered=centered,
    bias_correction=bias_correction,
    state_dtype=state_dtype,
    scale_only=True,
  )
  return optax.GradientTransformation(tx.init, tx.update)


def rmsprop(
  learning_rate: optax.ScalarOrSchedule,
  decay: float | jax.Array = 0.9,
  eps: float | jax.Array = 1e-8,
  *,
  initial_scale: float | jax.Array = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: float | jax.Array | None = None,
  nesterov: bool = False,
  bias_correction: bool = False,
  weight_decay: float | jax.Array = 0.0,
  decoupled_weight_decay: bool = False,
  corrected_weight_decay: bool = False,
  max_lr: float | jax.Array | None = None,
  weight_decay_mask: Any = None,
  lr_in_momentum: bool = True,
  maximize: bool = False,
  caution: bool = False,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The RMSProp optimizer, with every published variant as an option.

  Per parameter, with gradient :math:`g`, step :math:`k` (0-based), learning
  rate :math:`\alpha_k`, decay :math:`\rho`, momentum :math:`m`, weight decay
  :math:`\lambda`:

  .. math::

    g &\leftarrow -g \text{ if maximize};\quad
      g \leftarrow g + \lambda\theta \text{ (coupled weight decay)} \\
    \nu &\leftarrow \rho\nu + (1-\rho)|g|^2, \qquad
      \mu \leftarrow \rho\mu + (1-\rho)g \text{ (centred)} \\
    \hat\nu &= \nu / (1-\rho^{k+1}) \text{ if bias correction, else } \nu
      \quad(\text{same for } \hat\mu) \\
    v &= \max(\hat\nu - |\hat\mu|^2, 0) \text{ (centred), else } \hat\nu \\
    s &= g / \sqrt{v + \epsilon} \text{ (eps in sqrt), else }
      g / (\sqrt{v} + \epsilon) \\
    u &= -\alpha_k s \text{ without momentum; with momentum either} \\
      b &\leftarrow m b + \alpha_k s,\ u = -b \text{ (lr in momentum), or }
      b \leftarrow m b + s,\ u = -\alpha_k b \\
    u &\leftarrow u - \alpha_k\lambda\theta \text{ (decoupled weight decay)}

  With Nesterov momentum the update uses the look-ahead buffer:
  :math:`u = -(\alpha_k s + m b)` or :math:`u = -\alpha_k(s + m b)`. With
  ``caution`` the update is zeroed where it points along the gradient and the
  rest is divided by its share of the leaf. The state's ``trace`` holds
  :math:`-b`, the buffer with the update's sign.

  ``update`` takes the numeric hyper-parameters as arguments of one compiled
  computation: it is fast when called eagerly (e.g. in a notebook), and
  changing a hyper-parameter through ``optax.inject_hyperparams`` compiles
  nothing new.

  Args:
    learning_rate: a non-negative scalar, or an optax schedule of the 0-based
      step count.
    decay: decay rate :math:`\rho` of the moving averages (PyTorch ``alpha``,
      Keras ``rho``), in ``[0, 1)``.
    eps: term added to the denominator for numerical stability.
    initial_scale: start value of ``nu``; TF1 and timm's RMSpropTF use 1.0.
    eps_in_sqrt: add ``eps`` inside the root (optax, Keras, TF) or outside it
      (PyTorch).
    centered: divide by the root of the variance estimate (Graves, 2013); the
      variance is clamped at zero so that it never turns the step into NaN.
    momentum: momentum coefficient in ``[0, 1)``, or ``None`` for none (then
      no buffer is allocated).
    nesterov: use Nesterov momentum; requires ``momentum``.
    bias_correction: divide the averages by ``1 - decay^(k+1)`` as Adam does.
    weight_decay: weight-decay coefficient :math:`\lambda \ge 0`.
    decoupled_weight_decay: if False, L2 regularisation added to the gradient
      (PyTorch ``weight_decay``); if True, ``-lr * weight_decay * param`` added
      to the update (Keras, AdamW style).
    corrected_weight_decay: scale the decoupled decay by
      ``lr**2 / max_lr`` instead of ``lr`` (timm; Defazio, 2025).
    max_lr: the learning rate corrected weight decay divides by; defaults to a
      constant ``learning_rate`` and is required with a schedule.
    weight_decay_mask: a pytree of bools with the params' structure (or a
      prefix of it), or a callable ``params -> pytree``; weight decay applies
      only where True.
    lr_in_momentum: whether the momentum buffer accumulates ``lr * s``
      (optax, Keras, TF) or ``s`` with the learning rate applied afterwards
      (PyTorch). They differ once the learning rate changes.
    maximize: ascend the objective instead of descending it.
    caution: Cautious-optimizer masking of the momentum step (timm); requires
      ``momentum``.
    state_dtype: storage dtype of ``nu``, ``mu`` and ``trace``; default
      float32 (float64 for float64 parameters). ``jnp.bfloat16`` halves the
      state memory, an 8-bit float dtype quarters it (block-quantized, see
      :class:`QuantizedArray`); arithmetic always happens in at least float32.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`RMSPropState`.

  Raises:
    ValueError: a hyper-parameter outside its allowed range (checked when it
      is a concrete number), or an option without the one it needs.

  Examples:
    >>> import jax, jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.rmsprop(learning_rate=0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> updates["w"].round(6)
    Array([-0.316228,  0.316228], dtype=float32)

  References:
    - Hinton, Lecture 6e of "Neural Networks for Machine Learning", 2012.
    - Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
    - Liang et al., "Cautious Optimizers: Improving Training with One Line of
      Code", arXiv:2411.16085, 2024.
    - Defazio, "Why Gradients Rapidly Increase Near the End of Training",
      arXiv:2506.02285, 2025.
  """
  return build(
    CORE_NAMES,
    learning_rate=learning_rate,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    eps_in_sqrt=eps_in_sqrt,
    centered=centered,
    momentum=momentum,
    nesterov=nesterov,
    bias_correction=bias_correction,
    weight_decay=weight_decay,
    decoupled_weight_decay=decoupled_weight_decay,
    corrected_weight_decay=corrected_weight_decay,
    max_lr=max_lr,
    weight_decay_mask=weight_decay_mask,
    lr_in_momentum=lr_in_momentum,
    maximize=maximize,
    caution=caution,
    state_dtype=state_dtype,
  )
