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

Inside optax's wrappers the 3-tuple is found by the locator and converted in
place; the wrappers' own values (an ``inject_hyperparams`` state's
hyper-parameters, a ``MultiSteps`` state's accumulated gradients) are carried
over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _storage
from rmsprop_jax import _validation as v
from rmsprop_jax._interop import _locate
from rmsprop_jax._interop import _shared as s
from rmsprop_jax._transform import RMSPropState

_LAYOUT = (
  "the state of optax.rmsprop, a 3-tuple (ScaleByRmsState or ScaleByRStdDevState "
  "or their ...WithCountState variants, EmptyState or ScaleByScheduleState, "
  "EmptyState or TraceState)"
)
# Each element of the 3-tuple: the states it may be, with their fields.
_ELEMENTS: tuple[tuple[dict[str, frozenset[str]], str], ...] = (
  (
    {
      "ScaleByRmsState": frozenset({"nu"}),
      "ScaleByRmsWithCountState": frozenset({"count", "nu"}),
      "ScaleByRStdDevState": frozenset({"mu", "nu"}),
      "ScaleByRStdDevWithCountState": frozenset({"count", "mu", "nu"}),
    },
    "ScaleByRmsState, ScaleByRStdDevState or their ...WithCountState variants",
  ),
  (
    {"EmptyState": frozenset(), "ScaleByScheduleState": frozenset({"count"})},
    "EmptyState or ScaleByScheduleState",
  ),
  (
    {"EmptyState": frozenset(), "TraceState": frozenset({"trace"})},
    "EmptyState or TraceState",
  ),
)
_Injected = optax.InjectStatefulHyperparamsState | optax.InjectHyperparamsState


def _is_optax_rmsprop(x: Any) -> bool:
  """Picks optax.rmsprop's 3-tuple for the locator, by its first element."""
  return type(x) is tuple and len(x) == 3 and type(x[0]).__name__ in _ELEMENTS[0][0]


def _is_injected(x: Any) -> bool:
  return isinstance(x, _Injected)


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


def _element(state: Any, i: int, *, name: str, typed: bool) -> dict[str, Any]:
  allowed, what = _ELEMENTS[i]
  fields = _fields(state[i], typed)
  # A NamedTuple must be one of these states; a dict of Orbax's may have the
  # fields of any.
  if _named_fields(state[i]) is not None:
    expected = [allowed.get(type(state[i]).__name__)]
  else:
    expected = list(allowed.values())
  if fields is None or set(fields) not in expected:
    hint = (
      " It must be built by optax (optax.rmsprop(...).init(params), or its "
      "jax.eval_shape), not restored without a target."
      if typed
      else ""
    )
    raise TypeError(
      f"{name}[{i}] must be {what}; got {_locate.describe(state[i])}.{hint}"
    )
  return fields


def _split(state: Any, name: str, *, typed: bool) -> _Parts:
  """Reads optax.rmsprop's 3-tuple into :class:`_Parts`, checking its layout."""
  if not isinstance(state, (tuple, list)) or len(state) != 3:
    raise TypeError(
      f"{name} must be {_LAYOUT}, alone or inside the state of "
      f"{_locate.WRAPPERS}; got {_locate.describe(state)}"
      + (f" of length {len(state)}." if isinstance(state, (tuple, list)) else ".")
    )
  moments, lr, tr = (_element(state, i, name=name, typed=typed) for i in range(3))
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
    return x.astype(s.init_dtype(x.dtype, is_nu=is_nu))

  return jax.tree.map(cast, tree)


