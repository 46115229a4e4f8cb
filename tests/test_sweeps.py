"""Sweeps: a grid of configurations trained at once under ``jit`` and ``vmap``.

Each member of a vmapped sweep over ``optax.inject_hyperparams(rmsprop)``, its
learning rate, eps, decay (and momentum) traced, must train exactly as the same
configuration does alone: a plain ``rmsprop`` built from Python numbers, its
optimizer steps taken eagerly, with no ``inject_hyperparams``, ``vmap`` or
``scan``. Runs are in float64, so "exactly" means to 1e-12.
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

STEPS = 15
LEARNING_RATES = (1e-3, 1e-2, 0.1)
EPSILONS = (1e-8, 1e-3, 1.0)
DECAYS = (0.9, 0.99)
SEEDS = (0, 1, 2)
GRID_SHAPE = (len(LEARNING_RATES), len(EPSILONS), len(DECAYS), len(SEEDS))

# Options that choose code are fixed per program; numeric ones are traced.
STRUCTURES: dict[str, dict[str, Any]] = {
  "eps_inside_root": dict(eps_in_sqrt=True),
  "eps_outside_root": dict(eps_in_sqrt=False),
  "centered_momentum_eps_outside": dict(centered=True, momentum=0.5, eps_in_sqrt=False),
  "nesterov_momentum_torch_style": dict(
    momentum=0.8, nesterov=True, lr_in_momentum=False
  ),
}

# Every (learning rate, eps, decay, seed) index of the grid is checked.
POINTS = list(np.ndindex(GRID_SHAPE))
# Batched and lone programs may round differently (another summation order in
# the matrix products); the parameters are of order 1, and 15 steps amplify
# float64 round-off to a few 1e-13 at most.
BATCHED_VS_ALONE = dict(rtol=1e-12, atol=1e-12)

_X = np.random.default_rng(0).normal(size=(16, 3))
_Y = np.sin(_X.sum(axis=1))


def _mlp_params(seed: int) -> dict[str, np.ndarray]:
  """The starting weights of a tanh MLP on (_X, _Y), drawn with ``seed``."""
  rng = np.random.default_rng(seed)
  return {
    "w1": rng.normal(size=(3, 8)) / 2,
    "b1": np.zeros(8),
    "w2": rng.normal(size=8) / 3,
  }


def _loss(params: dict[str, jax.Array]) -> jax.Array:
  hidden = jnp.tanh(_X @ params["w1"] + params["b1"])
  return jnp.mean((hidden @ params["w2"] - _Y) ** 2)


# The runs alone share one jitted gradient; their optimizer steps run eagerly.
_grad = jax.jit(jax.grad(_loss))


def _train_traced(lr, eps, decay, params, structure):
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=lr, decay=decay, eps=eps, **structure
  )
  params, state = trees.fit(opt, params, _loss, STEPS)
  return params, state.hyperparams


@functools.cache
def _sweep(name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Final params and hyper-parameters of every member, shaped like the grid."""
  grid = np.meshgrid(LEARNING_RATES, EPSILONS, DECAYS, SEEDS, indexing="ij")
  lr, eps, decay, seed = (a.ravel() for a in grid)
  # The seed axis: each member starts from its seed's parameters.
  params = jax.tree.map(lambda *leaves: np.stack(leaves), *map(_mlp_params, seed))
  train = functools.partial(_train_traced, structure=STRUCTURES[name])
  params, hyperparams = jax.jit(jax.vmap(train))(lr, eps, decay, params)
  reshape = lambda a: np.asarray(a).reshape(GRID_SHAPE + a.shape[1:])
  return jax.tree.map(reshape, params), jax.tree.map(reshape, hyperparams)


@functools.cache
def _train_alone(point: tuple[int, ...], name: str) -> dict[str, Any]:
  i, j, k, s = point
  opt = rmsprop_jax.rmsprop(
    LEARNING_RATES[i], DECAYS[k], EPSILONS[j], **STRUCTURES[name]
  )
  return _run_alone(opt, SEEDS[s])


