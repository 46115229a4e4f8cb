"""Generated-input checks: any pytree, any dtype, any option; every bad input.

Hypothesis draws nested dicts, lists, tuples and ``None`` holding scalars,
vectors, matrices and zero-size arrays in float16, bfloat16, float32,
complex64 (and float64 under a scoped x64 switch), and draws the options
independently. The invariants are those the rule itself implies: structure,
shapes and dtypes are preserved, the state stays finite and ``nu >= 0``, and
for plain RMSProp started from ``nu = 0`` every update is bounded by
``lr / sqrt(1 - decay)`` because ``nu >= (1 - decay) |g|^2`` after the step.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rmsprop_jax
from tests._compat import enable_x64
from tests._expect import centred_warning, low_precision_warning

SHAPES = [(), (0,), (3,), (2, 3), (1, 0, 2)]
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.complex64]
HALF = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _examples(n: int) -> int:
  """``n`` examples, unless the loaded profile asks for more (``fuzz``)."""
  wanted = settings().max_examples
  return wanted if wanted > 100 else n


# A module-level schedule, so that examples share one compiled update.
SCHEDULE = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A leaf to be: not a pytree node, so tree.map stops at it."""

  shape: tuple[int, ...]
  dtype: Any


def _trees(dtypes: list[Any]) -> st.SearchStrategy[Any]:
  """Pytrees of leaf specs, with None leaves and nested containers.

  The root is never a bare None: ``update(grads, state, params=None)`` means
  "no params", and with ``params=None`` the state fields are ``None`` too (see
  ``test_bare_none_params_with_centered_or_momentum``).
  """
  leaves = st.builds(Spec, st.sampled_from(SHAPES), st.sampled_from(dtypes))
  return st.recursive(
    leaves | st.none(),
    lambda inner: (
      st.lists(inner, max_size=3)
      | st.tuples(inner, inner)
      | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=5,
  ).filter(lambda tree: tree is not None)


def _is_spec(x: Any) -> bool:
  return isinstance(x, Spec)


def _materialise(spec_tree: Any, rng: np.random.Generator, scale: float) -> Any:
  def leaf(spec: Spec) -> jax.Array:
    x = rng.normal(size=spec.shape) * scale
    if jnp.issubdtype(spec.dtype, jnp.complexfloating):
      x = x + 1j * rng.normal(size=spec.shape) * scale
    return jnp.asarray(x, spec.dtype)

  return jax.tree.map(leaf, spec_tree, is_leaf=_is_spec)


configs = st.fixed_dictionaries(
  {
    "learning_rate": st.sampled_from([0.0, 1e-3, 0.1, 1.0, SCHEDULE]),
    "decay": st.sampled_from([0.0, 0.5, 0.9, 0.999]),
    "eps": st.sampled_from([1e-8, 1e-6, 1e-3]),
    "initial_scale": st.sampled_from([0.0, 1.0]),
    "eps_in_sqrt": st.booleans(),
    "centered": st.booleans(),
    "momentum": st.sampled_from([None, 0.0, 0.9]),
    "bias_correction": st.booleans(),
    "weight_decay": st.sampled_from([0.0, 1e-2]),
    "decoupled_weight_decay": st.booleans(),
    "lr_in_momentum": st.booleans(),
    "maximize": st.booleans(),
    "state_dtype": st.sampled_from([None, jnp.float32, jnp.bfloat16]),
  }
).flatmap(
  lambda c: st.builds(
    lambda nesterov: {**c, "nesterov": nesterov},
    st.booleans() if c["momentum"] is not None else st.just(False),
  )
)


def _check_leaf_invariants(
  params: Any, updates: Any, state: rmsprop_jax.RMSPropState, config: dict
) -> None:
  ptree = jax.tree.structure(params)
  assert jax.tree.structure(updates) == ptree
  assert jax.tree.structure(state.nu) == ptree
  assert (state.mu is None) == (not config["centered"])
  assert (state.trace is None) == (config["momentum"] is None)
  for p, u, nu in zip(
    jax.tree.leaves(params),
    jax.tree.leaves(updates),
    jax.tree.leaves(state.nu),
    strict=True,
  ):
    assert u.shape == p.shape and u.dtype == p.dtype
    assert nu.shape == p.shape
    assert not jnp.issubdtype(nu.dtype, jnp.complexfloating)
    nu64 = np.asarray(nu, np.float64)
    assert np.all(np.isfinite(nu64)) and np.all(nu64 >= 0)
  for field in (state.mu, state.trace):
    for x in jax.tree.leaves(field):
      assert np.all(np.isfinite(np.asarray(x, np.complex128)))


def _widen(tree: Any) -> Any:
  """Half-precision leaves cast (exactly) to float32."""
  return jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype in HALF else x, tree)


