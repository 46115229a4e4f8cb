"""Handing a PyTorch or Keras run over to rmsprop_jax mid-training, and back.

The specification, against the recorded handover files (see
``tests/reference/FORMAT.md``): the library's state after ``steps_before``
steps, converted by ``from_torch``/``from_keras``, continues for
``steps_after`` steps exactly as the library continued (float64 within 1e-9,
float32 within 1e-5, relative to each leaf's scale); and a run of the preset
converted by ``to_torch``/``to_keras`` after ``steps_before`` steps equals the
library's recorded state. Keras (JAX backend) is a test dependency, so its live
tests run everywhere; the PyTorch live tests run where torch is installed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import pathlib
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests import _docs
from tests import _trees as trees
from tests._compat import enable_x64
from tests._wrappers import WRAPPERS
from tests.reference import drivers, loader

TORCH = loader.load_handovers("torch")
KERAS = loader.load_handovers("keras")
Rows = dict[str, np.ndarray]


def by_id(handovers: list[loader.Handover], name: str, dtype: str) -> loader.Handover:
  (h,) = [h for h in handovers if h.name == name and h.dtype == dtype]
  return h


def order(h: loader.Handover) -> list[str]:
  """The leaves in the library's parameter order."""
  if h.param_index is None:  # Keras: the variables w and b, in that order
    return list(drivers.LEAVES)
  return sorted(h.param_index, key=h.param_index.__getitem__)


def params_at(h: loader.Handover, row: int) -> tuple[jax.Array, ...]:
  """The parameters after ``row`` steps, as a tuple in the library's order."""
  return tuple(jnp.asarray(h.params[leaf][row]) for leaf in order(h))


def schedule_of(h: loader.Handover) -> Any:
  """The optax schedule equal to the run's, as ``loader.make_optimizer`` has it."""
  schedule = loader.optax_schedule(h.as_case())
  if schedule is not None and h.dtype == "float64":
    return lambda count: schedule(jnp.asarray(count, jnp.int64))
  return schedule


def grads_of(h: loader.Handover, start: int, stop: int) -> list[tuple[jax.Array, ...]]:
  """The recorded gradients of steps ``start`` to ``stop``, in library order."""
  return [
    tuple(jnp.asarray(h.grads[leaf][k]) for leaf in order(h))
    for k in range(start, stop)
  ]


def run(opt: Any, state: Any, h: loader.Handover, start: int, stop: int) -> Rows:
  """Steps ``start`` to ``stop`` on the recorded gradients: the params rows."""
  params = params_at(h, start)
  rows = [params]
  for grads in grads_of(h, start, stop):
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    rows.append(params)
  return {
    leaf: np.stack([np.asarray(r[j]) for r in rows]) for j, leaf in enumerate(order(h))
  }


def state_at_handover(opt: Any, h: loader.Handover) -> Any:
  """``opt``'s state after the recorded run's first ``steps_before`` steps."""
  _, state, _ = trees.run(opt, params_at(h, 0), grads_of(h, 0, h.steps_before))
  return state


def recorded(h: loader.Handover, start: int, stop: int) -> Rows:
  return {leaf: h.params[leaf][start : stop + 1] for leaf in order(h)}


def steps(h: loader.Handover) -> int:
  return h.steps_before + h.steps_after


# ----------------------------------------------------------- PyTorch, recorded


@pytest.mark.parametrize("h", TORCH, ids=lambda h: h.id)
def test_from_torch_continues_as_torch_did(h: loader.Handover) -> None:
  with enable_x64(h.dtype == "float64"), warnings.catch_warnings():
    warnings.simplefilter("error")  # and the schedule continues where torch was
    opt, state = rmsprop_jax.from_torch(
      h.state, params_at(h, h.steps_before), lr=schedule_of(h)
    )
    ours = run(opt, state, h, h.steps_before, steps(h))
  loader.assert_trajectory_close(ours, recorded(h, h.steps_before, steps(h)), h.dtype)


def test_torch_step_becomes_the_schedules_count() -> None:
  h = by_id(TORCH, "step_lr_momentum", "float64")
  with enable_x64(True):
    _, state = rmsprop_jax.from_torch(
      h.state, params_at(h, h.steps_before), lr=schedule_of(h)
    )
  assert isinstance(state, rmsprop_jax.RMSPropState)
  assert state.count is not None and int(state.count) == h.steps_before == 12


def test_torch_schedule_without_lr_keyword_stays_at_the_current_rate() -> None:
  # StepLR halves the rate again at step 14: without lr= the run goes on at
  # the rate torch had when the state_dict was taken, and misses.
  h = by_id(TORCH, "step_lr_momentum", "float64")
  with enable_x64(True):
    opt, state = rmsprop_jax.from_torch(h.state, params_at(h, h.steps_before))
    ours = run(opt, state, h, h.steps_before, steps(h))
  assert isinstance(state, rmsprop_jax.RMSPropState) and state.count is None
  theirs = recorded(h, h.steps_before, steps(h))
  with pytest.raises(AssertionError):
    loader.assert_trajectory_close(ours, theirs, "float32")


