"""``low_precision_params``: bfloat16 and float16 parameters that keep small steps.

The reference is NumPy: float32 arithmetic and ml_dtypes' round-to-nearest
casts and ``nextafter`` give the value each parameter must land on, and the
updates are applied with ``optax.apply_updates`` itself, so "lands exactly"
means what a training loop stores, bit for bit.
"""

from __future__ import annotations

import contextlib
import doctest
import pathlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import _low_precision
from tests import _docs
from tests import _trees as trees
from tests._compat import enable_x64

LOW = [jnp.bfloat16, jnp.float16]
LOW_IDS = ["bfloat16", "float16"]
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
PREFIX = _low_precision.WARNING_PREFIX


def _bits(x: Any) -> np.ndarray:
  """The bit patterns of a 16-bit float array, for exact comparisons."""
  return np.asarray(x).view(np.uint16)


def _maybe_jit(fn: Callable[..., Any], jit: bool) -> Callable[..., Any]:
  return jax.jit(fn) if jit else fn


@contextlib.contextmanager
def _unwrapped_low_precision() -> Iterator[None]:
  """Initialising an optimizer on 16-bit params without the wrapper, on purpose."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=PREFIX)
    yield


def _ulp(x: np.ndarray, dtype: Any) -> np.ndarray:
  """The gap above |x| in ``dtype`` (float64)."""
  a = np.abs(np.asarray(x, np.float32)).astype(dtype)
  up = np.nextafter(a, np.array(np.inf, dtype))
  return up.astype(np.float64) - a.astype(np.float64)


def _neighbours(x32: np.ndarray, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
  """The ``dtype`` values just below and just above float32 ``x32`` (float32)."""
  near = x32.astype(dtype)
  near32 = near.astype(np.float32)
  down = np.nextafter(near, np.array(-np.inf, dtype)).astype(np.float32)
  up = np.nextafter(near, np.array(np.inf, dtype)).astype(np.float32)
  lo = np.where(near32 <= x32, near32, down)
  hi = np.where(near32 >= x32, near32, up)
  return lo, hi


def _cases(
  dtype: Any, update_dtype: str = "float32", seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Params, updates and compensations, with the awkward cases in.

  Steps far below half a gap, around it, large ones (the value changes by
  more than 2x) and sign changes, where ``new - old`` is often not a
  ``dtype`` number; for float16 also params in its subnormal range. The
  updates are float32, or rounded to ``dtype`` for ``update_dtype="param"``
  (e.g. rmsprop's update of a bfloat16 param).
  """
  rng = np.random.default_rng(seed)
  n = 4000
  mag = 10.0 ** rng.uniform(-3, 2, n)
  if dtype == jnp.float16:
    mag[:200] = 10.0 ** rng.uniform(-7.5, -4.5, 200)  # subnormal float16
  p = (rng.choice([-1.0, 1.0], n) * mag).astype(dtype)
  p32 = p.astype(np.float32)
  ulp = _ulp(p32, dtype)
  kind = rng.integers(0, 5, n)
  u = np.select(
    [kind == 0, kind == 1, kind == 2, kind == 3],
    [
      rng.uniform(-0.3, 0.3, n) * ulp,  # below half a gap
      rng.uniform(-3, 3, n) * ulp,  # a few gaps
      p32 * rng.uniform(1.5, 6.0, n),  # more than doubles
      -p32 * rng.uniform(1.2, 3.0, n),  # changes sign
    ],
    rng.standard_normal(n) * 1e-2,
  ).astype(np.float32)
  c = (rng.uniform(-0.5, 0.5, n) * ulp).astype(dtype)
  return p, (u.astype(dtype) if update_dtype == "param" else u), c


def _kahan_reference(
  p: np.ndarray, u: np.ndarray, c: np.ndarray, dtype: Any
) -> tuple[np.ndarray, np.ndarray]:
  """The new parameter and compensation, in NumPy float32 and ml_dtypes casts."""
  p32 = p.astype(np.float32)
  exact = p32 + (u + c.astype(np.float32))
  new = exact.astype(dtype)
  return new, (exact - new.astype(np.float32)).astype(dtype)


