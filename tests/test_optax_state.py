"""An optax.rmsprop run continues under rmsprop_jax, and back.

The specification: with the same arguments on both sides, optax's state after
k steps, converted by ``from_optax``, continues under ``rmsprop_jax.rmsprop``
exactly as optax itself continues (float64, relative error below 1e-9), and a
state converted by ``to_optax`` continues under optax as under rmsprop_jax.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rmsprop_jax
from tests import _docs
from tests import _trees as trees
from tests._compat import enable_x64
from tests._expect import low_precision_warning
from tests._wrappers import WRAPPERS

K, N = 5, 5  # steps before the conversion, and after it
# Under x64 this evaluates in float64. (optax.exponential_decay computes in
# float32 from the int32 count, and its value under jit and eagerly differs in
# the last float32 bit: too coarse for a 1e-9 comparison.)
# These tests run optax.rmsprop itself, whose schedules, bias correction and
# complex moments rely on JAX's standard dtype promotion.
pytestmark = pytest.mark.standard_promotion

SCHEDULE = optax.cosine_decay_schedule(0.1, 20, alpha=0.1)

# Each option alone, then combinations. Centred RMSProp with bias correction
# has an exactly zero first variance in exact arithmetic, which rounding may
# make slightly negative: eps keeps optax's root finite there.
CASES: dict[str, dict[str, Any]] = {
  "plain": {},
  "decay_and_eps": dict(decay=0.5, eps=1e-3),
  "eps_outside_root": dict(eps_in_sqrt=False),
  "initial_scale": dict(initial_scale=0.3),
  "centered": dict(centered=True),
  "momentum": dict(momentum=0.9),
  "nesterov": dict(momentum=0.9, nesterov=True),
  "bias_correction": dict(bias_correction=True),
  "schedule": dict(schedule=True),
  "centered_momentum": dict(centered=True, momentum=0.8),
  "centered_bias_correction": dict(centered=True, bias_correction=True, eps=1e-2),
  "schedule_bias_correction": dict(schedule=True, bias_correction=True),
  "schedule_nesterov": dict(schedule=True, momentum=0.8, nesterov=True),
  "bias_correction_momentum_eps_outside": dict(
    bias_correction=True, momentum=0.5, eps_in_sqrt=False
  ),
  "schedule_bias_correction_centered_nesterov": dict(
    schedule=True,
    bias_correction=True,
    centered=True,
    momentum=0.9,
    nesterov=True,
    initial_scale=0.1,
    eps=1e-2,
  ),
}


def _optimizers(case: dict[str, Any]):
  """``optax.rmsprop`` and ``rmsprop_jax.rmsprop`` with the same arguments."""
  kw = dict(case)
  lr = SCHEDULE if kw.pop("schedule", False) else 0.1
  return optax.rmsprop(lr, **kw), rmsprop_jax.rmsprop(lr, **kw)


def _run(opt: Any, params: Any, state: Any, steps: int, start: int = 0):
  """``steps`` updates from step ``start``; returns (params, state, updates)."""
  return trees.run(opt, params, trees.gradients(params, steps, start), state=state)


def _first_steps(opt: Any, dtype: Any = np.float64):
  """``trees.params(dtype)`` after ``K`` steps of ``opt``, and ``opt``'s state."""
  params = trees.params(dtype)
  params, state, _ = _run(opt, params, opt.init(params), K)
  return params, state


def _continue_both(ours: Any, state: Any, theirs: Any, optax_state: Any, params: Any):
  """The next ``N`` steps of each from ``params``: their updates agree to 1e-9.

  Returns the params and state of ours, then those of theirs, after them.
  """
  p_ours, s_ours, u_ours = _run(ours, params, state, N, start=K)
  p_theirs, s_theirs, u_theirs = _run(theirs, params, optax_state, N, start=K)
  chex.assert_trees_all_close(u_ours, u_theirs, rtol=1e-9, atol=0)
  return (p_ours, s_ours), (p_theirs, s_theirs)


def _assert_bitwise(a: Any, b: Any) -> None:
  """Same structure, dtypes and bits."""
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_equal_dtypes(a, b)
  chex.assert_trees_all_equal(a, b)


# ----------------------------------------------------------- continuations


