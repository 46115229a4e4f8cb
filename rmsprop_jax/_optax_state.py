"""Conversion between ``optax.rmsprop``'s state and :class:`RMSPropState`.

``optax.rmsprop`` is a chain of three transformations, so its state is a
3-tuple, the same in every optax release since 0.2.4:

==========  ======================================  ==========================
element     state                                   holds
==========  ======================================  ==========================
``[0]``     ``ScaleByRmsState``                     ``nu``
            ``ScaleByRStdDevState`` (centred)       ``mu``, ``nu``
            ``...WithCountState`` (bias correction) ``count`` as well
``[1]``     ``EmptyState`` (constant rate)          nothing
            ``ScaleByScheduleState`` (schedule)     ``count``
``[2]``     ``EmptyState`` (no momentum)            nothing
            ``TraceState``                          ``trace``
==========  ======================================  ==========================

Every value maps onto :class:`RMSPropState` unchanged: optax's ``trace``
accumulates the already negated, learning-rate-scaled step, so it holds the
buffer with the update's sign, as ``RMSPropState.trace`` does; both counts are
the number of updates applied, saturating at the int32 maximum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, overload

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _storage
from rmsprop_jax import _validation as v
from rmsprop_jax._transform import RMSPropState

_LAYOUT = (
  "the state of optax.rmsprop, a 3-tuple (ScaleByRmsState or ScaleByRStdDevState "
  "or their ...WithCountState variants, EmptyState or ScaleByScheduleState, "
  "EmptyState or TraceState)"
)
_MOMENT_KEYS = ({"nu"}, {"count", "nu"}, {"mu", "nu"}, {"count", "mu", "nu"})
_Injected = optax.InjectStatefulHyperparamsState | optax.InjectHyperparamsState


class _Parts(NamedTuple):
  """optax.rmsprop's state, one field per quantity; ``None`` where absent."""

  nu: Any
  mu: Any  # ScaleByRStdDevState (centred)
  rms_count: Any  # ...WithCountState (bias correction)
  lr_count: Any  # ScaleByScheduleState (learning-rate schedule)
  trace: Any  # TraceState (momentum)


def _named_fields(x: Any) -> tuple[str, ...] | None:
  """The field names of a NamedTuple; ``None`` for anything else."""
  names = getattr(x, "_fields", None) if isinstance(x, tuple) else None
  return tuple(names) if names is not None else None


def _describe(x: Any) -> str:
  names = _named_fields(x)
  if names is not None:
    return f"{type(x).__name__}{names}"
  if isinstance(x, Mapping):
    return f"a dict with keys {sorted(x)}"
  return type(x).__name__


def _fields(x: Any, typed: bool) -> dict[str, Any] | None:
  """The fields of one chain element; ``None`` if it is no state at all.

  Restored by Orbax without a target, a NamedTuple comes back as a dict and an
  ``EmptyState`` as ``None``; ``typed`` refuses those forms.
  """
  names = _named_fields(x)
  if names is not None:
    return dict(zip(names, x, strict=True))
  if typed:
    return None
  if x is None:
    return {}
  if isinstance(x, Mapping):
    return dict(x)
  return None


def _element(
  state: Any,
  i: int,
  allowed: tuple[set[str], ...],
  *,
  name: str,
  typed: bool,
  what: str,
) -> dict[str, Any]:
  fields = _fields(state[i], typed)
  if fields is None or set(fields) not in allowed:
    hint = (
      " It must be built by optax (optax.rmsprop(...).init(params), or its "
      "jax.eval_shape), not restored without a target."
      if typed
      else ""
    )
    raise TypeError(f"{name}[{i}] must be {what}; got {_describe(state[i])}.{hint}")
  return fields


