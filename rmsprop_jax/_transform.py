"""The optax transformations: building, checking, flattening and state.

The update rule itself is ``_rule.update``, applied here to every leaf. All of
``update`` (its checks, the flattening, every leaf's step) is one function of
the updates, the state, the params and the hyper-parameters, traced once per
signature of those trees. Called eagerly it is one ``jax.jit``, whose cache JAX
looks up without running any of this module's Python, so the checks cost
nothing after the first call; inside a user's ``jit`` it traces straight into
the user's program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax.core import Tracer
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import DTypeLike

from rmsprop_jax import _compile, _low_precision, _rule, _storage
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
  """What is fixed when the optimizer is built: the static argument of update.

  Compared by value, so that an optimizer built again with the same options
  (``optax.inject_hyperparams`` rebuilds it at every step) reuses the compiled
  update.
  """

  names: v.Names
  rule: _rule.Rule
  schedule: Callable[[jax.Array], Any] | None
  momentum: bool  # whether the state keeps a momentum buffer
  decays: bool  # whether weight decay is on (update then reads params)
  weight_decay_mask: Any  # None, a callable or a v.StaticMask
  lazy_rows: Any  # None, a callable or a v.StaticMask

  @property
  def counts(self) -> bool:
    """Whether the state keeps a step count: only what reads it pays for it."""
    return self.schedule is not None or self.rule.bias_correction


class _Leaves(NamedTuple):
  """The flat leaves of one update call, in the order of ``updates``."""

  grads: list[jax.Array]
  nus: list[Any]
  mus: list[Any] | None
  traces: list[Any] | None
  params: list[Any] | None  # only where weight decay reads them
  decays: tuple[bool, ...]  # per leaf: weight decay applies
  lazy: tuple[bool, ...]  # per leaf: a leaf of lazy_rows
  out_dtypes: list[Any]  # per leaf: the dtype of its update


def _update(
  updates: optax.Updates,
  state: Any,
  params: optax.Params | None,
  hyper: _rule.Hyper,
  *,
  config: _Config,
) -> tuple[optax.Updates, RMSPropState]:
  """The whole update: checks, one step per leaf, the new state."""
  st = _checked_state(state, config)
  treedef = jax.tree.structure(updates)
  leaves = _leaves(updates, st, params, config)
  lr, count = _learning_rate(hyper, st.count, config)
  scalars = functools.cache(
    functools.partial(_rule.scalars, hyper, jnp.asarray(lr), count, config.rule)
  )
  out: tuple[list[Any], ...] = ([], [], [], [])
  for i, g in enumerate(leaves.grads):
    step = _update_leaf(
      g,
      leaves.nus[i],
      None if leaves.mus is None else leaves.mus[i],
      None if leaves.traces is None else leaves.traces[i],
      leaves.params[i] if leaves.params and leaves.decays[i] else None,
      scalars,
      config.rule,
      leaves.lazy[i],
    )
    out[0].append(step[0].astype(leaves.out_dtypes[i]))
    for outputs, new in zip(out[1:], step[1:], strict=True):
      outputs.append(new)
  new_state = RMSPropState(
    count=count,
    nu=treedef.unflatten(out[1]),
    mu=treedef.unflatten(out[2]) if config.rule.centered else None,
    trace=treedef.unflatten(out[3]) if config.momentum else None,
  )
  return treedef.unflatten(out[0]), new_state


_update_jit = jax.jit(_update, static_argnames=("config",))


def _learning_rate(
  hyper: _rule.Hyper, count: jax.Array | None, config: _Config
) -> tuple[Any, jax.Array | None]:
  """This step's learning rate and the step count after it."""
  lr = 0.0 if hyper.learning_rate is None else hyper.learning_rate
  if config.schedule is not None:
    assert count is not None  # _checked_state refuses a state without one
    lr = _compile.schedule_value(config.schedule, count)
    v.check_scalar_value(
      config.names("learning_rate"), lr, "the learning-rate schedule's value"
    )
  if config.counts and count is not None:
    count = jnp.asarray(optax.safe_increment(count))
  return lr, count