def _rms_state(optax_state: Any, name: str) -> RMSPropState:
  """One optax.rmsprop state, typed or restored without a target, as ours."""
  parts = _split(optax_state, name, typed=False)
  _check_like_nu(parts, name)
  return RMSPropState(
    count=_count(parts, name),
    nu=_to_ours(parts.nu, f"{name}[0].nu", is_nu=True),
    mu=_to_ours(parts.mu, f"{name}[0].mu", is_nu=False),
    trace=_to_ours(parts.trace, f"{name}[2].trace", is_nu=False),
  )


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

  **Wrapped states.** ``optax.rmsprop``'s state inside the states of
  ``optax.chain``, ``inject_hyperparams``, ``masked``,
  ``transforms.partition``, ``MultiSteps`` and ``apply_if_finite``, nested
  to any depth, is converted in place: the result is the same wrappers around
  an :class:`RMSPropState`, for the same wrappers around :func:`rmsprop`
  (``optax.inject_hyperparams(rmsprop_jax.rmsprop, static_args=...)`` for
  injected hyper-parameters). The wrappers' own values, such as injected
  hyper-parameters and schedule states, are carried over.

  The conversion traces (``jax.jit``, ``jax.eval_shape``); the two counts of
  a state with both a schedule and bias correction are compared only when
  they are concrete.

  Args:
    optax_state: the state of ``optax.rmsprop`` (any options), alone or
      wrapped as above, or either restored by Orbax into an abstract target.
      ``optax.rmsprop``'s state restored without a target (a list of dicts
      and ``None``) is accepted too.

  Returns:
    An :class:`RMSPropState`, or the wrappers' state holding one in place of
    each ``optax.rmsprop`` state.

  Raises:
    TypeError: ``optax_state`` holds no state of ``optax.rmsprop``, or one
      not in its layout (naming the element that is not), or with integer
      leaves.
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
    >>> clipped = optax.chain(optax.clip(1.0), optax.rmsprop(0.1))
    >>> rmsprop_jax.from_optax(clipped.init(jnp.zeros(2)))[1].nu
    Array([0., 0.], dtype=float32)
  """
  if _locate.locate(optax_state, _is_optax_rmsprop, "optax_state"):
    return _locate.replace(
      optax_state,
      _is_optax_rmsprop,
      lambda found: _rms_state(found.value, found.name),
      "optax_state",
    )
  if isinstance(optax_state, Mapping) and "inner_state" in optax_state:
    raise TypeError(
      "optax_state is a dict with an 'inner_state' key: the state of "
      "optax.inject_hyperparams restored by Orbax without a target, whose "
      "schedule states have lost their types. Restore it into "
      "jax.eval_shape(optax.inject_hyperparams(optax.rmsprop)(...).init, params)."
    )
  # Restored without a target, or no state of optax.rmsprop: the error says.
  return _rms_state(optax_state, "optax_state")


# The options that add a field to the state: the field, the template's element
# that shows the option, and what to say when only the template has it, or
# only the state.
_OPTIONS = (
  (
    "mu",
    0,
    "{t} is centred ({kind}) but {r}.mu is None: the state comes from an "
    "optimizer without centered=True. Build the template with "
    "optax.rmsprop(..., centered=False).",
    "{r}.mu is set (its optimizer is centred) but {t} is not ({kind}): build "
    "the template with optax.rmsprop(..., centered=True).",
  ),
  (
    "trace",
    2,
    "{t} has momentum ({kind}) but {r}.trace is None: the state comes from an "
    "optimizer with momentum=None. Build the template with "
    "optax.rmsprop(..., momentum=None).",
    "{r}.trace is set (its optimizer has momentum) but {t}[2] is {kind}, "
    "without momentum: build the template with optax.rmsprop(..., "
    "momentum=...) and the same momentum.",
  ),
)


def _check_options(
  rms: Any, r_name: str, parts: _Parts, template: Any, t_name: str
) -> None:
  for field, i, only_template, only_state in _OPTIONS:
    if (getattr(parts, field) is None) != (getattr(rms, field) is None):
      message = only_state if getattr(parts, field) is None else only_template
      kind = type(template[i]).__name__
      raise ValueError(message.format(t=t_name, r=r_name, kind=kind))


def _check_counts(
  rms: Any, r_name: str, parts: _Parts, template: Any, t_name: str
) -> None:
  needs = [
    f"{why} ({t_name}[{i}] is {type(template[i]).__name__})"
    for i, why, count in (
      (0, "bias correction", parts.rms_count),
      (1, "a learning-rate schedule", parts.lr_count),
    )
    if count is not None
  ]
  if needs and rms.count is None:
    raise ValueError(
      f"{t_name} keeps a step count for {' and '.join(needs)} but "
      f"{r_name}.count is None: the state comes from an optimizer without a "
      "learning-rate schedule or bias_correction=True. Build the template "
      "without them too."
    )
  if not needs and rms.count is not None:
    raise ValueError(
      f"{r_name}.count is set (its optimizer has a learning-rate schedule or "
      f"bias_correction=True) but {t_name} keeps no step count "
      f"({t_name}[0] is {type(template[0]).__name__}, {t_name}[1] is "
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


def _filled(rms: Any, r_name: str, template: Any, t_name: str) -> tuple[Any, ...]:
  """``template``, the state of optax.rmsprop, holding the values of ``rms``."""
  parts = _split(template, t_name, typed=True)
  for check in (_check_options, _check_counts):
    check(rms, r_name, parts, template, t_name)
  elements = []
  for i, element in enumerate(template):
    new = {}
    for field in element._fields:
      like = getattr(element, field)
      if field == "count":
        new[field] = jnp.asarray(rms.count).astype(like.dtype)
      else:
        ours = getattr(rms, field)
        new[field] = _tree_like(
          like, ours, f"{t_name}[{i}].{field}", f"{r_name}.{field}"
        )
    elements.append(element._replace(**new))
  return tuple(elements)


def _hyperparams_like(
  template: dict[str, Any], hyperparams: dict[str, Any], t_name: str, name: str
) -> dict[str, Any]:
  missing = sorted(set(template) - set(hyperparams))
  if missing:
    raise ValueError(
      f"{t_name}.hyperparams has {missing} but {name}.hyperparams does not: "
      "inject the same hyper-parameters on both sides."
    )
  for k in sorted(set(hyperparams) - set(template)):
    # optax.rmsprop has no weight decay; rmsprop_jax's default of 0 is no loss.
    if v.concrete_value(hyperparams[k]) != 0.0:
      raise ValueError(
        f"{name}.hyperparams[{k!r}] = {hyperparams[k]!r} has no counterpart "
        f"in {t_name}.hyperparams {sorted(template)}: optax.rmsprop has no "
        f"such hyper-parameter. Only a {k} of 0 converts."
      )
  return {
    k: jnp.asarray(hyperparams[k]).astype(jnp.result_type(t))
    for k, t in template.items()
  }


def _injected_like(ours: Any, name: str, template: Any, t_name: str) -> Any:
  """An inject_hyperparams state of ours with the template's hyper-parameters."""
  new: dict[str, Any] = {
    "count": ours.count,
    "hyperparams": _hyperparams_like(
      template.hyperparams, ours.hyperparams, t_name, name
    ),
    "inner_state": ours.inner_state,
  }
  if "hyperparams_states" in template._fields:
    schedules = getattr(ours, "hyperparams_states", {})
    if set(schedules) != set(template.hyperparams_states):
      raise ValueError(
        f"{t_name} schedules {sorted(template.hyperparams_states)} but {name} "
        f"schedules {sorted(schedules)}: inject the same schedules on both sides."
      )
    new["hyperparams_states"] = dict(schedules)
  return template._replace(**new)