def _run_alone(opt: optax.GradientTransformation, seed: int) -> dict[str, Any]:
  params = _mlp_params(seed)
  state = opt.init(params)
  for _ in range(STEPS):
    updates, state = opt.update(_grad(params), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _member(tree: dict[str, np.ndarray], point: tuple[int, ...]) -> dict[str, Any]:
  return {key: leaf[point] for key, leaf in tree.items()}


def _largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
  return max(float(np.max(np.abs(np.asarray(a[k]) - b[k]))) for k in a)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_each_member_equals_its_configuration_run_alone(name):
  with enable_x64(True):
    params, hyperparams = _sweep(name)
    for point in POINTS:
      member = _member(params, point)
      alone = _train_alone(point, name)
      for key in alone:
        np.testing.assert_allclose(
          member[key], alone[key], **BATCHED_VS_ALONE, err_msg=f"{name} {point} {key}"
        )
      # The member's state names the configuration it trained with.
      i, j, k, _ = point
      assert hyperparams["learning_rate"][point] == LEARNING_RATES[i]
      assert hyperparams["eps"][point] == EPSILONS[j]
      assert hyperparams["decay"][point] == DECAYS[k]


@pytest.mark.parametrize("name", ["eps_inside_root", "centered_momentum_eps_outside"])
def test_a_wrong_grid_index_is_detected(name):
  # The comparison above can fail: a member one step away along any axis of
  # the grid (learning rate, eps, decay, seed) differs from the run alone by
  # far more than the tolerance.
  with enable_x64(True):
    params, _ = _sweep(name)
    for point in POINTS:
      alone = _train_alone(point, name)
      for axis, size in enumerate(GRID_SHAPE):
        wrong = list(point)
        wrong[axis] = (point[axis] + 1) % size
        distance = _largest_difference(_member(params, tuple(wrong)), alone)
        assert distance > 1e-6, (name, point, wrong, distance)


PRESETS = (
  rmsprop_jax.torch_rmsprop,
  rmsprop_jax.keras_rmsprop,
  rmsprop_jax.tf1_rmsprop,
)


def test_switch_over_presets_equals_each_preset_alone():
  # Without momentum the presets share one state layout, so a batched preset
  # index can pick the optimizer with lax.switch inside a vmapped run.
  def train(preset, lr, params):
    opts = [make(lr) for make in PRESETS]
    switched = optax.GradientTransformation(
      lambda params: jax.lax.switch(preset, [opt.init for opt in opts], params),
      lambda grads, state, params: jax.lax.switch(
        preset, [opt.update for opt in opts], grads, state, params
      ),
    )
    return trees.fit(switched, params, _loss, STEPS)[0]

  with enable_x64(True):
    lrs = (1e-3, 3e-2)
    grid = np.meshgrid(np.arange(len(PRESETS)), lrs, SEEDS[:2], indexing="ij")
    preset, lr, seed = (a.ravel() for a in grid)
    params = jax.tree.map(lambda *leaves: np.stack(leaves), *map(_mlp_params, seed))
    swept = jax.jit(jax.vmap(train))(preset, lr, params)
    swept = jax.tree.map(
      lambda a: np.asarray(a).reshape(grid[0].shape + a.shape[1:]), swept
    )
    for point in np.ndindex(grid[0].shape):
      p, i, s = point
      params = _run_alone(PRESETS[p](lrs[i]), SEEDS[s])
      member = _member(swept, point)
      for key in params:
        np.testing.assert_allclose(member[key], params[key], **BATCHED_VS_ALONE)
      other = _member(swept, ((p + 1) % len(PRESETS), i, s))
      assert _largest_difference(other, params) > 1e-6


DOCS_PAGE = pathlib.Path(__file__).parents[1] / "docs" / "sweeps.md"


def test_docs_sweeps_snippet_runs_and_picks_the_best():
  # The page runs as pasted in tests/test_docs.py; here, what it computed.
  namespace = _docs.run_page(DOCS_PAGE).check().names
  mean_loss = np.asarray(namespace["mean_loss"])
  best_lr, best_eps = namespace["best_lr"], namespace["best_eps"]
  assert np.isfinite(mean_loss).all()
  assert mean_loss.min() < 0.5 * np.median(mean_loss)
  i, j = np.unravel_index(np.argmin(mean_loss), mean_loss.shape)
  assert best_lr == pytest.approx(namespace["lrs"][i, j, 0], rel=1e-6)
  assert best_eps == pytest.approx(namespace["epss"][i, j, 0], rel=1e-6)
