"""Block-wise 8-bit optimizer state (``state_dtype=jnp.float8_*``).

The encoder is checked against a float64 NumPy transcription of the scheme in
``rmsprop_jax/_quantized.py``: ``a`` (the value, or the root of ``nu``), a
power-of-two scale per block that puts the block maximum in the top float8
binade, codes on one of the two float8 grid points around ``a / scale`` (the
grid is enumerated from all 256 bit patterns of the dtype), a positive ``nu``
never stored as zero. The optimizer is checked against the float32-state run
of the same optimizer.
"""

from __future__ import annotations

import json
import math
import os
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import _quantized as q
from tests import _bench
from tests._expect import centred_warning

# Called eagerly, encode and decode would dispatch, and compile, every operation
# on its own; the package always runs them inside a jit, and so do the tests.
encode = jax.jit(q.encode, static_argnames=("dtype", "kind"))
decode = jax.jit(q.decode)

FLOAT8 = [
  pytest.param(jnp.float8_e4m3fn, id="e4m3fn"),
  pytest.param(jnp.float8_e5m2, id="e5m2"),
]


# ------------------------------------------------------- NumPy reference


def grid(dtype) -> np.ndarray:
  """All finite non-negative values of an 8-bit float dtype, sorted, float64."""
  values = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
  return np.unique(np.abs(values[np.isfinite(values)]))


