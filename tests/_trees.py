"""The trees, gradients, problem and training loops that several test files share.

``params`` (``numpy_params`` for a NumPy reference) is a small tree of every
container and rank, ``grads`` the gradient of each step for any tree,
``regression`` a tiny least-squares problem of a tanh layer, and ``run`` and
``fit`` the plain training loop (``opt.update``, then ``optax.apply_updates``)
over given gradients or on a loss. A test that needs data of its own (large
leaves for block quantization, gradients that depend on the parameters, a loss
with a known optimum) keeps it, named for what it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Tree = Any


def numpy_params(dtype: Any = np.float64) -> dict[str, Any]:
  """A small tree with a dict, a list and a tuple: NumPy arrays of ``dtype``.

  ``{"dense": {"w": (3, 4), "b": (4,)}, "stack": [(2,), ((),)]}``, drawn from a
  standard normal with seed 0, so every call gives the same values.
  """
  rng = np.random.default_rng(0)
  return {
    "dense": {
      "w": rng.normal(size=(3, 4)).astype(dtype),
      "b": rng.normal(size=(4,)).astype(dtype),
    },
    "stack": [
      rng.normal(size=(2,)).astype(dtype),
      (rng.normal(size=()).astype(dtype),),
    ],
  }


def params(dtype: Any = jnp.float32) -> dict[str, Any]:
  """``numpy_params(dtype)`` as JAX arrays (float64 needs 64-bit types on)."""
  return jax.tree.map(jnp.asarray, numpy_params(dtype))


def grads(step: int, like: Tree) -> Tree:
  """The gradient of step ``step`` for a tree shaped as ``like``.

  Normal draws of mean 0.3 and standard deviation 2 (a mean, so that the
  centred variance is not the raw second moment), seeded by ``step`` alone:
  the same for every tree of the same shapes, whatever its values. Each leaf
  takes the dtype of its leaf in ``like``, and is a JAX array where that one
  is, else a NumPy array.
  """
  rng = np.random.default_rng(100 + step)

  def draw(p: Any) -> Any:
    g = (rng.normal(size=np.shape(p)) * 2.0 + 0.3).astype(p.dtype)
    return jnp.asarray(g) if isinstance(p, jax.Array) else g

  return jax.tree.map(draw, like)


def gradients(like: Tree, steps: int, start: int = 0) -> list[Tree]:
  """``grads`` of steps ``start`` to ``start + steps - 1``, in order."""
  return [grads(t, like) for t in range(start, start + steps)]


def run(
  opt: optax.GradientTransformation,
  params: Tree,
  grads: Iterable[Tree],
  *,
  state: Any = None,
  jit: bool = False,
) -> tuple[Tree, Any, list[Tree]]:
  """The plain training loop: ``opt.update`` on each gradient, then apply it.

  Args:
    opt: the optimizer.
    params: the parameters before the first step.
    grads: one gradient tree per step, in order.
    state: the optimizer state to start from; ``opt.init(params)`` if None.
    jit: whether ``opt.update`` runs under ``jax.jit``.

  Returns:
    The parameters and the state after the last step, and the updates of
    every step.
  """
  update = jax.jit(opt.update) if jit else opt.update
  state = opt.init(params) if state is None else state
  seen = []
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
    seen.append(updates)
  return params, state, seen


def fit(
  opt: optax.GradientTransformation,
  params: Tree,
  loss: Callable[[Tree], jax.Array],
  steps: int,
  *,
  state: Any = None,
) -> tuple[Tree, Any]:
  """``steps`` steps of ``opt`` on the gradient of ``loss``, in one ``lax.scan``.

  Traceable, so that a test can ``jit``, ``vmap`` or differentiate it.
  Returns the parameters and the state after the last step; ``state`` is the
  state to start from (``opt.init(params)`` if None).
  """

  def step(carry: tuple[Tree, Any], _: Any) -> tuple[tuple[Tree, Any], None]:
    p, s = carry
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, updates), s), None

  state = opt.init(params) if state is None else state
  (params, state), _ = jax.lax.scan(step, (params, state), length=steps)
  return params, state


def regression(n: int = 16, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """Inputs ``(n, 4)`` and targets ``(n, 3)`` of a random tanh layer, float32."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  y = np.tanh(x @ rng.normal(size=(4, 3))).astype(np.float32)
  return jnp.asarray(x), jnp.asarray(y)


def regression_params(seed: int = 1) -> dict[str, jax.Array]:
  """The starting weights ``w`` (4, 3) and bias ``b`` (3,) of ``regression``."""
  rng = np.random.default_rng(seed)
  return {
    "w": jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32) * 0.5),
    "b": jnp.zeros((3,), jnp.float32),
  }


def regression_loss(params: Tree, x: jax.Array, y: jax.Array) -> jax.Array:
  """The mean squared error of the tanh layer ``params`` on ``(x, y)``."""
  return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)
