"""The timed contenders: train steps, floors, eager updates, stream kernels, PyTorch.

Each contender is an object whose call starts one step and whose ``wait``
blocks on it. A jitted contender threads its outputs into its next call with
the inputs donated, as a training loop does, so XLA may update in place. An
eager contender threads its state without donation, as a notebook does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import trees
from common import (
  EXTRA_STATE,
  LR,
  Timing,
  Tree,
  gbps,
  measure,
  optimizer,
  torch,
  tree_bytes,
)


class Loop:
  """A jitted function whose outputs are its next inputs, which it donates.

  ``carry`` is donated and replaced by the outputs at every call; ``const``
  (the gradient, a scale) is passed unchanged.
  """

  def __init__(
    self,
    fn: Callable[..., tuple[Any, ...]],
    carry: tuple[Any, ...],
    const: tuple[Any, ...] = (),
  ):
    self.fn = jax.jit(fn, donate_argnums=tuple(range(len(carry))))
    self.carry, self.const = carry, const

  def __call__(self) -> None:
    self.carry = self.fn(*self.carry, *self.const)

  def wait(self) -> None:
    jax.block_until_ready(self.carry)

  @property
  def moved_bytes(self) -> int:
    """The least traffic of a call: read every input once, write the carry.

    Scalars (a scale, a step count) are left out: a few bytes whatever the size.
    """
    return 2 * _array_bytes(self.carry) + _array_bytes(self.const)


def _array_bytes(tree: Tree) -> int:
  return tree_bytes([x for x in jax.tree.leaves(tree) if x.ndim > 0])


def train_step(
  opt: optax.GradientTransformation,
) -> Callable[..., tuple[Any, ...]]:
  """What users run: ``update`` then ``optax.apply_updates``."""

  def step(params: Tree, state: Tree, grads: Tree) -> tuple[Tree, Tree]:
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def floor_step(
  params: Tree, state: tuple[Tree, ...], grads: Tree
) -> tuple[Tree, tuple[Tree, ...]]:
  """The floor: a train step's memory traffic and data flow, no arithmetic.

  Reads the parameters, the gradient and every state array, and writes every
  state array and the parameters -- the bytes an RMSProp train step must move
  -- with one operation per output element. As in RMSProp, each new state
  array depends on the one before (the trace on the new ``nu``) and the new
  parameters on the last: XLA's CPU backend schedules outputs that do not
  depend on each other with copies around the donated buffers, which would
  make the "floor" slower than RMSProp itself.
  """
  new_state, prev = [], grads
  for s in state:
    prev = jax.tree.map(jnp.add, s, prev)
    new_state.append(prev)
  return jax.tree.map(jnp.subtract, params, prev), tuple(new_state)


def _fresh(tree: Tree) -> Tree:
  """A copy of ``tree`` that a donating contender may consume."""
  return jax.tree.map(jnp.copy, tree)


def library_train(
  lib: str, variant: str, params: Tree, grads: Tree, **extra: Any
) -> Loop:
  """The train step of ``rmsprop_jax`` or ``optax`` with a variant's options."""
  opt = optimizer(lib, variant, **extra)
  mine = _fresh(params)
  return Loop(train_step(opt), (mine, opt.init(mine)), (grads,))


def floor_train(variant: str, params: Tree, grads: Tree) -> Loop:
  """The floor kernel with as many float32 state arrays as the variant."""
  state = tuple(
    jax.tree.map(jnp.zeros_like, params) for _ in range(1 + EXTRA_STATE[variant])
  )
  return Loop(floor_step, (_fresh(params), state), (grads,))


class EagerUpdate:
  """One ``update`` called without any ``jit``, the state threaded."""

  def __init__(self, opt: optax.GradientTransformation, params: Tree, grads: Tree):
    self.update: Callable[[Tree, Tree, Tree], tuple[Tree, Tree]] = opt.update
    self.params, self.grads = params, grads
    self.state = opt.init(params)
    self.updates: Tree = None

  def __call__(self) -> None:
    self.updates, self.state = self.update(self.grads, self.state, self.params)

  def wait(self) -> None:
    jax.block_until_ready((self.updates, self.state))


