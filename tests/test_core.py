"""The core rule against an independent float64 NumPy transcription, and optax."""

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
from rmsprop_jax import _transform
from tests import _trees as trees
from tests import numpy_reference as ref
from tests._compat import enable_x64


def _schedule(k):
  return 0.05 * 0.7 ** (k // 3)


def _np_schedule(k: int) -> float:
  return 0.05 * 0.7 ** (k // 3)


# Named configurations; together they switch every option on at least once and
# cover the interactions that change the arithmetic (momentum x nesterov x
# lr placement, centred x bias correction, both weight-decay styles).
CASES: dict[str, dict[str, Any]] = {
  "plain": {},
  "eps_outside_root": dict(eps_in_sqrt=False),
  "initial_scale_one": dict(initial_scale=1.0),
  "centered": dict(centered=True),
  "centered_bias_corrected": dict(centered=True, bias_correction=True, eps=1e-2),
  "bias_correction": dict(bias_correction=True),
  "momentum": dict(momentum=0.9),
  "nesterov": dict(momentum=0.9, nesterov=True),
  "momentum_torch_style": dict(momentum=0.8, lr_in_momentum=False),
  "nesterov_torch_style": dict(momentum=0.8, nesterov=True, lr_in_momentum=False),
  "coupled_weight_decay": dict(weight_decay=0.1),
  "decoupled_weight_decay": dict(weight_decay=0.1, decoupled_weight_decay=True),
  "masked_weight_decay": dict(weight_decay=0.1, mask=True),
  "maximize": dict(maximize=True),
  "caution": dict(momentum=0.9, caution=True),
  "caution_nesterov_torch_style": dict(
    momentum=0.8, nesterov=True, lr_in_momentum=False, caution=True, weight_decay=0.1
  ),
  "corrected_weight_decay_schedule": dict(
    learning_rate="schedule",
    weight_decay=0.5,
    decoupled_weight_decay=True,
    corrected_weight_decay=True,
    max_lr=0.05,
  ),
  "schedule": dict(learning_rate="schedule"),
  "schedule_momentum_torch_style": dict(
    learning_rate="schedule", momentum=0.9, lr_in_momentum=False
  ),
  "schedule_momentum_lr_inside": dict(learning_rate="schedule", momentum=0.9),
  "everything_torch_like": dict(
    decay=0.99,
    eps_in_sqrt=False,
    centered=True,
    momentum=0.5,
    lr_in_momentum=False,
    weight_decay=0.01,
    maximize=True,
    learning_rate="schedule",
  ),
  "everything_keras_like": dict(
    centered=True,
    momentum=0.7,
    nesterov=True,
    bias_correction=True,
    weight_decay=0.02,
    decoupled_weight_decay=True,
    initial_scale=0.5,
    eps=1e-3,
  ),
}


def _mask(params):
  # Weight decay on matrices only, the usual "no decay on biases" rule.
  return {"dense": {"w": True, "b": False}, "stack": [False, (True,)]}


def _build(case: dict[str, Any]):
  """Returns (rmsprop_jax transformation, per-leaf reference configs)."""
  kw = dict(case)
  use_mask = kw.pop("mask", False)
  lr = kw.pop("learning_rate", 0.05)
  if lr == "schedule":
    tx_lr, ref_lr = _schedule, _np_schedule
  else:
    tx_lr = ref_lr = lr
  tx = rmsprop_jax.rmsprop(tx_lr, weight_decay_mask=_mask if use_mask else None, **kw)
  base = ref.Config(learning_rate=ref_lr, **kw)
  mask = _mask(None) if use_mask else jax.tree.map(lambda _: True, _mask(None))
  return tx, base, mask


def _reference(base, mask, grads):
  """The reference's updates for ``grads`` from ``numpy_params``, and its state."""
  params = trees.numpy_params(np.float64)
  states = jax.tree.map(lambda p: ref.init(p, base), params)
  configs = jax.tree.map(lambda m: dataclasses.replace(base, mask=m), mask)
  treedef = jax.tree.structure(params)
  seen = []
  for g in grads:
    leaves = (treedef.flatten_up_to(t) for t in (g, params, states, configs))
    res = [ref.step(*a) for a in zip(*leaves, strict=True)]
    updates = treedef.unflatten([r[0] for r in res])
    states = treedef.unflatten([r[1] for r in res])
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    seen.append(updates)
  return seen, states


def _ours_and_reference(case, dtype, jit: bool, steps: int = 7):
  tx, base, mask = _build(case)
  grads = trees.gradients(trees.numpy_params(np.float64), steps)
  expected, ref_states = _reference(base, mask, grads)
  params = trees.params(dtype)
  ours = [jax.tree.map(lambda x: jnp.asarray(x, dtype), g) for g in grads]
  _, state, out = trees.run(tx, params, ours, jit=jit)
  return out, expected, state, ref_states


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_under_x64(name, jit):
  with enable_x64(True):
    out, expected, state, ref_states = _ours_and_reference(CASES[name], np.float64, jit)
    for u, e in zip(out, expected, strict=True):
      chex.assert_trees_all_close(u, e, rtol=1e-10, atol=1e-13)
    # The momentum buffer is kept with the update's sign: the negation of the
    # libraries' (and the reference's) buffer.
    for field, sign in (("nu", 1), ("mu", 1), ("trace", -1)):
      if getattr(state, field) is None:
        continue
      chex.assert_trees_all_close(
        getattr(state, field),
        jax.tree.map(
          lambda s, f=field, k=sign: k * getattr(s, f),
          ref_states,
          is_leaf=lambda x: isinstance(x, ref.LeafState),
        ),
        rtol=1e-10,
        atol=1e-13,
      )
    tx_opts = CASES[name]
    if tx_opts.get("learning_rate") == "schedule" or tx_opts.get("bias_correction"):
      assert int(state.count) == len(out)
    else:
      assert state.count is None


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(CASES))
def test_matches_float64_reference_in_float32(name, jit):
  out, expected, _, _ = _ours_and_reference(CASES[name], np.float32, jit)
  for u, e in zip(out, expected, strict=True):
    jax.tree.map(lambda a, b: chex.assert_type(a, jnp.float32), u, e)
    chex.assert_trees_all_close(u, e, rtol=2e-4, atol=1e-6)


OPTAX_OPTIONS = [
  dict(),
  dict(decay=0.5, eps=1e-3),
  dict(initial_scale=0.3),
  dict(eps_in_sqrt=False),
  dict(centered=True),
  dict(centered=True, eps_in_sqrt=False, initial_scale=0.2),
  dict(momentum=0.9),
  dict(momentum=0.9, nesterov=True),
  dict(bias_correction=True),
  dict(bias_correction=True, eps_in_sqrt=False, momentum=0.5),
  dict(centered=True, momentum=0.9, nesterov=True, eps=1e-4),
  # With bias correction the first centred variance is exactly zero in exact
  # arithmetic; optax's rounding noise may go negative where we clamp, so eps
  # is large enough that this deliberate difference stays below rounding.
  dict(centered=True, bias_correction=True, eps=1.0, momentum=0.3),
]


def test_caution_floors_the_kept_share_at_one_in_a_thousand():
  # timm divides the kept entries by max(mean(keep), 1e-3). Two steps on 2,000
  # entries whose gradient flips sign, but for entry 0, leave momentum pointing
  # up the new gradient everywhere except at entry 0: one kept in 2,000, and the
  # floor, not the share, sets the scale.
  n = 2000
  g = [np.ones(n), np.where(np.arange(n) == 0, 1.0, -1.0)]
  config = ref.Config(learning_rate=0.1, momentum=0.9, caution=True)
  state, p, want = ref.init(np.zeros(n), config), np.zeros(n), []
  for gk in g:
    u, state = ref.step(gk, p, state, config)
    want.append(u)
  assert np.count_nonzero(want[1]) == 1  # 1 / 2000 < 1e-3: the floor applies
  with enable_x64(True):
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9, caution=True)
    s = opt.init(jnp.zeros(n))
    for gk, wk in zip(g, want, strict=True):
      u, s = opt.update(jnp.asarray(gk), s)
      np.testing.assert_allclose(u, wk, rtol=1e-12, atol=0)