@pytest.mark.parametrize("name", list(CASES))
def test_from_optax_continues_as_optax_does_under_x64(name):
  with enable_x64(True):
    theirs, ours = _optimizers(CASES[name])
    params, optax_state = _first_steps(theirs)
    state = rmsprop_jax.from_optax(optax_state)
    (p_ours, s_ours), (p_theirs, s_theirs) = _continue_both(
      ours, state, theirs, optax_state, params
    )
    chex.assert_trees_all_close(p_ours, p_theirs, rtol=1e-9, atol=0)
    chex.assert_trees_all_close(
      s_ours, rmsprop_jax.from_optax(s_theirs), rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("name", list(CASES))
def test_to_optax_continues_as_rmsprop_jax_does_under_x64(name):
  with enable_x64(True):
    theirs, ours = _optimizers(CASES[name])
    params, state = _first_steps(ours)
    optax_state = rmsprop_jax.to_optax(state, jax.eval_shape(theirs.init, params))
    (p_ours, _), (p_theirs, _) = _continue_both(
      ours, state, theirs, optax_state, params
    )
    chex.assert_trees_all_close(p_theirs, p_ours, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_step_count_is_the_number_of_updates_applied(name):
  theirs, ours = _optimizers(CASES[name])
  params, optax_state = _first_steps(theirs, np.float32)
  state = rmsprop_jax.from_optax(optax_state)
  if ours.init(params).count is None:
    assert state.count is None
  else:
    assert state.count.dtype == jnp.int32 and int(state.count) == K


# ------------------------------------------------------- layout and dtypes


@pytest.mark.parametrize(
  "dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64], ids=str
)
@pytest.mark.parametrize("name", list(CASES))
def test_converted_state_has_the_layout_and_dtypes_that_init_allocates(name, dtype):
  theirs, ours = _optimizers(CASES[name])
  params = trees.params(dtype)
  converted = jax.eval_shape(
    rmsprop_jax.from_optax, jax.eval_shape(theirs.init, params)
  )
  with low_precision_warning(params):
    expected = jax.eval_shape(ours.init, params)
  chex.assert_trees_all_equal_structs(converted, expected)
  chex.assert_trees_all_equal_shapes_and_dtypes(converted, expected)


def test_float64_state_stays_float64_under_x64():
  with enable_x64(True):
    theirs, ours = _optimizers(CASES["schedule_bias_correction_centered_nesterov"])
    params = trees.params(np.float64)
    converted = rmsprop_jax.from_optax(theirs.init(params))
    chex.assert_trees_all_equal_shapes_and_dtypes(converted, ours.init(params))
    assert jax.tree.leaves(converted.nu)[0].dtype == jnp.float64


@pytest.mark.parametrize("name", list(CASES))
def test_converted_initial_state_equals_init(name):
  theirs, ours = _optimizers(CASES[name])
  params = trees.params(np.float32)
  _assert_bitwise(rmsprop_jax.from_optax(theirs.init(params)), ours.init(params))


def test_to_optax_gives_the_template_dtypes():
  theirs, ours = _optimizers(CASES["centered_momentum"])
  params = trees.params(jnp.bfloat16)
  with low_precision_warning(params):
    state = ours.init(params)
  _, state, _ = _run(ours, params, state, 2)
  converted = rmsprop_jax.to_optax(state, theirs.init(params))
  chex.assert_trees_all_equal_shapes_and_dtypes(converted, theirs.init(params))
  chex.assert_trees_all_close(
    converted[0].nu, jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.nu)
  )


def test_complex_parameters_keep_a_real_nu_and_a_complex_buffer():
  theirs, ours = _optimizers(CASES["centered_momentum"])
  params = jnp.array([1 + 2j, -0.5j, 3.0], jnp.complex64)
  _, optax_state, _ = _run(theirs, params, theirs.init(params), 3)
  assert optax_state[0].nu.dtype == jnp.complex64  # optax: zero imaginary part
  state = rmsprop_jax.from_optax(optax_state)
  assert state.nu.dtype == jnp.float32 and state.trace.dtype == jnp.complex64
  np.testing.assert_array_equal(state.nu, optax_state[0].nu.real)
  _assert_bitwise(rmsprop_jax.to_optax(state, optax_state), optax_state)


def test_jitted_conversion_equals_eager_conversion():
  theirs, _ = _optimizers(CASES["schedule_bias_correction_centered_nesterov"])
  params = trees.params(jnp.bfloat16)
  _, optax_state, _ = _run(theirs, params, theirs.init(params), 3)
  state = rmsprop_jax.from_optax(optax_state)
  _assert_bitwise(jax.jit(rmsprop_jax.from_optax)(optax_state), state)
  _assert_bitwise(
    jax.jit(rmsprop_jax.to_optax)(state, optax_state),
    rmsprop_jax.to_optax(state, optax_state),
  )


_OPTIONS = st.fixed_dictionaries(
  {
    "centered": st.booleans(),
    "momentum": st.sampled_from([None, 0.9]),
    "nesterov": st.booleans(),
    "bias_correction": st.booleans(),
    "schedule": st.booleans(),
    "eps_in_sqrt": st.booleans(),
  }
).map(lambda o: o | {"nesterov": o["nesterov"] and o["momentum"] is not None})


@given(
  options=_OPTIONS,
  dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
  steps=st.integers(0, 3),
)
def test_optax_state_survives_a_round_trip_bit_for_bit(options, dtype, steps):
  theirs, _ = _optimizers(options)
  params = trees.params(dtype)
  _, optax_state, _ = _run(theirs, params, theirs.init(params), steps)
  back = rmsprop_jax.to_optax(rmsprop_jax.from_optax(optax_state), optax_state)
  _assert_bitwise(back, optax_state)


# -------------------------------------------------------- inject_hyperparams


def _injected(case: dict[str, Any]):
  kw = dict(case)
  lr = SCHEDULE if kw.pop("schedule", False) else 0.1
  theirs = optax.inject_hyperparams(optax.rmsprop)(lr, **kw)
  ours = optax.inject_hyperparams(
    rmsprop_jax.rmsprop, static_args=("state_dtype", "weight_decay_mask")
  )(lr, **kw)
  return theirs, ours


@pytest.mark.parametrize(
  "name", ["schedule_nesterov", "schedule_bias_correction_centered_nesterov"]
)
def test_injected_schedule_continues_where_optax_left_it(name):
  with enable_x64(True):
    theirs, ours = _injected(CASES[name])
    params, optax_state = _first_steps(theirs)
    state = rmsprop_jax.from_optax(optax_state)
    assert isinstance(state.inner_state, rmsprop_jax.RMSPropState)
    _continue_both(ours, state, theirs, optax_state, params)


def test_injected_hyperparameters_changed_during_the_run_are_carried():
  with enable_x64(True):
    theirs, ours = _injected(CASES["centered_momentum"])
    params, optax_state = _first_steps(theirs)
    optax_state.hyperparams["learning_rate"] = jnp.asarray(0.02)
    optax_state.hyperparams["decay"] = jnp.asarray(0.5)
    state = rmsprop_jax.from_optax(optax_state)
    assert float(state.hyperparams["learning_rate"]) == 0.02
    _continue_both(ours, state, theirs, optax_state, params)


def test_injected_rmsprop_jax_state_continues_under_injected_optax():
  with enable_x64(True):
    theirs, ours = _injected(CASES["schedule_bias_correction_centered_nesterov"])
    params, state = _first_steps(ours)
    optax_state = rmsprop_jax.to_optax(state, theirs.init(params))
    assert "weight_decay" not in optax_state.hyperparams  # 0: nothing lost
    _continue_both(ours, state, theirs, optax_state, params)


def test_inner_state_of_an_injected_optax_state_converts_alone():
  theirs, _ = _injected(CASES["centered"])
  params = trees.params(np.float32)
  _, optax_state, _ = _run(theirs, params, theirs.init(params), 2)
  inner = rmsprop_jax.from_optax(optax_state.inner_state)
  _assert_bitwise(inner, rmsprop_jax.from_optax(optax_state).inner_state)


# ------------------------------------------------- inside optax's wrappers

WRAPPED = dict(learning_rate=SCHEDULE, centered=True, momentum=0.9)


def _wrapped(wrapper: str):
  """optax.rmsprop and ours inside the wrapper (jitted: the wrappers' conditions
  are slow eagerly), and the way to the inner state."""
  wrap, inner = WRAPPERS[wrapper]
  theirs, ours = (
    optax.GradientTransformation(t.init, jax.jit(t.update))
    for t in (wrap(optax.rmsprop, WRAPPED), wrap(rmsprop_jax.rmsprop, WRAPPED))
  )
  return theirs, ours, inner


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_from_optax_converts_inside_each_wrapper(wrapper):
  theirs, ours, inner = _wrapped(wrapper)
  with enable_x64(True):
    params, optax_state = _first_steps(theirs)
    state = rmsprop_jax.from_optax(optax_state)
    expected = ours.init(params)
    if wrapper == "inject_hyperparams":  # optax.rmsprop has no weight_decay
      del expected.hyperparams["weight_decay"]
    chex.assert_trees_all_equal_structs(state, expected)
    _assert_bitwise(inner(state), rmsprop_jax.from_optax(inner(optax_state)))
    _continue_both(ours, state, theirs, optax_state, params)


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_to_optax_fills_each_wrapper_of_the_template(wrapper):
  theirs, ours, inner = _wrapped(wrapper)
  with enable_x64(True):
    params, state = _first_steps(ours)
    template = jax.eval_shape(theirs.init, params)
    optax_state = rmsprop_jax.to_optax(state, template)
    chex.assert_trees_all_equal_structs(optax_state, theirs.init(params))
    alone = rmsprop_jax.to_optax(inner(state), inner(template))
    _assert_bitwise(inner(optax_state), alone)
    # a bare template takes the one RMSPropState inside the wrappers
    _assert_bitwise(rmsprop_jax.to_optax(state, inner(template)), alone)
    _continue_both(ours, state, theirs, optax_state, params)


def test_to_optax_names_the_paths_of_states_that_do_not_pair():
  params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
  chained = optax.chain(optax.clip(1.0), optax.rmsprop(0.1)).init(params)
  masked = WRAPPERS["masked"][0](rmsprop_jax.rmsprop, dict(learning_rate=0.1))
  with pytest.raises(
    TypeError, match=r"optax\.rmsprop at template\[1\], .* at state\.inner_state\."
  ):
    rmsprop_jax.to_optax(masked.init(params), chained)
  two = optax.transforms.partition(
    {"a": rmsprop_jax.rmsprop(0.1), "b": rmsprop_jax.rmsprop(0.2)},
    {"w": "a", "b": "b"},
  )
  with pytest.raises(
    ValueError,
    match=r"state holds 2 RMSPropStates, at state\.inner_states\['a'\]\.inner_state, "
    r"state\.inner_states\['b'\]\.inner_state: template is the state of one",
  ):
    rmsprop_jax.to_optax(two.init(params), optax.rmsprop(0.1).init(params))


# ------------------------------------------------------------------- Orbax


def _save_and_restore(tmp_path: pathlib.Path, tree: Any, target: Any = None) -> Any:
  ocp = pytest.importorskip("orbax.checkpoint")
  path = tmp_path / f"ckpt{len(list(tmp_path.iterdir()))}"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target) if target is not None else ckptr.restore(path)


