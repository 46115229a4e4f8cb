"""rmsprop_jax inside the JAX ecosystem: Orbax, Flax, Equinox, optax wrappers.

Each framework test trains through the framework's own API and compares the
result with a plain-JAX loop (``opt.update`` + ``optax.apply_updates`` on a
pytree of arrays) that runs the same rule on the same data: the framework must
neither drop the optimizer state nor change the arithmetic. The optax-wrapper
tests compare with what the wrapper promises, computed independently (clipped
gradients by hand, the mean of micro-batch gradients, a subtree optimised
alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests import _trees as trees
from tests._compat import (
  event_duration_listener,
  nnx_optimizer_update,
  nnx_to_pure_dict,
)

# A rule that uses every state field (nu, mu, trace) and weight decay (so
# params must reach update). Not bias correction: centred and bias-corrected,
# the first step divides by sqrt(eps) (its variance estimate is exactly 0).
FULL: dict[str, Any] = dict(
  decay=0.9,
  centered=True,
  momentum=0.9,
  nesterov=True,
  weight_decay=1e-2,
  decoupled_weight_decay=True,
)


def _assert_trees_equal(a: Any, b: Any) -> None:
  """Bit-for-bit equality, structure included."""
  chex.assert_trees_all_equal_structs(a, b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


# --------------------------------------------------------------------- Orbax


@pytest.mark.parametrize(
  "make_opt",
  [
    pytest.param(lambda: rmsprop_jax.rmsprop(0.05), id="plain-mu-and-trace-None"),
    pytest.param(lambda: rmsprop_jax.rmsprop(0.05, **FULL), id="centered-nesterov-wd"),
    pytest.param(
      lambda: rmsprop_jax.rmsprop(0.05, momentum=0.9, state_dtype=jnp.bfloat16),
      id="bf16-state",
    ),
    pytest.param(
      lambda: rmsprop_jax.rmsprop(0.05, momentum=0.9, state_dtype=jnp.float8_e4m3fn),
      id="fp8-quantized-state",
    ),
    pytest.param(
      lambda: optax.chain(
        optax.clip_by_global_norm(1.0), rmsprop_jax.rmsprop(0.05, momentum=0.9)
      ),
      id="chain-with-empty-state",
    ),
  ],
)
def test_orbax_restore_into_abstract_target_continues_bit_exactly(tmp_path, make_opt):
  ocp = pytest.importorskip("orbax.checkpoint")
  opt = make_opt()
  x, y = trees.regression()

  def loss(params):
    # "emb" is large enough (64 x 64) for 8-bit states to be block-quantized
    data_term = trees.regression_loss(params, x, y)
    return data_term + jnp.mean((params["emb"] - 0.3) ** 2)

  train = jax.jit(
    lambda params, state, n: trees.fit(opt, params, loss, n, state=state),
    static_argnums=2,
  )
  params = {**trees.regression_params(), "emb": jnp.ones((64, 64))}
  expected = train(params, opt.init(params), 6)

  half = train(params, opt.init(params), 3)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", half)
  abstract = jax.eval_shape(lambda p: (p, opt.init(p)), params)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "ckpt", abstract)

  assert type(restored[1]) is type(half[1])
  _assert_trees_equal(restored, half)  # None fields stay None, dtypes kept
  _assert_trees_equal(train(*restored, 3), expected)


# --------------------------------------------------------------- Flax / Eqx


def test_flax_nnx_optimizer_matches_plain_jax_loop():
  nnx = pytest.importorskip("flax.nnx")

  class Model(nnx.Module):
    def __init__(self, rngs: Any):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.out = nnx.Linear(8, 3, rngs=rngs)
      self.temperature = nnx.Variable(jnp.array(2.0))  # not a Param: kept

    def __call__(self, x):
      return self.out(jnp.tanh(self.hidden(x) / self.temperature))

  def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  tx = rmsprop_jax.rmsprop(0.01, **FULL)
  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    nnx_optimizer_update(optimizer, model, grads)
    return loss

  x, y = trees.regression()
  losses = [float(train_step(model, optimizer, x, y)) for _ in range(30)]
  assert losses[-1] < 0.5 * losses[0]

  # The reference: the same initial model as a pure (graphdef, state) pair.
  graphdef, params, rest = nnx.split(Model(nnx.Rngs(0)), nnx.Param, ...)
  pure_loss = lambda params: loss_fn(nnx.merge(graphdef, params, rest), x, y)
  params, _ = trees.fit(tx, params, pure_loss, 30)
  chex.assert_trees_all_close(
    nnx_to_pure_dict(nnx.state(model, nnx.Param)),
    nnx_to_pure_dict(params),
    rtol=1e-6,
    atol=1e-7,
  )


def test_flax_linen_train_state_matches_plain_jax_loop():
  pytest.importorskip("flax")
  import flax.linen as nn
  from flax.training import train_state

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))

  x, y = trees.regression()
  model = Model()
  params = model.init(jax.random.key(0), x)["params"]
  tx = rmsprop_jax.rmsprop(0.01, **FULL)

  def loss_fn(params, x, y):
    return jnp.mean((model.apply({"params": params}, x) - y) ** 2)

  @jax.jit
  def train_step(ts, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(ts.params, x, y)
    return ts.apply_gradients(grads=grads), loss

  ts = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  losses = []
  for _ in range(30):
    ts, loss = train_step(ts, x, y)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  assert isinstance(ts.opt_state, rmsprop_jax.RMSPropState)

  params, _ = trees.fit(tx, params, lambda params: loss_fn(params, x, y), 30)
  chex.assert_trees_all_close(ts.params, params, rtol=1e-6, atol=1e-7)


def test_equinox_filter_jit_with_non_array_leaves_matches_plain_jax_loop():
  eqx = pytest.importorskip("equinox")

  class Model(eqx.Module):
    mlp: eqx.nn.MLP  # holds an activation function and ints: not arrays
    steps: jax.Array  # an integer array: must stay out of the optimiser
    name: str = "net"

    def __call__(self, x):
      return jax.vmap(self.mlp)(x)

  x, y = trees.regression()
  mlp = eqx.nn.MLP(4, 3, 8, depth=2, activation=jnp.tanh, key=jax.random.key(0))
  model = Model(mlp, jnp.array(0))
  tx = rmsprop_jax.rmsprop(0.01, **FULL)
  # Only inexact arrays are optimised; ints, strings and functions stay as
  # they are (the filtered tree has None there, which rmsprop_jax skips).
  opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

  def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  @eqx.filter_jit
  def train_step(model, opt_state, x, y):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = tx.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    model = eqx.tree_at(lambda m: m.steps, model, model.steps + 1)
    return model, opt_state, loss

  trained, state, losses = model, opt_state, []
  for _ in range(30):
    trained, state, loss = train_step(trained, state, x, y)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0]
  assert int(trained.steps) == 30 and trained.name == "net"

  params, static = eqx.partition(model, eqx.is_inexact_array)
  pure_loss = lambda params: loss_fn(eqx.combine(params, static), x, y)
  params, _ = trees.fit(tx, params, pure_loss, 30)
  chex.assert_trees_all_close(
    eqx.filter(trained, eqx.is_inexact_array), params, rtol=1e-6, atol=1e-7
  )


# ------------------------------------------------------------ optax wrappers


def test_chain_with_clip_by_global_norm_rescales_gradients_first():
  max_norm = 1.0
  opt = optax.chain(
    optax.clip_by_global_norm(max_norm), rmsprop_jax.rmsprop(0.1, **FULL)
  )
  ref = rmsprop_jax.rmsprop(0.1, **FULL)
  params = trees.regression_params()
  state, ref_state = opt.init(params), ref.init(params)
  for i in range(5):
    g = jax.tree.map(lambda g: 10 * g, trees.grads(i, params))
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(v))) for v in g.values()))
    assert norm > max_norm  # so the clip is active
    clipped = jax.tree.map(lambda v, n=norm: v * np.float32(max_norm / n), g)
    u, state = opt.update(g, state, params)
    ref_u, ref_state = ref.update(clipped, ref_state, params)
    chex.assert_trees_all_close(u, ref_u, rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, u)


@pytest.mark.standard_promotion  # optax.MultiSteps
def test_multisteps_accumulation_equals_one_big_batch_step():
  k = 4
  x, y = trees.regression(n=4 * k)
  micro = [(x[i::k], y[i::k]) for i in range(k)]
  opt = optax.MultiSteps(rmsprop_jax.rmsprop(0.05, **FULL), every_k_schedule=k)
  ref = rmsprop_jax.rmsprop(0.05, **FULL)
  params = ref_params = trees.regression_params()
  state, ref_state = opt.init(params), ref.init(params)
  grad = jax.jit(jax.grad(trees.regression_loss))
  update = jax.jit(opt.update)
  for _ in range(3):  # three big-batch steps
    for j, (xb, yb) in enumerate(micro):
      u, state = update(grad(params, xb, yb), state, params)
      if j < k - 1:  # accumulating: no update yet
        chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
      params = optax.apply_updates(params, u)
    # Equal-size micro-batches: the mean of their mean-loss gradients is the
    # big batch's gradient.
    ref_u, ref_state = ref.update(grad(ref_params, x, y), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_u)
    chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-6)


def test_apply_if_finite_skips_a_nan_step_leaving_params_and_state_untouched():
  inner = rmsprop_jax.rmsprop(0.05, **FULL)
  opt = optax.apply_if_finite(inner, max_consecutive_errors=3)
  params = trees.regression_params()
  state = opt.init(params)
  step = jax.jit(opt.update)
  u, state = step(trees.grads(0, params), state, params)
  params = optax.apply_updates(params, u)
  before = (params, state.inner_state)

  bad = trees.grads(1, params)
  bad["w"] = bad["w"].at[1, 2].set(jnp.nan)
  u, state = step(bad, state, params)
  after = optax.apply_updates(params, u)
  _assert_trees_equal((after, state.inner_state), before)
  assert int(state.notfinite_count) == 1 and not bool(state.last_finite)

  # The next finite step continues as if the NaN step never happened.
  u, state = step(trees.grads(2, params), state, after)
  ref_u, _ = inner.update(trees.grads(2, params), before[1], before[0])
  chex.assert_trees_all_close(u, ref_u, rtol=1e-6, atol=0)
  assert int(state.notfinite_count) == 0


def _wd_mask(params: Any) -> Any:
  return {"w": True, "b": False}


def test_masked_optimises_only_the_masked_subtree():
  params = {**trees.regression_params(), "frozen": jnp.ones((2,))}
  mask = {"w": True, "b": True, "frozen": False}
  opt = optax.masked(rmsprop_jax.rmsprop(0.1, **FULL), mask)
  sub = rmsprop_jax.rmsprop(0.1, **FULL)
  state = opt.init(params)
  # The inner state holds optax.MaskedNode where the mask is False.
  assert isinstance(state.inner_state.nu["frozen"], optax.MaskedNode)
  sub_params = {"w": params["w"], "b": params["b"]}
  sub_state = sub.init(sub_params)
  for i in range(3):
    g = {**trees.grads(i, sub_params), "frozen": jnp.full((2,), 7.0)}
    u, state = opt.update(g, state, params)
    ref_u, sub_state = sub.update({"w": g["w"], "b": g["b"]}, sub_state, sub_params)
    # masked passes the unmasked leaves' updates through unchanged
    np.testing.assert_array_equal(u["frozen"], g["frozen"])
    chex.assert_trees_all_close({"w": u["w"], "b": u["b"]}, ref_u, rtol=1e-6)
    params = optax.apply_updates(params, u)
    sub_params = optax.apply_updates(sub_params, ref_u)


def test_multi_transform_uses_each_groups_hyper_parameters():
  params = {**trees.regression_params(), "emb": jnp.ones((5, 2))}
  labels = {"w": "dense", "b": "dense", "emb": "embedding"}
  dense = dict(learning_rate=0.1, momentum=0.9, weight_decay=1e-2)
  emb = dict(learning_rate=0.01, decay=0.99, centered=True)
  opt = optax.multi_transform(
    {
      "dense": rmsprop_jax.rmsprop(**dense),
      "embedding": rmsprop_jax.rmsprop(**emb),
    },
    labels,
  )
  refs = {"dense": rmsprop_jax.rmsprop(**dense), "emb": rmsprop_jax.rmsprop(**emb)}
  groups = {
    "dense": lambda t: {"w": t["w"], "b": t["b"]},
    "emb": lambda t: {"emb": t["emb"]},
  }
  state = opt.init(params)
  ref_states = {k: refs[k].init(groups[k](params)) for k in refs}
  for i in range(3):
    g = trees.grads(i, params)
    u, state = opt.update(g, state, params)
    for k in refs:
      ref_u, ref_states[k] = refs[k].update(
        groups[k](g), ref_states[k], groups[k](params)
      )
      chex.assert_trees_all_close(groups[k](u), ref_u, rtol=1e-6)
    params = optax.apply_updates(params, u)


# --------------------------------------------------------- inject_hyperparams


_COMPILE_EVENTS = (
  "/jax/core/compile/jaxpr_trace_duration",
  "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def _count_compilations() -> Iterator[list[str]]:
  """Records every trace-to-jaxpr and every XLA compilation in the block."""
  events: list[str] = []

  def listener(event: str, duration: float, **kwargs: Any) -> None:
    del duration, kwargs
    if event in _COMPILE_EVENTS:
      events.append(event)

  with event_duration_listener(listener):
    yield events


def test_inject_hyperparams_changes_take_effect_and_compile_nothing_new():
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=0.1, decay=0.9, eps=1e-8, momentum=0.5, weight_decay=1e-3
  )
  params = trees.regression_params()
  state = opt.init(params)
  u, state = opt.update(trees.grads(0, params), state, params)  # compiles, once
  u, state = opt.update(trees.grads(1, params), state, params)
  changes = [
    ("learning_rate", 0.05),
    ("decay", 0.8),
    ("eps", 1e-6),
    ("momentum", 0.7),
    ("weight_decay", 2e-3),
    ("initial_scale", 0.5),  # ignored after init, but still accepted
  ]
  steps = []
  with _count_compilations() as compiled:
    for i, (name, value) in enumerate(changes):
      state.hyperparams[name] = value
      inner_before = state.inner_state
      u, state = opt.update(trees.grads(2 + i, params), state, params)
      # (the next iteration edits this dict in place: keep a copy)
      used = dict(state.hyperparams)
      steps.append((name, value, inner_before, u, state.inner_state, used))
  assert compiled == []
  for i, (name, value, inner_before, u, inner, used) in enumerate(steps):
    # The change is visible in the state and is what the step used.
    np.testing.assert_allclose(used[name], value, rtol=1e-7)
    ref = rmsprop_jax.rmsprop(**used)
    ref_u, ref_inner = ref.update(trees.grads(2 + i, params), inner_before, params)
    _assert_trees_equal((u, inner), (ref_u, ref_inner))


def test_inject_hyperparams_under_jit_recompiles_nothing_when_values_change():
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=0.1, momentum=0.9, weight_decay=1e-3
  )
  params = trees.regression_params()
  step = jax.jit(opt.update)
  state = opt.init(params)
  _, state = step(trees.grads(0, params), state, params)
  with _count_compilations() as compiled:
    for i, lr in enumerate([0.05, 0.02, 0.01]):
      state.hyperparams["learning_rate"] = jnp.float32(lr)
      state.hyperparams["weight_decay"] = jnp.float32(lr / 10)
      _, state = step(trees.grads(i, params), state, params)
  assert compiled == []


def test_inject_hyperparams_weight_decay_leaving_zero_compiles_once():
  # weight_decay == 0.0 (concrete) removes the weight-decay branch; moving it
  # away from zero adds the branch: one compilation, then none.
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=0.1, weight_decay=0.0
  )
  # a shape no other test uses, so that no earlier test compiled the branch
  params = {"q": jnp.ones((7, 5))}
  grads = {"q": jnp.full((7, 5), 0.5)}
  state = opt.init(params)
  _, state = opt.update(grads, state, params)
  with _count_compilations() as first:
    state.hyperparams["weight_decay"] = 1e-3
    _, state = opt.update(grads, state, params)
  with _count_compilations() as later:
    state.hyperparams["weight_decay"] = 2e-3
    _, state = opt.update(grads, state, params)
  assert len(first) > 0 and later == []


def test_inject_hyperparams_needs_params_when_weight_decay_is_traced():
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1)
  params = trees.regression_params()
  with pytest.raises(ValueError, match=r"update\(grads, state, params\)"):
    jax.jit(opt.update)(trees.grads(0, params), opt.init(params))


def test_inject_hyperparams_static_weight_decay_works_without_params():
  opt = optax.inject_hyperparams(rmsprop_jax.rmsprop, static_args="weight_decay")(
    learning_rate=0.1
  )
  params = trees.regression_params()
  state = opt.init(params)
  assert "weight_decay" not in state.hyperparams
  u, _ = jax.jit(opt.update)(trees.grads(0, params), state)
  ref_u, _ = rmsprop_jax.rmsprop(0.1).update(
    trees.grads(0, params), opt.init(params).inner_state
  )
  _assert_trees_equal(u, ref_u)


def test_inject_hyperparams_static_state_dtype_and_mask():
  # A dtype and a mask function are callables: without static_args,
  # inject_hyperparams would take them for schedules.
  opt = optax.inject_hyperparams(
    rmsprop_jax.rmsprop, static_args=("state_dtype", "weight_decay_mask")
  )(
    learning_rate=0.1,
    weight_decay=0.5,
    decoupled_weight_decay=True,
    weight_decay_mask=_wd_mask,
    state_dtype=jnp.bfloat16,
  )
  ref = rmsprop_jax.rmsprop(
    0.1,
    weight_decay=0.5,
    decoupled_weight_decay=True,
    weight_decay_mask=_wd_mask,
    state_dtype=jnp.bfloat16,
  )
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
  state = opt.init(params)
  assert set(state.hyperparams) == {
    "learning_rate",
    "decay",
    "eps",
    "initial_scale",
    "weight_decay",
  }
  assert state.inner_state.nu["w"].dtype == jnp.bfloat16
  zero = jax.tree.map(jnp.zeros_like, params)
  u, state = jax.jit(opt.update)(zero, state, params)
  ref_u, _ = ref.update(zero, ref.init(params), params)
  _assert_trees_equal(u, ref_u)
  np.testing.assert_allclose(u["w"], -0.05, rtol=1e-6)  # decayed
  np.testing.assert_array_equal(u["b"], 0.0)  # masked out


# ------------------------------------------------------------------- vmap


def _train_quadratic(lr: jax.Array, decay: jax.Array, steps: int = 25) -> Any:
  """Fits w to a fixed target with the given hyper-parameters."""
  target = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32)
  opt = rmsprop_jax.rmsprop(lr, decay, momentum=0.5, centered=True)
  params = {"w": jnp.zeros((6,), jnp.float32)}
  return trees.fit(opt, params, lambda p: jnp.sum((p["w"] - target) ** 2), steps)


def test_vmap_over_learning_rates_and_decays_equals_separate_runs():
  lrs = jnp.array([0.003, 0.01, 0.03, 0.1], jnp.float32)
  decays = jnp.array([0.9, 0.99, 0.5, 0.0], jnp.float32)
  population = jax.jit(jax.vmap(_train_quadratic))(lrs, decays)
  for i in range(len(lrs)):
    single = jax.jit(_train_quadratic)(lrs[i], decays[i])
    member = jax.tree.map(lambda leaf, i=i: leaf[i], population)
    chex.assert_trees_all_close(member, single, rtol=2e-6, atol=1e-7)
  # the members really differ
  assert len({float(w[0]) for w in population[0]["w"]}) == len(lrs)