def _update_leaf(
  g: jax.Array,
  nu: Any,
  mu: Any,
  trace: Any,
  p: jax.Array | None,
  scalars: Callable[[Any], _rule.Scalars],
  rule: _rule.Rule,
  lazy: bool,
) -> tuple[jax.Array, Any, Any, Any]:
  """Reads one leaf's state in its compute dtype, steps it, stores it back."""
  dtype = _storage.compute_dtype(g.dtype, _storage.dtype_of(nu))
  cdtype = _storage.complex_dtype(dtype) if jnp.iscomplexobj(g) else dtype
  sc = scalars(dtype)
  if p is None:  # no weight decay on this leaf
    sc = sc._replace(coupled_wd=None, decoupled_wd=None)
  # A complex leaf meets real statistics and scalars in the rule by design,
  # which strict dtype promotion would refuse; a real leaf promotes nothing.
  complex_leaf = jnp.iscomplexobj(g)
  with jax.numpy_dtype_promotion("standard") if complex_leaf else nullcontext():
    step = _rule.update(
      g.astype(cdtype),
      _storage.load(nu, dtype),
      None if mu is None else _storage.load(mu, dtype),
      None if trace is None else _storage.load(trace, dtype),
      None if p is None else p.astype(cdtype),
      sc,
      rule,
      lazy=lazy and g.ndim >= 1,
    )

  def store(new: Any, old: Any) -> Any:
    if old is None:
      return None
    stored = _storage.store(new, old)
    if step.rows is None or _storage.holds_exactly(old, dtype):
      # The rule kept the untouched rows' loaded values, and storing them
      # again is the identity: the stored array is the one the step read.
      return stored
    # Lazy rows keep what is stored, bit for bit, not a re-encoding of it.
    return _storage.keep_rows(step.rows, stored, old)

  return step.update, store(step.nu, nu), store(step.mu, mu), store(step.trace, trace)


def _leaves(updates: Any, st: RMSPropState, params: Any, config: _Config) -> _Leaves:
  """Flattens and checks every tree of one update against ``updates``."""
  v.check_param_leaves(updates, what="updates")
  grads = [jnp.asarray(g) for g in jax.tree.leaves(updates)]  # numbers too
  shapes = [g.shape for g in grads]
  nus = v.flatten_like(updates, st.nu, "updates", "state.nu")
  v.check_shapes(
    updates, shapes, [_storage.logical_shape(n) for n in nus], "updates", "state.nu"
  )
  leaves_p = None
  if params is not None:
    v.check_param_leaves(params, "params")  # the updates take their dtypes
    leaves_p = [
      jnp.asarray(p)
      for p in v.flatten_like(updates, params, "updates", "params", arrays=True)
    ]
    v.check_shapes(updates, shapes, [p.shape for p in leaves_p], "updates", "params")
  elif config.decays:
    raise ValueError(
      f"{config.names('weight_decay')} is enabled, so update needs params: call "
      "update(grads, state, params). Under optax.inject_hyperparams "
      "weight_decay is traced even when it is 0: pass params, or add "
      "'weight_decay' to static_args."
    )
  every = (True,) * len(grads)
  # A callable lazy_rows reads the tree's structure and shapes, which the
  # updates share with the params when these are not given.
  tree = updates if params is None else params
  return _Leaves(
    grads=grads,
    nus=nus,
    mus=_optional_leaves(updates, st.mu, config.rule.centered, "mu", "centered"),
    traces=_optional_leaves(updates, st.trace, config.momentum, "trace", "momentum"),
    params=leaves_p if config.decays else None,
    decays=_flags(config.weight_decay_mask, tree, "weight_decay_mask", every),
    lazy=_flags(config.lazy_rows, tree, "lazy_rows", (False,) * len(grads)),
    out_dtypes=[
      g.dtype if leaves_p is None else _storage.canonical_dtype(p.dtype)
      for g, p in zip(grads, leaves_p or grads, strict=True)
    ],
  )


