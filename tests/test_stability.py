"""Long runs: 10 000 noisy steps of every variant stay finite and converge.

The problem is a badly conditioned noisy quadratic (curvatures from 1e-3 to
1e3), with one group of parameters whose gradient vanishes for 2 000 steps at
a time (so ``nu`` decays towards zero and the gradient then returns) and one
whose gradient is ~1e-4 in size. The whole run is one ``lax.scan`` inside one
``jit``, in float32 and with bfloat16 optimizer state; the compiled run is
repeated for six noise draws. Passing means finite parameters and state,
``nu >= 0``, and a final loss below 1% of the initial one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from tests._expect import centred_warning

STEPS = 10_000
LR = 1e-3

VARIANTS: dict[str, dict[str, Any]] = {
  "plain": dict(),
  "eps-outside-root": dict(eps_in_sqrt=False),
  "initial-scale-1": dict(initial_scale=1.0),
  "centered": dict(centered=True),
  "momentum": dict(momentum=0.9),
  "nesterov": dict(momentum=0.9, nesterov=True),
  "momentum-lr-outside": dict(momentum=0.9, lr_in_momentum=False),
  "nesterov-lr-outside": dict(momentum=0.9, nesterov=True, lr_in_momentum=False),
  "bias-correction": dict(bias_correction=True),
  # The first bias-corrected centred variance is exactly 0, so the first step
  # is lr * g / sqrt(eps) (see the test at the end): this pairing needs an eps
  # of the gradient's scale, as users of it choose.
  "centered-bias-correction": dict(centered=True, bias_correction=True, eps=1e-3),
  "coupled-weight-decay": dict(weight_decay=1e-2),
  "decoupled-weight-decay": dict(weight_decay=1e-2, decoupled_weight_decay=True),
  "maximize": dict(maximize=True),
  "schedule": dict(learning_rate=optax.cosine_decay_schedule(LR, STEPS)),
  "centered-nesterov-masked-wd": dict(
    eps_in_sqrt=False,
    centered=True,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-2,
    decoupled_weight_decay=True,
    weight_decay_mask={"w": True, "b": False},
  ),
  "bias-corrected-nesterov-coupled-wd": dict(
    eps_in_sqrt=False,
    momentum=0.9,
    nesterov=True,
    lr_in_momentum=False,
    bias_correction=True,
    weight_decay=1e-2,
  ),
}

# bfloat16 state keeps 8 significant bits, so the centred variance nu - mu^2
# cancels (rmsprop warns; see the strict xfail at the end). That pairing is
# unsupported and not run here.
UNSUPPORTED = {
  (name, jnp.bfloat16) for name, kw in VARIANTS.items() if kw.get("centered")
}


def _cases() -> list[Any]:
  return [
    pytest.param(name, dtype, id=f"{name}-{jnp.dtype(dtype)}")
    for name in VARIANTS
    for dtype in (jnp.float32, jnp.bfloat16)
    if (name, dtype) not in UNSUPPORTED
  ]


# Per element of "w": curvature, and whether its gradient switches off for
# 2000 steps at a time. "b" has a gradient of size ~1e-4.
_CURV_W = np.concatenate([np.logspace(-3, 3, 8), np.full(4, 10.0)]).astype(np.float32)
_SWITCHING = np.arange(12) >= 8
_CURV_B = np.full(3, 1e-6, np.float32)


def _target() -> dict[str, jax.Array]:
  return {"w": jnp.linspace(-0.5, 0.5, 12), "b": jnp.linspace(-0.5, 0.5, 3)}


def _loss(params: Any) -> jax.Array:
  t = _target()
  return 0.5 * (
    jnp.sum(_CURV_W * (params["w"] - t["w"]) ** 2)
    + jnp.sum(_CURV_B * (params["b"] - t["b"]) ** 2)
  )


SEEDS = range(6)  # noise draws; the compiled run is reused for each


@functools.cache
def _noise(seed: int) -> dict[str, np.ndarray]:
  """Gradient noise for every step, drawn outside the compiled loop."""
  rng = np.random.default_rng(seed)
  return {
    k: (0.1 * np.sqrt(c) * rng.normal(size=(STEPS, c.size))).astype(np.float32)
    for k, c in (("w", _CURV_W), ("b", _CURV_B))
  }


@functools.partial(jax.jit, static_argnames=("options", "state_dtype"))
def _long_run(
  noise: dict[str, jax.Array],
  options: tuple[tuple[str, Any], ...],
  state_dtype: Any,
) -> Any:
  kwargs = {k: dict(v) if k == "weight_decay_mask" else v for k, v in options}
  lr = kwargs.pop("learning_rate", LR)
  maximize = kwargs.get("maximize", False)
  opt = rmsprop_jax.rmsprop(lr, state_dtype=state_dtype, **kwargs)
  target = _target()

  def body(carry, noise):
    params, state, step = carry
    off = (step // 2000) % 2 == 1
    grads = {
      "w": jnp.where(
        off & _SWITCHING, 0.0, _CURV_W * (params["w"] - target["w"]) + noise["w"]
      ),
      "b": _CURV_B * (params["b"] - target["b"]) + noise["b"],
    }
    if maximize:  # ascend -loss, i.e. descend the loss
      grads = jax.tree.map(jnp.negative, grads)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state, step + 1), None

  params = jax.tree.map(jnp.ones_like, target)
  start = (params, opt.init(params), jnp.int32(0))
  (params, state, _), _ = jax.lax.scan(body, start, noise)
  return params, state, _loss(start[0]), _loss(params)


def _options_key(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  # a hashable form for the static argument (masks as tuples of items)
  return tuple(
    (k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
    for k, v in sorted(options.items())
  )


@pytest.mark.parametrize(("name", "state_dtype"), _cases())
def test_ten_thousand_noisy_steps_stay_finite_and_converge(name, state_dtype):
  for seed in SEEDS:
    params, state, loss0, loss = _long_run(
      _noise(seed), _options_key(VARIANTS[name]), state_dtype
    )
    for leaf in jax.tree.leaves((params, state)):
      assert np.all(np.isfinite(np.asarray(leaf, np.float64))), seed
    for nu in jax.tree.leaves(state.nu):
      assert nu.dtype == state_dtype and np.all(np.asarray(nu, np.float64) >= 0)
    if state.count is not None:  # kept for bias correction only here
      assert int(state.count) == STEPS
    # from loss0 ~ 180 to the noise floor (~1e-3): far below 1% of the start
    assert float(loss) < 1e-2 * float(loss0), (seed, float(loss0), float(loss))


def test_centered_bias_corrected_first_step_divides_by_sqrt_eps():
  """The rule as specified: nu_hat = g^2 and mu_hat = g after one step.

  So the variance estimate is exactly 0 (clamped, never negative: no NaN) and
  the first update is -lr * g / sqrt(eps), a jump of 1e4 * lr * g with the
  default eps. This is why "centered-bias-correction" diverges above.
  """
  g = np.array([1e-3, -0.5, 3.0, 250.0], np.float32)
  for eps in (1e-8, 1e-4):
    opt = rmsprop_jax.rmsprop(1e-3, 0.9, eps, centered=True, bias_correction=True)
    u, _ = opt.update(jnp.asarray(g), opt.init(jnp.zeros(4)))
    expected = -1e-3 * g.astype(np.float64) / np.sqrt(eps)
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5)


@pytest.mark.xfail(
  strict=True,
  reason="bf16 mu and nu keep 8 significant bits; nu - mu^2 cancels when "
  "the gradient's std is below ~6% of its mean, and the step becomes "
  "lr * g / sqrt(eps)",
)
def test_centered_bfloat16_state_tracks_the_float32_variance():
  rng = np.random.default_rng(0)
  grads = (1.0 + 0.03 * rng.normal(size=(300, 64))).astype(np.float32)
  largest = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    with centred_warning(True, dtype):
      opt = rmsprop_jax.rmsprop(1.0, 0.9, centered=True, state_dtype=dtype)
    update = jax.jit(opt.update)
    state = opt.init(jnp.zeros(64))
    for g in grads:
      u, state = update(jnp.asarray(g), state)
    largest[dtype] = float(np.max(np.abs(np.asarray(u))))
  # float32 state: |u| ~ mean / std ~ 35-50. bf16 state: up to 1e4.
  assert largest[jnp.bfloat16] < 2 * largest[jnp.float32]