def _run_two_steps(
  config: dict, spec_tree: Any, seed: int, grad_scale: float, widen=False
) -> tuple[Any, Any, rmsprop_jax.RMSPropState]:
  rng = np.random.default_rng(seed)
  cast = _widen if widen else (lambda t: t)
  params = cast(_materialise(spec_tree, rng, 1.0))
  with centred_warning(config.get("centered", False), config.get("state_dtype")):
    opt = rmsprop_jax.rmsprop(**config)
  with low_precision_warning(params):
    state = opt.init(params)
  updates = None
  for _ in range(2):
    grads = cast(_materialise(spec_tree, rng, grad_scale))
    updates, state = opt.update(grads, state, params)
  return params, updates, state


def _check_finite_updates(
  config: dict, spec_tree: Any, seed: int, grad_scale: float, updates: Any
) -> None:
  """Finite everywhere, except where the exact update overflows float16.

  fp16 and bf16 leaves are computed in float32, so the same run with the
  leaves widened to float32 gives their update before the final rounding.
  """
  _, wide, _ = _run_two_steps(config, spec_tree, seed, grad_scale, widen=True)
  for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(wide), strict=True):
    u64 = np.asarray(u, np.complex128)
    w64 = np.asarray(w, np.complex128)
    assert np.all(np.isfinite(w64))
    if u.dtype in HALF:
      # the half-precision update is the float32 one, rounded
      np.testing.assert_array_equal(u, w.astype(u.dtype))
      fits = np.abs(w64) < float(jnp.finfo(u.dtype).max)
      assert np.all(np.isfinite(u64[fits]))
    else:
      assert np.all(np.isfinite(u64))


@settings(max_examples=_examples(30))
@given(
  config=configs,
  spec_tree=_trees(DTYPES),
  seed=st.integers(0, 2**32 - 1),
  grad_scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3]),
)
def test_any_tree_any_options_keeps_structure_dtypes_and_finiteness(
  config, spec_tree, seed, grad_scale
):
  params, updates, state = _run_two_steps(config, spec_tree, seed, grad_scale)
  _check_leaf_invariants(params, updates, state, config)
  if config["bias_correction"] or callable(config["learning_rate"]):
    assert int(state.count) == 2
  else:
    assert state.count is None  # nothing reads it
  if config["state_dtype"] is not None:
    for nu in jax.tree.leaves(state.nu):
      assert nu.dtype == jnp.dtype(config["state_dtype"])
  _check_finite_updates(config, spec_tree, seed, grad_scale, updates)


@settings(max_examples=_examples(20))
@given(
  spec_tree=_trees(DTYPES),
  decay=st.sampled_from([0.0, 0.9]),
  centered=st.booleans(),
  bias_correction=st.booleans(),
  eps_in_sqrt=st.booleans(),
  state_dtype=st.sampled_from([None, jnp.bfloat16]),
  seed=st.integers(0, 2**32 - 1),
)
def test_scale_by_rms_keeps_structure_dtypes_and_finiteness(
  spec_tree, decay, centered, bias_correction, eps_in_sqrt, state_dtype, seed
):
  rng = np.random.default_rng(seed)
  params = _materialise(spec_tree, rng, 1.0)
  # The denominator is at least sqrt(eps) (or eps): keep |s| within fp16.
  with centred_warning(centered, state_dtype):
    tx = rmsprop_jax.scale_by_rms(
      decay,
      1e-6 if eps_in_sqrt else 1e-2,
      centered=centered,
      bias_correction=bias_correction,
      eps_in_sqrt=eps_in_sqrt,
      state_dtype=state_dtype,
    )
  with low_precision_warning(params):
    state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(_materialise(spec_tree, rng, 1.0), state)
  config = {"centered": centered, "momentum": None}
  _check_leaf_invariants(params, updates, state, config)
  for u in jax.tree.leaves(updates):
    # |s| <= |g| / 1e-3 with |g| < ~10: inside every dtype's range
    assert np.all(np.isfinite(np.asarray(u, np.complex128)))


