"""The presets against PyTorch, Keras 3, TF1 and timm.

The reference is data recorded from the real libraries by
``tests/reference/generate.py`` (see ``tests/reference/FORMAT.md``): every
recorded trajectory is replayed through its preset, float64 cases within 1e-9
and float32 cases within 1e-5, relative to the trajectory's scale. Where a
library is importable, the live tests also run it side by side with the preset;
Keras with the JAX backend is part of the test extra, so its live test runs
everywhere, while PyTorch, TensorFlow and timm are only in the environment that
records the files.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests._compat import enable_x64
from tests.reference import drivers, loader

CASES = loader.load_cases()
EMBEDDING_CASES = loader.load_embedding_cases()  # tables with lazy rows
PRESETS = {lib: getattr(rmsprop_jax, name) for lib, name in loader.PRESETS.items()}
LR = loader.LR_ARGUMENT


def by_id(case_id: str) -> loader.Case:
  (case,) = [c for c in CASES if c.id == case_id]
  return case


# ------------------------------------------------------ recorded trajectories


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_preset_reproduces_recorded_trajectory(case: loader.Case) -> None:
  loader.assert_trajectory_close(loader.replay(case), case.params, case.dtype)


@pytest.mark.parametrize("case", EMBEDDING_CASES, ids=lambda c: c.id)
def test_preset_reproduces_recorded_embedding_table(case: loader.Case) -> None:
  # TF's sparse kernels leave rows not looked up as they were: lazy_rows.
  loader.assert_trajectory_close(loader.replay(case), case.params, case.dtype)


@pytest.mark.standard_promotion  # the schedules, as written for optax
@pytest.mark.parametrize(
  "case", [c for c in CASES if c.schedule is not None], ids=lambda c: c.id
)
def test_optax_schedule_reproduces_library_learning_rates(
  case: loader.Case,
) -> None:
  schedule = jax.vmap(loader.optax_schedule(case))
  if case.dtype == "float64":
    with enable_x64(True):
      lrs = np.asarray(schedule(jnp.arange(case.steps, dtype=jnp.int64)))
    rtol = 1e-12
  else:  # the libraries compute these schedules in float32, as optax does
    lrs = np.asarray(schedule(jnp.arange(case.steps, dtype=jnp.int32)))
    rtol = 1e-6
  np.testing.assert_allclose(lrs, case.lrs, rtol=rtol)


def test_keras_piecewise_boundaries_are_one_step_later_in_optax() -> None:
  # Keras moves to values[i + 1] once step > boundaries[i]; optax's
  # piecewise_constant_schedule scales once step >= boundary.
  case = by_id("keras-piecewise_constant_momentum-float32")
  values = case.schedule["values"]
  boundaries = case.schedule["boundaries"]

  def optax_lrs(shift: int) -> np.ndarray:
    scales = {b + shift: values[i + 1] / values[i] for i, b in enumerate(boundaries)}
    schedule = optax.piecewise_constant_schedule(values[0], scales)
    return np.array([float(schedule(k)) for k in range(case.steps)])

  np.testing.assert_allclose(optax_lrs(1), case.lrs, rtol=1e-6)
  assert np.max(np.abs(optax_lrs(0) - case.lrs)) > 1e-3


@pytest.mark.parametrize("library", loader.LIBRARIES)
def test_recorded_cases_set_every_preset_argument(library: str) -> None:
  cases = [c for c in CASES if c.library == library]
  parameters = inspect.signature(PRESETS[library]).parameters
  for name, parameter in parameters.items():
    if name == "state_dtype":  # storage only; the core's tests cover it
      continue
    if name == "max_lr":  # ours, not timm's: the loader passes timm's built-in lr
      assert any(c.kwargs.get("corrected_weight_decay") and c.schedule for c in cases)
      continue
    if name == "weight_decay_mask":
      assert any(c.weight_decay_mask for c in cases)
      continue
    if name == "lazy_rows":  # recorded on the embedding problem
      assert any(c.lazy_rows for c in EMBEDDING_CASES if c.library == library)
      continue
    assert any(
      name in c.kwargs and c.kwargs[name] != parameter.default for c in cases
    ), f"no recorded {library} case sets {name}"
  assert any(c.schedule for c in cases)
  assert {c.dtype for c in cases} == {"float64", "float32"}


# A port that forgets one difference: the preset's mapping onto the core with
# exactly one option flipped. Each must miss the recorded trajectory by 100
# times the tolerance, or the data would not prove that option.
def _step_lr(lr: float) -> optax.Schedule:
  return optax.exponential_decay(lr, 7, 0.5, staircase=True)


FORGOTTEN = {
  "eps outside the root (PyTorch)": (
    "torch-eps_1-float64",
    lambda: rmsprop_jax.rmsprop(0.05, decay=0.99, eps=1.0),
  ),
  "lr outside the momentum buffer (PyTorch)": (
    "torch-step_lr_momentum-float64",
    lambda: rmsprop_jax.rmsprop(
      _step_lr(0.01), decay=0.99, eps=1e-8, eps_in_sqrt=False, momentum=0.9
    ),
  ),
  "coupled weight decay (PyTorch)": (
    "torch-weight_decay-float64",
    lambda: rmsprop_jax.rmsprop(
      0.01,
      decay=0.99,
      eps=1e-8,
      eps_in_sqrt=False,
      weight_decay=0.1,
      decoupled_weight_decay=True,
    ),
  ),
  "maximize (PyTorch)": (
    "torch-maximize-float64",
    lambda: rmsprop_jax.rmsprop(0.005, decay=0.99, eps=1e-8, eps_in_sqrt=False),
  ),
  "decoupled weight decay (Keras)": (
    "keras-weight_decay-float64",
    lambda: rmsprop_jax.rmsprop(0.01, decay=0.9, eps=1e-7, weight_decay=0.5),
  ),
  "eps inside the root (Keras)": (
    "keras-epsilon_1-float64",
    lambda: rmsprop_jax.rmsprop(0.05, decay=0.9, eps=1.0, eps_in_sqrt=False),
  ),
  "accumulator starts at 1 (TF1)": (
    "tf1-defaults-float64",
    lambda: rmsprop_jax.rmsprop(0.01, decay=0.9, eps=1e-10),
  ),
  "Python floats rounded to float32 (TF1)": (
    "tf1-python_float_hyperparameters-float64",
    lambda: rmsprop_jax.tf1_rmsprop(0.01, decay=0.9, momentum=0.9, epsilon=1e-6),
  ),
  "accumulator starts at 1 (timm)": (
    "timm-defaults-float64",
    lambda: rmsprop_jax.rmsprop(0.01, decay=0.9, eps=1e-10),
  ),
  "lr inside the momentum buffer (timm default)": (
    "timm-step_lr_momentum-float64",
    lambda: rmsprop_jax.rmsprop(
      _step_lr(0.01),
      decay=0.9,
      eps=1e-10,
      initial_scale=1.0,
      momentum=0.9,
      lr_in_momentum=False,
    ),
  ),
  "decoupled decay (timm)": (
    "timm-decoupled_decay-float64",
    lambda: rmsprop_jax.rmsprop(
      0.01, decay=0.9, eps=1e-10, initial_scale=1.0, weight_decay=0.5
    ),
  ),
}


@pytest.mark.parametrize("difference", list(FORGOTTEN))
def test_port_that_forgets_a_difference_misses_the_library(difference: str) -> None:
  case_id, make = FORGOTTEN[difference]
  case = by_id(case_id)
  with enable_x64(True):
    forgetful = loader.replay(case, make())
  assert loader.deviation(forgetful, case.params) > 100 * loader.TOLERANCE[case.dtype]
  assert (
    loader.deviation(loader.replay(case), case.params) < loader.TOLERANCE[case.dtype]
  )


def test_optax_rmsprop_is_not_torch_rmsprop() -> None:
  case = by_id("torch-eps_1-float64")
  with enable_x64(True):
    optax_port = loader.replay(case, optax.rmsprop(0.05, decay=0.99, eps=1.0))
  assert loader.deviation(optax_port, case.params) > 100 * loader.TOLERANCE[case.dtype]


# ----------------------------------------------------------------- arguments

BAD_ARGUMENTS = [
  ("torch", {"lr": -0.1}, "lr must satisfy lr >= 0; got lr=-0.1"),
  ("torch", {"alpha": 1.0}, "alpha must satisfy 0 <= alpha < 1; got alpha=1.0"),
  ("torch", {"alpha": -0.5}, "alpha must satisfy 0 <= alpha < 1; got alpha=-0.5"),
  ("torch", {"eps": -1e-8}, "eps must satisfy eps >= 0; got eps=-1e-08"),
  (
    "torch",
    {"weight_decay": -1.0},
    "weight_decay must satisfy weight_decay >= 0; got weight_decay=-1.0",
  ),
  (
    "torch",
    {"momentum": 1.5},
    "momentum must satisfy 0 <= momentum < 1; got momentum=1.5",
  ),
  (
    "keras",
    {"learning_rate": -1.0},
    "learning_rate must satisfy learning_rate >= 0; got learning_rate=-1.0",
  ),
  ("keras", {"rho": 1.5}, "rho must satisfy 0 <= rho < 1; got rho=1.5"),
  (
    "keras",
    {"momentum": -0.1},
    "momentum must satisfy 0 <= momentum < 1; got momentum=-0.1",
  ),
  (
    "keras",
    {"epsilon": -1.0},
    "epsilon must satisfy epsilon >= 0; got epsilon=-1.0",
  ),
  (
    "keras",
    {"weight_decay": -0.1},
    "weight_decay must satisfy weight_decay >= 0, or None; got weight_decay=-0.1",
  ),
  (
    "tf1",
    {"learning_rate": -1.0},
    "learning_rate must satisfy learning_rate >= 0; got learning_rate=-1.0",
  ),
  ("tf1", {"decay": 1.0}, "decay must satisfy 0 <= decay < 1; got decay=1.0"),
  (
    "tf1",
    {"momentum": 1.0},
    "momentum must satisfy 0 <= momentum < 1; got momentum=1.0",
  ),
  (
    "tf1",
    {"epsilon": float("nan")},
    "epsilon must satisfy epsilon >= 0; got epsilon=nan",
  ),
  ("timm", {"lr": -0.1}, "lr must satisfy lr >= 0; got lr=-0.1"),
  ("timm", {"alpha": 1.5}, "alpha must satisfy 0 <= alpha < 1; got alpha=1.5"),
  ("timm", {"eps": -1.0}, "eps must satisfy eps >= 0; got eps=-1.0"),
  (
    "timm",
    {"weight_decay": -1.0},
    "weight_decay must satisfy weight_decay >= 0; got weight_decay=-1.0",
  ),
  (
    "timm",
    {"momentum": 1.0},
    "momentum must satisfy 0 <= momentum < 1; got momentum=1.0",
  ),
]


def _call(library: str, kwargs: dict[str, Any]) -> Any:
  if library == "tf1" and "learning_rate" not in kwargs:
    kwargs = {"learning_rate": 0.01, **kwargs}
  return PRESETS[library](**kwargs)


@pytest.mark.parametrize(
  ("library", "kwargs", "message"),
  BAD_ARGUMENTS,
  ids=[
    f"{lib}-{next(iter(kw))}={next(iter(kw.values()))}" for lib, kw, _ in BAD_ARGUMENTS
  ],
)
def test_out_of_range_argument_is_named_as_the_library_names_it(
  library: str, kwargs: dict[str, Any], message: str
) -> None:
  with pytest.raises(ValueError) as info:
    _call(library, kwargs)
  assert str(info.value).startswith(message)


@pytest.mark.parametrize(
  ("library", "name"),
  [("torch", "alpha"), ("keras", "rho"), ("tf1", "decay"), ("timm", "alpha")],
)
def test_non_number_argument_is_a_type_error_naming_it(library: str, name: str) -> None:
  with pytest.raises(TypeError, match=f"^{name} must be a real number"):
    _call(library, {name: "0.9"})


# Each preset's positional parameters follow its library's positional order up
# to the first place they diverge (after ``params``): PyTorch's seventh is
# ``capturable``, TF1's fifth ``use_locking``, Keras 3's seventh ``clipnorm``,
# tf_keras legacy's sixth ``name``, timm's eleventh ``foreach``. What follows is
# keyword-only, so that no positional call means something else than in the
# library it was ported from.
SIGNATURES = {
  "torch": (
    ["lr", "alpha", "eps", "weight_decay", "momentum", "centered"],
    ["maximize", "weight_decay_mask", "state_dtype"],
  ),
  "keras": (
    ["learning_rate", "rho", "momentum", "epsilon", "centered", "weight_decay"],
    ["weight_decay_mask", "state_dtype"],
  ),
  "tf1": (
    ["learning_rate", "decay", "momentum", "epsilon"],
    ["centered", "weight_decay", "weight_decay_mask", "lazy_rows", "state_dtype"],
  ),
  "timm": (
    [
      "lr",
      "alpha",
      "eps",
      "weight_decay",
      "momentum",
      "centered",
      "decoupled_decay",
      "corrected_weight_decay",
      "lr_in_momentum",
      "caution",
    ],
    ["max_lr", "weight_decay_mask", "state_dtype"],
  ),
  "tf_keras_legacy": (
    ["learning_rate", "rho", "momentum", "epsilon", "centered"],
    ["lazy_rows", "state_dtype"],
  ),
}


@pytest.mark.parametrize("library", loader.LIBRARIES)
def test_positional_parameters_follow_the_librarys_order(library: str) -> None:
  positional, keyword_only = SIGNATURES[
    "keras" if library == "tf_keras" else library  # tf_keras: Keras 3's preset
  ]
  parameters = inspect.signature(PRESETS[library]).parameters.values()
  assert [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD] == (
    positional
  )
  assert [p.name for p in parameters if p.kind == p.KEYWORD_ONLY] == keyword_only


@pytest.mark.parametrize(
  ("preset", "args", "extra"),
  [
    # TF1's RMSPropOptimizer(lr, 0.9, 0.0, 1e-10, True): use_locking=True.
    (rmsprop_jax.tf1_rmsprop, (0.01, 0.9, 0.0, 1e-10), True),
    # torch.optim.RMSprop(params, lr, alpha, eps, wd, m, centered, True):
    # capturable=True.
    (rmsprop_jax.torch_rmsprop, (0.01, 0.99, 1e-8, 0.0, 0.0, False), True),
  ],
  ids=["tf1-use_locking", "torch-capturable"],
)
def test_a_positional_argument_past_the_librarys_order_is_refused(preset, args, extra):
  preset(*args)  # the positional arguments the two libraries share
  with pytest.raises(TypeError, match="positional argument"):
    preset(*args, extra)


# ----------------------------------------------------------------- behaviour

PARAMS = {"w": jnp.array([1.0, -2.0, 0.5])}
GRADS = {"w": jnp.array([0.3, -0.1, 2.0])}


@pytest.mark.parametrize("library", loader.LIBRARIES)
def test_momentum_zero_allocates_no_buffer(library: str) -> None:
  assert _call(library, {"momentum": 0.0}).init(PARAMS).trace is None
  assert _call(library, {"momentum": 0.9}).init(PARAMS).trace is not None


@pytest.mark.parametrize("library", loader.LIBRARIES)
def test_preset_works_under_inject_hyperparams_and_jit(library: str) -> None:
  # inject_hyperparams hands every numeric default (momentum=0.0 included) to
  # init as an array and to a jitted update as a tracer.
  kwargs = {LR[library]: 0.1}
  # An array momentum selects the legacy optimizer's momentum kernel, as a
  # tensor momentum does in TF: keep it a number to keep the other kernel.
  static = ("momentum",) if library == "tf_keras_legacy" else ()
  injected = optax.inject_hyperparams(PRESETS[library], static_args=static)(**kwargs)
  state = injected.init(PARAMS)
  plain = PRESETS[library](**kwargs)
  expected = PARAMS
  plain_state = plain.init(PARAMS)
  params = PARAMS
  for _ in range(3):
    updates, state = jax.jit(injected.update)(GRADS, state, params)
    params = optax.apply_updates(params, updates)
    plain_updates, plain_state = plain.update(GRADS, plain_state, expected)
    expected = optax.apply_updates(expected, plain_updates)
  np.testing.assert_allclose(params["w"], expected["w"], rtol=1e-6)


@pytest.mark.parametrize("library", loader.LIBRARIES)
def test_state_dtype_is_passed_through(library: str) -> None:
  state = _call(library, {"momentum": 0.9, "state_dtype": jnp.bfloat16}).init(PARAMS)
  assert state.nu["w"].dtype == jnp.bfloat16
  assert state.trace["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("weight_decay", [None, 0.0])
def test_keras_without_weight_decay_needs_no_params(
  weight_decay: float | None,
) -> None:
  opt = rmsprop_jax.keras_rmsprop(weight_decay=weight_decay)
  updates, _ = opt.update(GRADS, opt.init(PARAMS))
  assert updates["w"].shape == (3,)


@pytest.mark.parametrize("library", ["tf1", "timm"])
def test_tf_style_accumulator_starts_at_one(library: str) -> None:
  state = _call(library, {}).init(PARAMS)
  np.testing.assert_array_equal(state.nu["w"], np.ones(3))


# -------------------------------------------------------------- live libraries


def _spec(case: loader.Case) -> drivers.Spec:
  return {
    "kwargs": case.kwargs,
    "schedule": case.schedule,
    "weight_decay_mask": case.weight_decay_mask,
    "global_clipnorm": case.global_clipnorm,
    "hyperparameter_dtype": case.hyperparameter_dtype,
  }


def _check_live(
  library: str,
  run: Callable[..., drivers.Trajectory],
  module: str | None = None,
  steps: int | None = None,
) -> None:
  """Runs every recorded configuration live, where ``module`` imports.

  ``steps`` shortens the runs (default: as many steps as recorded). At least
  one configuration must be compared.
  """
  if module is not None:
    pytest.importorskip(module)
  compared = 0
  for case in CASES:
    if case.library != library:
      continue
    if (
      library == "keras"
      and case.dtype == "float64"
      and not jax.config.read("jax_enable_x64")
    ):
      continue  # float64 Keras variables need x64 globally; recorded instead
    live = dataclasses.replace(
      case, **run(_spec(case), case.dtype, steps or case.steps)
    )
    loader.assert_trajectory_close(loader.replay(live), live.params, case.dtype)
    compared += 1
  assert compared > 0, f"no recorded {library} configuration was run"


def test_live_keras_matches_preset() -> None:
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip("keras was imported with another backend")
  # Keras runs eagerly, step by step; 12 steps pass the schedules' first
  # boundaries, and the recorded files hold the full 30.
  _check_live("keras", drivers.run_keras, steps=12)


def test_live_torch_matches_preset() -> None:
  _check_live("torch", drivers.run_torch, "torch")


def test_live_tensorflow_v1_matches_preset() -> None:
  _check_live("tf1", drivers.run_tf1, "tensorflow")


def test_live_timm_matches_preset() -> None:
  pytest.importorskip("torch")
  try:
    drivers.timm_rmsprop_tf_class()
  except ImportError:
    pytest.skip("timm is not installed")
  _check_live("timm", drivers.run_timm)


def test_live_tf_keras_legacy_matches_preset() -> None:
  _check_live("tf_keras_legacy", drivers.run_tf_keras_legacy, "tf_keras")


def test_live_tf_keras_matches_preset() -> None:
  _check_live("tf_keras", drivers.run_tf_keras, "tf_keras")