def check_block_scales(scales: np.ndarray, a: np.ndarray, dtype) -> None:
  """Scales are powers of two that put each block's maximum in the top binade.

  ``a`` is rounded to the float8 mantissa width before scaling, by less than
  a relative ``2^-m``; the largest rounded value lies in ``(F/2, F]`` times the
  scale, with ``F`` the largest finite float8 value.
  """
  m = int(jnp.finfo(dtype).nmant)
  fmax = float(jnp.finfo(dtype).max)
  b = min(q.BLOCK_SIZE, a.shape[-1])
  nb = -(-a.shape[-1] // b)
  pad = np.zeros((*a.shape[:-1], nb * b), np.float64)
  pad[..., : a.shape[-1]] = np.abs(a)
  absmax = pad.reshape(*a.shape[:-1], nb, b).max(-1)
  mant, _ = np.frexp(scales)
  assert np.all(mant == 0.5)  # powers of two
  assert np.all(absmax * (1 - 2.0**-m) <= fmax * scales)
  assert np.all(absmax * (1 + 2.0**-m) > fmax * scales / 2)


def ref_expand(scales: np.ndarray, n: int) -> np.ndarray:
  b = min(q.BLOCK_SIZE, n)
  return np.repeat(scales, b, axis=-1)[..., :n]


def neighbours(y: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
  """The float8 grid points just below and just above ``|y|`` (float64).

  ``|y|`` is first widened by 1e-6 relative each way, the float32 rounding of
  the device's ``a * (F / max)``; a code must lie in ``[lo, hi]``, i.e. be
  one of the two grid points around ``|y|`` (or ``|y|`` itself).
  """
  g = grid(dtype)
  a = np.abs(y)
  lo = g[np.clip(np.searchsorted(g, a * (1 - 1e-6), "right") - 1, 0, None)]
  hi = g[np.clip(np.searchsorted(g, a * (1 + 1e-6), "left"), None, len(g) - 1)]
  return lo, hi


def codes64(x: q.QuantizedArray) -> np.ndarray:
  return np.asarray(x.codes).astype(np.float64)


def wide_values(seed: int, shape, orders: float) -> np.ndarray:
  """Signed float32 values whose magnitudes span ``orders`` decades."""
  rng = np.random.default_rng(seed)
  mag = 10.0 ** rng.uniform(-orders, 0, shape)
  return (rng.choice([-1.0, 1.0], shape) * mag).astype(np.float32)


# ------------------------------------------------------- encode / decode


@pytest.mark.parametrize("dtype", FLOAT8)
@pytest.mark.parametrize("shape", [(8, 1000), (3, 5, 64), (5000,)])
def test_signed_codes_are_a_neighbouring_grid_point_of_the_float64_value(dtype, shape):
  x = wide_values(0, shape, orders=6)
  enc = encode(jnp.asarray(x), dtype, "signed")
  scales = np.asarray(enc.scales, np.float64)
  check_block_scales(scales, x, dtype)
  y = x / ref_expand(scales, shape[-1])
  lo, hi = neighbours(y, dtype)
  c = codes64(enc)
  assert np.all((np.abs(c) >= lo) & (np.abs(c) <= hi))
  assert np.all((np.sign(c) == np.sign(x)) | (c == 0))


@pytest.mark.parametrize("dtype", FLOAT8)
def test_sqrt_codes_store_the_root_and_round_subnormals_up(dtype):
  nu = np.abs(wide_values(1, (16, 700), orders=16)) ** 2  # nu over 32 decades
  enc = encode(jnp.asarray(nu), dtype, "sqrt")
  root = np.sqrt(nu).astype(np.float64)  # float32 root, as on the device
  scales = np.asarray(enc.scales, np.float64)
  check_block_scales(scales, root, dtype)
  y = root / ref_expand(scales, 700)
  lo, hi = neighbours(y, dtype)
  c = codes64(enc)
  assert np.all((c >= lo) & (c <= hi))
  assert np.all(c[nu > 0] > 0)  # a positive nu is never stored as zero
  # Below the normal float8 range the root is rounded up onto the coarse
  # subnormal grid (after the first rounding to m mantissa bits).
  m = int(jnp.finfo(dtype).nmant)
  sub = y < float(jnp.finfo(dtype).smallest_normal)
  assert np.all(c[sub] >= y[sub] * (1 - 2.0**-m))


@pytest.mark.parametrize("dtype", FLOAT8)
@pytest.mark.parametrize("kind", ["signed", "sqrt"])
def test_values_on_the_grid_round_trip_exactly(dtype, kind):
  rng = np.random.default_rng(2)
  g = grid(dtype)
  g = g[g > 0]
  fmax = g[-1]
  codes = rng.choice(g, (6, 600))
  codes[:, [0, 256, 512]] = fmax  # each block holds its maximum
  if kind == "signed":
    codes *= rng.choice([-1.0, 1.0], codes.shape)
  scales = 2.0 ** rng.integers(-20, 10, (6, 3))  # exact in float32
  a = codes * ref_expand(scales, 600)
  x = a * a if kind == "sqrt" else a
  enc = encode(jnp.asarray(x, jnp.float32), dtype, kind)
  np.testing.assert_array_equal(codes64(enc), codes)
  np.testing.assert_array_equal(np.asarray(enc.scales), scales)
  np.testing.assert_array_equal(np.asarray(decode(enc)), x.astype(np.float32))


@pytest.mark.parametrize("dtype", FLOAT8)
@pytest.mark.parametrize("kind", ["signed", "sqrt"])
def test_decode_is_code_times_block_scale(dtype, kind):
  x = wide_values(3, (4, 3, 520), orders=4)
  enc = encode(jnp.asarray(np.abs(x) if kind == "sqrt" else x), dtype, kind)
  a = codes64(enc) * ref_expand(np.asarray(enc.scales, np.float64), 520)
  want = a * a if kind == "sqrt" else a
  got = np.asarray(decode(enc))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=3 * 2**-23, atol=0)


@pytest.mark.parametrize("dtype", FLOAT8)
def test_rounding_is_unbiased_between_grid_points(dtype):
  # Values spread evenly between 1 and 2 (one binade) in blocks whose maximum
  # is F, so the grid spacing is known: round-to-nearest would be biased
  # by a fixed fraction of it; stochastic rounding averages out.
  rng = np.random.default_rng(4)
  fmax = float(jnp.finfo(dtype).max)
  x = rng.uniform(1.0, 2.0, (200, 256))
  x[:, 0] = fmax
  enc = encode(jnp.asarray(x, jnp.float32), dtype, "signed")
  err = (codes64(enc) - x)[:, 1:]
  spacing = 2.0 ** -int(jnp.finfo(dtype).nmant)
  assert abs(err.mean()) < 0.01 * spacing
  assert np.all(np.abs(err) < spacing)


def test_all_zero_block_encodes_to_zeros_and_scale_zero():
  enc = encode(jnp.zeros((2, 300)), jnp.float8_e4m3fn, "sqrt")
  np.testing.assert_array_equal(np.asarray(enc.scales), 0.0)
  np.testing.assert_array_equal(np.asarray(decode(enc)), 0.0)


def _store_many(x: np.ndarray, dtype, kind: str, n: int) -> list[q.QuantizedArray]:
  """``n`` successive stores of the same value, each replacing the last."""
  enc, out = None, []
  for _ in range(n):
    enc = encode(jnp.asarray(x, jnp.float32), dtype, kind, enc)
    out.append(enc)
  return out


@pytest.mark.parametrize("dtype", FLOAT8)
def test_scales_carry_a_store_counter_that_decode_ignores(dtype):
  x = np.abs(wide_values(8, (3, 600), orders=3))
  stores = _store_many(x, dtype, "sqrt", 3)
  for t, enc in enumerate(stores):
    bits = np.asarray(enc.scales).view(np.uint32)
    assert np.all(bits & 0x7FFFFF == t)  # counter: 0 for a fresh store, +1 after
    pow2 = (bits & 0xFF800000).view(np.float32).astype(np.float64)
    check_block_scales(pow2, np.sqrt(x), dtype)
    a = codes64(enc) * ref_expand(pow2, 600)
    np.testing.assert_allclose(np.asarray(decode(enc)), a * a, rtol=3 * 2**-23)


@pytest.mark.parametrize("dtype", FLOAT8)
@pytest.mark.parametrize("kind", ["signed", "sqrt"])
def test_repeated_stores_round_up_for_the_designed_share_of_steps(dtype, kind):
  # A value a fraction f of the way between grid points L < H, stored again
  # and again (as nu is under a constant gradient): each element must round
  # up in a share f of the stores ("signed": unbiased over time). "sqrt"
  # rounds up for a share p = f H / a (the reciprocal, i.e. the step,
  # unbiased), plus up to kappa (1 - a^2 / H^2) after a store that rounded up
  # (nu then shrinks from H^2 to a^2): the share lies between p and that
  # pushed p1. A dither that did not change between stores would round every
  # element the same way each time.
  m = int(jnp.finfo(dtype).nmant)
  fmax = float(jnp.finfo(dtype).max)
  f = np.linspace(0.05, 0.95, 255)
  y = 1.0 + f * 2.0**-m  # in [1, 2): grid spacing 2^-m
  a = np.concatenate([[fmax], y])[None].repeat(4, 0)
  x = a * a if kind == "sqrt" else a
  stores = _store_many(x, dtype, kind, 200)
  up = np.mean([codes64(e)[:, 1:] > y for e in stores], axis=0)
  hi = 1.0 + 2.0**-m
  if kind == "signed":
    assert np.all(np.abs(up - f) < 0.03)
  else:
    p = np.minimum(f * hi / y, 1.0)
    p1 = np.minimum(p + q.ROOT_PUSH * (1 - y**2 / hi**2), 1.0)
    assert np.all((up > p - 0.03) & (up < p1 + 0.03))
    assert np.mean(up - p) > 0.01  # the push is there


# ------------------------------------------------------- optimizer state


def _quantizable_params():
  """Three leaves large enough to be block-quantized (w, v, conv), one not (b)."""
  k = jax.random.split(jax.random.key(0), 4)
  return {
    "w": jax.random.normal(k[0], (64, 300)),
    "v": jax.random.normal(k[1], (5000,)),
    "conv": jax.random.normal(k[2], (3, 3, 16, 40)),
    "b": jax.random.normal(k[3], (300,)),
  }


def _quantizable_grads(i):
  """Gradient ``i`` for ``_quantizable_params``."""
  return jax.tree.map(
    lambda p: jax.random.normal(jax.random.key(100 + i), p.shape),
    _quantizable_params(),
  )


FULL = dict(momentum=0.9, centered=True)


def _full(dtype):
  """Every state leaf quantized: momentum and centring (which warns on 8 bits)."""
  with centred_warning(True, dtype):
    return rmsprop_jax.rmsprop(0.01, state_dtype=dtype, **FULL)


@pytest.mark.parametrize("dtype", FLOAT8)
def test_state_keeps_structure_logical_shapes_and_dtype(dtype):
  params = _quantizable_params()
  opt = _full(dtype)
  state = opt.init(params)
  for _ in range(2):
    _, state = opt.update(_quantizable_grads(0), state, params)
  for field, kind in [("nu", "sqrt"), ("mu", "signed"), ("trace", "signed")]:
    tree = getattr(state, field)
    assert set(tree) == set(params)
    for name in ("w", "v", "conv"):
      leaf = tree[name]
      assert isinstance(leaf, q.QuantizedArray)
      assert leaf.shape == params[name].shape
      assert leaf.dtype == jnp.dtype(dtype) and leaf.kind == kind
      assert leaf.codes.shape == params[name].shape
      assert leaf.codes.dtype == jnp.dtype(dtype)
      n = params[name].shape[-1]
      want = (*params[name].shape[:-1], math.ceil(n / min(256, n)))
      assert leaf.scales.shape == want and leaf.scales.dtype == jnp.float32


@pytest.mark.parametrize("dtype", FLOAT8)
def test_leaves_below_the_threshold_stay_float32(dtype):
  params = {
    "small": jnp.ones((q.MIN_SIZE - 1,)),
    "square": jnp.ones((63, 64)),  # 4032 elements
    "scalar": jnp.ones(()),
    "big": jnp.ones((q.MIN_SIZE,)),
  }
  state = _full(dtype).init(params)
  for tree in (state.nu, state.mu, state.trace):
    for name in ("small", "square", "scalar"):
      assert tree[name].dtype == jnp.float32
      assert tree[name].shape == params[name].shape
    assert isinstance(tree["big"], q.QuantizedArray)


def test_state_memory_is_at_most_1_05_bytes_per_parameter():
  # A model whose leaves are mostly large: an embedding, two dense layers and
  # their biases (the biases stay float32).
  params = {
    "emb": jnp.zeros((1000, 256)),
    "w1": jnp.zeros((256, 1024)),
    "b1": jnp.zeros((1024,)),
    "w2": jnp.zeros((1024, 256)),
    "b2": jnp.zeros((256,)),
  }
  state = rmsprop_jax.rmsprop(0.01, state_dtype=jnp.float8_e4m3fn).init(params)
  measured = sum(x.nbytes for x in jax.tree.leaves(state))
  # Independent count: one byte per element plus four per block of 256 along
  # the last axis for large leaves, four bytes per element for small ones (no
  # step count: nothing reads one without a schedule or bias correction).
  want = 0
  for p in params.values():
    if p.size >= 4096:
      want += p.size + 4 * (p.size // p.shape[-1]) * math.ceil(p.shape[-1] / 256)
    else:
      want += 4 * p.size
  n_params = sum(p.size for p in params.values())
  assert measured == want
  assert measured / n_params <= 1.05


@pytest.mark.parametrize("dtype", FLOAT8)
def test_one_store_keeps_nu_above_its_worst_case_fraction(dtype):
  # Rounding the root to m mantissa bits loses less than 1/(1 + 2^m) of it:
  # decoded nu >= (2^m / (2^m + 1))^2 nu, i.e. (8/9)^2 for e4m3fn and
  # (4/5)^2 for e5m2, for every element, also 16 decades below the block max.
  m = int(jnp.finfo(dtype).nmant)
  nu = np.abs(wide_values(7, (64, 512), orders=8)) ** 2
  got = np.asarray(decode(encode(jnp.asarray(nu), dtype, "sqrt")), np.float64)
  assert np.all(got >= nu * (2**m / (2**m + 1)) ** 2 * (1 - 1e-6))


def _adversarial_grads(pattern: str, rng, steps: int, shape) -> list[np.ndarray]:
  """Gradients whose magnitudes span 8 decades inside every block of 256.

  "shuffled": each step every element draws a new magnitude from 1e-4..1e4.
  "constant": fixed magnitudes and signs (nu settles on one value, the case
  where a rounding that repeats itself would stick).
  "vanishing": 5 steps of gradient, then 0 for 55 steps and a gradient 1000
  times smaller for 5, repeated (nu decays over 8 decades in every gap).
  "sparse": a gradient in 10 % of the steps, per element.
  """
  mag = np.logspace(-4, 4, shape[-1])

  def shuffled():
    perm = np.stack([rng.permutation(shape[-1]) for _ in range(shape[0])])
    return mag[perm] * rng.uniform(0.3, 3.0, shape) * rng.choice([-1, 1], shape)

  fixed = shuffled()
  out = []
  for t in range(steps):
    if pattern == "constant":
      g = fixed
    elif pattern == "vanishing":
      on = t < 5 or t % 60 >= 55
      g = shuffled() * (0.0 if not on else 1.0 if t < 5 else 1e-3)
    elif pattern == "sparse":
      g = shuffled() * (rng.uniform(size=shape) < 0.1)
    else:
      g = shuffled()
    out.append(np.asarray(g, np.float32))
  return out


@pytest.mark.parametrize("dtype", FLOAT8)
@pytest.mark.parametrize("decay", [0.9, 0.99])
@pytest.mark.parametrize("pattern", ["shuffled", "constant", "vanishing", "sparse"])
def test_never_explodes_with_gradients_spanning_8_decades_in_one_block(
  dtype, decay, pattern
):
  # Every row is one block of 256 elements whose |g| runs from 1e-4 to 1e4;
  # nu then spans 16 decades, more than any float8 format covers. Elements
  # at the bottom must not be flushed to zero (their step would become
  # g / sqrt(eps)), and rounding errors must not compound while nu decays:
  # the 8-bit step may be smaller, never above 2x the float32 step, at every
  # one of 240 steps, for two seeds.
  shape = (16, 256)
  for seed, eps in [(5, 1e-8), (6, 1e-30)]:
    kwargs = dict(decay=decay, eps=eps, momentum=None)
    opt32 = rmsprop_jax.rmsprop(1.0, **kwargs)
    opt8 = rmsprop_jax.rmsprop(1.0, state_dtype=dtype, **kwargs)
    up32, up8 = jax.jit(opt32.update), jax.jit(opt8.update)
    p = jnp.zeros(shape)
    s32, s8 = opt32.init(p), opt8.init(p)
    rng = np.random.default_rng(seed)
    for g in _adversarial_grads(pattern, rng, 240, shape):
      u32, s32 = up32(jnp.asarray(g), s32)
      u8, s8 = up8(jnp.asarray(g), s8)
      u32, u8 = np.abs(np.asarray(u32, np.float64)), np.abs(np.asarray(u8))
      assert np.all(u8 <= 2.0 * u32)
      nu8 = np.asarray(decode(s8.nu))
      assert np.all(nu8[np.asarray(s32.nu) > 0] > 0)


@pytest.mark.parametrize("dtype", FLOAT8)
def test_nu_decays_by_10x_within_100_steps_once_the_gradient_stops(dtype):
  # decay 0.9: float32 nu shrinks by 0.9^100 ~ 3e-5. The 8-bit root is
  # pushed up slightly at every store, so nu may decay a little more slowly,
  # but every element must still lose at least a factor 10. (|g| spans two
  # decades per block: elements 16 decades below their block maximum sit at
  # the format's floor until the maximum itself has decayed.)
  shape = (16, 256)
  opt = rmsprop_jax.rmsprop(1.0, decay=0.9, state_dtype=dtype)
  update = jax.jit(opt.update)
  rng = np.random.default_rng(9)
  state = opt.init(jnp.zeros(shape))
  for _ in range(20):
    g = rng.normal(size=shape) * np.logspace(-1, 1, 256)
    _, state = update(jnp.asarray(g, jnp.float32), state)
  before = np.asarray(decode(state.nu), np.float64)
  for _ in range(100):
    _, state = update(jnp.zeros(shape), state)
  after = np.asarray(decode(state.nu), np.float64)
  assert np.all(before > 0) and np.all(after > 0)
  assert np.all(after <= before / 10)


def test_float8_e5m2_and_e4m3fn_follow_the_float32_update_closely():
  params = _quantizable_params()
  grads = [_quantizable_grads(i) for i in range(5)]
  runs = {}
  for dtype in (None, jnp.float8_e4m3fn, jnp.float8_e5m2):
    # Not centred: nu - mu^2 cancels and would magnify any error.
    opt = rmsprop_jax.rmsprop(0.01, state_dtype=dtype, momentum=0.9)
    state = opt.init(params)
    for g in grads:
      u, state = opt.update(g, state, params)
    runs[dtype] = u
  for dtype, rtol in [(jnp.float8_e4m3fn, 0.15), (jnp.float8_e5m2, 0.3)]:
    for name in ("w", "v", "conv"):
      want = np.asarray(runs[None][name])
      got = np.asarray(runs[dtype][name])
      # Relative to the typical step size: a step of ~0 has no relative error.
      err = np.abs(got - want) / np.abs(want).mean()
      assert np.median(err) < rtol / 3 and np.mean(err) < rtol


@pytest.mark.parametrize(
  "preset",
  [
    lambda **kw: rmsprop_jax.torch_rmsprop(lr=0.01, momentum=0.9, **kw),
    lambda **kw: rmsprop_jax.keras_rmsprop(learning_rate=0.01, momentum=0.9, **kw),
    lambda **kw: rmsprop_jax.tf1_rmsprop(0.01, momentum=0.9, **kw),
    lambda **kw: rmsprop_jax.timm_rmsprop_tf(lr=0.01, momentum=0.9, **kw),
  ],
  ids=["torch", "keras", "tf1", "timm"],
)
def test_presets_take_8bit_state_and_follow_their_float32_run(preset):
  params = _quantizable_params()
  runs = {}
  for dtype in (None, jnp.float8_e4m3fn):
    opt = preset(state_dtype=dtype)
    state = opt.init(params)
    for i in range(5):
      u, state = opt.update(_quantizable_grads(i), state, params)
    runs[dtype] = u
  assert isinstance(state.nu["w"], q.QuantizedArray)
  want, got = np.asarray(runs[None]["w"]), np.asarray(runs[jnp.float8_e4m3fn]["w"])
  err = np.abs(got - want) / np.abs(want).mean()
  assert np.median(err) < 0.05 and np.mean(err) < 0.15


@pytest.mark.parametrize("dtype", FLOAT8)
def test_eager_and_jit_updates_are_bit_identical(dtype):
  params = _quantizable_params()
  opt = _full(dtype)

  def run(update):
    state = opt.init(params)
    for i in range(3):
      u, state = update(_quantizable_grads(i), state, params)
    return u, state

  eager = run(opt.update)
  jitted = run(jax.jit(opt.update))
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_array_equal(
      np.atleast_1d(np.asarray(a)).view(np.uint8),
      np.atleast_1d(np.asarray(b)).view(np.uint8),
    )


def test_vmap_over_a_batch_of_models_equals_one_model_at_a_time():
  params = {
    "w": jnp.stack([_quantizable_params()["w"], 2 * _quantizable_params()["w"]])
  }
  grads = {"w": jnp.stack([_quantizable_grads(0)["w"], _quantizable_grads(1)["w"]])}
  opt = _full(jnp.float8_e4m3fn)
  u, state = jax.vmap(opt.update)(grads, jax.vmap(opt.init)(params), params)
  for i in range(2):
    p_i = {"w": params["w"][i]}
    u_i, s_i = opt.update({"w": grads["w"][i]}, opt.init(p_i), p_i)
    chex.assert_trees_all_equal(u["w"][i], u_i["w"])
    chex.assert_trees_all_equal(state.nu["w"].codes[i], s_i.nu["w"].codes)


@pytest.mark.standard_promotion  # optax.MultiSteps
def test_inject_hyperparams_schedule_and_optax_wrappers_run_with_8bit_state():
  params = _quantizable_params()
  schedule = optax.linear_schedule(0.01, 0.001, 10)
  base = optax.inject_hyperparams(rmsprop_jax.rmsprop, static_args=("state_dtype",))
  opt = optax.MultiSteps(
    optax.apply_if_finite(
      optax.chain(
        optax.clip_by_global_norm(1.0),
        base(learning_rate=schedule, state_dtype=jnp.float8_e4m3fn),
      ),
      max_consecutive_errors=2,
    ),
    every_k_schedule=2,
  )
  state = opt.init(params)
  step = jax.jit(opt.update)
  for i in range(4):
    u, state = step(_quantizable_grads(i), state, params)
  inner = state.inner_opt_state.inner_state[1].inner_state
  assert isinstance(inner.nu["w"], q.QuantizedArray)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))
  # Two NaN mini-steps make one NaN step of apply_if_finite: it is skipped, with
  # zero updates, and the 8-bit state it wraps is kept bit for bit.
  bad = jax.tree.map(lambda x: x * jnp.nan, _quantizable_grads(9))
  u_nan, state_nan = step(bad, state, params)
  u_nan, state_nan = step(bad, state_nan, params)
  finite = state_nan.inner_opt_state
  assert int(finite.notfinite_count) == 1 and int(finite.total_notfinite) == 1
  chex.assert_trees_all_equal(finite.inner_state, state.inner_opt_state.inner_state)
  for x in jax.tree.leaves(u_nan):
    np.testing.assert_array_equal(x, np.zeros_like(x))


