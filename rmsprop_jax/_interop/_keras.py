"""Handing a ``keras.optimizers.RMSprop`` run over to rmsprop_jax mid-training, and back.

Keras 3 keeps the statistics of :class:`RMSPropState` in slots of the
optimizer, one per variable, the ``i``-th for the variable at position ``i``:

================  ===================================  =======
``RMSPropState``  Keras 3 slot                         sign
================  ===================================  =======
``nu``            ``<variable>_velocity``              same
``mu`` (centred)  ``<variable>_average_gradient``      same
``trace``         ``<variable>_momentum``              negated
``count``         ``iterations``                       same
================  ===================================  =======

Keras is not imported before a function needs it.
"""

from __future__ import annotations

from typing import Any, cast

import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _presets
from rmsprop_jax._interop import _locate
from rmsprop_jax._interop import _shared as s
from rmsprop_jax._transform import RMSPropState

# ----------------------------------------------------------------------- Keras


def _keras() -> Any:
  try:
    import keras
  except ImportError as e:
    raise ImportError(f"from_keras and to_keras need Keras 3 ({e}).") from e
  return keras


def _checked_keras(optimizer: Any, who: str) -> Any:
  """Keras, once ``optimizer`` is known to be a built Keras 3 RMSprop we handle."""
  keras = _keras()
  if not isinstance(optimizer, keras.optimizers.RMSprop):
    raise TypeError(
      f"{who} takes a keras.optimizers.RMSprop (Keras 3); got "
      f"{type(optimizer).__module__}.{type(optimizer).__name__}."
    )
  if not optimizer.built:
    raise ValueError(
      "the optimizer is not built, so it has no variables yet: call "
      "optimizer.build(model.trainable_variables) first (Keras builds it at the "
      "first step)."
    )
  if optimizer.use_ema:
    raise ValueError(
      "the optimizer has use_ema=True: its moving average of the weights has no "
      "place in rmsprop_jax's state. Use an optimizer without use_ema, and keep "
      "the average yourself."
    )
  if optimizer.gradient_accumulation_steps:
    raise ValueError(
      f"the optimizer has gradient_accumulation_steps="
      f"{optimizer.gradient_accumulation_steps}: its accumulators are state that "
      "rmsprop_jax does not hold. Use an optimizer without it, and "
      "optax.MultiSteps around the preset on the JAX side."
    )
  return keras


def _keras_slots(optimizer: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
  """The trainable variables and the velocity, momentum, average slots."""
  # Keras 3's RMSprop keeps its slots in build order, one per variable.
  return (
    list(optimizer._trainable_variables),
    list(optimizer._velocities),
    list(optimizer._momentums),
    list(optimizer._average_gradients),
  )


# Which variable of the optimizer each leaf is, for the messages.
_PARAMS_ORDER = (
  "The optimizer's variable i is jax.tree.leaves(params)[i]: build it on "
  "model.trainable_variables, in order."
)
_STATE_ORDER = (
  "The optimizer's variable i is the state's leaf i, not counting the "
  "parameters that a wrapper leaves to other transformations (MaskedNode): "
  "build it on the variables of the parameters the state holds, in order."
)


def _check_keras_shapes(
  variables: list[Any],
  shapes: list[tuple[int, ...]],
  names: list[str],
  what: str,
  order: str,
) -> None:
  if len(variables) != len(shapes):
    raise ValueError(
      f"the optimizer was built on {len(variables)} variables but {what} has "
      f"{len(shapes)} leaves. {order}"
    )
  for i, (var, shape) in enumerate(zip(variables, shapes, strict=True)):
    if tuple(var.shape) != tuple(shape):
      raise ValueError(
        f"{names[i]} has shape {tuple(shape)} but the optimizer's variable {i} "
        f"({var.path!r}) has shape {tuple(var.shape)}. {order}"
      )


def _keras_learning_rate(keras: Any, optimizer: Any, learning_rate: Any) -> Any:
  own = optimizer._learning_rate
  if learning_rate is not None:
    return learning_rate
  if isinstance(own, keras.optimizers.schedules.LearningRateSchedule):
    if keras.backend.backend() != "jax":
      raise ValueError(
        f"the optimizer's learning rate is a {type(own).__name__}, which computes "
        f"with the {keras.backend.backend()} backend: pass learning_rate=, its "
        "optax counterpart."
      )
    return own  # called with the step count, as Keras calls it with iterations
  if isinstance(own, keras.Variable):
    return float(np.asarray(own.value))
  raise ValueError(
    f"the optimizer's learning rate is a callable of no arguments ({own!r}), "
    "which optax cannot call with the step: pass learning_rate=, a number or an "
    "optax schedule."
  )


def _keras_count(optimizer: Any, lr: Any) -> int | None:
  """``iterations`` when a schedule reads the count, else None (as ``init``)."""
  if not callable(lr):
    return None
  count = int(np.asarray(optimizer.iterations.value))
  current = optimizer.learning_rate  # a schedule's value at iterations
  current = float(np.asarray(getattr(current, "value", current)))
  s.check_schedule(lr, count, current, "the optimizer's learning rate")
  return count


def _keras_clip(optimizer: Any) -> optax.GradientTransformation | None:
  """Keras' gradient clipping as an optax transformation, or None."""
  if optimizer.clipnorm and optimizer.clipnorm > 0:
    c = optimizer.clipnorm
    return optax.stateless_with_tree_map(
      lambda g, _: g * c / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), c)
    )
  if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
    return optax.clip_by_global_norm(optimizer.global_clipnorm)
  if optimizer.clipvalue and optimizer.clipvalue > 0:
    return optax.clip(optimizer.clipvalue)
  return None