def _identity_wrapped(method: str = "kahan", seed: int = 0) -> Any:
  """The wrapper alone: the inner optimizer passes the gradient through."""
  return rmsprop_jax.low_precision_params(optax.identity(), method, seed=seed)


# ------------------------------------------------------------ exact landing


# Every 16-bit dtype, with float32 updates and with updates in the param's
# dtype, eagerly and under jit.
LANDING = pytest.mark.parametrize(
  ("dtype", "update_dtype", "jit"),
  [
    pytest.param(dtype, update, jit, id=f"{name}-{update_id}-{jit_id}")
    for dtype, name in zip(LOW, LOW_IDS, strict=True)
    for update, update_id in [("float32", "float32-update"), ("param", "16-bit-update")]
    for jit, jit_id in [(False, "eager"), (True, "jit")]
  ],
)


def _representable(x32: np.ndarray, dtype: Any) -> np.ndarray:
  return x32.astype(dtype).astype(np.float32) == x32


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
@LANDING
def test_kahan_update_lands_exactly_on_the_rounded_compensated_sum(
  dtype, update_dtype, jit
):
  p, u, c = _cases(dtype, update_dtype)
  opt = _identity_wrapped()
  state = opt.init(jnp.asarray(p))
  state = state._replace(compensation=jnp.asarray(c))
  update, new_state = _maybe_jit(opt.update, jit)(jnp.asarray(u), state, jnp.asarray(p))
  new, _ = _kahan_reference(p, u.astype(np.float32), c, dtype)

  assert update.dtype == u.dtype  # what optax wrappers around it expect
  landed = optax.apply_updates(jnp.asarray(p), update)
  assert landed.dtype == dtype
  # The compensation is what rounding lost, measured on the value stored.
  p32 = p.astype(np.float32)
  exact = p32 + (u.astype(np.float32) + c.astype(np.float32))
  lost = (exact - np.asarray(landed).astype(np.float32)).astype(dtype)
  np.testing.assert_array_equal(_bits(new_state.compensation), _bits(lost))
  # The awkward cases: new - old has no 16-bit value in many of them.
  fits = _representable(new.astype(np.float32) - p32, dtype)
  assert np.sum(~fits) > 100
  if update_dtype == "float32":
    np.testing.assert_array_equal(_bits(landed), _bits(new))
  else:
    np.testing.assert_array_equal(_bits(landed)[fits], _bits(new)[fits])
    # Elsewhere the compensation holds the rest, and the next step (with a
    # zero update) lands on landed + compensation rounded: the value the first
    # one could not reach, to within the compensation's own rounding.
    assert np.any(_bits(landed) != _bits(new))
    zero = jnp.zeros_like(jnp.asarray(u))
    again, _ = _maybe_jit(opt.update, jit)(zero, new_state, landed)
    second = optax.apply_updates(landed, again)
    landed32 = np.asarray(landed).astype(np.float32)
    want = (landed32 + lost.astype(np.float32)).astype(dtype)
    np.testing.assert_array_equal(_bits(second), _bits(want))
    new64 = new.astype(np.float64)
    assert np.all(np.abs(np.asarray(second, np.float64) - new64) <= _ulp(new, dtype))


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
@LANDING
def test_stochastic_update_lands_exactly_on_a_neighbour_of_the_sum(
  dtype, update_dtype, jit
):
  p, u, _ = _cases(dtype, update_dtype)
  opt = _identity_wrapped("stochastic")
  state = opt.init(jnp.asarray(p))
  update, _ = _maybe_jit(opt.update, jit)(jnp.asarray(u), state, jnp.asarray(p))

  assert update.dtype == u.dtype
  p32 = p.astype(np.float32)
  lo, hi = _neighbours(p32 + u.astype(np.float32), dtype)
  landed = np.asarray(optax.apply_updates(jnp.asarray(p), update)).astype(np.float32)
  # Where new - old has a value in the update's dtype (always in float32; by
  # Sterbenz's lemma for any step below half the parameter), apply_updates'
  # float32 sum is already the 16-bit value: nothing is re-rounded.
  fits = np.abs(u.astype(np.float32)) <= 0.4 * np.abs(p32)
  if update_dtype == "float32":
    fits[:] = True
  assert np.mean(fits) > 0.5
  sums = p32 + np.asarray(update, np.float32)
  np.testing.assert_array_equal(sums[fits], landed[fits])
  assert np.all((landed == lo) | (landed == hi) | ~fits)
  between = fits & (lo != hi)
  assert 0.1 < np.mean(landed[between] == hi[between]) < 0.9  # both directions


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
def test_kahan_overflow_lands_on_infinity_and_keeps_a_finite_compensation():
  p = jnp.asarray([60000.0, 1.0], jnp.float16)
  opt = _identity_wrapped()
  update, state = opt.update(jnp.asarray([10000.0, 1e-4]), opt.init(p), p)
  landed = np.asarray(optax.apply_updates(p, update))
  assert np.isposinf(landed[0]) and landed[1] == 1.0
  assert np.all(np.isfinite(np.asarray(state.compensation, np.float32)))
  assert np.asarray(state.compensation)[1] != 0


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
@JIT
def test_compensation_survives_jit_nonzero_and_exactly_what_rounding_lost(jit):
  # 1 + 1e-3 is below half of bfloat16's gap above 1 (2**-8): the parameter
  # stays at 1 and all of the step must sit in the compensation. An XLA that
  # kept the rounding in excess precision would leave 0 there.
  params = {"w": jnp.ones((3, 5), jnp.bfloat16)}
  opt = _identity_wrapped()
  step = _maybe_jit(opt.update, jit)
  update, state = step({"w": jnp.full((3, 5), 1e-3)}, opt.init(params), params)
  landed = optax.apply_updates(params, update)["w"]
  exact = np.float32(1) + np.float32(1e-3)
  want = (exact - np.asarray(landed).astype(np.float32)).astype(jnp.bfloat16)
  comp = np.asarray(state.compensation["w"])
  assert np.all(comp != 0)
  np.testing.assert_array_equal(_bits(comp), _bits(want))