def test_torch_groups_differing_in_weight_decay_become_one_masked_preset() -> None:
  h = by_id(TORCH, "two_groups", "float64")
  with enable_x64(True):
    opt, state = rmsprop_jax.from_torch(h.state, params_at(h, h.steps_before))
    assert isinstance(state, rmsprop_jax.RMSPropState)
    # without the mask, b would decay too and the run would differ
    unmasked = rmsprop_jax.torch_rmsprop(lr=0.005, momentum=0.5, weight_decay=0.1)
    ours = run(unmasked, state, h, h.steps_before, steps(h))
  with pytest.raises(AssertionError):
    loader.assert_trajectory_close(
      ours, recorded(h, h.steps_before, steps(h)), "float32"
    )


def torch_preset(h: loader.Handover) -> Any:
  """``torch_rmsprop`` configured as the recorded run, for params in torch order."""
  kwargs = dict(h.kwargs)
  if h.schedule is not None:
    kwargs["lr"] = schedule_of(h)
  if h.weight_decay_mask is not None:
    kwargs["weight_decay_mask"] = tuple(h.weight_decay_mask[k] for k in order(h))
  return rmsprop_jax.torch_rmsprop(**kwargs)


@pytest.mark.parametrize("h", TORCH, ids=lambda h: h.id)
def test_to_torch_equals_torchs_recorded_state(h: loader.Handover) -> None:
  with enable_x64(h.dtype == "float64"):
    state = state_at_handover(torch_preset(h), h)
    step = None if h.schedule is not None else h.steps_before  # count, else given
    ours = rmsprop_jax.to_torch(state, step=step, as_numpy=True)
  theirs = h.state["state"]
  assert list(ours) == list(theirs) == [0, 1]
  for i, entry in theirs.items():
    assert list(ours[i]) == list(entry)  # the keys, in torch's order
    assert ours[i]["step"].dtype == np.float32 and ours[i]["step"].shape == ()
    assert ours[i]["step"] == entry["step"] == h.steps_before
    values = {k: x for k, x in ours[i].items() if k != "step"}
    loader.assert_trajectory_close(
      values, {k: x for k, x in entry.items() if k != "step"}, h.dtype
    )


def test_torch_round_trip_is_exact() -> None:
  h = by_id(TORCH, "centered_momentum_weight_decay", "float64")
  with enable_x64(True):
    _, state = rmsprop_jax.from_torch(h.state, params_at(h, h.steps_before))
    back = rmsprop_jax.to_torch(state, step=h.steps_before, as_numpy=True)
  for i, entry in h.state["state"].items():
    for key, x in entry.items():
      np.testing.assert_array_equal(back[i][key], x, err_msg=f"{i} {key}")


def test_torch_state_gets_the_dtype_init_allocates() -> None:
  h = by_id(TORCH, "momentum", "float64")
  params = tuple(p.astype(jnp.float32) for p in params_at(h, h.steps_before))
  _, state = rmsprop_jax.from_torch(h.state, params)  # float64 state, x64 off
  for leaf in jax.tree.leaves(state):
    assert leaf.dtype == jnp.float32


def test_torch_state_before_the_first_step_is_init() -> None:
  h = by_id(TORCH, "centered_momentum_weight_decay", "float32")
  params = params_at(h, 0)
  fresh = {"state": {}, "param_groups": h.state["param_groups"]}
  opt, state = rmsprop_jax.from_torch(fresh, params, lr=optax.constant_schedule(0.005))
  expected = opt.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for ours, theirs in zip(
    jax.tree.leaves(state), jax.tree.leaves(expected), strict=True
  ):
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == theirs.dtype


def test_torch_parameter_without_state_starts_from_zeros() -> None:
  # torch creates a parameter's state at its first gradient, from zeros.
  h = by_id(TORCH, "momentum", "float32")
  partial = copy.deepcopy(h.state)
  del partial["state"][1]
  _, state = rmsprop_jax.from_torch(partial, params_at(h, h.steps_before))
  np.testing.assert_array_equal(state.nu[1], np.zeros((2, 2)))
  np.testing.assert_array_equal(state.nu[0], h.state["state"][0]["square_avg"])


# -------------------------------------------------- PyTorch, several groups

GROUPS = [  # a parameter group per leaf, differing in more than weight decay
  {"lr": 0.01, "momentum": 0.9, "centered": False, "weight_decay": 0.0},
  {"lr": 0.003, "momentum": 0.0, "centered": True, "weight_decay": 0.1},
]


def group_dict(i: int, group: dict[str, Any]) -> dict[str, Any]:
  """A param_groups entry as torch 2.x writes it."""
  return {
    **group,
    "alpha": 0.99,
    "eps": 1e-8,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "params": [i],
  }


def reference_params(p: tuple[Any, ...]) -> dict[str, np.ndarray]:
  return {"w": np.asarray(p[0]), "b": np.asarray(p[1])}


def two_group_run(k: int) -> tuple[dict[str, Any], Any, list[Any], list[Any]]:
  """Each leaf under its own preset for ``k`` steps of the reference problem.

  Returns the state_dict torch would hold, the params, and the presets and
  their states, to continue with.
  """
  presets = [rmsprop_jax.torch_rmsprop(**g) for g in GROUPS]
  params = (
    jnp.asarray(drivers.INITIAL_PARAMS["w"]),
    jnp.asarray(drivers.INITIAL_PARAMS["b"]),
  )
  states = [opt.init((p,)) for opt, p in zip(presets, params, strict=True)]
  for _ in range(k):
    params, states = two_group_step(presets, states, params)
  state_dict = {
    "state": {
      i: rmsprop_jax.to_torch(s, step=k, as_numpy=True)[0] for i, s in enumerate(states)
    },
    "param_groups": [group_dict(i, g) for i, g in enumerate(GROUPS)],
  }
  return state_dict, params, presets, states