@pytest.mark.parametrize(
  "name", ["plain", "centered_momentum", "schedule_bias_correction_centered_nesterov"]
)
def test_orbax_round_trip_with_abstract_targets(tmp_path, name):
  theirs, ours = _optimizers(CASES[name])
  params, optax_state = _first_steps(theirs, np.float32)
  restored = _save_and_restore(
    tmp_path, optax_state, jax.eval_shape(theirs.init, params)
  )
  state = rmsprop_jax.from_optax(restored)
  _assert_bitwise(state, rmsprop_jax.from_optax(optax_state))

  _, state, _ = _run(ours, params, state, N, start=K)
  back = rmsprop_jax.to_optax(state, jax.eval_shape(theirs.init, params))
  restored = _save_and_restore(tmp_path, back, jax.eval_shape(theirs.init, params))
  _assert_bitwise(restored, back)


@pytest.mark.parametrize(
  "name", ["plain", "schedule_bias_correction_centered_nesterov"]
)
def test_orbax_restore_without_target_converts_too(tmp_path, name):
  theirs, _ = _optimizers(CASES[name])
  params = {"w": jnp.ones((3, 4)), "b": {"x": jnp.zeros(4)}}  # dicts only
  _, optax_state, _ = _run(theirs, params, theirs.init(params), K)
  restored = _save_and_restore(tmp_path, optax_state)
  assert isinstance(restored, list)  # lists, dicts and None: no types left
  _assert_bitwise(rmsprop_jax.from_optax(restored), rmsprop_jax.from_optax(optax_state))