def test_orbax_checkpoint_restores_8bit_state_and_continues_bit_exactly(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = _quantizable_params()
  opt = _full(jnp.float8_e4m3fn)
  step = jax.jit(opt.update)
  state = opt.init(params)
  _, state = step(_quantizable_grads(0), state, params)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "ckpt", state)
  abstract = jax.eval_shape(opt.init, params)
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "ckpt", abstract)
  assert isinstance(restored.nu["w"], q.QuantizedArray)
  want = step(_quantizable_grads(1), state, params)
  got = step(_quantizable_grads(1), restored, params)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(
      np.atleast_1d(np.asarray(a)).view(np.uint8),
      np.atleast_1d(np.asarray(b)).view(np.uint8),
    )


def test_complex_parameters_quantize_nu_and_keep_mu_trace_complex64():
  p = jnp.ones((64, 128), jnp.complex64)
  opt = _full(jnp.float8_e4m3fn)
  state = opt.init(p)
  u, state = opt.update(p * (1 + 2j), state, p)
  assert isinstance(state.nu, q.QuantizedArray)
  assert state.mu.dtype == jnp.complex64 and state.trace.dtype == jnp.complex64
  assert u.dtype == jnp.complex64 and bool(jnp.all(jnp.isfinite(u)))


SHARDED = textwrap.dedent(
  r"""
    import json, os, re, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import rmsprop_jax

    COLLECTIVE = re.compile(r"\b(all-reduce|all-gather|collective-permute|"
                            r"reduce-scatter|all-to-all)(-start)?\(")
    mesh = jax.make_mesh((8,), ("fsdp",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    fsdp = NamedSharding(mesh, P("fsdp"))
    shapes = {"w": (64, 1000), "v": (8 * 2048,)}
    rng = np.random.default_rng(0)
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    gs = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
          for _ in range(2)]
    out = {}
    for name, kw in {"plain": {}, "full": dict(momentum=0.9, centered=True)}.items():
      opt = rmsprop_jax.rmsprop(0.01, state_dtype=jnp.float8_e4m3fn, **kw)
      update = jax.jit(opt.update)
      params = {k: jax.device_put(v, fsdp) for k, v in p0.items()}
      state = opt.init(params)
      def unsharded(tree):
        return [jax.tree_util.keystr(path) for path, x in
                jax.tree_util.tree_leaves_with_path(tree)
                if x.ndim and not x.sharding.is_equivalent_to(fsdp, x.ndim)]
      g0 = {k: jax.device_put(v, fsdp) for k, v in gs[0].items()}
      hlo = update.lower(g0, state, params).compile().as_text()
      s, local = state, opt.init({k: jnp.asarray(v) for k, v in p0.items()})
      for g in gs:
        u, s = update({k: jax.device_put(v, fsdp) for k, v in g.items()}, s,
                      params)
        ul, local = update({k: jnp.asarray(v) for k, v in g.items()}, local,
                           {k: jnp.asarray(v) for k, v in p0.items()})
      same = all(np.array_equal(np.atleast_1d(np.asarray(a)).view(np.uint8),
                                np.atleast_1d(np.asarray(b)).view(np.uint8))
                 for a, b in zip(jax.tree.leaves((u, s)),
                                 jax.tree.leaves((ul, local))))
      out[name] = dict(collectives=len(COLLECTIVE.findall(hlo)),
                       init_unsharded=unsharded(state),
                       after_unsharded=unsharded((u, s)), equal=same)
    print(json.dumps(out))
    """
)


def test_fsdp_sharded_state_keeps_whole_blocks_per_shard_without_collectives():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = _bench.python("-c", SHARDED, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, res in out.items():
    assert res["collectives"] == 0, name
    assert res["init_unsharded"] == [], name
    assert res["after_unsharded"] == [], name
    assert res["equal"], name  # sharded run == single-device run, bit for bit


def test_jitted_init_equals_eager_init():
  params = _quantizable_params()
  opt = _full(jnp.float8_e4m3fn)
  eager = opt.init(params)
  jitted = jax.jit(opt.init)(params)
  assert jax.tree.structure(eager) == jax.tree.structure(jitted)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(
      np.atleast_1d(np.asarray(a)).view(np.uint8),
      np.atleast_1d(np.asarray(b)).view(np.uint8),
    )
