"""``lazy_rows``: the rows an embedding lookup did not touch stay as they were.

TF1's sparse kernels, and tf_keras' legacy RMSprop with momentum, update only
the rows of an embedding table that a lookup touched: the others keep their
value and every slot (nu, mu, the momentum buffer). Here a row of a marked leaf
whose gradient is zero everywhere is left alone the same way, in every storage
format, on every path (eager, jit, vmap, inject_hyperparams), sharded or not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import QuantizedArray
from tests import _compat
from tests import numpy_reference as ref

ROWS, WIDTH = 12, 4


def _lookups(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
  """The dense gradient of a lookup of 3 rows, one of them twice now and then."""
  g = np.zeros((rows, width))
  ids = rng.choice(rows, size=3, replace=False)
  if rng.random() < 0.5:
    ids[2] = ids[0]  # a duplicate: its two gradients add up, as in TF
  for i in ids:
    g[i] += rng.normal(size=width)
  return g


def _problem(steps: int = 8, seed: int = 0, rows: int = ROWS, width: int = WIDTH):
  rng = np.random.default_rng(seed)
  params = {"table": rng.normal(size=(rows, width)), "dense": rng.normal(size=(3, 2))}
  grads = [
    {"table": _lookups(rng, rows, width), "dense": rng.normal(size=(3, 2))}
    for _ in range(steps)
  ]
  return params, grads


def _reference(
  params: dict[str, np.ndarray],
  grads: list[dict[str, np.ndarray]],
  config: ref.Config,
  lazy: dict[str, bool],
) -> list[dict[str, np.ndarray]]:
  """The float64 rule, lazy on the leaves ``lazy`` marks: the trajectory."""
  configs = {k: dataclasses.replace(config, lazy_rows=on) for k, on in lazy.items()}
  p = {k: np.asarray(x, np.float64) for k, x in params.items()}
  states = {k: ref.init(x, configs[k]) for k, x in p.items()}
  out = [dict(p)]
  for g in grads:
    for k in p:
      u, states[k] = ref.step(g[k], p[k], states[k], configs[k])
      p[k] = p[k] + u
    out.append(dict(p))
  return out


def _run(opt: Any, params: Any, grads: list[Any], jit: bool = False) -> list[Any]:
  update = jax.jit(opt.update) if jit else opt.update
  state = opt.init(params)
  out = [params]
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


LAZY_TABLE = {"table": True, "dense": False}
CASES = {
  "plain": (dict(), ref.Config()),
  "momentum": (dict(momentum=0.875), ref.Config(momentum=0.875)),
  "centered_momentum": (
    dict(momentum=0.875, centered=True),
    ref.Config(momentum=0.875, centered=True),
  ),
  "nesterov": (
    dict(momentum=0.9, nesterov=True),
    ref.Config(momentum=0.9, nesterov=True),
  ),
  "decoupled_weight_decay": (
    dict(weight_decay=0.1, decoupled_weight_decay=True),
    ref.Config(weight_decay=0.1, decoupled_weight_decay=True),
  ),
  "eps_outside_lr_outside_momentum": (
    dict(eps=1e-3, eps_in_sqrt=False, momentum=0.5, lr_in_momentum=False),
    ref.Config(eps=1e-3, eps_in_sqrt=False, momentum=0.5, lr_in_momentum=False),
  ),
}


@pytest.mark.parametrize("case", CASES)
def test_rmsprop_lazy_rows_follow_the_float64_rule(case):
  kwargs, config = CASES[case]
  config = dataclasses.replace(config, learning_rate=0.05, initial_scale=0.5)
  params, grads = _problem()
  want = _reference(params, grads, config, LAZY_TABLE)
  with _compat.enable_x64():
    opt = rmsprop_jax.rmsprop(0.05, initial_scale=0.5, lazy_rows=LAZY_TABLE, **kwargs)
    got = _run(opt, jax.tree.map(jnp.asarray, params), grads)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
      chex.assert_trees_all_close(a, b, rtol=1e-12, atol=1e-14, custom_message=k)


def test_a_row_looked_up_once_then_stays_put_under_momentum():
  params, grads = _problem(steps=10)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads[0]["table"][5] = 1.0
  for g in grads[1:]:
    g["table"][5] = 0.0
  got = _run(rmsprop_jax.tf1_rmsprop(0.05, momentum=0.9, lazy_rows=True), params, grads)
  dense = _run(rmsprop_jax.tf1_rmsprop(0.05, momentum=0.9), params, grads)
  after_lookup = got[1]["table"][5]
  assert not np.array_equal(after_lookup, params["table"][5])
  assert all(np.array_equal(p["table"][5], after_lookup) for p in got[1:])
  # The dense rule keeps moving it with the momentum of that one lookup.
  drift = np.abs(dense[-1]["table"][5] - dense[1]["table"][5])
  assert np.all(drift > 0.1 * np.abs(after_lookup - params["table"][5]))


@pytest.mark.parametrize(
  "state_dtype", [None, jnp.bfloat16, jnp.float8_e4m3fn], ids=lambda d: str(d)
)
def test_untouched_rows_keep_their_stored_state_bit_for_bit(state_dtype):
  # 64 x 64: large enough for the 8-bit format to quantize it (block per row).
  params, grads = _problem(steps=3, rows=64, width=64)
  opt = rmsprop_jax.rmsprop(
    0.01, momentum=0.9, lazy_rows=LAZY_TABLE, state_dtype=state_dtype
  )
  state = opt.init(params)
  if state_dtype is jnp.float8_e4m3fn:
    assert isinstance(state.nu["table"], QuantizedArray)
  for g in grads:
    still = ~np.any(g["table"] != 0, axis=1)
    updates, new = opt.update(g, state, params)
    np.testing.assert_array_equal(np.asarray(updates["table"])[still], 0.0)
    assert np.any(np.asarray(updates["table"])[~still] != 0)
    for field in ("nu", "trace"):
      old_leaf, new_leaf = getattr(state, field)["table"], getattr(new, field)["table"]
      for a, b in zip(
        jax.tree.leaves(old_leaf), jax.tree.leaves(new_leaf), strict=True
      ):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a[still].view(np.uint8), b[still].view(np.uint8))
        assert not np.array_equal(a[~still], b[~still])
    state, params = new, optax.apply_updates(params, updates)


def test_touched_rows_and_unmarked_leaves_are_the_dense_rule_bit_for_bit():
  params, grads = _problem()
  lazy = rmsprop_jax.rmsprop(0.05, centered=True, lazy_rows=LAZY_TABLE)
  dense = rmsprop_jax.rmsprop(0.05, centered=True)
  s_lazy, s_dense = lazy.init(params), dense.init(params)
  u_lazy, s_lazy = lazy.update(grads[0], s_lazy, params)
  u_dense, s_dense = dense.update(grads[0], s_dense, params)
  touched = np.any(grads[0]["table"] != 0, axis=1)
  chex.assert_trees_all_equal(u_lazy["dense"], u_dense["dense"])
  chex.assert_trees_all_equal(s_lazy.nu["dense"], s_dense.nu["dense"])
  np.testing.assert_array_equal(
    np.asarray(u_lazy["table"])[touched], np.asarray(u_dense["table"])[touched]
  )


def test_step_count_advances_with_untouched_rows():
  params = {"table": jnp.ones((4, 2))}
  opt = rmsprop_jax.rmsprop(0.1, bias_correction=True, lazy_rows=True)
  state = opt.init(params)
  for k in range(3):
    _, state = opt.update({"table": jnp.zeros((4, 2))}, state)
    assert int(state.count) == k + 1


def test_a_looked_up_row_whose_gradient_sums_to_zero_counts_as_untouched():
  # The documented edge: TF would decay this row's nu; here it stays.
  params = {"table": jnp.ones((3, 2))}
  opt = rmsprop_jax.tf1_rmsprop(0.1, lazy_rows=True)
  state = opt.init(params)
  g = {"table": jnp.array([[0.5, -0.5], [0.0, 0.0], [1.0, 0.0]])}  # row 1: +g - g
  _, state = opt.update(g, state)
  np.testing.assert_array_equal(state.nu["table"][1], [1.0, 1.0])


def test_zero_dimensional_leaves_follow_the_dense_rule():
  params = {"scale": jnp.asarray(2.0), "table": jnp.ones((3, 2))}
  grads = {"scale": jnp.asarray(0.0), "table": jnp.zeros((3, 2))}
  lazy = rmsprop_jax.rmsprop(0.1, momentum=0.5, lazy_rows=True)
  dense = rmsprop_jax.rmsprop(0.1, momentum=0.5)
  _, s_lazy = lazy.update(grads, lazy.init(params))
  _, s_dense = dense.update(grads, dense.init(params))
  chex.assert_trees_all_equal(s_lazy.nu["scale"], s_dense.nu["scale"])


def test_one_dimensional_lazy_leaves_keep_full_precision_8bit_state():
  # An 8-bit block of a 1-D leaf spans 256 rows, which could not keep their
  # stored values one by one: such a leaf's state stays full precision.
  params = {"bias": jnp.ones(8192), "w": jnp.ones((64, 128))}
  opt = rmsprop_jax.rmsprop(0.1, lazy_rows=True, state_dtype=jnp.float8_e4m3fn)
  state = opt.init(params)
  assert not isinstance(state.nu["bias"], QuantizedArray)
  assert isinstance(state.nu["w"], QuantizedArray)
  dense = rmsprop_jax.rmsprop(0.1, state_dtype=jnp.float8_e4m3fn).init(params)
  assert isinstance(dense.nu["bias"], QuantizedArray)
  with pytest.raises(ValueError, match="lazy_rows marks a 1-D leaf of shape"):
    opt.update(params, dense)


@pytest.mark.parametrize("momentum", [0.0, 0.875])
def test_tf_keras_legacy_is_lazy_only_with_its_momentum_kernel(momentum):
  params, grads = _problem(steps=4)
  lazy = rmsprop_jax.tf_keras_legacy_rmsprop(0.01, momentum=momentum, lazy_rows=True)
  dense = rmsprop_jax.tf_keras_legacy_rmsprop(0.01, momentum=momentum)
  same = all(
    np.array_equal(a["table"], b["table"])
    for a, b in zip(_run(lazy, params, grads), _run(dense, params, grads), strict=True)
  )
  assert same == (momentum == 0.0)


def test_eager_jit_and_vmap_agree_bit_for_bit():
  params, grads = _problem(steps=3)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  grads = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g) for g in grads]
  opt = rmsprop_jax.rmsprop(0.05, momentum=0.9, centered=True, lazy_rows=LAZY_TABLE)
  eager = _run(opt, params, grads)
  chex.assert_trees_all_equal(_run(opt, params, grads, jit=True), eager)

  def sweep(lr):
    o = rmsprop_jax.rmsprop(lr, momentum=0.9, centered=True, lazy_rows=LAZY_TABLE)
    return _run(o, params, grads)[-1]

  batched = jax.vmap(sweep)(jnp.asarray([0.05, 0.01]))
  chex.assert_trees_all_equal(jax.tree.map(lambda x: x[0], batched), eager[-1])
  chex.assert_trees_all_close(
    jax.tree.map(lambda x: x[1], batched), sweep(0.01), rtol=0, atol=0
  )


def test_inject_hyperparams_takes_a_bool_pytree_and_asks_for_static_args_else():
  params, grads = _problem(steps=3)
  want = _run(
    rmsprop_jax.rmsprop(0.05, momentum=0.9, lazy_rows=LAZY_TABLE), params, grads
  )
  injected = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=0.05, momentum=0.9, lazy_rows=LAZY_TABLE
  )
  chex.assert_trees_all_close(_run(injected, params, grads), want, rtol=1e-6)

  def table_only(p):
    return jax.tree.map(lambda x: jnp.asarray(jnp.shape(x)[:1] == (ROWS,)), p)

  # optax takes a callable for a schedule unless it is listed in static_args,
  # and passes on its value at the step count: an array here, refused by name.
  with pytest.raises(TypeError, match=r"static_args=\('lazy_rows',\)"):
    optax.inject_hyperparams(rmsprop_jax.rmsprop)(
      learning_rate=0.05, momentum=0.9, lazy_rows=table_only
    ).init(params)
  static = optax.inject_hyperparams(rmsprop_jax.rmsprop, static_args=("lazy_rows",))(
    learning_rate=0.05,
    momentum=0.9,
    lazy_rows=lambda p: jax.tree.map(lambda x: jnp.shape(x)[:1] == (ROWS,), p),
  )
  chex.assert_trees_all_close(_run(static, params, grads), want, rtol=1e-6)


def test_lazy_state_round_trips_through_optax_and_orbax(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params, grads = _problem(steps=2, rows=64, width=64)
  opt = rmsprop_jax.rmsprop(0.05, momentum=0.9, lazy_rows=LAZY_TABLE)
  state = opt.init(params)
  for g in grads:
    _, state = opt.update(g, state, params)
  template = jax.eval_shape(optax.rmsprop(0.05, momentum=0.9).init, params)
  back = rmsprop_jax.from_optax(rmsprop_jax.to_optax(state, template))
  chex.assert_trees_all_equal(back, state)

  eight_bit = rmsprop_jax.rmsprop(
    0.05, lazy_rows=LAZY_TABLE, state_dtype=jnp.float8_e4m3fn
  )
  state = eight_bit.init(params)
  _, state = eight_bit.update(grads[0], state, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", state)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "ckpt", jax.eval_shape(lambda: state))
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal(
    eight_bit.update(grads[1], restored, params),
    eight_bit.update(grads[1], state, params),
  )