def _flags(
  mask: Any, tree: Any, name: str, default: tuple[bool, ...]
) -> tuple[bool, ...]:
  return default if mask is None else v.broadcast_mask(mask, tree, name)


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
  for field, kept in (
    ("count", config.counts),
    ("mu", config.rule.centered),
    ("trace", config.momentum),
  ):
    if getattr(state, field) is not None and not kept:
      raise ValueError(
        f"state.{field} is set but this optimizer keeps none ({_KEPT_BY[field]} "
        "is off): the state comes from another optimizer, and its "
        f"{field} would be lost. Call init with this optimizer."
      )
  return state


_KEPT_BY = {
  "count": "a learning-rate schedule or bias correction",
  "mu": "centered",
  "trace": "momentum",
}


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


def _transformation(
  hyper: _rule.Hyper, config: _Config, state_dtype: jnp.dtype | None
) -> optax.GradientTransformationExtraArgs:
  """The optax transformation of checked arguments."""

  def init_fn(params: optax.Params) -> optax.OptState:
    v.check_param_leaves(params)
    _low_precision.warn_if_low_precision(params)
    params = jax.tree.map(_storage.as_array, params)  # Python numbers too
    lazy = _flags(config.lazy_rows, params, "lazy_rows", ())
    quantizable = [
      not (lazy and lazy[i] and jnp.ndim(p) == 1)
      for i, p in enumerate(jax.tree.leaves(params))
    ]

    def fill(value: Any, is_nu: bool) -> optax.Updates:
      leaves, treedef = jax.tree.flatten(params)
      return treedef.unflatten(
        [
          _storage.init_leaf(p, value, state_dtype, is_nu=is_nu, quantize=q)
          for p, q in zip(leaves, quantizable, strict=True)
        ]
      )

    state = RMSPropState(
      count=_replicated_count(params) if config.counts else None,
      nu=fill(hyper.initial_scale, True),
      mu=fill(0.0, False) if config.rule.centered else None,
      trace=fill(0.0, False) if config.momentum else None,
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
    update = _update if _compile.staging(updates) else _update_jit
    try:
      new_updates, new_state = update(updates, state, params, hyper, config=config)
    except TypeError:
      # jit refuses a leaf that is no array before tracing: name its path.
      for tree, name in ((updates, "updates"), (state, "state"), (params, "params")):
        v.check_array_leaves(tree, name)
      raise
    return new_updates, cast(optax.OptState, new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


#: The core's own names: every argument as :func:`rmsprop` spells it.
CORE_NAMES = v.Names(none_means_off=frozenset({"momentum"}))


def build(
  names: v.Names,
  rule: _rule.Rule,
  hyper: _rule.Hyper,
  *,
  weight_decay_mask: Any = None,
  lazy_rows: Any = None,
  state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """The one builder behind :func:`rmsprop`, :func:`scale_by_rms` and the presets.

  Every value is checked here, once, and reported under the name the caller's
  API gives it (``names``).

  Args:
    names: how the caller's API spells the core's arguments.
    rule: the structural options, as given (each is checked to be a bool).
    hyper: the hyper-parameters as given: a schedule in ``learning_rate``,
      weight decay in the field of its kind, ``None`` where an option is off.
    weight_decay_mask: ``None``, a bool pytree or a callable returning one.
    lazy_rows: the same forms, for the leaves updated row by row.
    state_dtype: the storage dtype of the state, or ``None``.
  """
  rule = _rule.Rule(**{k: v.check_flag(names, k, x) for k, x in rule._asdict().items()})
  v.check_hyperparameters(names, hyper, scale_only=rule.scale_only)
  v.check_needs_momentum(
    names, {"nesterov": rule.nesterov, "caution": rule.caution}, hyper.momentum
  )
  state_dtype = v.check_state_dtype(state_dtype)
  v.centered_state_warning(rule.centered, state_dtype)
  schedule = hyper.learning_rate if callable(hyper.learning_rate) else None
  hyper = hyper._replace(
    learning_rate=None if schedule or rule.scale_only else hyper.learning_rate,
    coupled_weight_decay=_zero_is_off(hyper.coupled_weight_decay),
    decoupled_weight_decay=_zero_is_off(hyper.decoupled_weight_decay),
  )
  config = _Config(
    names=names,
    rule=rule,
    schedule=schedule,
    momentum=hyper.momentum is not None,
    decays=(hyper.coupled_weight_decay, hyper.decoupled_weight_decay) != (None, None),
    weight_decay_mask=v.static_mask(weight_decay_mask, names("weight_decay_mask")),
    lazy_rows=v.static_mask(lazy_rows, "lazy_rows"),
  )
  return _transformation(hyper, config, state_dtype)


def _zero_is_off(weight_decay: Any) -> Any:
  """A concrete weight decay of 0 is no weight decay: it needs no params."""
  return None if v.concrete_value(weight_decay) == 0.0 else weight_decay


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
    _rule.Rule(
      eps_in_sqrt=eps_in_sqrt,
      centered=centered,
      bias_correction=bias_correction,
      scale_only=True,
    ),
    _rule.Hyper(learning_rate=None, decay=decay, eps=eps, initial_scale=initial_scale),
    state_dtype=state_dtype,
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
  lazy_rows: Any = None,
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
  :math:`-b`, the buffer with the update's sign. With ``lazy_rows``, a row of a
  marked leaf whose gradient :math:`g` (after the coupled weight-decay term) is
  zero everywhere is skipped: :math:`u = 0` there and its :math:`\nu`,
  :math:`\mu` and :math:`b` keep their stored values.

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
    lazy_rows: the leaves updated row by row, as TF updates embedding tables
      from a lookup's sparse gradient: ``True`` for every leaf, or the forms of
      ``weight_decay_mask``. On such a leaf, a row (an index along axis 0)
      whose gradient is zero in every entry is left exactly as it is that step:
      its update is 0 and its ``nu``, ``mu`` and momentum buffer keep their
      stored values, bit for bit; the step count still advances. 0-d leaves
      have no rows and follow the dense rule. A row that was looked up but
      whose gradient sums to exactly zero counts as untouched, where TF would
      decay it (see the porting guide).
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
      is a concrete number, and a schedule's value when it is traced), a
      learning rate of ``None``, or an option without the one it needs.
    TypeError: a value of the wrong type, e.g. a string for a number or an
      array for a flag.

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
  names = CORE_NAMES
  decoupled = v.check_flag(names, "decoupled_weight_decay", decoupled_weight_decay)
  corrected = v.check_flag(names, "corrected_weight_decay", corrected_weight_decay)
  return build(
    names,
    _rule.Rule(
      eps_in_sqrt=eps_in_sqrt,
      centered=centered,
      bias_correction=bias_correction,
      nesterov=nesterov,
      lr_in_momentum=lr_in_momentum,
      maximize=maximize,
      caution=caution,
    ),
    _rule.Hyper(
      learning_rate=learning_rate,
      decay=decay,
      eps=eps,
      initial_scale=initial_scale,
      momentum=momentum,
      max_lr=v.corrected_max_lr(names, corrected, decoupled, max_lr, learning_rate),
      **_rule.weight_decay(
        v.given(names, "weight_decay", weight_decay), decoupled=decoupled
      ),
    ),
    weight_decay_mask=weight_decay_mask,
    lazy_rows=lazy_rows,
    state_dtype=state_dtype,
  )