@pytest.mark.standard_promotion  # optax.rmsprop's bias correction
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
@pytest.mark.parametrize("options", OPTAX_OPTIONS, ids=str)
def test_drop_in_replacement_for_optax_rmsprop(options, schedule):
  lr = optax.exponential_decay(0.1, 2, 0.5) if schedule else 0.1
  ours, theirs = rmsprop_jax.rmsprop(lr, **options), optax.rmsprop(lr, **options)
  params = trees.params(np.float32)
  grads = trees.gradients(params, 10)
  _, _, u_ours = trees.run(ours, params, grads)
  _, _, u_theirs = trees.run(theirs, params, grads)
  chex.assert_trees_all_close(u_ours, u_theirs, rtol=1e-5, atol=1e-7)


def test_centered_variance_stays_finite_where_optax_turns_nan():
  # Near-constant float32 gradients: nu - mu^2 is cancellation noise that goes
  # negative; optax takes its root and returns NaN, we clamp it at zero.
  g = jnp.full((256,), 0.37, jnp.float32) + jnp.linspace(0.0, 1e-6, 256)
  ours = rmsprop_jax.rmsprop(1e-3, centered=True, eps=1e-12)
  theirs = optax.rmsprop(1e-3, centered=True, eps=1e-12)
  s_ours, s_theirs = ours.init(g), theirs.init(g)
  optax_nan = False
  for _ in range(300):
    u_ours, s_ours = ours.update(g, s_ours)
    u_theirs, s_theirs = theirs.update(g, s_theirs)
    optax_nan |= bool(jnp.isnan(u_theirs).any())
    assert bool(jnp.isfinite(u_ours).all())
  assert optax_nan, "the regime that breaks optax was not reached"