def _split(state: Any, name: str, *, typed: bool) -> _Parts:
  """Reads optax.rmsprop's 3-tuple into :class:`_Parts`, checking its layout."""
  if not isinstance(state, (tuple, list)) or len(state) != 3:
    raise TypeError(
      f"{name} must be {_LAYOUT}, or optax.inject_hyperparams(optax.rmsprop)'s "
      f"state; got {_describe(state)}"
      + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
      + ". For an optax.chain or another wrapper, convert the element that "
      "optax.rmsprop produced."
    )
  moments = _element(
    state,
    0,
    _MOMENT_KEYS,
    name=name,
    typed=typed,
    what="ScaleByRmsState, ScaleByRStdDevState or their ...WithCountState variants",
  )
  lr = _element(
    state,
    1,
    (set(), {"count"}),
    name=name,
    typed=typed,
    what="EmptyState or ScaleByScheduleState",
  )
  tr = _element(
    state,
    2,
    (set(), {"trace"}),
    name=name,
    typed=typed,
    what="EmptyState or TraceState",
  )
  return _Parts(
    nu=moments["nu"],
    mu=moments.get("mu"),
    rms_count=moments.get("count"),
    lr_count=lr.get("count"),
    trace=tr.get("trace"),
  )


def _check_like_nu(parts: _Parts, name: str) -> None:
  """``mu`` and ``trace`` must have ``nu``'s tree and shapes."""
  nu_shapes = [jnp.shape(x) for x in jax.tree.leaves(parts.nu)]
  for field, i in (("mu", 0), ("trace", 2)):
    tree = getattr(parts, field)
    if tree is not None:
      leaves = v.flatten_like(parts.nu, tree, f"{name}[0].nu", f"{name}[{i}].{field}")
      shapes = [jnp.shape(x) for x in leaves]
      v.check_shapes(
        parts.nu, nu_shapes, shapes, f"{name}[0].nu", f"{name}[{i}].{field}"
      )


def _check_count(count: Any, name: str) -> None:
  dtype = jnp.result_type(count)
  if jnp.ndim(count) != 0 or not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"{name} must be an integer scalar, the number of updates applied; got "
      f"shape {jnp.shape(count)} and dtype {jnp.dtype(dtype).name}."
    )


def _count(parts: _Parts, name: str) -> jax.Array | None:
  """The one step count of ours; optax keeps up to two, which must agree."""
  named = [
    (f"{name}[0].count", "bias correction", parts.rms_count),
    (f"{name}[1].count", "the learning-rate schedule", parts.lr_count),
  ]
  present = [(n, why, c) for n, why, c in named if c is not None]
  for n, _, c in present:
    _check_count(c, n)
  if not present:
    return None
  values = [v.concrete_value(c) for _, _, c in present]
  # Traced counts (under jit or eval_shape) cannot be compared; concrete ones are.
  if len(set(values)) > 1 and None not in values:
    (n0, why0, _), (n1, why1, _) = present
    raise ValueError(
      f"{n0} = {values[0]:.0f} ({why0}) and {n1} = {values[1]:.0f} ({why1}) "
      "disagree. Both count the updates applied, so they are equal in every "
      "state optax.rmsprop produces: this state was edited or assembled from "
      "two runs. Set both to the number of updates applied."
    )
  return jnp.asarray(present[0][2]).astype(jnp.int32)


