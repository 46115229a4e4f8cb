"""Where ``update`` and ``init`` run: inlined under a user's jit, compiled once otherwise.

Each path is pinned: eagerly, and under an eager ``vmap`` or ``grad``, the
update is one compiled computation (the core's ``jax.jit`` traces it); inside
a user's ``jit`` it traces straight into the user's program (no nested call);
and 8-bit state comes out bit for bit the same on every path.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmsprop_jax
from rmsprop_jax import _compile
from tests._expect import centred_warning

_fresh_sizes = itertools.count(3)


def _problem(n: int | None = None, dtype=None):
  """A tree with a leaf length not used by any other test, so nothing is cached."""
  n = n or next(_fresh_sizes) + 100
  params = {"w": jnp.linspace(-1.0, 1.0, 64 * n).reshape(64, n), "b": jnp.ones(3)}
  grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
  with centred_warning(True, dtype):
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, centered=True, state_dtype=dtype)
  return opt, params, grads


def _compiled_during(fn: Callable[[], Any]) -> list[str]:
  """The names of the functions compiled to XLA while ``fn`` runs."""
  handler = _Records()
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  try:
    with jax.log_compiles():
      jax.block_until_ready(fn())
  finally:
    logger.removeHandler(handler)
  return [m.group(1) for m in map(_COMPILING.match, handler.messages) if m]


# "Compiling jit(f) ..." in newer JAX, "Compiling f ..." in older releases.
_COMPILING = re.compile(r"Compiling (?:jit\()?([^\s()]+)\)? ")


class _Records(logging.Handler):
  def __init__(self) -> None:
    super().__init__(logging.DEBUG)
    self.messages: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append(record.getMessage())


@pytest.fixture(autouse=True, scope="module")
def _warm_probe():
  # The probe's scalar add compiles once per process; keep it out of the counts.
  jax.vmap(_compile.staging)(jnp.ones(2))


def _nested_calls(jaxpr: Any) -> list[str]:
  """The package's own functions that appear as nested calls in ``jaxpr``."""
  names = [str(e.params.get("name")) for e in jaxpr.jaxpr.eqns]
  return [n for n in names if n in ("_update", "_quantized_fill")]


def test_probe_tells_recording_traces_from_eager_transformations():
  seen = {}

  def probe(name):
    def f(x):
      seen[name] = _compile.staging(x)
      return x

    return f

  x = jnp.ones(3)
  probe("eager")(x)
  jax.vmap(probe("vmap"))(jnp.ones((2, 3)))
  jax.grad(lambda x: probe("grad")(x).sum())(x)
  jax.jit(probe("jit"))(x)
  jax.jit(jax.vmap(probe("jit of vmap")))(jnp.ones((2, 3)))
  jax.vmap(jax.jit(probe("vmap of jit")))(jnp.ones((2, 3)))
  jax.lax.scan(lambda c, _: (probe("scan")(c), None), x, None, length=1)
  assert seen == {
    "eager": False,
    "vmap": False,
    "grad": False,
    "jit": True,
    "jit of vmap": True,
    "vmap of jit": True,
    "scan": True,
  }


def test_eager_update_is_one_compiled_computation():
  opt, params, grads = _problem()
  state = opt.init(params)
  step = lambda: opt.update(grads, state, params)
  assert _compiled_during(step) == ["_update"]
  assert _compiled_during(step) == []  # cached


def test_eager_vmap_of_update_is_one_compiled_computation():
  opt, params, grads = _problem()
  state = opt.init(params)
  batched = jax.tree.map(lambda g: jnp.stack([g, 2 * g]), grads)
  run = lambda: jax.vmap(lambda g: opt.update(g, state, params)[0])(batched)
  assert _compiled_during(run) == ["_update"]


def test_eager_grad_through_update_is_one_compiled_computation():
  opt, params, grads = _problem()
  state = opt.init(params)

  def loss(g):
    updates, _ = opt.update(g, state, params)
    return square(updates)

  square = lambda tree: sum(jnp.sum(u**2) for u in jax.tree.leaves(tree))
  jax.grad(square)(grads)  # the loss's own operations compile here, not below
  names = _compiled_during(lambda: jax.grad(loss)(grads))
  # The forward pass and its transpose, each one computation.
  assert set(names) == {"_update"}, names


def test_update_under_a_user_jit_traces_into_the_users_program():
  opt, params, grads = _problem()
  state = opt.init(params)
  names = _compiled_during(lambda: jax.jit(opt.update)(grads, state, params))
  assert names == ["update_fn"]
  jaxpr = jax.make_jaxpr(opt.update)(grads, state, params)
  assert _nested_calls(jaxpr) == []


def test_8bit_init_under_a_user_jit_has_no_nested_call():
  opt, params, _ = _problem(n=64, dtype=jnp.float8_e4m3fn)
  jaxpr = jax.make_jaxpr(opt.init)(params)
  assert _nested_calls(jaxpr) == []
  chex.assert_trees_all_equal(opt.init(params), jax.jit(opt.init)(params))


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_8bit_state_is_bit_identical_on_every_path(dtype):
  opt, params, grads = _problem(n=64, dtype=dtype)
  state = opt.init(params)
  for _ in range(2):  # the second store reads the first one's counter
    expected = opt.update(grads, state, params)
    state = expected[1]
  state = opt.init(params)
  paths = {
    "jit": lambda s: jax.jit(opt.update)(grads, s, params),
    "eager vmap": lambda s: jax.tree.map(
      lambda x: x[0],
      jax.vmap(lambda g: opt.update(g, s, params))(
        jax.tree.map(lambda g: g[None], grads)
      ),
    ),
    "eager jvp": lambda s: jax.jvp(
      lambda g: opt.update(g, s, params), (grads,), (grads,)
    )[0],
  }
  for name, step in paths.items():
    s = state
    for _ in range(2):
      out = step(s)
      s = out[1]
    chex.assert_trees_all_equal(out, expected, custom_message=name)
  assert np.asarray(expected[1].nu["w"].codes).dtype == dtype