def test_plain_state_holds_one_accumulator_per_parameter():
  params = trees.params(np.float32)
  state = rmsprop_jax.rmsprop(0.1).init(params)
  assert state.mu is None and state.trace is None
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_state = sum(x.size for x in jax.tree.leaves(state.nu))
  assert n_state == n_params
  assert state.count is None  # nothing reads a step count


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(learning_rate=optax.linear_schedule(0.1, 0.0, 10)),
    dict(learning_rate=0.1, bias_correction=True),
  ],
  ids=["schedule", "bias_correction"],
)
def test_options_that_read_the_step_count_keep_one(kwargs):
  state = rmsprop_jax.rmsprop(**kwargs).init(jnp.ones(3))
  assert state.count.dtype == jnp.int32 and state.count.shape == ()


def test_state_without_count_for_a_schedule_is_refused():
  state = rmsprop_jax.rmsprop(0.1).init(jnp.ones(3))
  tx = rmsprop_jax.rmsprop(optax.linear_schedule(0.1, 0.0, 10))
  with pytest.raises(ValueError, match="state.count is None but a learning-rate"):
    tx.update(jnp.ones(3), state)


def test_enabled_options_allocate_their_buffers():
  params = trees.params(np.float32)
  state = rmsprop_jax.rmsprop(0.1, centered=True, momentum=0.9).init(params)
  chex.assert_trees_all_equal_shapes(state.mu, params)
  chex.assert_trees_all_equal_shapes(state.trace, params)


def test_count_saturates_instead_of_wrapping():
  tx = rmsprop_jax.rmsprop(0.1, bias_correction=True)
  params = jnp.ones(3)
  state = tx.init(params)._replace(count=jnp.asarray(jnp.iinfo(jnp.int32).max))
  updates, state = tx.update(jnp.ones(3), state, params)
  assert int(state.count) == jnp.iinfo(jnp.int32).max
  assert bool(jnp.isfinite(updates).all())


