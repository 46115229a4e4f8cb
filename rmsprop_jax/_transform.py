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
      count=_storage.replicated(jnp.zeros([], jnp.int32), params)
      if config.counts
      else None,
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