def dispatch_floor(grads: Tree, state: Tree, params: Tree) -> tuple[Tree, Tree]:
  """An update's signature with a trivial body: one operation per output array.

  Takes and returns exactly the trees ``update`` does, so a jitted call of it
  costs what JAX itself charges to dispatch them: flattening the arguments,
  checking them against the cached executable, launching it, wrapping the
  outputs.
  """
  updates = jax.tree.map(jnp.subtract, grads, params)
  return updates, jax.tree.map(lambda s: s + 1, state)


class EagerFloor(EagerUpdate):
  """JAX's own dispatch floor for an eager ``update`` of ``opt``.

  One jitted call of :func:`dispatch_floor` on ``opt``'s actual state (nu;
  the trace with momentum; mu when centred), so its array count always
  matches the update it is the floor of; the state is threaded like the
  update's.
  """

  def __init__(self, opt: optax.GradientTransformation, params: Tree, grads: Tree):
    super().__init__(opt, params, grads)
    self.update = jax.jit(dispatch_floor)


# --------------------------------------------------------------------------
# Streaming bandwidth: what the memory system gives a trivial kernel.
# --------------------------------------------------------------------------


def _scale(x: jax.Array, s: jax.Array) -> tuple[jax.Array]:
  return (x * s,)


def _triad(x: jax.Array, y: jax.Array, s: jax.Array) -> tuple[jax.Array]:
  return (x + s * y,)


def stream_kernels(nbytes: int) -> dict[str, Loop]:
  """A copy (``x * s``) and a triad (``x + s * y``) over ``nbytes`` arrays.

  ``s`` is an argument, not a constant, so XLA cannot fold the multiply away
  and must read and write every element; ``x`` is donated and updated in
  place. The copy moves ``2 * nbytes`` (read + write), the triad ``3 *``.
  """
  n = nbytes // 4
  one = jnp.float32(1.0)
  return {
    "copy": Loop(_scale, (jnp.ones((n,), jnp.float32),), (one,)),
    "triad": Loop(_triad, (jnp.ones((n,), jnp.float32),), (jnp.full((n,), 0.5), one)),
  }


def stream_bandwidth(nbytes: int, timing: Timing) -> dict[str, Any]:
  """Measured GB/s of the copy and the triad on arrays of ``nbytes``.

  ``reference_gbps`` is the copy's: the bandwidth every step is compared to.
  """
  kernels = stream_kernels(nbytes)
  times = measure(dict(kernels), timing)
  out: dict[str, Any] = {"array_bytes": nbytes}
  for name, kernel in kernels.items():
    moved = kernel.moved_bytes
    ms = times[name]["median_ms"]
    out[name] = {**times[name], "bytes": moved, "gbps": gbps(moved, ms)}
  del kernels
  out["reference_gbps"] = out["copy"]["gbps"]
  return out


# --------------------------------------------------------------------------
# PyTorch, for reference.
# --------------------------------------------------------------------------


class TorchStep:
  """``torch.optim.RMSprop(foreach=True).step()`` on the same shapes.

  The step updates the parameters in place: a train step, like the others.
  """

  def __init__(self, variant: str, shapes: trees.Shapes):
    assert torch is not None
    kwargs = {"momentum": 0.9} if variant == "momentum" else {}
    params = []
    for name, shape in shapes.items():
      one = {name: shape}  # same values as the JAX contenders get
      p = torch.tensor(np.asarray(trees.materialise(one, 1.0)[name]))
      p.grad = torch.tensor(np.asarray(trees.materialise(one, 0.5)[name]))
      params.append(p)
    self.opt = torch.optim.RMSprop(
      params,
      lr=LR,
      alpha=0.9,
      eps=1e-8,
      centered=variant == "centered",
      foreach=True,
      **kwargs,
    )

  def __call__(self) -> None:
    assert torch is not None
    with torch.no_grad():
      self.opt.step()

  def wait(self) -> None:
    pass  # PyTorch's CPU step is synchronous