def test_scale_by_rms_returns_gradient_over_denominator():
  tx = rmsprop_jax.scale_by_rms(decay=0.8, eps=1e-6, initial_scale=0.5)
  g = np.array([0.5, -2.0, 3.0])
  s, state = tx.update(jnp.asarray(g, jnp.float32), tx.init(jnp.zeros(3)))
  nu = 0.8 * 0.5 + 0.2 * g**2
  np.testing.assert_allclose(s, g / np.sqrt(nu + 1e-6), rtol=1e-6)
  assert state.trace is None


def test_scale_by_rms_chains_like_rmsprop():
  chained = optax.chain(
    rmsprop_jax.scale_by_rms(centered=True), optax.scale_by_learning_rate(0.1)
  )
  direct = rmsprop_jax.rmsprop(0.1, centered=True)
  params = trees.params(np.float32)
  grads = trees.gradients(params, 4)
  _, _, u_chained = trees.run(chained, params, grads)
  _, _, u_direct = trees.run(direct, params, grads)
  chex.assert_trees_all_close(u_chained, u_direct, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_gradients_accumulate_in_float32(dtype):
  # |g| = 300 squared overflows float16 (max 65504); optax's nu becomes inf and
  # its update 0. Ours squares in float32.
  params = jnp.zeros(4, dtype)
  g = jnp.full(4, 300.0, dtype)
  tx = rmsprop_jax.rmsprop(0.01)
  with pytest.warns(UserWarning, match="Low-precision params"):
    state = tx.init(params)
  assert state.nu.dtype == jnp.float32
  updates, state = tx.update(g, state, params)
  assert updates.dtype == dtype
  expected = -0.01 * 300.0 / np.sqrt(0.1 * 300.0**2 + 1e-8)
  np.testing.assert_allclose(np.asarray(updates, np.float32), expected, rtol=1e-2)
  if dtype == jnp.float16:
    u_optax, _ = optax.rmsprop(0.01).update(g, optax.rmsprop(0.01).init(params))
    assert not bool(jnp.any(u_optax != 0)), "optax no longer overflows here"


def test_bfloat16_state_halves_memory_and_tracks_float32():
  params = {"w": jnp.ones((64, 64)), "b": jnp.ones(64)}
  full = rmsprop_jax.rmsprop(0.01, momentum=0.9)
  half = rmsprop_jax.rmsprop(0.01, momentum=0.9, state_dtype=jnp.bfloat16)
  s_full, s_half = full.init(params), half.init(params)
  nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))
  assert nbytes(s_half.nu) * 2 == nbytes(s_full.nu)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(s_half[1:]))
  for t in range(20):
    g = jax.tree.map(lambda p, t=t: jnp.sin(p * (t + 1.0)) + 0.5, params)
    u_full, s_full = full.update(g, s_full, params)
    u_half, s_half = half.update(g, s_half, params)
    assert u_half["w"].dtype == jnp.float32
  chex.assert_trees_all_close(u_half, u_full, rtol=5e-2, atol=1e-4)


def test_complex_parameters_keep_a_real_accumulator():
  with enable_x64(True):
    p = np.array([1 + 2j, -0.5j, 3.0], np.complex128)
    g = np.array([0.3 - 1j, 2 + 0.5j, -1j], np.complex128)
    cfg = ref.Config(learning_rate=0.1, momentum=0.9, centered=True)
    tx = rmsprop_jax.rmsprop(0.1, momentum=0.9, centered=True)
    state = tx.init(jnp.asarray(p))
    assert state.nu.dtype == jnp.float64 and state.mu.dtype == jnp.complex128
    rs = ref.init(p, cfg)
    for _ in range(3):
      u, state = tx.update(jnp.asarray(g), state, jnp.asarray(p))
      e, rs = ref.step(g, p, rs, cfg)
      np.testing.assert_allclose(u, e, rtol=1e-10)
  p32 = jnp.asarray(p, jnp.complex64)
  state = rmsprop_jax.rmsprop(0.1).init(p32)
  assert state.nu.dtype == jnp.float32


