"""Hyper-gradients through unrolled RMSProp steps, against finite differences.

The derivative of a validation loss after ``NUM_STEPS`` steps with respect to
the learning rate, decay, eps (and momentum, weight decay, initial scale, a
schedule's parameters) must equal a central finite difference of the same loss
in float64, whether the hyper-parameters live in an
``optax.inject_hyperparams`` state or in a closure that builds the optimizer.
The code blocks of ``docs/differentiating.md`` run too.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests import _docs
from tests import _trees as trees
from tests._compat import enable_x64

NUM_STEPS = 10
# A central difference with a relative step of 1e-5 has a truncation error of
# about 1e-10 relative on these smooth losses; 1e-6 leaves room for rounding
# and still fails on any real error in the derivative.
FD_STEP = 1e-5
RTOL = 1e-6

# Options fixed when the optimizer is built, and the hyper-parameters
# differentiated at the given values. eps is large enough for the loss to be
# smooth at the scale of the finite-difference step.
CASES: dict[str, tuple[dict[str, Any], dict[str, float]]] = {
  "plain": ({}, dict(learning_rate=0.05, decay=0.9, eps=1e-3)),
  "momentum": ({}, dict(learning_rate=0.02, decay=0.9, eps=1e-3, momentum=0.8)),
  "centered": ({"centered": True}, dict(learning_rate=0.05, decay=0.9, eps=1e-3)),
  "torch_style_nesterov": (
    {"eps_in_sqrt": False, "lr_in_momentum": False, "nesterov": True},
    dict(learning_rate=0.02, decay=0.99, eps=1e-3, momentum=0.8),
  ),
  "weight_decay": ({}, dict(learning_rate=0.05, decay=0.9, eps=1e-3, weight_decay=0.1)),
}


def _train_and_validation_data() -> tuple[
  tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]
]:
  """A training set (a linear target and a nonlinear term) and a validation set."""
  rng = np.random.default_rng(0)
  w = rng.normal(size=5)
  x_train, x_val = rng.normal(size=(32, 5)), rng.normal(size=(32, 5))
  y_train = x_train @ w + 0.3 * np.sin(3 * x_train[:, 0])
  return (x_train, y_train), (x_val, x_val @ w)


TRAIN, VAL = _train_and_validation_data()


def _loss(params: dict[str, jax.Array], data: tuple[np.ndarray, np.ndarray]):
  x, y = (jnp.asarray(a, params["w"].dtype) for a in data)
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _params0() -> dict[str, jax.Array]:
  return {"w": jnp.zeros(5), "b": jnp.zeros(())}


def _val_loss_after_training(opt, opt_state, params):
  train_loss = lambda params: _loss(params, TRAIN)
  params, _ = trees.fit(opt, params, train_loss, NUM_STEPS, state=opt_state)
  return _loss(params, VAL)


def _closure_loss(options: dict[str, Any]):
  def val_loss(hyperparams: dict[str, jax.Array]) -> jax.Array:
    opt = rmsprop_jax.rmsprop(**options, **hyperparams)
    params = _params0()
    return _val_loss_after_training(opt, opt.init(params), params)

  return val_loss


def _injected_loss(options: dict[str, Any], values: dict[str, float]):
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(**options, **values)

  def val_loss(hyperparams: dict[str, jax.Array]) -> jax.Array:
    params = _params0()
    opt_state = opt.init(params)
    opt_state.hyperparams.update(hyperparams)
    return _val_loss_after_training(opt, opt_state, params)

  return val_loss


def _central_differences(f, values: dict[str, float]) -> dict[str, float]:
  f = jax.jit(f)
  point = {k: jnp.float64(v) for k, v in values.items()}
  out = {}
  for name, value in values.items():
    h = FD_STEP * value
    up = dict(point, **{name: jnp.float64(value + h)})
    down = dict(point, **{name: jnp.float64(value - h)})
    out[name] = float(f(up) - f(down)) / (2 * h)
  return out


@functools.cache
def _reference(case: str) -> dict[str, float]:
  """Finite differences of the closure loss, shared by both routes."""
  options, values = CASES[case]
  with enable_x64(True):
    return _central_differences(_closure_loss(options), values)


def _hypergradients(route: str, case: str) -> dict[str, float]:
  options, values = CASES[case]
  if route == "closure":
    f = _closure_loss(options)
  else:
    f = _injected_loss(options, values)
  point = {k: jnp.float64(v) for k, v in values.items()}
  grads = jax.jit(jax.grad(f))(point)
  assert all(g.dtype == jnp.float64 for g in grads.values())
  return {k: float(g) for k, g in grads.items()}


@pytest.mark.parametrize("route", ["inject_hyperparams", "closure"])
@pytest.mark.parametrize("case", list(CASES))
def test_hypergradients_match_central_differences_in_float64(case, route):
  with enable_x64(True):
    grads = _hypergradients(route, case)
  expected = _reference(case)
  assert set(grads) == set(expected)
  for name, value in expected.items():
    assert abs(value) > 1e-4, f"{case}: d/d{name} too small to test"
    np.testing.assert_allclose(grads[name], value, rtol=RTOL, err_msg=name)


def test_finite_differences_of_both_routes_agree():
  # The injected route differentiates the state's copy of the
  # hyper-parameters; its loss must be the closure's loss at every point.
  options, values = CASES["momentum"]
  with enable_x64(True):
    injected = _central_differences(_injected_loss(options, values), values)
  np.testing.assert_allclose(
    list(injected.values()), list(_reference("momentum").values()), rtol=1e-7
  )


def test_initial_scale_and_schedule_parameters_through_a_closure():
  def val_loss(hp: dict[str, jax.Array]) -> jax.Array:
    opt = rmsprop_jax.rmsprop(
      lambda k: hp["lr0"] * hp["rate"] ** k.astype(hp["rate"].dtype),
      eps=1e-3,
      momentum=0.5,
      initial_scale=hp["initial_scale"],
    )
    params = _params0()
    return _val_loss_after_training(opt, opt.init(params), params)

  values = dict(lr0=0.05, rate=0.9, initial_scale=0.5)
  with enable_x64(True):
    expected = _central_differences(val_loss, values)
    grads = jax.jit(jax.grad(val_loss))({k: jnp.float64(v) for k, v in values.items()})
  for name, value in expected.items():
    assert abs(value) > 1e-4, name
    np.testing.assert_allclose(float(grads[name]), value, rtol=RTOL, err_msg=name)


PAGE = pathlib.Path(__file__).parents[1] / "docs" / "differentiating.md"


def test_page_code_blocks_run_and_tune_the_learning_rate():
  # The page runs as pasted in tests/test_docs.py; here, what it computed.
  ns = _docs.run_page(PAGE).check().names
  injected, closure = ns["hypergrads"], ns["closure_grads"]
  names = ("learning_rate", "decay", "eps")
  np.testing.assert_allclose(
    [injected[k] for k in names], [float(g) for g in closure], rtol=1e-4
  )
  np.testing.assert_allclose(
    [float(j) for j in ns["jacobian"]], [float(g) for g in closure], rtol=1e-4
  )
  assert float(injected["learning_rate"]) < 0  # 0.01 is too small a step
  (lr_first, loss_first), (lr_last, loss_last) = ns["history"][0], ns["history"][-1]
  assert lr_last > 3 * lr_first
  assert loss_last < 0.02 * loss_first