@settings(max_examples=_examples(15))
@given(
  config=configs,
  spec_tree=_trees([jnp.float64, jnp.float32, jnp.complex128]),
  seed=st.integers(0, 2**32 - 1),
)
def test_float64_trees_under_scoped_x64(config, spec_tree, seed):
  with enable_x64(True):
    params, updates, state = _run_two_steps(config, spec_tree, seed, 1.0)
    _check_leaf_invariants(params, updates, state, config)
    for p, u, nu in zip(
      jax.tree.leaves(params),
      jax.tree.leaves(updates),
      jax.tree.leaves(state.nu),
      strict=True,
    ):
      assert np.all(np.isfinite(np.asarray(u)))
      if config["state_dtype"] is None and p.dtype != jnp.float32:
        assert nu.dtype == jnp.float64  # float64 leaves keep float64 state
  assert not jax.config.jax_enable_x64  # the switch did not leak
  assert jnp.asarray(1.0).dtype == jnp.float32


@settings(max_examples=_examples(30))
@given(
  spec_tree=_trees([jnp.float32, jnp.float16, jnp.bfloat16, jnp.complex64]),
  decay=st.sampled_from([0.0, 0.3, 0.9, 0.99, 0.9999]),
  eps=st.sampled_from([1e-12, 1e-8, 1e-3]),
  eps_in_sqrt=st.booleans(),
  lr=st.sampled_from([1e-3, 1.0, 7.5]),
  scales=st.lists(st.sampled_from([0.0, 1e-6, 1.0, 1e4]), min_size=1, max_size=4),
  seed=st.integers(0, 2**32 - 1),
)
def test_plain_rmsprop_update_is_bounded_by_lr_over_sqrt_one_minus_decay(
  spec_tree, decay, eps, eps_in_sqrt, lr, scales, seed
):
  rng = np.random.default_rng(seed)
  params = _materialise(spec_tree, rng, 1.0)
  opt = rmsprop_jax.rmsprop(lr, decay, eps, eps_in_sqrt=eps_in_sqrt)
  with low_precision_warning(params):
    state = opt.init(params)
  bound = lr / math.sqrt(1 - decay)
  for scale in scales:
    updates, state = opt.update(_materialise(spec_tree, rng, scale), state)
    for u in jax.tree.leaves(updates):
      # float32 arithmetic, then one rounding to the parameter's dtype
      slack = (1 + 1e-5) * (1 + float(jnp.finfo(u.dtype).eps))
      assert np.all(np.abs(np.asarray(u, np.complex128)) <= bound * slack)


@pytest.mark.parametrize("param_dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_updates_take_the_params_dtype_when_grads_come_in_float32(
  param_dtype, weight_decay
):
  # e.g. float32 gradients of bf16 parameters (mixed precision, loss scaling)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), param_dtype)}
  grads = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, weight_decay=weight_decay)
  with low_precision_warning(params):
    state = opt.init(params)
  u, _ = opt.update(grads, state, params)
  assert u["w"].dtype == param_dtype
  # the arithmetic is the float32 one, rounded once at the end
  wide = {"w": params["w"].astype(jnp.float32)}
  ref, _ = opt.update(grads, opt.init(wide), wide)
  np.testing.assert_array_equal(u["w"], ref["w"].astype(param_dtype))


# ---------------------------------------------------------------- bad input

