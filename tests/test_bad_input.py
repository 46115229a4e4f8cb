"""Generated bad input: every public entry point refuses it, by name.

Hypothesis throws malformed arguments, trees, dtypes, shapes and schedules at
building an optimizer, at ``init`` and ``update``, and at every converter. Each
must fail with a ``ValueError`` or ``TypeError`` whose message names the
argument or the tree path at fault: never an error from inside JAX, never a
result of another shape, never a silent acceptance.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rmsprop_jax
from tests._expect import low_precision_warning

os.environ.setdefault("KERAS_BACKEND", "jax")

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
GRADS = {"w": jnp.full((3, 2), 0.5), "b": jnp.full(2, -0.5)}

# Each builder with the arguments it needs; the argument under test replaces one.
BUILDERS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
  "rmsprop": (rmsprop_jax.rmsprop, {"learning_rate": 0.1, "momentum": 0.9}),
  "scale_by_rms": (rmsprop_jax.scale_by_rms, {}),
  "torch_rmsprop": (rmsprop_jax.torch_rmsprop, {"momentum": 0.9}),
  "keras_rmsprop": (rmsprop_jax.keras_rmsprop, {"momentum": 0.9}),
  "tf1_rmsprop": (rmsprop_jax.tf1_rmsprop, {"learning_rate": 0.1, "momentum": 0.9}),
  "timm_rmsprop_tf": (rmsprop_jax.timm_rmsprop_tf, {"momentum": 0.9}),
  "tf_keras_legacy_rmsprop": (rmsprop_jax.tf_keras_legacy_rmsprop, {"momentum": 0.9}),
}
# Arguments that a positive weight decay, or decoupled decay, must accompany.
NEEDS = {
  "weight_decay_mask": {"weight_decay": 0.1},
  "max_lr": {"weight_decay": 0.1, "corrected_weight_decay": True},
  "corrected_weight_decay": {"weight_decay": 0.1},
}
DECOUPLED = {"rmsprop": "decoupled_weight_decay", "timm_rmsprop_tf": "decoupled_decay"}
BELOW_ONE = {"decay", "alpha", "rho", "momentum"}
MASKS = {"weight_decay_mask", "lazy_rows"}
SCHEDULED = {"learning_rate", "lr"}  # a callable is a schedule


def _kind(name: str, default: Any) -> str:
  if name in MASKS:
    return "mask"
  if name == "state_dtype":
    return "dtype"
  if isinstance(default, bool):
    return "flag"
  return "number"


ARGUMENTS = [
  (builder, name, _kind(name, p.default), p.default is None)
  for builder, (fn, _) in BUILDERS.items()
  for name, p in inspect.signature(fn).parameters.items()
]

NOT_NUMBERS = [
  "0.1",
  [0.1],
  {"a": 0.1},
  jnp.ones(2),
  np.ones((2, 2)),
  1 + 2j,
  np.complex64(1.0),
  True,
  object(),
  float("nan"),
  float("inf"),
  -1.0,
  jnp.asarray(-0.5),
]
BAD = {
  "number": NOT_NUMBERS,
  "flag": ["yes", 2, 0.5, -1, jnp.ones(2), [True], {"a": True}, 1 + 0j, object()],
  "dtype": [jnp.int8, "nonsense", 3, jnp.complex64, jnp.ones(2), object(), bool],
  "mask": [
    3,
    "x",
    jnp.ones(2),
    {"nope": True},
    [True, False],
    {"w": 1.0, "b": True},
    {"w": jnp.asarray(True), "b": False},
    {"w": [True], "b": False},
  ],
}


@st.composite
def bad_arguments(draw: st.DrawFn) -> tuple[str, str, Any]:
  builder, name, kind, none_is_fine = draw(st.sampled_from(ARGUMENTS))
  pool = list(BAD[kind])
  if not none_is_fine:
    pool.append(None)
  if name in BELOW_ONE:
    pool += [1.0, 1.5, np.float32(1.0)]
  return builder, name, draw(st.sampled_from(pool))


def _exercise(tx: Any) -> Any:
  state = tx.init(PARAMS)
  updates, state = tx.update(GRADS, state, PARAMS)
  updates, _ = jax.jit(tx.update)(GRADS, state, PARAMS)
  return updates


def _assert_refused_by_name(error: BaseException, *names: str) -> None:
  assert isinstance(error, (ValueError, TypeError)), repr(error)
  assert type(error).__module__ == "builtins", repr(error)  # not JAX's own
  message = str(error)
  assert any(n in message for n in names), (names, message)


@settings(max_examples=120)
@given(bad_arguments())
def test_a_bad_argument_is_refused_naming_it(case):
  builder, name, value = case
  fn, base = BUILDERS[builder]
  kwargs = {**base, **NEEDS.get(name, {}), name: value}
  if name in ("corrected_weight_decay", "max_lr") and builder in DECOUPLED:
    kwargs[DECOUPLED[builder]] = True
  if name in SCHEDULED and callable(value):
    return  # a callable learning rate is a schedule: see the schedule test
  with pytest.raises(Exception) as info:
    _exercise(fn(**kwargs))
  # Masks may fail against the tree, where the message names the leaf path.
  _assert_refused_by_name(info.value, name)


SCHEDULE_VALUES = [
  jnp.ones((4, 3)),
  jnp.ones(2),
  np.ones((1,)),
  "0.1",
  None,
  jnp.asarray(0.1 + 0.1j),
  jnp.asarray(True),
  [0.1],
]


@settings(max_examples=40)
@given(
  st.sampled_from(["rmsprop", "torch_rmsprop", "keras_rmsprop", "tf1_rmsprop"]),
  st.sampled_from(SCHEDULE_VALUES),
  st.booleans(),
)
def test_a_schedule_whose_value_is_no_real_scalar_is_refused(builder, value, jit):
  fn, base = BUILDERS[builder]
  name = "lr" if builder == "torch_rmsprop" else "learning_rate"
  tx = fn(**{**base, name: lambda count: value})
  state = tx.init(PARAMS)
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(Exception) as info:
    update(GRADS, state, PARAMS)
  _assert_refused_by_name(info.value, name)


# -- trees: init and update --------------------------------------------------

LEAF_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64]
BAD_DTYPES = [jnp.int32, jnp.bool_, jnp.uint8]


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
  names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=4, unique=True))
  shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
  return {n: jnp.ones(draw(shapes), draw(st.sampled_from(LEAF_DTYPES))) for n in names}


MISMATCHES = ["drop", "add", "shape", "nest"]  # wrong beside another tree
BAD_LEAVES = ["dtype", "object"]  # wrong anywhere


def _corrupt(
  draw: st.DrawFn, tree: dict[str, Any], hows: list[str]
) -> tuple[str, dict[str, Any]]:
  """A copy of ``tree`` with one thing wrong, and the word naming it."""
  key = draw(st.sampled_from(sorted(tree)))
  how = draw(st.sampled_from(hows))
  bad = dict(tree)
  if how == "drop" and len(tree) > 1:
    del bad[key]
  elif how in ("drop", "add"):
    bad["zz"] = jnp.ones(2)
  elif how == "shape":
    bad[key] = jnp.ones(tree[key].shape + (2,), tree[key].dtype)
  elif how == "dtype":
    bad[key] = jnp.ones(tree[key].shape, draw(st.sampled_from(BAD_DTYPES)))
  elif how == "nest":
    bad[key] = {"inner": tree[key]}
  else:
    bad[key] = "not an array"
  return how, bad


OPTIONS = st.sampled_from(
  [
    {},
    {"momentum": 0.9},
    {"centered": True, "momentum": 0.5},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"lazy_rows": True, "momentum": 0.9},
    {"state_dtype": jnp.bfloat16},
  ]
)


@settings(max_examples=40)
@given(st.data(), trees(), OPTIONS)
def test_a_malformed_tree_is_refused_naming_its_path(data, params, options):
  tx = rmsprop_jax.rmsprop(0.1, **options)
  with low_precision_warning(params):
    state = tx.init(params)
  grads = jax.tree.map(lambda p: (0.5 * p).astype(p.dtype), params)
  updates, _ = tx.update(grads, state, params)  # well formed: same tree, shapes
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
    assert (u.shape, u.dtype) == (p.shape, p.dtype)
  where = data.draw(st.sampled_from(["updates", "params", "init"]))
  hows = BAD_LEAVES if where == "init" else MISMATCHES + BAD_LEAVES
  how, bad = _corrupt(data.draw, grads if where == "updates" else params, hows)
  with pytest.raises(Exception) as info, warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # bfloat16 params: not the point
    if where == "init":
      tx.init(bad)
    elif where == "updates":
      tx.update(bad, state, params)
    else:
      tx.update(grads, state, bad)
  _assert_refused_by_name(info.value, "params" if where == "init" else where)


@settings(max_examples=40)
@given(trees(), OPTIONS, OPTIONS)
def test_a_state_of_another_optimizer_is_refused(params, ours, theirs):
  tx = rmsprop_jax.rmsprop(0.1, **ours)
  with low_precision_warning(params):
    other = rmsprop_jax.rmsprop(0.1, **theirs).init(params)
  grads = jax.tree.map(lambda p: (0.5 * p).astype(p.dtype), params)
  states = [optax.EmptyState(), (other,), {"nu": other.nu}, None]
  layout = ("centered" in ours, "momentum" in ours)
  if layout != ("centered" in theirs, "momentum" in theirs):
    states.append(other)
  for state in states:
    with pytest.raises(Exception) as info:
      tx.update(grads, state, params)
    _assert_refused_by_name(info.value, "state")


# -- converters ---------------------------------------------------------------

JUNK = [None, 3, "x", (1, 2, 3), [1.0], {"a": 1}, optax.EmptyState(), object()]


@settings(max_examples=60)
@given(st.sampled_from(JUNK), st.sampled_from(["from_optax", "to_optax", "template"]))
def test_optax_converters_refuse_junk_by_argument(junk, where):
  template = optax.rmsprop(0.1).init(PARAMS)
  state = rmsprop_jax.rmsprop(0.1).init(PARAMS)
  with pytest.raises(Exception) as info:
    if where == "from_optax":
      rmsprop_jax.from_optax(junk)
    elif where == "to_optax":
      rmsprop_jax.to_optax(junk, template)
    else:
      rmsprop_jax.to_optax(state, junk)
  name = {"from_optax": "optax_state", "to_optax": "state", "template": "template"}
  _assert_refused_by_name(info.value, name[where])


def _state_dict(**group: Any) -> dict[str, Any]:
  base = dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0)
  base.update(centered=False, maximize=False, params=[0, 1])
  base.update(group)
  return {"state": {}, "param_groups": [base]}


TORCH_JUNK = [
  *JUNK,
  {"state": 3, "param_groups": []},
  {"state": {}, "param_groups": "x"},
  _state_dict(alpha="x"),
  _state_dict(lr=None),
  _state_dict(momentum=-1.0),
  _state_dict(params=[0, 0]),
  _state_dict(betas=(0.9, 0.99)),
  {**_state_dict(), "state": {0: {"step": 1.0, "square_avg": np.ones(5)}}},
  {**_state_dict(), "state": {7: {"step": 1.0, "square_avg": np.ones(2)}}},
]


@settings(max_examples=60)
@given(st.sampled_from(TORCH_JUNK), st.booleans())
def test_torch_converters_refuse_junk_by_argument(junk, forward):
  with pytest.raises(Exception) as info:
    if forward:
      rmsprop_jax.from_torch(junk, PARAMS)
    else:
      rmsprop_jax.to_torch(junk, step=1, as_numpy=True)
  names = ("state_dict", "param_groups", "state[", "params") if forward else ("state",)
  _assert_refused_by_name(info.value, *names)


def test_from_torch_refuses_parameters_that_do_not_match():
  state_dict = _state_dict()
  for params in ({"w": jnp.ones(3)}, {"w": jnp.ones(3, jnp.int32), "b": jnp.ones(2)}):
    with pytest.raises((ValueError, TypeError)) as info:
      rmsprop_jax.from_torch(state_dict, params)
    _assert_refused_by_name(info.value, "params")


@settings(max_examples=30)
@given(st.sampled_from(JUNK), st.booleans())
def test_keras_converters_refuse_junk_by_argument(junk, forward):
  keras = pytest.importorskip("keras")
  w = keras.Variable(np.ones(2, np.float32))
  optimizer = keras.optimizers.RMSprop(0.1)
  optimizer.build([w])
  with pytest.raises(Exception) as info:
    if forward:
      rmsprop_jax.from_keras(junk, [jnp.ones(2)])
    else:
      rmsprop_jax.to_keras(junk, optimizer, iterations=1)
  _assert_refused_by_name(info.value, "optimizer" if forward else "state")


def test_every_public_builder_is_covered():
  public = {
    n
    for n in rmsprop_jax.__all__
    if n.endswith(("rmsprop", "_tf")) or n == "scale_by_rms"
  }
  assert public == set(BUILDERS)