def test_injected_state_restored_without_target_is_refused(tmp_path):
  theirs, _ = _injected(CASES["schedule"])
  params = {"w": jnp.ones(3)}
  restored = _save_and_restore(tmp_path, theirs.init(params))
  with pytest.raises(TypeError, match=r"without a target.*jax\.eval_shape"):
    rmsprop_jax.from_optax(restored)


# ------------------------------------- the NaN that the conversion escapes


def _near_constant_gradients(steps: int, n: int = 1000) -> np.ndarray:
  """Notebook 02's gradients: c_i + 1e-4 noise, c_i ~ U(0.5, 2), in float32."""
  c = np.random.default_rng(0).uniform(0.5, 2.0, size=n)
  noise = np.random.default_rng(1).normal(size=(steps, n))
  return (c + 1e-4 * noise).astype(np.float32)


def _trajectory(opt: Any, w: jax.Array, state: Any, grads: np.ndarray):
  """Runs ``opt`` over ``grads``; returns (w, state, first non-finite step)."""
  update = jax.jit(opt.update)
  first_nan = None
  for t, g in enumerate(grads):
    u, state = update(jnp.asarray(g, w.dtype), state, w)
    w = optax.apply_updates(w, u)
    if first_nan is None and not bool(jnp.isfinite(w).all()):
      first_nan = t + 1
  return w, state, first_nan