# float32-representable, so that the value survives jnp.asarray unchanged
_below = st.floats(max_value=-(2.0**-140), width=32) | st.just(-math.inf)
_at_or_above_one = st.floats(min_value=1.0, width=32)
RANGES: dict[str, st.SearchStrategy[float]] = {
  "learning_rate": _below,
  "decay": _below | _at_or_above_one,
  "eps": _below,
  "initial_scale": _below,
  "momentum": _below | _at_or_above_one,
  "weight_decay": _below,
}


@settings(max_examples=_examples(25))
@given(data=st.data(), name=st.sampled_from(sorted(RANGES)))
def test_out_of_range_hyper_parameter_raises_value_error_naming_it(data, name):
  value = data.draw(RANGES[name] | st.just(math.nan), label=name)
  kwargs: dict[str, Any] = {"learning_rate": 0.1, name: value}
  as_array = data.draw(st.booleans(), label="as jnp array")
  if as_array:  # concrete arrays are checked as well as Python floats
    kwargs[name] = jnp.asarray(value, jnp.float32)
  with pytest.raises(ValueError, match=re.escape(f"{name}={float(value)!r}")):
    rmsprop_jax.rmsprop(**kwargs)
  if name in ("decay", "eps", "initial_scale"):
    del kwargs["learning_rate"]
    with pytest.raises(ValueError, match=re.escape(f"{name}=")):
      rmsprop_jax.scale_by_rms(**kwargs)


def test_nesterov_without_momentum_raises_value_error():
  with pytest.raises(ValueError, match="nesterov=True needs momentum"):
    rmsprop_jax.rmsprop(0.1, nesterov=True)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64, "int8"])
def test_non_floating_state_dtype_raises_value_error(dtype):
  with pytest.raises(ValueError, match="state_dtype must be None or a floating"):
    rmsprop_jax.rmsprop(0.1, state_dtype=dtype)
  with pytest.raises(ValueError, match="state_dtype"):
    rmsprop_jax.scale_by_rms(state_dtype=dtype)


def test_unknown_state_dtype_name_raises_value_error():
  with pytest.raises(ValueError, match="state_dtype.*'not-a-dtype'"):
    rmsprop_jax.rmsprop(0.1, state_dtype="not-a-dtype")


def test_non_numeric_hyper_parameter_raises_type_error():
  with pytest.raises(TypeError, match="learning_rate must be a real number"):
    rmsprop_jax.rmsprop("0.1")  # type: ignore[arg-type]


def test_array_valued_hyper_parameter_raises_value_error():
  with pytest.raises(ValueError, match=r"decay must be a scalar.*\(2,\)"):
    rmsprop_jax.rmsprop(0.1, decay=jnp.array([0.9, 0.9]))


@pytest.mark.parametrize(
  "bad",
  [np.arange(3, dtype=np.int32), jnp.array([True, False]), 3, np.uint8(1)],
  ids=["int32", "bool", "python-int", "uint8"],
)
def test_integer_or_bool_param_leaf_raises_type_error_naming_its_path(bad):
  params = {"layer": [jnp.ones((2,)), {"scale": bad}]}
  with pytest.raises(TypeError, match=re.escape("params['layer'][1]['scale']")):
    rmsprop_jax.rmsprop(0.1).init(params)


def test_grads_with_another_tree_structure_raise_value_error():
  opt = rmsprop_jax.rmsprop(0.1)
  state = opt.init({"a": jnp.ones((2,)), "b": jnp.ones((3,))})
  with pytest.raises(ValueError, match="state.nu does not have the structure"):
    opt.update({"a": jnp.ones((2,)), "c": jnp.ones((3,))}, state)


def test_grads_with_another_shape_raise_value_error_naming_path_and_shapes():
  opt = rmsprop_jax.rmsprop(0.1, centered=True)
  state = opt.init({"a": jnp.ones((2,)), "b": [jnp.ones((3, 4))]})
  grads = {"a": jnp.ones((2,)), "b": [jnp.ones((4, 3))]}
  with pytest.raises(
    ValueError, match=re.escape("updates['b'][0]: updates has shape (4, 3) but")
  ) as info:
    opt.update(grads, state)
  assert "state.nu has shape (3, 4)" in str(info.value)