@pytest.mark.parametrize(
  ("dtype", "rounding"),
  [
    # bfloat16: the upper half of float32's bits, rounded by an integer add
    # and this mask; float16: reduce_precision.
    (jnp.bfloat16, "u32[] constant(4294901760)"),
    (jnp.float16, "reduce-precision("),
  ],
  ids=LOW_IDS,
)
def test_the_compiled_step_still_rounds(dtype, rounding):
  params = {"w": jnp.ones(8, dtype)}
  opt = _identity_wrapped()

  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  grads = {"w": jnp.ones(8, dtype)}
  hlo = jax.jit(step).lower(params, opt.init(params), grads).compile().as_text()
  assert rounding in hlo


def _wide_float32(seed: int, n: int = 100_000) -> np.ndarray:
  """float32 values over 50 decades, both signs, with the special values."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(n) * 10.0 ** rng.integers(-37, 6, n)
  special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 65504, 65520, 7e4, 3.4e38]
  special += [6e-8, 2.9e-8, 3e-8, -4e-6]  # float16: its subnormal grid
  return np.concatenate([x, special]).astype(np.float32)


@JIT
@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
def test_round_nearest_is_the_cast_everywhere(dtype, jit):
  x = _wide_float32(1)
  with np.errstate(over="ignore"):
    want = x.astype(dtype).astype(np.float32)
  fn = _maybe_jit(lambda a: _low_precision.round_nearest(a, dtype), jit)
  got = np.asarray(fn(jnp.asarray(x)))
  np.testing.assert_array_equal(got, want)  # NaN matches NaN
  np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
def test_stochastic_rounding_picks_a_neighbour_everywhere(dtype):
  x = _wide_float32(2)
  if dtype == jnp.bfloat16:  # XLA's CPU arithmetic flushes float32 subnormals
    x = x[~(np.abs(x) < np.finfo(np.float32).tiny)]
  bits = jax.random.bits(jax.random.key(0), x.shape, jnp.uint32)
  fn = jax.jit(lambda a, b: _low_precision.round_stochastic(a, dtype, b))
  got = np.asarray(fn(jnp.asarray(x), bits))
  with np.errstate(over="ignore"):
    lo, hi = _neighbours(x, dtype)
  nan = np.isnan(x)
  assert np.all(np.isnan(got[nan]))
  assert np.all((got == lo) | (got == hi) | nan)


# ------------------------------------------------------------ pass-through


def test_float32_and_float64_leaves_pass_through_without_a_buffer():
  with enable_x64():
    params = {
      "h": jnp.ones(4, jnp.bfloat16),
      "s": jnp.ones(4, jnp.float32),
      "d": jnp.ones(4, jnp.float64),
    }
    grads = {
      "h": jnp.full(4, 0.1, jnp.bfloat16),
      "s": jnp.asarray([1e-9, -3.0, 0.5, 2.0**-30], jnp.float32),
      "d": jnp.asarray([1e-18, -3.0, 0.5, 2.0**-60], jnp.float64),
    }
    inner = optax.scale(-0.37)
    for method in ("kahan", "stochastic"):
      opt = rmsprop_jax.low_precision_params(inner, method)
      state = opt.init(params)
      update, _ = jax.jit(opt.update)(grads, state, params)
      bare, _ = inner.update(grads, inner.init(params), params)
      for k in ("s", "d"):
        assert update[k].dtype == params[k].dtype
        np.testing.assert_array_equal(
          np.asarray(update[k]).view(np.uint8), np.asarray(bare[k]).view(np.uint8)
        )
      if method == "kahan":
        assert state.compensation["s"] == optax.MaskedNode()
        assert state.compensation["d"] == optax.MaskedNode()


# ------------------------------------------------------------ state


def test_kahan_state_is_one_buffer_per_16_bit_leaf_in_its_dtype():
  params = {
    "w": jnp.zeros((64, 32), jnp.bfloat16),
    "h": jnp.zeros((10,), jnp.float16),
    "b": jnp.zeros((32,), jnp.float32),
  }
  state = _identity_wrapped().init(params)
  comp = state.compensation
  assert comp["b"] == optax.MaskedNode()
  assert (comp["w"].dtype, comp["w"].shape) == (jnp.bfloat16, (64, 32))
  assert (comp["h"].dtype, comp["h"].shape) == (jnp.float16, (10,))
  assert state.key is None and state.count is None
  n16 = 64 * 32 + 10
  assert sum(x.nbytes for x in jax.tree.leaves(state)) == 2 * n16
  assert jax.tree.structure(jax.tree.map(lambda x: x, state)) == jax.tree.structure(
    state
  )


def test_stochastic_state_is_a_key_and_a_count_and_nothing_per_parameter():
  params = {"w": jnp.zeros((64, 32), jnp.bfloat16), "b": jnp.zeros(32)}
  state = _identity_wrapped("stochastic", seed=7).init(params)
  assert state.compensation is None
  np.testing.assert_array_equal(state.key, jax.random.key_data(jax.random.key(7)))
  assert state.count.dtype == jnp.int32 and state.count == 0
  assert sum(x.nbytes for x in jax.tree.leaves(state)) == state.key.nbytes + 4


def test_compensation_is_placed_like_its_parameter():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
  params = {"w": jax.device_put(jnp.zeros(8, jnp.bfloat16), sharding)}
  state = _identity_wrapped().init(params)
  assert state.compensation["w"].sharding == sharding
  state = _identity_wrapped("stochastic").init(params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  assert state.key.sharding == replicated and state.count.sharding == replicated


# ------------------------------------------------------------ stochastic rounding


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
@pytest.mark.parametrize(
  ("dtype", "start", "frac"),
  [
    (jnp.bfloat16, 1.0, 0.1),
    (jnp.bfloat16, -3.0, 0.5),
    (jnp.bfloat16, 0.75, 0.93),
    (jnp.float16, 1.0, 0.3),
    (jnp.float16, 0.0, 0.3),  # on float16's subnormal grid
  ],
)
def test_stochastic_rounding_is_unbiased(dtype, start, frac):
  n = 2**16
  p = jnp.full((n,), start, dtype)
  gap = _ulp(np.array([start]), dtype)[0]
  u = jnp.full((n,), frac * gap, jnp.float32)  # exact in float32
  opt = _identity_wrapped("stochastic", seed=3)
  update, _ = jax.jit(opt.update)(u, opt.init(p), p)
  landed = np.asarray(optax.apply_updates(p, update)).astype(np.float64)
  exact = start + frac * gap
  # Each draw is one of two values gap apart, the upper with probability
  # frac: the mean of n draws has standard deviation gap*sqrt(frac(1-frac)/n);
  # 5 of them, plus the 2**-24 resolution of the uniform number.
  bound = 5 * gap * np.sqrt(frac * (1 - frac) / n) + 2.0**-24 * gap
  assert abs(landed.mean() - exact) < bound
  assert set(np.unique(landed)) == {start + np.floor(frac) * gap, start + gap}


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
def test_stochastic_rounding_is_unbiased_over_steps_of_one_element():
  p = jnp.ones((8,), jnp.bfloat16)
  opt = _identity_wrapped("stochastic", seed=11)
  u = jnp.full((8,), 0.2 * 2.0**-7)

  def draw(state, _):
    update, state = opt.update(u, state, p)
    return state, optax.apply_updates(p, update)

  _, landed = jax.jit(lambda s: jax.lax.scan(draw, s, length=4096))(opt.init(p))
  landed = np.asarray(landed).astype(np.float64)
  bound = 5 * 2.0**-7 * np.sqrt(0.2 * 0.8 / 4096)
  assert np.all(np.abs(landed.mean(axis=0) - (1 + 0.2 * 2.0**-7)) < bound)
  # Consecutive steps draw afresh: elements do not repeat their rounding.
  assert np.mean(landed[1:] == landed[:-1]) < 0.8


def _stochastic_run(seed: int, jit: bool) -> list[np.ndarray]:
  params = {"w": jnp.ones((16, 16), jnp.bfloat16), "v": jnp.ones(16, jnp.bfloat16)}
  grads = {"w": jnp.full((16, 16), 1e-3), "v": jnp.full(16, 1e-3)}
  opt = _identity_wrapped("stochastic", seed=seed)
  update = _maybe_jit(opt.update, jit)
  state, out = opt.init(params), []
  for _ in range(3):
    step, state = update(grads, state, params)
    params = optax.apply_updates(params, step)
    out += [_bits(params["w"]), _bits(params["v"])]
  return out


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
def test_stochastic_rounding_is_reproducible_for_a_seed_and_differs_across_seeds():
  first = _stochastic_run(0, jit=True)
  for a, b in zip(first, _stochastic_run(0, jit=False), strict=True):
    np.testing.assert_array_equal(a, b)  # eager and jit draw the same bits
  other = _stochastic_run(1, jit=True)
  assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
  # Leaves and steps get their own draws.
  assert not np.array_equal(first[0][0], first[1])
  assert not np.array_equal(first[0], first[2])


# ------------------------------------------------------------ training


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
def test_kahan_keeps_a_thousand_tiny_steps_that_plain_bfloat16_loses():
  params = jnp.ones((4,), jnp.bfloat16)
  inner = optax.sgd(1e-4)

  def run(opt: Any, p: jax.Array) -> jax.Array:
    # a gradient of -1 everywhere, in the params' dtype
    return trees.fit(opt, p, lambda p: -jnp.sum(p), 1000)[0]

  kahan = jax.jit(run, static_argnums=0)(
    rmsprop_jax.low_precision_params(inner), params
  )
  naive = jax.jit(run, static_argnums=0)(inner, params)
  float32 = jax.jit(run, static_argnums=0)(inner, params.astype(jnp.float32))
  ulp = 2.0**-7  # bfloat16's gap in [1, 2)
  assert np.all(np.abs(np.asarray(kahan, np.float64) - 1.1) <= ulp)
  assert np.all(np.abs(np.asarray(kahan, np.float64) - np.asarray(float32)) <= ulp / 2)
  np.testing.assert_array_equal(np.asarray(naive, np.float32), 1.0)


def _regression() -> tuple[Callable[..., jax.Array], dict[str, jax.Array]]:
  """Least squares whose optimum lies 2 away from the start in every weight.

  300 steps of about 1e-3 move each weight monotonically towards it, so two
  runs whose parameters differ by a rounding stay that close: a trajectory
  comparison measures rounding, not chaos.
  """
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32)
  w0 = rng.uniform(0.5, 1.5, (16, 1))
  y = jnp.asarray(x @ (w0 + 2 * rng.choice([-1.0, 1.0], (16, 1))), jnp.float32)
  params = {"w": jnp.asarray(w0, jnp.float32), "b": jnp.zeros((1,), jnp.float32)}

  def loss(p):
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  return loss, params


def _train(opt: Any, params: Any, loss: Callable[..., jax.Array], steps: int) -> Any:
  return trees.fit(opt, params, loss, steps)[0]


@pytest.mark.parametrize(
  "make",
  [
    lambda: rmsprop_jax.torch_rmsprop(lr=1e-3),
    lambda: optax.chain(
      optax.clip_by_global_norm(1.0),
      rmsprop_jax.scale_by_rms(decay=0.9),
      optax.scale(-1e-3),
    ),
  ],
  ids=["torch-preset", "optax-chain"],
)
def test_wrapped_preset_or_chain_follows_the_float32_trajectory(make):
  loss, params32 = _regression()
  half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32)
  train = jax.jit(_train, static_argnums=(0, 2, 3))
  reference = train(make(), params32, loss, 300)
  kahan = train(rmsprop_jax.low_precision_params(make()), half, loss, 300)
  with _unwrapped_low_precision():
    naive = train(make(), half, loss, 300)
  ref = np.asarray(reference["w"], np.float64)
  gap = _ulp(ref, jnp.bfloat16)
  kahan_err = np.abs(np.asarray(kahan["w"], np.float64) - ref)
  naive_err = np.abs(np.asarray(naive["w"], np.float64) - ref)
  assert kahan["w"].dtype == jnp.bfloat16
  assert np.all(kahan_err <= 2 * gap)
  assert np.max(naive_err) > 10 * np.max(kahan_err)


# ------------------------------------------------------------ optax wrappers


def test_inject_hyperparams_of_the_inner_optimizer():
  loss, params32 = _regression()
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32)
  injected = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=1e-3)
  opt = rmsprop_jax.low_precision_params(injected)
  train = jax.jit(_train, static_argnums=(0, 2, 3))
  got, want = train(opt, params, loss, 100), train(injected, params32, loss, 100)
  ref = np.asarray(want["w"], np.float64)
  assert np.all(
    np.abs(np.asarray(got["w"], np.float64) - ref) <= 2 * _ulp(ref, jnp.bfloat16)
  )
  # Setting the learning rate to 0 in the state stops the parameters and the
  # compensation alike.
  update = jax.jit(opt.update)
  step, state = update(jax.grad(loss)(params), opt.init(params), params)
  params = optax.apply_updates(params, step)
  hyper = {**state.inner.hyperparams, "learning_rate": jnp.asarray(0.0)}
  state = state._replace(inner=state.inner._replace(hyperparams=hyper))
  step, new_state = update(jax.grad(loss)(params), state, params)
  for k in params:
    np.testing.assert_array_equal(np.asarray(step[k]), 0.0)
    np.testing.assert_array_equal(
      _bits(new_state.compensation[k]), _bits(state.compensation[k])
    )


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_apply_if_finite_skips_a_nan_step_and_keeps_the_state(method):
  params = {"w": jnp.linspace(-1, 1, 12, dtype=jnp.float32).astype(jnp.bfloat16)}
  grads = {"w": jnp.linspace(0.5, 1.5, 12, dtype=jnp.float32).astype(jnp.bfloat16)}
  nan = {"w": grads["w"].at[3].set(jnp.nan)}
  opt = optax.apply_if_finite(
    rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop(1e-3), method),
    max_consecutive_errors=3,
  )
  update = jax.jit(opt.update)
  step, state = update(grads, opt.init(params), params)
  params = optax.apply_updates(params, step)
  skipped, after = update(nan, state, params)
  np.testing.assert_array_equal(np.asarray(skipped["w"]), 0.0)
  assert after.notfinite_count == 1
  kept = jax.tree.leaves(state.inner_state)
  for a, b in zip(kept, jax.tree.leaves(after.inner_state), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The next finite step is the one that would have come without the NaN.
  want, _ = update(grads, state, params)
  got, _ = update(grads, after, params)
  np.testing.assert_array_equal(np.asarray(got["w"]), np.asarray(want["w"]))


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_donated_jitted_step_matches_the_undonated_one(method):
  loss, params32 = _regression()
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32)
  opt = rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop(1e-3), method)

  def step(p, s):
    u, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  donating = jax.jit(step, donate_argnums=(0, 1))
  plain = jax.jit(step)
  p1, s1 = jax.tree.map(jnp.copy, params), opt.init(params)
  p2, s2 = params, opt.init(params)
  first = p1
  for _ in range(5):
    p1, s1 = donating(p1, s1)
    p2, s2 = plain(p2, s2)
  assert first["w"].is_deleted()
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2)), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_orbax_round_trip_continues_bit_exactly(tmp_path, method):
  ocp = pytest.importorskip("orbax.checkpoint")
  loss, params32 = _regression()
  params = {
    **jax.tree.map(lambda a: a.astype(jnp.bfloat16), params32),
    "s": params32["b"],
  }
  opt = rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop(1e-3), method, seed=4)

  @jax.jit
  def step(p, s):
    u, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  def train(carry, n):
    for _ in range(n):
      carry = step(*carry)
    return carry

  expected = train((params, opt.init(params)), 6)
  half = train((params, opt.init(params)), 3)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", half)
  abstract = jax.eval_shape(lambda p: (p, opt.init(p)), params)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "ckpt", abstract)
  assert type(restored[1]) is rmsprop_jax.LowPrecisionState
  assert jax.tree.structure(restored) == jax.tree.structure(half)
  got = train(restored, 3)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------ errors


def test_build_time_errors_name_the_argument_the_value_and_what_is_allowed():
  with pytest.raises(TypeError, match="inner must be an optax GradientTransformation"):
    rmsprop_jax.low_precision_params("rmsprop")  # type: ignore[arg-type]
  with pytest.raises(TypeError, match="call it, e.g."):
    rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop)  # type: ignore[arg-type]
  with pytest.raises(ValueError, match=r"method must be one of 'kahan', 'stochastic'"):
    rmsprop_jax.low_precision_params(optax.identity(), "nearest")
  with pytest.raises(ValueError, match=r"got method='Kahan'"):
    rmsprop_jax.low_precision_params(optax.identity(), "Kahan")
  with pytest.raises(TypeError, match=r"seed must be an int .* got 1.5 of type float"):
    rmsprop_jax.low_precision_params(optax.identity(), seed=1.5)  # type: ignore[arg-type]
  with pytest.raises(TypeError, match="seed must be an int"):
    rmsprop_jax.low_precision_params(optax.identity(), seed=True)
  with pytest.raises(
    ValueError, match=r"seed must be an int in \[0, 2\*\*32\).*seed=-1"
  ):
    rmsprop_jax.low_precision_params(optax.identity(), seed=-1)
  with pytest.raises(ValueError, match=r"seed=4294967296"):
    rmsprop_jax.low_precision_params(optax.identity(), seed=2**32)


def test_update_errors_name_params_and_the_state():
  params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}
  opt = _identity_wrapped()
  state = opt.init(params)
  with pytest.raises(ValueError, match=r"needs params.*update\(grads, state, params\)"):
    opt.update(params, state)
  with pytest.raises(ValueError, match=r"method='kahan'\) but this optimizer has"):
    _identity_wrapped("stochastic").update(params, state, params)
  with pytest.raises(TypeError, match="state must be the LowPrecisionState"):
    opt.update(params, state.inner, params)
  as32 = {"w": jnp.ones(3), "b": jnp.ones(2)}
  with pytest.raises(
    ValueError, match=r"state.compensation\['w'\] holds a compensation"
  ):
    opt.update(as32, state, as32)
  wider = {"w": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"params\['w'\]: params has shape \(4,\)"):
    opt.update(wider, state, wider)


def test_eight_bit_params_are_refused_at_init_with_their_path():
  with pytest.raises(TypeError, match=r"params\['q'\] has dtype float8_e4m3fn"):
    _identity_wrapped().init({"q": jnp.ones(3, jnp.float8_e4m3fn)})


# ------------------------------------------------------------ the warning


def _warning_stand_in() -> optax.GradientTransformation:
  """An optimizer whose init warns as the core's init does."""

  def init(params):
    _low_precision.warn_if_low_precision(params)
    return optax.EmptyState()

  return optax.GradientTransformation(init, optax.identity().update)