def two_group_step(
  presets: list[Any], states: list[Any], params: tuple[Any, ...]
) -> Any:
  g = drivers.gradient(reference_params(params), "float32")
  new_params, new_states = [], []
  for opt, s, p, grad in zip(presets, states, params, (g["w"], g["b"]), strict=True):
    u, s = opt.update((jnp.asarray(grad),), s, (p,))
    new_params.append(p + u[0])
    new_states.append(s)
  return tuple(new_params), new_states


def test_torch_groups_differing_otherwise_become_a_partition() -> None:
  state_dict, params, presets, states = two_group_run(5)
  opt, state = rmsprop_jax.from_torch(state_dict, params)
  assert isinstance(state, optax.transforms.PartitionState)
  assert sorted(state.inner_states) == ["group0", "group1"]
  assert jax.tree.structure(state) == jax.tree.structure(opt.init(params))
  ours, theirs = params, params
  for _ in range(5):
    g = drivers.gradient(reference_params(ours), "float32")
    updates, state = opt.update((jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, ours)
    ours = optax.apply_updates(ours, updates)
    theirs, states = two_group_step(presets, states, theirs)
  for a, b in zip(ours, theirs, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  back = rmsprop_jax.to_torch(state, step=10, as_numpy=True)
  assert sorted(back[0]) == ["momentum_buffer", "square_avg", "step"]
  assert sorted(back[1]) == ["grad_avg", "square_avg", "step"]


def test_torch_lr_list_gives_each_group_its_schedule() -> None:
  state_dict, params, _, _ = two_group_run(3)
  schedules = [optax.constant_schedule(0.01), None]
  opt, state = rmsprop_jax.from_torch(state_dict, params, lr=schedules)
  inner = state.inner_states
  assert int(inner["group0"].inner_state.count) == 3  # torch's step
  assert inner["group1"].inner_state.count is None  # a constant lr counts nothing
  assert jax.tree.structure(state) == jax.tree.structure(opt.init(params))


TORCH_GROUPS = loader.load_handovers("torch_groups")


@pytest.mark.parametrize("h", TORCH_GROUPS, ids=lambda h: h.id)
def test_from_torch_continues_groups_as_torch_did(h: loader.Handover) -> None:
  # Groups differing in lr, momentum and centring; under a scheduler each group
  # gets its own schedule, from its own initial lr.
  lr = None
  if h.schedule is not None:
    lr = [
      schedule_of(dataclasses.replace(h, kwargs={**h.kwargs, "lr": g["lr"]}))
      for g in h.groups
    ]
  with enable_x64(h.dtype == "float64"), warnings.catch_warnings():
    warnings.simplefilter("error")
    opt, state = rmsprop_jax.from_torch(h.state, params_at(h, h.steps_before), lr=lr)
    assert isinstance(state, optax.transforms.PartitionState)
    ours = run(opt, state, h, h.steps_before, steps(h))
  loader.assert_trajectory_close(ours, recorded(h, h.steps_before, steps(h)), h.dtype)


# ----------------------------------------------------------- PyTorch, errors


def torch_state(name: str = "momentum") -> tuple[dict[str, Any], tuple[Any, ...]]:
  h = by_id(TORCH, name, "float32")
  return copy.deepcopy(h.state), params_at(h, h.steps_before)


def test_torch_parameter_count_mismatch_is_named() -> None:
  state_dict, params = torch_state()
  with pytest.raises(ValueError, match=r"hold 2 parameters but params has 3 leaves"):
    rmsprop_jax.from_torch(state_dict, (*params, jnp.zeros(1)))


def test_torch_shape_mismatch_names_path_and_index() -> None:
  state_dict, (w, b) = torch_state()
  with pytest.raises(
    ValueError,
    match=re.escape(
      "state[0]['square_avg'] has shape (3,) but params['w'], PyTorch's "
      "parameter 0, has shape (2, 2)"
    ),
  ):
    rmsprop_jax.from_torch(state_dict, {"w": b, "x": w})


def test_torch_inconsistent_steps_are_refused_under_a_schedule() -> None:
  state_dict, params = torch_state()
  state_dict["state"][1]["step"] = np.float32(10)
  with pytest.raises(ValueError, match=r"state\[0\]\['step'\] = 12 .* = 10"):
    rmsprop_jax.from_torch(state_dict, params, lr=optax.constant_schedule(0.005))
  # torch's update does not read step, and without a schedule neither do we
  rmsprop_jax.from_torch(state_dict, params)


def test_torch_momentum_buffer_under_momentum_zero_is_refused() -> None:
  state_dict, params = torch_state()
  state_dict["param_groups"][0]["momentum"] = 0
  with pytest.raises(ValueError, match=r"'momentum_buffer' but .* momentum=0"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_grad_avg_without_centered_is_refused() -> None:
  state_dict, params = torch_state("centered_momentum_weight_decay")
  state_dict["param_groups"][0]["centered"] = False
  with pytest.raises(ValueError, match=r"'grad_avg' but .* centered=False"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_missing_state_key_is_named() -> None:
  state_dict, params = torch_state()
  del state_dict["state"][1]["momentum_buffer"]
  with pytest.raises(ValueError, match=r"state\[1\] has no \['momentum_buffer'\]"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_missing_group_key_is_named() -> None:
  state_dict, params = torch_state()
  del state_dict["param_groups"][0]["alpha"]
  with pytest.raises(ValueError, match=r"param_groups\[0\] has no \['alpha'\]"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_not_a_state_dict_is_a_type_error() -> None:
  _, params = torch_state()
  with pytest.raises(TypeError, match=r"with keys \['state'\]"):
    rmsprop_jax.from_torch({"state": {}}, params)


def test_torch_other_optimizers_keys_are_refused() -> None:
  state_dict, params = torch_state()
  state_dict["param_groups"][0]["decoupled_decay"] = True
  with pytest.raises(ValueError, match=r"\['decoupled_decay'\], which torch"):
    rmsprop_jax.from_torch(state_dict, params)
  state_dict, _ = torch_state()
  state_dict["state"][0]["exp_avg"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"state\[0\] has \['exp_avg'\]"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_cycled_momentum_is_refused() -> None:
  state_dict, params = torch_state()
  state_dict["param_groups"][0].update(max_momentum=0.95, base_momentum=0.85)
  with pytest.raises(ValueError, match=r"cycle_momentum=True"):
    rmsprop_jax.from_torch(state_dict, params)


def test_torch_ignores_keys_that_do_not_change_the_update() -> None:
  state_dict, params = torch_state()
  state_dict["param_groups"][0].update(
    foreach=True, capturable=True, differentiable=True, initial_lr=0.01
  )
  rmsprop_jax.from_torch(state_dict, params)


def test_torch_lr_for_groups_with_different_rates_must_be_a_list() -> None:
  state_dict, params, _, _ = two_group_run(1)
  with pytest.raises(
    ValueError, match=r"groups' learning rates differ \(0.003, 0.01\)"
  ):
    rmsprop_jax.from_torch(state_dict, params, lr=optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match=r"lr has 3 entries but .* 2 parameter groups"):
    rmsprop_jax.from_torch(state_dict, params, lr=[None, None, None])


def test_torch_schedule_that_does_not_continue_the_run_warns() -> None:
  state_dict, params = torch_state()  # lr 0.005 after 12 steps
  with pytest.warns(UserWarning, match=r"gives 0.1 at step 12, but param_groups"):
    rmsprop_jax.from_torch(state_dict, params, lr=optax.constant_schedule(0.1))


def test_torch_complex_parameter_is_refused() -> None:
  state_dict, (w, b) = torch_state()
  with pytest.raises(TypeError, match=r"params\[0\] is complex"):
    rmsprop_jax.from_torch(state_dict, (w.astype(jnp.complex64), b))


def test_to_torch_needs_a_step_without_a_count() -> None:
  opt = rmsprop_jax.torch_rmsprop()
  state = opt.init((jnp.zeros(2),))
  with pytest.raises(ValueError, match=r"state.count is None .* Pass step="):
    rmsprop_jax.to_torch(state, as_numpy=True)
  scheduled = rmsprop_jax.torch_rmsprop(lr=optax.constant_schedule(0.1))
  with pytest.raises(ValueError, match=r"state.count = 0 but step=4"):
    rmsprop_jax.to_torch(scheduled.init((jnp.zeros(2),)), step=4, as_numpy=True)


def test_to_torch_refuses_other_states_and_quantized_leaves() -> None:
  with pytest.raises(TypeError, match=r"state must be an RMSPropState"):
    rmsprop_jax.to_torch(optax.adam(0.1).init(jnp.zeros(2)), step=1, as_numpy=True)
  opt = rmsprop_jax.torch_rmsprop(state_dtype=jnp.float8_e4m3fn)
  state = opt.init((jnp.zeros((16, 256)),))  # 4096 elements: quantized
  with pytest.raises(TypeError, match=r"state.nu is block-quantized"):
    rmsprop_jax.to_torch(state, step=1, as_numpy=True)


def test_to_torch_without_torch_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
  state = rmsprop_jax.torch_rmsprop().init((jnp.zeros(2),))
  with pytest.raises(ImportError, match=r"to_torch needs PyTorch .* as_numpy=True"):
    rmsprop_jax.to_torch(state, step=1)


# ------------------------------------------------- inside optax's wrappers

OPTIONS = {"momentum": 0.9, "centered": True}


def wrapped_run(wrapper: str, preset: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
  """Three steps of ``preset`` inside the wrapper: its state, and the leaves
  of the inner RMSPropState, by parameter position (None where masked)."""
  wrap, inner = WRAPPERS[wrapper]
  opt = wrap(preset, {**OPTIONS, **kwargs})
  params = tuple(jnp.asarray(drivers.INITIAL_PARAMS[k]) for k in drivers.LEAVES)
  state = opt.init(params)
  for _ in range(3):
    g = drivers.gradient(reference_params(params), "float32")
    updates, state = opt.update(tuple(jnp.asarray(g[k]) for k in "wb"), state, params)
    params = optax.apply_updates(params, updates)
  rms = inner(state)
  held = [
    None if isinstance(nu, optax.MaskedNode) else (nu, -trace, mu)
    for nu, trace, mu in zip(rms.nu, rms.trace, rms.mu, strict=True)
  ]
  return state, held


@pytest.mark.standard_promotion  # optax.MultiSteps among the wrappers
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_to_torch_finds_the_state_inside_each_wrapper(wrapper: str) -> None:
  state, held = wrapped_run(wrapper, rmsprop_jax.torch_rmsprop, lr=0.01)
  entries = rmsprop_jax.to_torch(state, step=3, as_numpy=True)
  assert list(entries) == [i for i, x in enumerate(held) if x is not None]
  for i, entry in entries.items():
    assert entry["step"] == 3
    for key, expected in zip(
      ("square_avg", "momentum_buffer", "grad_avg"), held[i], strict=True
    ):
      np.testing.assert_array_equal(entry[key], expected, err_msg=f"{i} {key}")


@pytest.mark.standard_promotion  # optax.MultiSteps among the wrappers
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_to_keras_finds_the_state_inside_each_wrapper(wrapper: str) -> None:
  state, held = wrapped_run(wrapper, rmsprop_jax.keras_rmsprop, learning_rate=0.01)
  with keras_dtype("float32") as keras:
    # the optimizer of the parameters the state holds, in order
    leaves = [k for k, x in zip(drivers.LEAVES, held, strict=True) if x is not None]
    variables = [keras.Variable(drivers.INITIAL_PARAMS[k], name=k) for k in leaves]
    keras_opt = keras.optimizers.RMSprop(**OPTIONS)
    keras_opt.build(variables)
    rmsprop_jax.to_keras(state, keras_opt, iterations=3)
    slots = {v.name: np.asarray(v.value) for v in keras_opt.variables}
  assert slots["iteration"] == 3
  for leaf, values in zip(drivers.LEAVES, held, strict=True):
    if values is None:  # a parameter of the other transformation
      continue
    for slot, expected in zip(
      ("velocity", "momentum", "average_gradient"), values, strict=True
    ):
      np.testing.assert_array_equal(slots[f"{leaf}_{slot}"], expected, err_msg=slot)


def test_several_states_for_one_parameter_or_one_optimizer_are_named() -> None:
  twice = optax.chain(rmsprop_jax.torch_rmsprop(), rmsprop_jax.torch_rmsprop())
  state = twice.init((jnp.zeros(2),))
  with pytest.raises(
    ValueError, match=r"state\[0\] and state\[1\] both hold a state for parameter 0"
  ):
    rmsprop_jax.to_torch(state, step=1, as_numpy=True)
  state_dict, params, _, _ = two_group_run(1)
  _, groups = rmsprop_jax.from_torch(state_dict, params)
  keras = pytest.importorskip("keras")
  keras_opt = keras.optimizers.RMSprop(momentum=0.9)
  keras_opt.build([keras.Variable(np.zeros(3, np.float32))])
  with pytest.raises(
    ValueError,
    match=r"state holds 2 RMSPropStates, at state\.inner_states\['group0'\]"
    r"\.inner_state, state\.inner_states\['group1'\]\.inner_state: a Keras",
  ):
    rmsprop_jax.to_keras(groups, keras_opt, iterations=1)


# ---------------------------------------------------------------- PyTorch, live


def test_live_torch_state_dict_continues_in_jax() -> None:
  torch = pytest.importorskip("torch")
  spec = {  # two groups (b without weight decay) and a StepLR scheduler
    "kwargs": {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.05},
    "weight_decay_mask": {"w": True, "b": False},
    "schedule": {"kind": "torch.StepLR", "step_size": 3, "gamma": 0.5},
  }
  saved: dict[str, Any] = {}
  abstract = (
    jax.ShapeDtypeStruct((3,), jnp.float32),
    jax.ShapeDtypeStruct((2, 2), jnp.float32),
  )
  schedule = optax.exponential_decay(0.01, 3, 0.5, staircase=True)

  def on_step(k: int, live: dict[str, Any]) -> None:
    if k == 4:
      state_dict = live["optimizer"].state_dict()  # tensors
      assert torch.is_tensor(state_dict["state"][0]["step"])
      saved["handover"] = rmsprop_jax.from_torch(state_dict, abstract, lr=schedule)

  trajectory = drivers._run_torch_optimizer(
    torch.optim.RMSprop, spec, "float32", 10, on_step
  )
  h = live_handover(trajectory, 4, 6, "float32")
  opt, state = saved["handover"]
  loader.assert_trajectory_close(
    run(opt, state, h, 4, 10), recorded(h, 4, 10), "float32"
  )


def test_live_torch_loads_what_to_torch_writes() -> None:
  torch = pytest.importorskip("torch")
  kwargs = {"lr": 0.01, "momentum": 0.8, "centered": True, "weight_decay": 0.05}
  opt = rmsprop_jax.torch_rmsprop(**kwargs)
  params = tuple(jnp.asarray(drivers.INITIAL_PARAMS[k]) for k in drivers.LEAVES)
  state = opt.init(params)
  for _ in range(5):
    g = drivers.gradient(reference_params(params), "float32")
    updates, state = opt.update(
      (jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, params
    )
    params = optax.apply_updates(params, updates)
  tensors = [torch.tensor(np.asarray(p), requires_grad=True) for p in params]
  torch_opt = torch.optim.RMSprop(tensors, **kwargs)
  state_dict = torch_opt.state_dict()
  state_dict["state"] = rmsprop_jax.to_torch(state, step=5)
  torch_opt.load_state_dict(state_dict)
  assert torch_opt.state_dict()["state"][0]["step"].dtype == torch.float32
  for _ in range(5):
    g = drivers.gradient(reference_params(params), "float32")
    updates, state = opt.update(
      (jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, params
    )
    params = optax.apply_updates(params, updates)
    g = drivers.gradient(
      {"w": tensors[0].detach().numpy(), "b": tensors[1].detach().numpy()}, "float32"
    )
    for t, leaf in zip(tensors, drivers.LEAVES, strict=True):
      t.grad = torch.from_numpy(g[leaf])
    torch_opt.step()
  for ours, t in zip(params, tensors, strict=True):
    np.testing.assert_allclose(ours, t.detach().numpy(), rtol=1e-5, atol=1e-6)
  assert float(torch_opt.state_dict()["state"][0]["step"]) == 10


def test_live_torch_groups_with_different_rates_continue_in_jax() -> None:
  torch = pytest.importorskip("torch")
  tensors = {
    leaf: torch.tensor(drivers.INITIAL_PARAMS[leaf], requires_grad=True)
    for leaf in drivers.LEAVES
  }
  groups = [
    dict(g, params=[tensors[leaf]])
    for g, leaf in zip(GROUPS, drivers.LEAVES, strict=True)
  ]
  torch_opt = torch.optim.RMSprop(groups)
  grads = []
  for k in range(10):
    if k == 5:
      with enable_x64(True):
        params = tuple(jnp.asarray(t.detach().numpy()) for t in tensors.values())
        opt, state = rmsprop_jax.from_torch(torch_opt.state_dict(), params)
    g = drivers.gradient({k: t.detach().numpy() for k, t in tensors.items()}, "float64")
    grads.append(g)
    for leaf, t in tensors.items():
      t.grad = torch.from_numpy(g[leaf])
    torch_opt.step()
  with enable_x64(True):
    assert isinstance(state, optax.transforms.PartitionState)
    for g in grads[5:]:
      updates, state = opt.update(
        (jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, params
      )
      params = optax.apply_updates(params, updates)
  for ours, leaf in zip(params, drivers.LEAVES, strict=True):
    np.testing.assert_allclose(ours, tensors[leaf].detach().numpy(), rtol=1e-9)


def live_handover(
  trajectory: dict[str, Any], before: int, after: int, dtype: str
) -> loader.Handover:
  """A live run in the shape of a recorded one, for ``run`` and ``recorded``."""
  return loader.Handover(
    library="keras",
    name="live",
    dtype=dtype,
    kwargs={},
    schedule=None,
    weight_decay_mask=None,
    steps_before=before,
    steps_after=after,
    state={},
    param_index=None,
    scheduler_state=None,
    variable_paths=None,
    reloaded=False,
    lrs=trajectory["lrs"],
    grads=trajectory["grads"],
    params=trajectory["params"],
    versions={},
  )


# --------------------------------------------------------------- Keras, recorded


@contextlib.contextmanager
def keras_dtype(dtype: str) -> Iterator[Any]:
  """Keras with ``floatx`` and JAX's precision set to ``dtype``."""
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend")
  old = keras.config.floatx()
  keras.config.set_floatx(dtype)
  try:
    with enable_x64(dtype == "float64"):
      yield keras
  finally:
    keras.config.set_floatx(old)


def keras_optimizer(keras: Any, h: loader.Handover, row: int) -> Any:
  """A built Keras RMSprop configured as the run, on variables at ``row``."""
  variables = [
    keras.Variable(h.params[leaf][row], dtype=h.dtype, name=leaf) for leaf in order(h)
  ]
  opt = keras.optimizers.RMSprop(**h.kwargs)
  opt.build(variables)
  return opt


@pytest.mark.parametrize("h", KERAS, ids=lambda h: h.id)
def test_from_keras_continues_as_keras_did(h: loader.Handover) -> None:
  with keras_dtype(h.dtype) as keras:
    keras_opt = keras_optimizer(keras, h, h.steps_before)
    assert [v.name for v in keras_opt.variables] == list(h.state)
    # what keras.saving does with a checkpoint's optimizer variables
    keras_opt.load_own_variables({str(i): x for i, x in enumerate(h.state.values())})
    opt, state = rmsprop_jax.from_keras(keras_opt, params_at(h, h.steps_before))
    ours = run(opt, state, h, h.steps_before, steps(h))
  loader.assert_trajectory_close(ours, recorded(h, h.steps_before, steps(h)), h.dtype)


@pytest.mark.parametrize("h", KERAS, ids=lambda h: h.id)
def test_to_keras_equals_keras_recorded_state(h: loader.Handover) -> None:
  with keras_dtype(h.dtype) as keras:
    state = state_at_handover(rmsprop_jax.keras_rmsprop(**h.kwargs), h)
    keras_opt = keras_optimizer(keras, h, h.steps_before)
    rmsprop_jax.to_keras(state, keras_opt, iterations=h.steps_before)
    ours = {v.name: np.asarray(v.value) for v in keras_opt.variables}
  assert list(ours) == list(h.state)
  assert ours.pop("iteration") == h.state["iteration"] == h.steps_before
  theirs = {k: x for k, x in h.state.items() if k != "iteration"}
  loader.assert_trajectory_close(ours, theirs, h.dtype)


# ------------------------------------------------------------------ Keras, live

LIVE_KERAS = {
  "momentum_centered_excluded_decay": {
    "kwargs": {
      "learning_rate": 0.01,
      "momentum": 0.9,
      "centered": True,
      "weight_decay": 0.1,
    },
    "weight_decay_mask": {"w": True, "b": False},
  },
  "exponential_decay": {
    "kwargs": {"momentum": 0.5},
    "schedule": {
      "kind": "keras.ExponentialDecay",
      "initial_learning_rate": 0.01,
      "decay_steps": 3,
      "decay_rate": 0.5,
      "staircase": True,
    },
  },
  "global_clipnorm": {"kwargs": {"learning_rate": 0.01}, "global_clipnorm": 1.0},
  "clipnorm": {"kwargs": {"learning_rate": 0.01, "clipnorm": 1.0}},
  "clipvalue": {"kwargs": {"learning_rate": 0.01, "clipvalue": 0.5}},
}


@pytest.mark.standard_promotion  # Keras' own schedules
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(LIVE_KERAS))
def test_live_keras_continues_in_jax(name: str, dtype: str) -> None:
  spec = LIVE_KERAS[name]
  abstract = tuple(
    jax.ShapeDtypeStruct(drivers.INITIAL_PARAMS[k].shape, dtype) for k in drivers.LEAVES
  )
  saved: dict[str, Any] = {}

  def on_step(k: int, keras_opt: Any) -> None:
    if k == 4:
      saved["handover"] = rmsprop_jax.from_keras(keras_opt, abstract)

  with keras_dtype(dtype):
    trajectory = drivers._run_keras(spec, dtype, 9, on_step)
    opt, state = saved["handover"]
    h = live_handover(trajectory, 4, 5, dtype)
    ours = run(opt, state, h, 4, 9)
  loader.assert_trajectory_close(ours, recorded(h, 4, 9), dtype)


@pytest.mark.standard_promotion  # Keras' own schedules
@pytest.mark.parametrize("name", list(LIVE_KERAS))
def test_live_keras_continues_what_to_keras_writes(name: str) -> None:
  spec, dtype = LIVE_KERAS[name], "float64"
  with keras_dtype(dtype) as keras:
    # the run starts in JAX with the preset (and chain) Keras' options map to
    variables = [
      keras.Variable(drivers.INITIAL_PARAMS[k], name=k) for k in drivers.LEAVES
    ]
    keras_opt = keras_from_spec(keras, spec, dtype, variables)
    opt, state = rmsprop_jax.from_keras(
      keras_opt, tuple(jnp.asarray(v.value) for v in variables)
    )
    params = tuple(jnp.asarray(v.value) for v in variables)
    for _ in range(4):
      g = drivers.gradient(reference_params(params), dtype)
      updates, state = opt.update(
        (jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, params
      )
      params = optax.apply_updates(params, updates)
    fresh_variables = [
      keras.Variable(np.asarray(p), name=k)
      for p, k in zip(params, drivers.LEAVES, strict=True)
    ]
    fresh = keras_from_spec(keras, spec, dtype, fresh_variables)
    rmsprop_jax.to_keras(state, fresh, iterations=4)
    assert int(fresh.iterations.value) == 4
    for _ in range(5):
      g = drivers.gradient(reference_params(params), dtype)
      updates, state = opt.update(
        (jnp.asarray(g["w"]), jnp.asarray(g["b"])), state, params
      )
      params = optax.apply_updates(params, updates)
      g = drivers.gradient(
        {
          k: np.asarray(v.value)
          for k, v in zip(drivers.LEAVES, fresh_variables, strict=True)
        },
        dtype,
      )
      fresh.apply([g[k] for k in drivers.LEAVES], fresh_variables)
    for ours, v in zip(params, fresh_variables, strict=True):
      np.testing.assert_allclose(ours, np.asarray(v.value), rtol=1e-9, atol=1e-12)


def keras_from_spec(
  keras: Any, spec: dict[str, Any], dtype: str, variables: list[Any]
) -> Any:
  kwargs = dict(spec["kwargs"])
  if spec.get("schedule") is not None:
    kwargs["learning_rate"] = drivers._keras_schedule(
      keras.optimizers.schedules, spec["schedule"], dtype
    )
  if spec.get("global_clipnorm") is not None:
    kwargs["global_clipnorm"] = spec["global_clipnorm"]
  opt = keras.optimizers.RMSprop(**kwargs)
  mask = spec.get("weight_decay_mask")
  if mask is not None:
    opt.exclude_from_weight_decay(
      var_list=[
        v for v, k in zip(variables, drivers.LEAVES, strict=True) if not mask[k]
      ]
    )
  opt.build(variables)
  return opt


# ------------------------------------------------------------------ Keras, errors


def keras_state(name: str = "momentum") -> tuple[Any, Any, loader.Handover]:
  """A Keras optimizer holding the recorded state, and the keras module."""
  h = by_id(KERAS, name, "float32")
  keras = pytest.importorskip("keras")
  keras_opt = keras_optimizer(keras, h, h.steps_before)
  keras_opt.load_own_variables({str(i): x for i, x in enumerate(h.state.values())})
  return keras, keras_opt, h


def test_from_keras_parameter_count_and_shape_mismatches_are_named() -> None:
  _, keras_opt, h = keras_state()
  w, b = params_at(h, h.steps_before)
  with pytest.raises(ValueError, match=r"built on 2 variables but params has 1 "):
    rmsprop_jax.from_keras(keras_opt, [w])
  with pytest.raises(
    ValueError,
    match=re.escape(
      "params[0] has shape (2, 2) but the optimizer's variable 0 ('w') has shape (3,)"
    ),
  ):
    rmsprop_jax.from_keras(keras_opt, [b, w])


def test_from_keras_refuses_what_it_cannot_carry_over() -> None:
  keras = pytest.importorskip("keras")
  w = keras.Variable(np.zeros(3, np.float32), name="w")
  with pytest.raises(TypeError, match=r"takes a keras.optimizers.RMSprop"):
    rmsprop_jax.from_keras(keras.optimizers.Adam(), [jnp.zeros(3)])
  with pytest.raises(ValueError, match=r"not built.* optimizer.build"):
    rmsprop_jax.from_keras(keras.optimizers.RMSprop(), [jnp.zeros(3)])
  ema = keras.optimizers.RMSprop(use_ema=True)
  ema.build([w])
  with pytest.raises(ValueError, match=r"use_ema=True"):
    rmsprop_jax.from_keras(ema, [jnp.zeros(3)])
  no_arguments = keras.optimizers.RMSprop(learning_rate=lambda: 0.01)
  no_arguments.build([w])
  with pytest.raises(ValueError, match=r"callable of no arguments .* learning_rate="):
    rmsprop_jax.from_keras(no_arguments, [jnp.zeros(3)])
  _, state = rmsprop_jax.from_keras(no_arguments, [jnp.zeros(3)], learning_rate=0.01)
  assert state.count is None  # a constant learning rate counts nothing


def test_from_keras_schedule_that_does_not_continue_the_run_warns() -> None:
  _, keras_opt, h = keras_state()  # learning rate 0.005 after 12 steps
  with pytest.warns(UserWarning, match=r"gives 0.1 at step 12, but the optimizer"):
    rmsprop_jax.from_keras(
      keras_opt,
      params_at(h, h.steps_before),
      learning_rate=optax.constant_schedule(0.1),
    )


def test_to_keras_layout_mismatches_are_named_and_change_nothing() -> None:
  keras, keras_opt, h = keras_state()
  before = [np.asarray(v.value) for v in keras_opt.variables]
  params = params_at(h, h.steps_before)
  plain = rmsprop_jax.keras_rmsprop().init(params)
  with pytest.raises(ValueError, match=r"momentum > 0 but state.trace is None"):
    rmsprop_jax.to_keras(plain, keras_opt, iterations=3)
  centered = rmsprop_jax.keras_rmsprop(momentum=0.9, centered=True).init(params)
  with pytest.raises(ValueError, match=r"state.mu is set but .* centered=True"):
    rmsprop_jax.to_keras(centered, keras_opt, iterations=3)
  swapped = rmsprop_jax.keras_rmsprop(momentum=0.9).init(params[::-1])
  with pytest.raises(ValueError, match=r"state.nu\[0\] has shape \(2, 2\) but"):
    rmsprop_jax.to_keras(swapped, keras_opt, iterations=3)
  good = rmsprop_jax.keras_rmsprop(momentum=0.9).init(params)
  with pytest.raises(ValueError, match=r"Pass iterations="):
    rmsprop_jax.to_keras(good, keras_opt)
  with pytest.raises(TypeError, match=r"to_keras takes an RMSPropState"):
    rmsprop_jax.to_keras({"nu": good.nu}, keras_opt, iterations=3)
  for old, v in zip(before, keras_opt.variables, strict=True):
    np.testing.assert_array_equal(np.asarray(v.value), old)
  fresh = keras.optimizers.RMSprop(momentum=0.9)
  with pytest.raises(ValueError, match=r"not built"):
    rmsprop_jax.to_keras(good, fresh, iterations=3)


# ------------------------------------------------------------------------ docs

DOCS = pathlib.Path(__file__).parents[1] / "docs" / "handover.md"


def test_docs_keras_examples_continue_the_count_both_ways() -> None:
  # The page runs as pasted in tests/test_docs.py; here, what it computed.
  run = _docs.run_page(DOCS).check()
  back = "rmsprop_jax.to_keras(state, model.optimizer)"
  assert run.stdout("opt, state = rmsprop_jax.from_keras(") == "25\n"
  assert int(run.after(back)["state"].count) == 55
  assert run.stdout(back) == "55 55\n"  # ours, and Keras' iterations


def test_docs_torch_examples_continue_the_count_both_ways() -> None:
  pytest.importorskip("torch")
  run = _docs.run_page(DOCS).check()
  back = "rmsprop_jax.to_torch(state)"
  assert int(run.after(back)["state"].count) == 55
  assert run.stdout(back) == "55 55\n"  # ours, and torch's step