def test_params_with_another_shape_raise_value_error_naming_path_and_shapes():
  opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1)
  params = {"a": jnp.ones((2, 1))}
  state = opt.init(params)
  with pytest.raises(ValueError, match=re.escape("(2, 1) but params has shape (2,)")):
    opt.update(params, state, {"a": jnp.ones((2,))})


def test_state_of_an_optimizer_without_momentum_raises_value_error():
  params = {"a": jnp.ones((2,))}
  state = rmsprop_jax.rmsprop(0.1).init(params)
  with pytest.raises(ValueError, match="state.trace is None but momentum"):
    rmsprop_jax.rmsprop(0.1, momentum=0.9).update(params, state)


def test_weight_decay_mask_of_another_structure_raises_value_error():
  opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask={"x": True})
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match="weight_decay_mask must be a pytree"):
    opt.update(params, opt.init(params), params)


def test_elementwise_weight_decay_mask_raises_type_error_naming_its_path():
  params = {"a": jnp.ones(2)}
  mask = {"a": jnp.array([True, False])}
  with pytest.raises(TypeError, match=re.escape("weight_decay_mask['a'] must be")):
    rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask=mask)
  opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask=lambda p: mask)
  with pytest.raises(TypeError, match=re.escape("weight_decay_mask['a'] must be")):
    opt.update(params, opt.init(params), params)


def test_state_of_another_optimizer_raises_type_error():
  with pytest.raises(TypeError, match="RMSPropState returned by init; got"):
    rmsprop_jax.rmsprop(0.1).update({"a": jnp.ones(2)}, optax.EmptyState())


@pytest.mark.parametrize(
  "options", [dict(centered=True), dict(momentum=0.9)], ids=["mu", "trace"]
)
def test_bare_none_params_with_centered_or_momentum(options):
  # optax.rmsprop accepts an empty (None) tree; so should rmsprop_jax.
  opt = rmsprop_jax.rmsprop(0.1, **options)
  updates, state = opt.update(None, opt.init(None))
  assert updates is None and state.count is None


@pytest.mark.parametrize("decoupled", [False, True])
def test_weight_decay_without_params_raises_value_error(decoupled):
  opt = rmsprop_jax.rmsprop(0.1, weight_decay=1e-4, decoupled_weight_decay=decoupled)
  params = {"a": jnp.ones((2,))}
  with pytest.raises(ValueError, match=r"update\(grads, state, params\)"):
    opt.update(params, opt.init(params))


# -------------------------------------------------------------- determinism

VARIANTS = {
  "plain": dict(),
  "eps-outside-torch": dict(eps_in_sqrt=False, momentum=0.9, lr_in_momentum=False),
  "centered-nesterov": dict(centered=True, momentum=0.9, nesterov=True),
  "bias-corrected-coupled-wd": dict(bias_correction=True, weight_decay=0.1),
  "decoupled-wd-maximize-bf16": dict(
    weight_decay=0.1,
    decoupled_weight_decay=True,
    maximize=True,
    state_dtype=jnp.bfloat16,
  ),
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_same_inputs_give_bit_identical_outputs_eager_and_jitted(options):
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
    "h": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16),
    "z": jnp.asarray(rng.normal(size=(2,)) + 1j, jnp.complex64),
  }
  opt = rmsprop_jax.rmsprop(SCHEDULE, **options)
  with low_precision_warning(params):
    states = [opt.init(params), opt.init(params), jax.jit(opt.init)(params)]
  chex.assert_trees_all_equal(*states)
  jitted = jax.jit(opt.update)
  for _ in range(3):
    grads = jax.tree.map(
      lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params
    )
    outs = [
      opt.update(grads, states[0], params),
      opt.update(grads, states[1], params),
      jitted(grads, states[2], params),
    ]
    chex.assert_trees_all_equal(*outs)
    states = [s for _, s in outs]