def _to_ours(tree: Any, name: str, *, is_nu: bool) -> Any:
  if tree is None:
    return None
  v.check_param_leaves(tree, what=name)

  def cast(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    if is_nu and jnp.iscomplexobj(x):
      # optax keeps nu in a complex parameter's dtype, with a zero imaginary part.
      x = jnp.real(x)
    # What init allocates for such a parameter; astype keeps the sharding.
    return x.astype(_storage.storage_dtype(x.dtype, None, is_nu=is_nu))

  return jax.tree.map(cast, tree)


# The wrappers' states are tuples too, so the catch-all overload below overlaps
# these; they come first and match first.
@overload
def from_optax(  # pyright: ignore[reportOverlappingOverload]
  optax_state: optax.InjectStatefulHyperparamsState,
) -> optax.InjectStatefulHyperparamsState: ...


@overload
def from_optax(
  optax_state: optax.InjectHyperparamsState,
) -> optax.InjectHyperparamsState: ...


@overload
def from_optax(optax_state: Any) -> RMSPropState: ...


def from_optax(optax_state: Any) -> Any:
  r"""Converts the state of ``optax.rmsprop`` into an :class:`RMSPropState`.

  A run started with ``optax.rmsprop(learning_rate, decay, eps, ...)``
  continues under :func:`rmsprop` with the same arguments as if it had never
  left optax. The values are carried over unchanged (optax's momentum buffer
  already has the update's sign); only the dtype changes where ``init`` would
  allocate another: every leaf is cast to at least float32 (bfloat16 and
  float16 state become float32, float64 stays float64), and ``nu`` of a
  complex parameter becomes real. Casting keeps each array's sharding. The
  step count is optax's (``count`` is ``None`` unless optax's state keeps
  one, exactly when :func:`rmsprop` with the same arguments does).

  The state of ``optax.inject_hyperparams(optax.rmsprop)(...)`` converts to
  the same wrapper holding the converted inner state, for
  ``optax.inject_hyperparams(rmsprop_jax.rmsprop, static_args=...)(...)``:
  its hyper-parameters, schedule states and count are carried over.

  The conversion traces (``jax.jit``, ``jax.eval_shape``); the two counts of
  a state with both a schedule and bias correction are compared only when
  they are concrete.

  Args:
    optax_state: the state of ``optax.rmsprop`` (any options), the state of
      ``optax.inject_hyperparams(optax.rmsprop)``, or either restored by Orbax
      into an abstract target. ``optax.rmsprop``'s state restored without a
      target (a list of dicts and ``None``) is accepted too.

  Returns:
    An :class:`RMSPropState`, or the ``inject_hyperparams`` state with an
    :class:`RMSPropState` as its ``inner_state``.

  Raises:
    TypeError: ``optax_state`` is not in one of those layouts (naming the
      element that is not), or holds integer leaves.
    ValueError: ``mu`` or ``trace`` does not match ``nu``'s tree or shapes, or
      the two step counts disagree.

  Examples:
    >>> import jax.numpy as jnp, optax, rmsprop_jax
    >>> theirs = optax.rmsprop(0.1, centered=True, momentum=0.9)
    >>> g = jnp.array([0.5, -1.0])
    >>> _, optax_state = theirs.update(g, theirs.init(jnp.zeros(2)))
    >>> state = rmsprop_jax.from_optax(optax_state)
    >>> state.trace.round(4)  # optax's buffer, with the update's sign
    Array([-0.3333,  0.3333], dtype=float32)
    >>> ours = rmsprop_jax.rmsprop(0.1, centered=True, momentum=0.9)
    >>> u_ours, _ = ours.update(g, state)
    >>> u_theirs, _ = theirs.update(g, optax_state)
    >>> bool(jnp.allclose(u_ours, u_theirs))
    True
  """
  if isinstance(optax_state, _Injected):
    inner = from_optax(optax_state.inner_state)
    return optax_state._replace(
      hyperparams=dict(optax_state.hyperparams), inner_state=inner
    )
  if isinstance(optax_state, Mapping) and "inner_state" in optax_state:
    raise TypeError(
      "optax_state is a dict with an 'inner_state' key: the state of "
      "optax.inject_hyperparams restored by Orbax without a target, whose "
      "schedule states have lost their types. Restore it into "
      "jax.eval_shape(optax.inject_hyperparams(optax.rmsprop)(...).init, params)."
    )
  parts = _split(optax_state, "optax_state", typed=False)
  _check_like_nu(parts, "optax_state")
  return RMSPropState(
    count=_count(parts, "optax_state"),
    nu=_to_ours(parts.nu, "optax_state[0].nu", is_nu=True),
    mu=_to_ours(parts.mu, "optax_state[0].mu", is_nu=False),
    trace=_to_ours(parts.trace, "optax_state[2].trace", is_nu=False),
  )


def _check_centred(state: RMSPropState, parts: _Parts, template: Any) -> None:
  kind = type(template[0]).__name__
  if parts.mu is not None and state.mu is None:
    raise ValueError(
      f"template is centred ({kind}) but state.mu is None: the state comes "
      "from an optimizer without centered=True. Build the template with "
      "optax.rmsprop(..., centered=False)."
    )
  if parts.mu is None and state.mu is not None:
    raise ValueError(
      f"state.mu is set (its optimizer is centred) but template is not "
      f"({kind}): build the template with optax.rmsprop(..., centered=True)."
    )


def _check_momentum(state: RMSPropState, parts: _Parts, template: Any) -> None:
  kind = type(template[2]).__name__
  if parts.trace is not None and state.trace is None:
    raise ValueError(
      f"template has momentum ({kind}) but state.trace is None: the state "
      "comes from an optimizer with momentum=None. Build the template with "
      "optax.rmsprop(..., momentum=None)."
    )
  if parts.trace is None and state.trace is not None:
    raise ValueError(
      f"state.trace is set (its optimizer has momentum) but template[2] is "
      f"{kind}, without momentum: build the template with "
      "optax.rmsprop(..., momentum=...) and the same momentum."
    )


def _check_counts(state: RMSPropState, parts: _Parts, template: Any) -> None:
  needs = [
    f"{why} (template[{i}] is {type(template[i]).__name__})"
    for i, why, count in (
      (0, "bias correction", parts.rms_count),
      (1, "a learning-rate schedule", parts.lr_count),
    )
    if count is not None
  ]
  if needs and state.count is None:
    raise ValueError(
      f"template keeps a step count for {' and '.join(needs)} but state.count "
      "is None: the state comes from an optimizer without a learning-rate "
      "schedule or bias_correction=True. Build the template without them too."
    )
  if not needs and state.count is not None:
    raise ValueError(
      "state.count is set (its optimizer has a learning-rate schedule or "
      f"bias_correction=True) but template keeps no step count "
      f"(template[0] is {type(template[0]).__name__}, template[1] is "
      f"{type(template[1]).__name__}): build the template with the same "
      "learning-rate schedule or bias_correction=True."
    )


def _tree_like(template: Any, tree: Any, t_name: str, name: str) -> Any:
  """``tree``'s values with ``template``'s tree and dtypes."""
  t_leaves, treedef = jax.tree.flatten(template)
  leaves = v.flatten_like(template, tree, t_name, name)
  paths = [
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)
  ]
  for path, x in zip(paths, leaves, strict=True):
    _storage.check_full_precision(x, f"{name}{path}", "optax keeps")
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
      raise TypeError(f"{name}{path} is a {type(x).__name__}, not an array.")
  v.check_shapes(
    template, [t.shape for t in t_leaves], [jnp.shape(x) for x in leaves], t_name, name
  )
  for path, t, x in zip(paths, t_leaves, leaves, strict=True):
    if jnp.iscomplexobj(x) and not jnp.issubdtype(t.dtype, jnp.complexfloating):
      raise ValueError(
        f"{name}{path} is complex ({x.dtype}) but {t_name}{path} is real "
        f"({t.dtype}): the template was built for other parameters."
      )
  return treedef.unflatten(
    [jnp.asarray(x).astype(t.dtype) for t, x in zip(t_leaves, leaves, strict=True)]
  )