# In float32 the centred variance nu - mu^2 of these gradients is rounding
# noise: optax's root of a negative noise value is NaN after ~140 steps. Where
# eps dominates that noise (outside the root, 1e-2) float32 can follow float64
# closely; at the default eps the float32 step sizes inherit the noise, and
# only the statistics nu and mu (and finiteness) can be asked to match.
@pytest.mark.parametrize(
  ("options", "params_rtol"),
  [
    pytest.param(dict(), 0.6, id="default-eps"),
    pytest.param(dict(eps_in_sqrt=False, eps=1e-2), 0.06, id="eps-outside-root"),
  ],
)
def test_centered_run_resumed_before_optax_nan_stays_finite(options, params_rtol):
  steps, checkpoint = 700, 100
  grads = _near_constant_gradients(steps)
  theirs = optax.rmsprop(1e-2, centered=True, **options)
  w0 = jnp.zeros(grads.shape[1], jnp.float32)
  _, _, first_nan = _trajectory(theirs, w0, theirs.init(w0), grads)
  assert first_nan is not None and 120 < first_nan < 200

  w, good, _ = _trajectory(theirs, w0, theirs.init(w0), grads[:checkpoint])
  ours = rmsprop_jax.rmsprop(1e-2, centered=True, **options)
  w, state, ours_nan = _trajectory(
    ours, w, rmsprop_jax.from_optax(good), grads[checkpoint:]
  )
  assert ours_nan is None
  assert bool(jnp.isfinite(state.nu).all() & jnp.isfinite(state.mu).all())

  with enable_x64(True):
    ref = optax.rmsprop(1e-2, centered=True, **options)
    w64 = jnp.zeros(grads.shape[1], jnp.float64)
    w64, ref_state, _ = _trajectory(ref, w64, ref.init(w64), grads.astype(np.float64))
    np.testing.assert_allclose(state.nu, ref_state[0].nu, rtol=1e-5)
    np.testing.assert_allclose(state.mu, ref_state[0].mu, rtol=1e-5)
    np.testing.assert_allclose(w, w64, rtol=params_rtol)


# ------------------------------------------------------------------ errors


def _state_and_template(ours_case: dict[str, Any], theirs_case: dict[str, Any]):
  params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}
  _, ours = _optimizers(ours_case)
  theirs, _ = _optimizers(theirs_case)
  return ours.init(params), jax.eval_shape(theirs.init, params)


# Each case: our options, optax's options, and the message naming the difference.
_LAYOUT_DIFFERENCES = {
  "template-centred": (
    {},
    {"centered": True},
    r"template is centred \(ScaleByRStdDevState\) but state\.mu is None: the "
    r"state comes from an optimizer without centered=True",
  ),
  "state-centred": (
    {"centered": True},
    {},
    r"state\.mu is set .* but template is not \(ScaleByRmsState\)",
  ),
  "template-momentum": (
    {},
    {"momentum": 0.9},
    r"template has momentum \(TraceState\) but state\.trace is None",
  ),
  "state-momentum": (
    {"momentum": 0.9},
    {},
    r"state\.trace is set .* but template\[2\] is EmptyState",
  ),
  "template-schedule-count": (
    {},
    {"schedule": True},
    r"template keeps a step count for a learning-rate schedule \(template\[1\] "
    r"is ScaleByScheduleState\) but state\.count is None",
  ),
  "template-bias-correction-count": (
    {},
    {"bias_correction": True},
    r"step count for bias correction \(template\[0\] is "
    r"ScaleByRmsWithCountState\) but state\.count is None",
  ),
  "state-count": (
    {"schedule": True},
    {},
    r"state\.count is set .* but template keeps no step count",
  ),
}