def _keras_mask(optimizer: Any, variables: list[Any], leaves: s.Leaves) -> Any:
  if optimizer.weight_decay is None:
    return None
  flags = [bool(optimizer._use_weight_decay(var)) for var in variables]
  return None if all(flags) else leaves.treedef.unflatten(flags)


def from_keras(
  optimizer: Any,
  params: optax.Params,
  *,
  learning_rate: optax.ScalarOrSchedule | None = None,
) -> tuple[optax.GradientTransformation, optax.OptState]:
  r"""Continues a ``keras.optimizers.RMSprop`` run under :func:`keras_rmsprop`.

  Reads a built Keras 3 optimizer and returns the preset configured as it is
  (``rho``, ``momentum``, ``epsilon``, ``centered``, ``weight_decay`` and the
  variables ``exclude_from_weight_decay`` excludes, as a
  ``weight_decay_mask``) together with its state: the ``velocity`` slots
  become ``nu``, ``average_gradient`` ``mu``, and the *negated* ``momentum``
  slots ``trace``, each in the dtype ``init`` allocates for its parameter.

  The optimizer's variable ``i`` (the ``i``-th of the list it was built on,
  ``model.trainable_variables``) is ``jax.tree.leaves(params)[i]``.

  **Learning rate.** A constant learning rate is the optimizer's current one.
  A ``LearningRateSchedule`` is used as the optax schedule itself (on the JAX
  backend its ops are JAX's), and the state's ``count`` is ``iterations``, so
  it continues from there, as does a schedule passed as ``learning_rate``. A
  warning says when that schedule at ``iterations`` is not the optimizer's
  current learning rate.

  **Clipping.** ``global_clipnorm``, ``clipvalue`` and ``clipnorm`` become
  ``optax.chain(clip, keras_rmsprop(...))`` (``optax.clip_by_global_norm``,
  ``optax.clip``, a per-leaf norm clip), whose state is
  ``(optax.EmptyState(), state)``. ``loss_scale_factor`` scales the loss and
  unscales the gradients before the update, so it has no counterpart here.

  Args:
    optimizer: a built ``keras.optimizers.RMSprop`` (Keras 3), without
      ``use_ema`` or ``gradient_accumulation_steps``.
    params: the parameters, in the order of the optimizer's variables.
    learning_rate: a learning rate or optax schedule of the 0-based step to
      use instead of the optimizer's; needed for a callable learning rate
      without arguments, or a schedule on a backend other than JAX.

  Returns:
    ``(optimizer, state)``: the optax transformation and its state after the
    steps the Keras optimizer has taken.

  Raises:
    ImportError: Keras is not installed.
    TypeError: ``optimizer`` is not a Keras 3 ``RMSprop``, or a parameter is
      complex or not floating.
    ValueError: the optimizer is not built or uses an option above that has
      no counterpart; the number of variables or a shape differs (named by
      tree path and Keras path); or its learning rate needs
      ``learning_rate``.

  Examples:
    >>> import os
    >>> _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import jax.numpy as jnp, keras, numpy as np, rmsprop_jax
    >>> w = keras.Variable(np.array([1.0, -2.0], np.float32), name="w")
    >>> keras_opt = keras.optimizers.RMSprop(learning_rate=0.1, momentum=0.9)
    >>> keras_opt.apply([np.array([0.5, 0.5], np.float32)], [w])
    >>> params = {"w": jnp.asarray(w.value)}
    >>> opt, state = rmsprop_jax.from_keras(keras_opt, params)
    >>> state.trace["w"]  # Keras' momentum slot, with the update's sign
    Array([-0.31622714, -0.31622714], dtype=float32)
    >>> updates, state = opt.update({"w": jnp.array([0.5, 0.5])}, state, params)
    >>> updates["w"]
    Array([-0.5140199, -0.5140199], dtype=float32)
  """
  keras = _checked_keras(optimizer, "from_keras")
  leaves = s.param_leaves(params, "Keras")
  variables, velocities, momentums, averages = _keras_slots(optimizer)
  _check_keras_shapes(variables, leaves.shapes, leaves.names, "params", _PARAMS_ORDER)
  lr = _keras_learning_rate(keras, optimizer, learning_rate)
  count = _keras_count(optimizer, lr)
  every = frozenset(range(len(variables)))

  def tree(slots: list[Any], sign: float = 1.0, is_nu: bool = False) -> Any:
    return s.state_tree(
      leaves,
      every,
      lambda i: s.leaf_value(leaves, i, sign * np.asarray(slots[i].value), is_nu=is_nu),
    )

  state = RMSPropState(
    count=None if count is None else jnp.asarray(count, jnp.int32),
    nu=tree(velocities, is_nu=True),
    mu=tree(averages) if optimizer.centered else None,
    trace=tree(momentums, sign=-1.0) if optimizer.momentum > 0 else None,
  )
  tx = _presets.keras_rmsprop(
    learning_rate=lr,
    rho=optimizer.rho,
    momentum=optimizer.momentum,
    epsilon=optimizer.epsilon,
    centered=optimizer.centered,
    weight_decay=optimizer.weight_decay,
    weight_decay_mask=_keras_mask(optimizer, variables, leaves),
  )
  clip = _keras_clip(optimizer)
  if clip is None:
    return tx, cast(optax.OptState, state)
  return optax.chain(clip, tx), cast(optax.OptState, (optax.EmptyState(), state))