def _fill(element: Any, i: int, state: RMSPropState) -> Any:
  """One element of the template, holding the values of ``state``."""
  new = {}
  for field in element._fields:
    template = getattr(element, field)
    if field == "count":
      new[field] = jnp.asarray(state.count).astype(template.dtype)
    else:
      ours = getattr(state, field)
      new[field] = _tree_like(
        template, ours, f"template[{i}].{field}", f"state.{field}"
      )
  return element._replace(**new)


def _hyperparams_like(
  template: dict[str, Any], hyperparams: dict[str, Any]
) -> dict[str, Any]:
  missing = sorted(set(template) - set(hyperparams))
  if missing:
    raise ValueError(
      f"template.hyperparams has {missing} but state.hyperparams does not: "
      "inject the same hyper-parameters on both sides."
    )
  for k in sorted(set(hyperparams) - set(template)):
    # optax.rmsprop has no weight decay; rmsprop_jax's default of 0 is no loss.
    if v.concrete_value(hyperparams[k]) != 0.0:
      raise ValueError(
        f"state.hyperparams[{k!r}] = {hyperparams[k]!r} has no counterpart "
        f"in template.hyperparams {sorted(template)}: optax.rmsprop has no "
        f"such hyper-parameter. Only a {k} of 0 converts."
      )
  return {
    k: jnp.asarray(hyperparams[k]).astype(jnp.result_type(t))
    for k, t in template.items()
  }