@pytest.mark.parametrize(
  ("dtype", "half_gap"), [(jnp.bfloat16, "2**-8"), (jnp.float16, "2**-11")]
)
def test_16_bit_params_warn_once_at_the_callers_line(dtype, half_gap):
  params = {"a": jnp.ones(3, dtype), "b": jnp.ones(3, dtype), "c": jnp.ones(3)}
  with pytest.warns(UserWarning, match=PREFIX) as record:
    _warning_stand_in().init(params)
  assert len(record) == 1
  message = str(record[0].message)
  assert "params['a'] and 1 more leaves" in message
  assert half_gap in message and "rmsprop_jax.low_precision_params(opt)" in message
  assert record[0].filename == __file__


def test_float32_params_and_wrapped_inits_do_not_warn():
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    _warning_stand_in().init({"w": jnp.ones(3)})
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    rmsprop_jax.low_precision_params(_warning_stand_in()).init(params)
    rmsprop_jax.low_precision_params(
      optax.chain(optax.identity(), _warning_stand_in()), "stochastic"
    ).init(params)
  with pytest.warns(UserWarning, match=PREFIX):  # the flag does not outlive init
    _warning_stand_in().init(params)


def test_rmsprop_and_presets_warn_on_16_bit_params():
  params = {"w": jnp.ones(3, jnp.bfloat16)}
  for opt in (rmsprop_jax.rmsprop(1e-3), rmsprop_jax.torch_rmsprop()):
    with pytest.warns(UserWarning, match=PREFIX):
      opt.init(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop(1e-3)).init(params)


@pytest.mark.standard_promotion  # optax.apply_updates of bfloat16 params and float32 updates
def test_docstring_examples():
  result = doctest.testmod(_low_precision, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0
  assert result.failed == 0


PAGE = pathlib.Path(__file__).parents[1] / "docs" / "low_precision.md"


def test_page_examples_run_in_order_and_keep_the_small_steps():
  # The page runs as pasted in tests/test_docs.py; here, what it computed.
  run = _docs.run_page(PAGE).check()
  ns = run.after("rmsprop_jax.low_precision_params(rmsprop_jax.rmsprop(1e-4))")
  # 100 RMSProp steps of about 1e-4 from 0.5, where plain bfloat16 rounding
  # (half gap 2**-9) keeps none of them.
  assert ns["params"]["w"].dtype == jnp.bfloat16
  assert 0.005 < float(ns["moved"]) < 0.05
  state = run.after("optax.apply_if_finite(")["state"]
  assert int(state.notfinite_count) == 0
  assert isinstance(state.inner_state, rmsprop_jax.LowPrecisionState)