def _check_keras_layout(rms: RMSPropState, name: str, optimizer: Any) -> None:
  for option, on, field, tree in (
    ("momentum > 0", optimizer.momentum > 0, "trace", rms.trace),
    ("centered=True", bool(optimizer.centered), "mu", rms.mu),
  ):
    if on and tree is None:
      raise ValueError(
        f"the optimizer has {option} but {name}.{field} is None: the state "
        f"comes from an optimizer without it. Build the Keras optimizer with "
        "the options the run used."
      )
    if not on and tree is not None:
      raise ValueError(
        f"{name}.{field} is set but the optimizer does not have {option} "
        f"(momentum={optimizer.momentum}, centered={optimizer.centered}): "
        "build the Keras optimizer with the options the run used."
      )


def to_keras(
  state: optax.OptState, optimizer: Any, *, iterations: int | None = None
) -> None:
  r"""Writes ``state`` into a built ``keras.optimizers.RMSprop``, in place.

  The inverse of :func:`from_keras`: ``nu`` goes into the ``velocity`` slots,
  ``mu`` into ``average_gradient``, the negated ``trace`` into ``momentum``,
  and the step count into ``iterations`` (which a ``LearningRateSchedule``
  reads). Leaf ``i`` of the state goes to the optimizer's variable ``i``;
  Keras casts each value to its slot's dtype. Every check runs before the
  first assignment, so a refused state leaves the optimizer as it was.

  Only the layout is checked (momentum or not, centred or not, the number of
  variables and their shapes), not the hyper-parameters: build the Keras
  optimizer with the arguments the run continues with.

  The state may be wrapped: its one :class:`RMSPropState` is found inside
  the states of ``optax.chain`` (such as the chain that :func:`from_keras`
  returns for a clipping optimizer), ``inject_hyperparams``, ``masked``,
  ``transforms.partition``, ``MultiSteps`` and ``apply_if_finite``. Where a
  wrapper leaves parameters to other transformations (``optax.MaskedNode``),
  the leaves it holds go to the optimizer's variables, in order: build the
  optimizer on those parameters' variables.

  Args:
    state: an :class:`RMSPropState` (the state of :func:`keras_rmsprop`),
      alone or wrapped as above.
    optimizer: a built ``keras.optimizers.RMSprop`` (Keras 3), e.g.
      ``optimizer.build(model.trainable_variables)``.
    iterations: the number of steps taken, required when ``state.count`` is
      None (no learning-rate schedule); otherwise ``state.count`` is used.

  Raises:
    ImportError: Keras is not installed.
    TypeError: ``optimizer`` is not of the kind above, ``state`` holds no
      :class:`RMSPropState`, or it holds block-quantized or complex leaves.
    ValueError: the optimizer is not built, uses ``use_ema`` or
      ``gradient_accumulation_steps``, or its layout differs from the
      state's, named; ``state`` holds several RMSPropStates (named by path);
      or the step count is missing or contradicts ``iterations``.

  Examples:
    >>> import os
    >>> _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import jax.numpy as jnp, keras, numpy as np, rmsprop_jax
    >>> opt = rmsprop_jax.keras_rmsprop(learning_rate=0.1, momentum=0.9)
    >>> params = [jnp.array([1.0, -2.0])]
    >>> _, state = opt.update([jnp.array([0.5, 0.5])], opt.init(params), params)
    >>> w = keras.Variable(np.asarray(params[0]), name="w")
    >>> keras_opt = keras.optimizers.RMSprop(learning_rate=0.1, momentum=0.9)
    >>> keras_opt.build([w])
    >>> rmsprop_jax.to_keras(state, keras_opt, iterations=1)
    >>> int(keras_opt.iterations.value)
    1
    >>> np.asarray(keras_opt.variables[-1].value).round(6)  # momentum slot
    array([0.316227, 0.316227], dtype=float32)
  """
  _checked_keras(optimizer, "to_keras")
  rms = _locate.locate_one(
    state,
    s.is_rms_state,
    "state",
    what="RMSPropStates",
    expected="to_keras takes an RMSPropState (the state of keras_rmsprop)",
    why_one="a Keras optimizer continues one of them. Write each into the "
    "optimizer that continues it, passing the state at its path",
  )
  _check_keras_layout(rms.value, rms.name, optimizer)
  variables, velocities, momentums, averages = _keras_slots(optimizer)
  writes = []
  for slots, field, sign in (
    (velocities, "nu", 1.0),
    (momentums, "trace", -1.0),
    (averages, "mu", 1.0),
  ):
    tree, name = getattr(rms.value, field), f"{rms.name}.{field}"
    if tree is None:
      continue
    values = s.positions(tree, name)
    names = [f"{name}[{i}]" for i in values]
    shapes = [x.shape for x in values.values()]
    _check_keras_shapes(variables, shapes, names, name, _STATE_ORDER)
    writes += [(slot, sign * x) for slot, x in zip(slots, values.values(), strict=True)]
  count = s.count_value(
    rms.value.count, iterations, "iterations", "Keras", f"{rms.name}.count"
  )
  for slot, value in writes:
    slot.assign(value)
  optimizer.iterations.assign(count)