def _to_injected(state: Any, template: Any) -> Any:
  if not isinstance(state, _Injected):
    raise TypeError(
      f"template is {type(template).__name__}, the state of "
      "optax.inject_hyperparams(optax.rmsprop), but state is "
      f"{_describe(state)}: pass the state of "
      "optax.inject_hyperparams(rmsprop_jax.rmsprop), or convert the inner "
      "states alone with to_optax(state, template.inner_state)."
    )
  new: dict[str, Any] = {
    "count": jnp.asarray(state.count).astype(jnp.result_type(template.count)),
    "hyperparams": _hyperparams_like(template.hyperparams, state.hyperparams),
    "inner_state": to_optax(state.inner_state, template.inner_state),
  }
  if "hyperparams_states" in template._fields:
    ours = getattr(state, "hyperparams_states", {})
    if set(ours) != set(template.hyperparams_states):
      raise ValueError(
        f"template schedules {sorted(template.hyperparams_states)} but state "
        f"schedules {sorted(ours)}: inject the same schedules on both sides."
      )
    new["hyperparams_states"] = dict(ours)
  return template._replace(**new)


@overload
def to_optax(
  state: optax.InjectStatefulHyperparamsState,
  template: optax.InjectStatefulHyperparamsState,
) -> optax.InjectStatefulHyperparamsState: ...


@overload
def to_optax(state: Any, template: tuple[Any, ...]) -> tuple[Any, ...]: ...


def to_optax(state: Any, template: Any) -> Any:
  r"""Converts an :class:`RMSPropState` into the state of ``optax.rmsprop``.

  The inverse of :func:`from_optax`: a run of :func:`rmsprop` continues under
  ``optax.rmsprop`` with the same arguments. ``template`` gives the layout,
  which follows from optax's options (centred, momentum, a schedule, bias
  correction), and the dtypes; the values, and their shardings, are
  ``state``'s. Each of optax's step counts is set to ``state.count``.

  Only the layout is checked, not the hyper-parameters: build ``template``
  with the arguments the run continues with.

  Args:
    state: an :class:`RMSPropState`, or the state of
      ``optax.inject_hyperparams(rmsprop_jax.rmsprop)`` when ``template`` is
      one of ``optax.inject_hyperparams(optax.rmsprop)``.
    template: a state of the wanted layout, e.g.
      ``optax.rmsprop(...).init(params)`` or, without allocating it,
      ``jax.eval_shape(optax.rmsprop(...).init, params)``.

  Returns:
    An optax state with ``template``'s structure and dtypes holding
    ``state``'s values.

  Raises:
    TypeError: ``state`` or ``template`` is not a state of the kind above, or
      ``state`` holds block-quantized (8-bit) leaves.
    ValueError: the layouts differ (centred or not, momentum or not, a step
      count on one side only, another tree, other shapes, complex against
      real), naming the difference; or, under ``inject_hyperparams``, the
      hyper-parameters or schedules differ.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, rmsprop_jax
    >>> ours = rmsprop_jax.rmsprop(0.1, momentum=0.9, bias_correction=True)
    >>> g, params = jnp.array([0.5, -1.0]), jnp.zeros(2)
    >>> _, state = ours.update(g, ours.init(params))
    >>> theirs = optax.rmsprop(0.1, momentum=0.9, bias_correction=True)
    >>> template = jax.eval_shape(theirs.init, params)  # allocates nothing
    >>> optax_state = rmsprop_jax.to_optax(state, template)
    >>> type(optax_state[0]).__name__, optax_state[0].count
    ('ScaleByRmsWithCountState', Array(1, dtype=int32))
    >>> u_theirs, _ = theirs.update(g, optax_state)
    >>> u_ours, _ = ours.update(g, state)
    >>> bool(jnp.allclose(u_ours, u_theirs))
    True
  """
  if isinstance(template, _Injected):
    return _to_injected(state, template)
  if not isinstance(state, RMSPropState):
    raise TypeError(
      "state must be an RMSPropState, the state of rmsprop_jax.rmsprop; got "
      f"{_describe(state)}. The arguments are to_optax(state, template)."
    )
  parts = _split(template, "template", typed=True)
  _check_centred(state, parts, template)
  _check_momentum(state, parts, template)
  _check_counts(state, parts, template)
  return tuple(_fill(element, i, state) for i, element in enumerate(template))