def _wrapped_like(state: Any, template: Any, targets: list[_locate.Located]) -> Any:
  """The template's wrappers holding ``state``'s values, its RMSPropStates converted."""
  theirs = {t.where: t for t in targets}
  ours = _locate.locate(state, s.is_rms_state, "state")
  if sorted(theirs) != sorted(o.where for o in ours):
    raise TypeError(
      f"template is {type(template).__name__}, holding the state of "
      f"optax.rmsprop at {_locate.listed(targets)}, but state is "
      f"{type(state).__name__}, holding RMSPropStates at {_locate.listed(ours)}. "
      "The wrappers' values come from state: pass the state of the same "
      "wrappers around rmsprop_jax.rmsprop."
    )

  def filled(found: _locate.Located) -> Any:
    like = theirs[found.where]
    return _filled(found.value, found.name, like.value, like.name)

  injected = {t.where: t for t in _locate.locate(template, _is_injected, "template")}

  def hyperparams_like(found: _locate.Located) -> Any:
    like = injected.get(found.where)
    if like is None:  # a wrapper of another kind: the structures differ below
      return found.value
    return _injected_like(found.value, found.name, like.value, like.name)

  converted = _locate.replace(state, s.is_rms_state, filled, "state")
  converted = _locate.replace(converted, _is_injected, hyperparams_like, "state")
  return _tree_like(template, converted, "template", "state")


def to_optax(state: Any, template: Any) -> Any:
  r"""Converts an :class:`RMSPropState` into the state of ``optax.rmsprop``.

  The inverse of :func:`from_optax`: a run of :func:`rmsprop` continues under
  ``optax.rmsprop`` with the same arguments. ``template`` gives the layout,
  which follows from optax's options (centred, momentum, a schedule, bias
  correction), and the dtypes; the values, and their shardings, are
  ``state``'s. Each of optax's step counts is set to ``state.count``.

  Only the layout is checked, not the hyper-parameters: build ``template``
  with the arguments the run continues with.

  **Wrapped states.** When ``template`` is ``optax.rmsprop``'s state inside
  the states of ``optax.chain``, ``inject_hyperparams``, ``masked``,
  ``transforms.partition``, ``MultiSteps`` or ``apply_if_finite``, ``state``
  must be the state of the same wrappers around :func:`rmsprop`: each of its
  RMSPropStates fills the ``optax.rmsprop`` state at the same place, and the
  wrappers' values (counts, accumulated gradients, injected
  hyper-parameters) are ``state``'s, in the template's dtypes. For a bare
  ``template``, ``state`` may hold its one RMSPropState inside wrappers.

  Args:
    state: an :class:`RMSPropState`, alone or inside wrappers as above.
    template: a state of the wanted layout, e.g.
      ``optax.rmsprop(...).init(params)`` or, without allocating it,
      ``jax.eval_shape(optax.rmsprop(...).init, params)``; or the state of
      wrappers around ``optax.rmsprop``.

  Returns:
    An optax state with ``template``'s structure and dtypes holding
    ``state``'s values.

  Raises:
    TypeError: ``state`` or ``template`` is not a state of the kind above,
      their wrappers differ (naming the paths of the states inside them), or
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
  targets = _locate.locate(template, _is_optax_rmsprop, "template")
  if targets and targets[0].where:
    return _wrapped_like(state, template, targets)
  rms = _locate.locate_one(
    state,
    s.is_rms_state,
    "state",
    what="RMSPropStates",
    expected="state must be an RMSPropState (the state of rmsprop_jax.rmsprop; "
    "the arguments are to_optax(state, template))",
    why_one="template is the state of one optax.rmsprop. Pass a template of "
    "the same wrappers around optax.rmsprop",
  )
  return _filled(rms.value, rms.name, template, "template")