def test_none_and_masked_node_leaves_pass_through():
  params = {"a": jnp.ones(2), "b": None, "c": optax.MaskedNode()}
  tx = rmsprop_jax.rmsprop(0.1, momentum=0.9, weight_decay=0.1)
  state = tx.init(params)
  updates, state = tx.update(params, state, params)
  assert updates["b"] is None and isinstance(updates["c"], optax.MaskedNode)
  assert state.nu["b"] is None


def test_non_finite_gradients_propagate():
  tx = rmsprop_jax.rmsprop(0.1)
  updates, _ = tx.update(jnp.array([jnp.nan, 1.0]), tx.init(jnp.zeros(2)))
  assert bool(jnp.isnan(updates[0])) and bool(jnp.isfinite(updates[1]))


def test_hyperparameters_are_arguments_not_constants():
  # Changing learning_rate/decay/eps/momentum/weight_decay between eager steps
  # through inject_hyperparams must not compile the update again.
  tx = optax.inject_hyperparams(rmsprop_jax.rmsprop)(
    learning_rate=0.1, momentum=0.9, weight_decay=0.01
  )
  params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
  state = tx.init(params)
  g = jax.tree.map(jnp.ones_like, params)
  _, state = tx.update(g, state, params)
  size = _transform._update_jit._cache_size()
  for value in [0.05, 0.01, 0.2]:
    hp = dict(state.hyperparams)
    hp.update(
      learning_rate=jnp.asarray(value),
      decay=jnp.asarray(1 - value),
      eps=jnp.asarray(value * 1e-6),
      momentum=jnp.asarray(value),
      weight_decay=jnp.asarray(value / 10),
    )
    state = state._replace(hyperparams=hp)
    _, state = tx.update(g, state, params)
  assert _transform._update_jit._cache_size() == size


def test_vmap_over_learning_rates_matches_separate_runs():
  params = jnp.linspace(-1.0, 1.0, 5)
  g = jnp.cos(params)
  lrs = jnp.array([0.01, 0.1, 0.5])

  def one(lr):
    tx = rmsprop_jax.rmsprop(lr, momentum=0.9)
    u, _ = tx.update(g, tx.init(params), params)
    return u

  batched = jax.jit(jax.vmap(one))(lrs)
  for i, lr in enumerate([0.01, 0.1, 0.5]):
    np.testing.assert_allclose(batched[i], one(lr), rtol=1e-6)


def test_update_inlines_into_a_user_jit():
  tx = rmsprop_jax.rmsprop(0.1, momentum=0.9)
  params = {"w": jnp.ones((8, 8))}
  state = tx.init(params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
  # Traced, update calls the core directly: no nested call in the program.
  names = [e.params.get("name") for e in jaxpr.jaxpr.eqns]
  assert "_update_leaves" not in names
  assert any(e.primitive.name == "rsqrt" for e in jaxpr.jaxpr.eqns)


@pytest.mark.parametrize("problem", ["ill_conditioned_quadratic", "rosenbrock"])
def test_converges(problem):
  if problem == "ill_conditioned_quadratic":
    scales = jnp.logspace(0, 3, 10)

    def loss(x):
      return 0.5 * jnp.sum(scales * x**2)

    x0, tx, steps, target = (
      jnp.ones(10),
      rmsprop_jax.rmsprop(optax.cosine_decay_schedule(0.05, 2000)),
      2000,
      1e-6,
    )
  else:

    def loss(x):
      return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    x0 = jnp.array([-1.2, 1.0])
    tx = rmsprop_jax.rmsprop(
      optax.cosine_decay_schedule(5e-3, 4000), momentum=0.9, lr_in_momentum=False
    )
    steps, target = 4000, 1e-4

  x, _ = jax.jit(lambda x: trees.fit(tx, x, loss, steps))(x0)
  assert float(loss(x)) < target, float(loss(x))