@pytest.mark.parametrize(
  ("ours", "theirs", "message"),
  list(_LAYOUT_DIFFERENCES.values()),
  ids=list(_LAYOUT_DIFFERENCES),
)
def test_to_optax_names_the_layout_difference(ours, theirs, message):
  state, template = _state_and_template(ours, theirs)
  with pytest.raises(ValueError, match=message):
    rmsprop_jax.to_optax(state, template)


def test_to_optax_names_a_different_tree():
  _, ours = _optimizers({})
  theirs, _ = _optimizers({})
  state = ours.init({"w": jnp.ones(3), "b": jnp.ones(2)})
  with pytest.raises(ValueError, match=r"state\.nu does not have the structure of"):
    rmsprop_jax.to_optax(state, theirs.init({"w": jnp.ones(3)}))


def test_to_optax_names_a_different_shape():
  _, ours = _optimizers({})
  theirs, _ = _optimizers({})
  state = ours.init({"w": jnp.ones((2, 3))})
  with pytest.raises(ValueError, match=r"Shape mismatch at template\[0\]\.nu\['w'\]"):
    rmsprop_jax.to_optax(state, theirs.init({"w": jnp.ones((3, 2))}))


def test_to_optax_refuses_block_quantized_state():
  params = {"emb": jnp.ones((64, 64))}
  state = rmsprop_jax.rmsprop(0.1, state_dtype=jnp.float8_e4m3fn).init(params)
  with pytest.raises(TypeError, match=r"state\.nu\['emb'\] is block-quantized"):
    rmsprop_jax.to_optax(state, optax.rmsprop(0.1).init(params))


@pytest.mark.parametrize(
  ("template", "message"),
  [
    pytest.param(
      lambda p: optax.adam(0.1).init(p), r"template must be the state of", id="adam"
    ),
    pytest.param(
      lambda p: rmsprop_jax.rmsprop(0.1).init(p),
      r"template must be the state of optax\.rmsprop",
      id="rmsprop_jax",
    ),
    pytest.param(
      lambda p: [{"nu": p}, None, None],
      r"template\[0\] must be .* not restored without a target",
      id="untyped",
    ),
  ],
)
def test_to_optax_refuses_a_template_of_another_layout(template, message):
  params = jnp.ones(3)
  state = rmsprop_jax.rmsprop(0.1).init(params)
  with pytest.raises(TypeError, match=message):
    rmsprop_jax.to_optax(state, template(params))


def test_to_optax_refuses_a_state_that_is_not_ours():
  state = optax.rmsprop(0.1).init(jnp.ones(3))
  with pytest.raises(TypeError, match=r"state must be an RMSPropState"):
    rmsprop_jax.to_optax(state, state)


def test_to_optax_refuses_a_bare_state_for_an_injected_template():
  theirs, _ = _injected({})
  params = jnp.ones(3)
  with pytest.raises(TypeError, match=r"template is InjectStatefulHyperparamsState"):
    rmsprop_jax.to_optax(rmsprop_jax.rmsprop(0.1).init(params), theirs.init(params))


def test_to_optax_refuses_a_weight_decay_optax_cannot_hold():
  theirs, _ = _injected({})
  ours = optax.inject_hyperparams(rmsprop_jax.rmsprop)(0.1, weight_decay=1e-2)
  params = jnp.ones(3)
  with pytest.raises(ValueError, match=r"state\.hyperparams\['weight_decay'\]"):
    rmsprop_jax.to_optax(ours.init(params), theirs.init(params))


@pytest.mark.parametrize(
  ("optax_state", "message"),
  [
    pytest.param(
      lambda p: optax.adam(0.1).init(p),
      r"optax_state must be the state of optax\.rmsprop",
      id="adam",
    ),
    pytest.param(
      lambda p: optax.chain(optax.clip(1.0), optax.adam(0.1)).init(p),
      r"optax_state must be the state of optax\.rmsprop.* alone or inside the "
      r"state of optax\.chain, .*; got tuple\(EmptyState, tuple\)",
      id="chain-of-adam",
    ),
    pytest.param(
      lambda p: (optax.EmptyState(), optax.EmptyState(), optax.EmptyState()),
      r"optax_state\[0\] must be ScaleByRmsState, ScaleByRStdDevState",
      id="empty-first",
    ),
  ],
)
def test_from_optax_refuses_another_optimizers_state(optax_state, message):
  with pytest.raises(TypeError, match=message):
    rmsprop_jax.from_optax(optax_state(jnp.ones(3)))


def test_from_optax_refuses_disagreeing_step_counts():
  theirs, _ = _optimizers(dict(schedule=True, bias_correction=True))
  params = jnp.ones(3)
  _, optax_state, _ = _run(theirs, params, theirs.init(params), 3)
  edited = (
    optax_state[0],
    optax_state[1]._replace(count=jnp.asarray(7)),
    optax_state[2],
  )
  with pytest.raises(
    ValueError,
    match=r"optax_state\[0\]\.count = 3 \(bias correction\) and "
    r"optax_state\[1\]\.count = 7 \(the learning-rate schedule\) disagree",
  ):
    rmsprop_jax.from_optax(edited)


def test_from_optax_refuses_a_momentum_buffer_of_another_shape():
  optax_state = optax.rmsprop(0.1, momentum=0.9).init({"w": jnp.ones(3)})
  edited = (optax_state[0], optax_state[1], optax.TraceState(trace={"w": jnp.ones(4)}))
  with pytest.raises(
    ValueError, match=r"Shape mismatch at optax_state\[0\]\.nu\['w'\].*optax_state\[2\]"
  ):
    rmsprop_jax.from_optax(edited)


def test_from_optax_refuses_integer_leaves():
  optax_state = optax.rmsprop(0.1).init({"n": jnp.ones(3, jnp.int32)})
  with pytest.raises(TypeError, match=r"optax_state\[0\]\.nu\['n'\] has dtype int32"):
    rmsprop_jax.from_optax(optax_state)


# ----------------------------------------------------------------- sharded

WORKER = os.path.join(os.path.dirname(__file__), "_optax_state_worker.py")


@pytest.fixture(scope="module")
def sharded() -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the worker sets the device count itself
  try:
    proc = subprocess.run(
      [sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=300
    )
  except subprocess.TimeoutExpired as e:
    pytest.fail(f"optax-state worker timed out:\n{e.stderr}")
  assert proc.returncode == 0, f"optax-state worker failed:\n{proc.stderr[-5000:]}"
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_worker_runs_on_eight_devices_with_an_fsdp_optax_state(sharded):
  assert sharded["device_count"] == 8
  assert sharded["optax_state_mismatch"] == []


@pytest.mark.parametrize(
  "check", ["from_optax", "from_optax_jit", "continued", "to_optax"]
)
def test_fsdp_sharded_state_keeps_its_shardings(sharded, check):
  assert sharded[f"{check}_mismatch"] == []


def test_fsdp_sharded_state_continues_as_optax_does(sharded):
  for leaf, rel in sharded["continuation_rel"].items():
    # optax keeps bfloat16 statistics for the bfloat16 leaf; we keep float32
    assert rel < (5e-2 if leaf == "h" else 1e-5), leaf


def test_fsdp_sharded_state_survives_a_round_trip_bit_for_bit(sharded):
  assert sharded["round_trip_bitwise"]


# -------------------------------------------------------------------- docs

DOCS = pathlib.Path(__file__).parents[1] / "docs" / "from_optax.md"


def test_docs_examples_compute_what_the_page_says():
  # The page runs as pasted in tests/test_docs.py; here, what it computed.
  run = _docs.run_page(DOCS).check()
  nan = run.after("first_nan = int(")
  assert 120 < nan["first_nan"] < 200 and nan["all_finite"]  # 142 on the page
  state = run.after("inject = optax.inject_hyperparams")["state"]
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(3e-3)


def test_porting_page_snippet_resumes_a_centred_momentum_run():
  # The short version of the migration on the porting page (docs/porting.md).
  page = pathlib.Path(__file__).parents[1] / "docs" / "porting.md"
  names = _docs.run_page(page).check().after("rmsprop_jax.from_optax(checkpoint)")
  assert isinstance(names["state"], rmsprop_jax.RMSPropState)
  assert names["state"].mu is not None and names["state"].trace is not None
  assert bool(np.all(np.isfinite(names["updates"])))
