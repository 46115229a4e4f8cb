"""The recipes against float64 NumPy transcriptions of the code they come from.

Each reference below is written from the original source, not from
``rmsprop_jax``: the Lua loop of DeepMind's DQN, TensorFlow's ``ApplyRMSProp``
and ``ApplyCenteredRMSProp`` kernels (with ``RMSPropOptimizer``'s slots, the
mean square starting at one), ``torch.optim.RMSprop``'s single-tensor step,
Graves' equations (38)-(41), and each code base's learning-rate schedule and
gradient clipping. Every recipe runs for more than 20 steps on a small problem
whose gradients span 1e-3 to 10 (both sides of every ``eps``), with the
schedule's warm-up end and decay boundaries inside the run; the parameters'
displacement must agree to 1e-9 relative.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import recipes
from tests import _trees as trees
from tests._compat import enable_x64

Tree = dict[str, np.ndarray]
RTOL = 1e-9

# ----------------------------------------------------------------- problem


def _init_params() -> Tree:
  return trees.numpy_params(np.float64)["dense"]  # w (3, 4) and b (4,)


# Per-coordinate gradient scales from 1e-3 to 10, so that every recipe's eps
# (1e-5 ... 1.0) is both negligible and dominant somewhere.
_SCALES = {
  "w": np.logspace(-3, 1, 12).reshape(3, 4),
  "b": np.logspace(-2.5, 0.5, 4),
}


def _param_dependent_grads(params: Tree, step: int) -> Tree:
  """A gradient that depends on the parameters (so weight decay matters) plus
  noise with a mean, so that the centred variance is not the raw second moment.
  """
  rng = np.random.default_rng(1000 + step)
  return {
    k: _SCALES[k] * (0.5 * p + 0.4 + rng.normal(size=p.shape))
    for k, p in params.items()
  }


def _assert_follows(
  tx: optax.GradientTransformation,
  reference: Callable[[Tree, Tree, int], Tree],
  steps: int,
) -> None:
  """Runs ``tx`` (jitted, float64) and ``reference`` side by side.

  Both take the gradient computed at the reference's parameters, so that the
  comparison is step for step. Each step, the displacement from the initial
  parameters must agree to ``RTOL`` relative to its largest entry per leaf.
  """
  p0 = _init_params()
  with enable_x64(True):
    params = jax.tree.map(jnp.asarray, p0)
    state = tx.init(params)
    update = jax.jit(tx.update)
    ref = {k: v.copy() for k, v in p0.items()}
    for step in range(steps):
      g = _param_dependent_grads(ref, step)
      updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
      params = optax.apply_updates(params, updates)
      ref = reference(ref, g, step)
      for k in p0:
        ours = np.asarray(params[k]) - p0[k]
        theirs = ref[k] - p0[k]
        scale = np.max(np.abs(theirs))
        err = np.max(np.abs(ours - theirs)) / scale if scale else 0.0
        assert err < RTOL, f"step {step}, leaf {k}: relative error {err:.2e}"


def _kernels(leaf: str) -> bool:
  return leaf == "w"  # the 2-D leaf; "b" is a bias


# ------------------------------------------------- references, from the code


class LuaDQN:
  """``nql:qLearnMinibatch`` of DeepMind's ``dqn/NeuralQLearner.lua``.

  ``network:backward(s, targets)`` is fed the TD error ``y - Q``, so ``dw`` is
  minus the gradient of the loss; the code adds ``deltas`` to the weights.
  """

  def __init__(self, params: Tree, lr_start: float, lr_end: float | None = None):
    self.lr_start = lr_start
    self.lr_end = lr_start if lr_end is None else lr_end  # run_gpu sets none
    self.lr_endt = 1000000
    self.learn_start = 0
    self.wc = 0.0
    self.g = {k: np.zeros_like(v) for k, v in params.items()}
    self.g2 = {k: np.zeros_like(v) for k, v in params.items()}

  def __call__(self, w: Tree, grad: Tree, step: int) -> Tree:
    t = max(0, step - self.learn_start)
    lr = (self.lr_start - self.lr_end) * (self.lr_endt - t) / self.lr_endt
    lr = max(lr + self.lr_end, self.lr_end)
    out = {}
    for k in w:
      dw = -grad[k]  # backward of the TD error
      dw = dw - self.wc * w[k]  # self.dw:add(-self.wc, self.w)
      self.g[k] = self.g[k] * 0.95 + 0.05 * dw
      tmp = dw * dw
      self.g2[k] = self.g2[k] * 0.95 + 0.05 * tmp
      tmp = self.g[k] * self.g[k]
      tmp = -tmp
      tmp = tmp + self.g2[k]
      tmp = tmp + 0.01
      tmp = np.sqrt(tmp)
      deltas = 0 * dw + lr * dw / tmp  # deltas:mul(0):addcdiv(lr, dw, tmp)
      out[k] = w[k] + deltas
    return out


class TF1RMSProp:
  """``tf.compat.v1.train.RMSPropOptimizer``: the slots of ``rmsprop.py``
  (``rms`` ones, ``mg`` and ``momentum`` zeros) and the ``ApplyRMSProp`` /
  ``ApplyCenteredRMSProp`` kernels of ``training_ops.cc``.

  ``loss_l2`` adds ``weight_decay * tf.nn.l2_loss(v)`` to the loss for the
  leaves ``decays(name)`` selects (its gradient is ``weight_decay * v``);
  ``clip_norm`` applies ``tf.clip_by_global_norm`` first.
  """

  def __init__(
    self,
    params: Tree,
    lr: Callable[[int], float],
    decay: float,
    momentum: float,
    epsilon: float,
    centered: bool = False,
    loss_l2: float = 0.0,
    decays: Callable[[str], bool] = lambda name: True,
    clip_norm: float | None = None,
  ):
    self.lr, self.rho, self.m, self.eps = lr, decay, momentum, epsilon
    self.centered, self.l2 = centered, loss_l2
    self.decays, self.clip_norm = decays, clip_norm
    self.ms = {k: np.ones_like(v) for k, v in params.items()}
    self.mg = {k: np.zeros_like(v) for k, v in params.items()}
    self.mom = {k: np.zeros_like(v) for k, v in params.items()}

  def __call__(self, var: Tree, grad: Tree, step: int) -> Tree:
    grad = {k: g + self.l2 * var[k] if self.decays(k) else g for k, g in grad.items()}
    if self.clip_norm is not None:
      norm = math.sqrt(sum(float(np.sum(g * g)) for g in grad.values()))
      grad = {
        k: g * self.clip_norm / max(norm, self.clip_norm) for k, g in grad.items()
      }
    lr = self.lr(step)
    out = {}
    for k, g in grad.items():
      self.ms[k] = self.ms[k] + (g * g - self.ms[k]) * (1 - self.rho)
      if self.centered:
        self.mg[k] = self.mg[k] + (g - self.mg[k]) * (1 - self.rho)
        denom = (self.ms[k] - self.mg[k] * self.mg[k]) + self.eps
      else:
        denom = self.ms[k] + self.eps
      self.mom[k] = self.mom[k] * self.m + (g * lr) / np.sqrt(denom)
      out[k] = var[k] - self.mom[k]
    return out


class TorchRMSprop:
  """``torch.optim.RMSprop`` (``_single_tensor_rmsprop``, not centred)."""

  def __init__(
    self,
    params: Tree,
    lr: Callable[[int], float],
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
  ):
    self.lr, self.alpha, self.eps = lr, alpha, eps
    self.wd, self.m = weight_decay, momentum
    self.square_avg = {k: np.zeros_like(v) for k, v in params.items()}
    self.buf = {k: np.zeros_like(v) for k, v in params.items()}

  def __call__(self, param: Tree, grad: Tree, step: int) -> Tree:
    lr = self.lr(step)
    out = {}
    for k, g in grad.items():
      g = g + self.wd * param[k]
      self.square_avg[k] = self.square_avg[k] * self.alpha + (1 - self.alpha) * g * g
      avg = np.sqrt(self.square_avg[k]) + self.eps
      self.buf[k] = self.buf[k] * self.m + g / avg
      out[k] = param[k] - lr * self.buf[k]
    return out


class Graves2013:
  """Equations (38)-(41) of Graves (2013)."""

  def __init__(
    self, params: Tree, aleph: float, beth: float, gimel: float, daleth: float
  ):
    self.a, self.b, self.lr, self.d = aleph, beth, gimel, daleth
    self.n = {k: np.zeros_like(v) for k, v in params.items()}
    self.g = {k: np.zeros_like(v) for k, v in params.items()}
    self.delta = {k: np.zeros_like(v) for k, v in params.items()}

  def __call__(self, w: Tree, eps: Tree, step: int) -> Tree:
    out = {}
    for k, e in eps.items():
      self.n[k] = self.a * self.n[k] + (1 - self.a) * e**2  # (38)
      self.g[k] = self.a * self.g[k] + (1 - self.a) * e  # (39)
      self.delta[k] = self.b * self.delta[k] - self.lr * e / np.sqrt(
        self.n[k] - self.g[k] ** 2 + self.d
      )  # (40)
      out[k] = w[k] + self.delta[k]  # (41)
    return out


# ------------------------------------------ schedules, from the code


def tf_polynomial_decay(lr, global_step, decay_steps, end_lr=0.0, power=1.0):
  """``tf.compat.v1.train.polynomial_decay`` with ``cycle=False``."""
  global_step = min(global_step, decay_steps)
  return (lr - end_lr) * (1 - global_step / decay_steps) ** power + end_lr


def tf_exponential_decay_staircase(lr, global_step, decay_steps, decay_rate):
  """``tf.compat.v1.train.exponential_decay(..., staircase=True)``."""
  return lr * decay_rate ** math.floor(global_step / decay_steps)


class BaselinesScheduler:
  """``baselines.a2c.utils.Scheduler`` with the ``linear`` schedule."""

  def __init__(self, v: float, nvalues: float):
    self.n, self.v, self.nvalues = 0.0, v, nvalues

  def value(self) -> float:
    current = self.v * (1 - self.n / self.nvalues)
    self.n += 1.0
    return current


def baselines_a2c_lrs(lr: float, total_timesteps: int, nbatch: int, updates: int):
  """The learning rate of each ``Model.train`` call: the last of ``nbatch``."""
  sched = BaselinesScheduler(lr, total_timesteps)
  out = []
  for _ in range(updates):
    for _ in range(nbatch):  # for step in range(len(obs)): cur_lr = lr.value()
      cur_lr = sched.value()
    out.append(cur_lr)
  return out


def efficientnet_lr(
  initial_lr,
  step,
  steps_per_epoch,
  decay_factor=0.97,
  decay_epochs=2.4,
  warmup_epochs=5,
):
  """``build_learning_rate`` of the TPU EfficientNet ``utils.py``."""
  decay_steps = steps_per_epoch * decay_epochs
  lr = tf_exponential_decay_staircase(initial_lr, step, decay_steps, decay_factor)
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  if step < warmup_steps:
    lr = initial_lr * step / warmup_steps
  return lr


def slim_lr(
  lr, step, num_samples_per_epoch, batch_size, num_epochs_per_decay, decay_factor
):
  """``_configure_learning_rate`` of slim's ``train_image_classifier.py``."""
  decay_steps = int(num_samples_per_epoch / batch_size * num_epochs_per_decay)
  return tf_exponential_decay_staircase(lr, step, decay_steps, decay_factor)


# ----------------------------------------------- recipes against references


def test_dqn_nature_matches_the_lua_neural_q_learner():
  _assert_follows(
    recipes.dqn_nature(), LuaDQN(_init_params(), lr_start=0.00025), steps=25
  )


def test_dqn_nature_matches_lua_at_a_large_learning_rate():
  # At 2.5e-4 the parameters barely move; a large rate makes any difference in
  # the statistics visible in the trajectory.
  _assert_follows(
    recipes.dqn_nature(learning_rate=0.3), LuaDQN(_init_params(), lr_start=0.3), 25
  )


def test_dqn_dopamine_matches_tf1_centered_kernel():
  ref = TF1RMSProp(_init_params(), lambda k: 0.00025, 0.95, 0.0, 0.00001, centered=True)
  _assert_follows(recipes.dqn_dopamine(), ref, steps=25)


# The references configured as each code base configures its optimizer; the
# tests below vary what the recipe's arguments vary.


def _impala_reference(
  frames_per_step: int, total: int, momentum: float = 0.0, clip_norm=None
) -> TF1RMSProp:
  """IMPALA's optimizer: decay 0.99, epsilon 0.1, a decay over frames seen."""
  return TF1RMSProp(
    _init_params(),
    lambda k: tf_polynomial_decay(0.05, k * frames_per_step, total),
    decay=0.99,
    momentum=momentum,
    epsilon=0.1,
    clip_norm=clip_norm,
  )


def _efficientnet_reference(lr0: float, batch: int, images: int, l2: float):
  """The TPU EfficientNet's optimizer: decay 0.9, momentum 0.9, epsilon 1e-3."""
  return TF1RMSProp(
    _init_params(),
    lambda k: efficientnet_lr(lr0, k, images / batch),
    decay=0.9,
    momentum=0.9,
    epsilon=0.001,
    loss_l2=l2,
    decays=_kernels,
  )


def _slim_reference(
  samples: int, batch: int, epochs_per_decay: float, rate: float, clip_norm=None
) -> TF1RMSProp:
  """slim's ``train_image_classifier.py`` flags for RMSProp, l2 4e-5 on kernels."""
  return TF1RMSProp(
    _init_params(),
    lambda k: slim_lr(0.045, k, samples, batch, epochs_per_decay, rate),
    decay=0.9,
    momentum=0.9,
    epsilon=1.0,
    loss_l2=4e-5,
    decays=_kernels,
    clip_norm=clip_norm,
  )


def _torchvision_reference(lr: Callable[[int], float], weight_decay: float):
  """torchvision's MobileNetV3 recipe: alpha 0.9, eps 0.0316, momentum 0.9."""
  return TorchRMSprop(
    _init_params(), lr, alpha=0.9, eps=0.0316, weight_decay=weight_decay, momentum=0.9
  )


def test_impala_matches_tf1_kernel_and_frame_count_schedule():
  frames_per_step, total = 2 * 5 * 2, 400  # reaches zero at step 20
  tx = recipes.impala(
    learning_rate=0.05,
    total_environment_frames=total,
    batch_size=2,
    unroll_length=5,
    num_action_repeats=2,
  )
  _assert_follows(tx, _impala_reference(frames_per_step, total), steps=24)


def test_impala_with_momentum_and_clipping():
  ref = _impala_reference(800, 10**5, momentum=0.5, clip_norm=40.0)
  tx = recipes.impala(
    learning_rate=0.05,
    momentum=0.5,
    total_environment_frames=10**5,
    batch_size=2,
    max_grad_norm=40.0,
  )
  _assert_follows(tx, ref, steps=21)


def test_a2c_matches_baselines_clipping_tf1_kernel_and_scheduler():
  nbatch, total = 8, 200  # 25 updates, the last at learning rate 0.05/200
  lrs = baselines_a2c_lrs(0.05, total, nbatch, updates=25)
  ref = TF1RMSProp(
    _init_params(),
    lambda k: lrs[k],
    decay=0.99,
    momentum=0.0,
    epsilon=1e-5,
    clip_norm=0.5,
  )
  tx = recipes.a2c(batch_size=nbatch, total_timesteps=total, learning_rate=0.05)
  _assert_follows(tx, ref, steps=25)


def test_efficientnet_matches_tpu_reference():
  # 40 images at batch 16: 2.5 steps per epoch, warm-up to step 12, decay
  # every 6 steps (2.4 epochs) counted from step 0.
  batch, images = 16, 40
  ref = _efficientnet_reference(0.016 * batch / 256, batch, images, l2=1e-5)
  _assert_follows(
    recipes.efficientnet(batch_size=batch, num_train_images=images), ref, 26
  )


def test_efficientnet_weight_decay_is_the_l2_loss_gradient():
  # A large coefficient, so that a factor of 2 (l2_loss is |w|^2 / 2) or a
  # decayed bias would show.
  batch, images = 16, 40
  ref = _efficientnet_reference(0.5, batch, images, l2=0.3)
  tx = recipes.efficientnet(
    batch_size=batch,
    num_train_images=images,
    base_learning_rate=0.5 * 256 / batch,
    weight_decay=0.3,
  )
  _assert_follows(tx, ref, steps=22)


def test_inception_v3_matches_slim():
  # 100 samples at batch 32: decay_steps = int(6.25) = 6.
  ref = _slim_reference(100, 32, 2.0, 0.94)
  _assert_follows(recipes.inception_v3(num_samples_per_epoch=100), ref, steps=22)


def test_inception_v3_with_the_papers_clipping():
  ref = _slim_reference(100, 32, 2.0, 0.94, clip_norm=2.0)
  tx = recipes.inception_v3(num_samples_per_epoch=100, max_grad_norm=2.0)
  _assert_follows(tx, ref, steps=21)


def test_mobilenet_v2_matches_slim():
  # 500 samples at batch 96: decay_steps = int(5.2) = 5.
  ref = _slim_reference(500, 96, 1.0, 0.98)
  _assert_follows(recipes.mobilenet_v2(num_samples_per_epoch=500), ref, steps=21)


def test_torchvision_mobilenet_v3_matches_torch_rmsprop_and_step_lr():
  # StepLR(step_size=2, gamma=0.973) stepped once per epoch of 3 steps.
  ref = _torchvision_reference(lambda k: 0.064 * 0.973 ** ((k // 3) // 2), 1e-5)
  _assert_follows(recipes.torchvision_mobilenet_v3(steps_per_epoch=3), ref, steps=22)


def test_torchvision_mask_excludes_leaves_from_weight_decay():
  ref = _torchvision_reference(lambda k: 0.01, weight_decay=0.5)
  no_decay = _torchvision_reference(lambda k: 0.01, weight_decay=0.0)

  def split(param: Tree, grad: Tree, step: int) -> Tree:
    # Two parameter groups: "w" with weight decay, "b" without.
    w = ref({"w": param["w"]}, {"w": grad["w"]}, step)
    b = no_decay({"b": param["b"]}, {"b": grad["b"]}, step)
    return {**w, **b}

  tx = recipes.torchvision_mobilenet_v3(
    steps_per_epoch=10**6,
    learning_rate=0.01,
    weight_decay=0.5,
    weight_decay_mask=recipes.kernels_only,
  )
  _assert_follows(tx, split, steps=20)


def test_graves2013_matches_equations_38_to_41():
  _assert_follows(
    recipes.graves2013(), Graves2013(_init_params(), 0.95, 0.9, 1e-4, 1e-4), 25
  )


def test_graves2013_matches_equations_at_a_large_learning_rate():
  ref = Graves2013(_init_params(), 0.95, 0.9, 0.05, 1e-4)
  _assert_follows(recipes.graves2013(learning_rate=0.05), ref, steps=25)


# ------------------------------ schedules at the sources' real sizes


def _values(schedule: optax.Schedule, steps: list[int]) -> np.ndarray:
  with enable_x64(True):
    return np.asarray([float(schedule(jnp.asarray(k, jnp.int32))) for k in steps])


@pytest.mark.parametrize(
  ("lr", "total", "frames"),
  [
    (0.00048, 10**9, 32 * 100 * 4),  # README single level: zero at step 78125
    (0.00031866995608948655, 10**10, 32 * 100 * 4),  # DMLab-30: past int32
  ],
  ids=["single_level", "dmlab30"],
)
def test_impala_schedule_is_polynomial_decay_of_frames(lr, total, frames):
  end = total // frames
  steps = [0, 1, end // 2, end - 1, end, end + 1, 2 * end]
  schedule = recipes.impala_schedule(
    lr, total_environment_frames=total, frames_per_step=frames
  )
  expected = [tf_polynomial_decay(lr, k * frames, total) for k in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-12, atol=0)


def test_a2c_schedule_uses_the_last_of_nbatch_scheduler_values():
  nbatch, total, lr = 80, int(80e6), 7e-4
  updates = total // nbatch  # learn() runs this many
  steps = [0, 1, 2, updates // 2, updates - 1]
  schedule = recipes.a2c_schedule(lr, total_timesteps=total, batch_size=nbatch)
  # Scheduler.value() after n calls is v * (1 - n / nvalues); update k makes
  # calls k * nbatch ... k * nbatch + nbatch - 1 and keeps the last.
  expected = [lr * (1 - (k * nbatch + nbatch - 1) / total) for k in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-12)
  small = baselines_a2c_lrs(lr, 1000, 8, updates=125)
  np.testing.assert_allclose(
    _values(
      recipes.a2c_schedule(lr, total_timesteps=1000, batch_size=8), list(range(125))
    ),
    small,
    rtol=1e-12,
  )


def test_efficientnet_schedule_at_warmup_end_and_fractional_decay_boundaries():
  batch = 2048
  spe = 1281167 / batch  # 625.57 steps per epoch
  lr0 = 0.016 * batch / 256
  warmup = int(5 * spe)  # 3127
  period = 2.4 * spe  # 1501.37 steps
  steps = [0, 1, warmup - 1, warmup, warmup + 1]
  for m in (3, 4, 10, 100):
    boundary = math.ceil(m * period)
    steps += [boundary - 1, boundary]
  schedule = recipes.efficientnet_schedule(lr0, steps_per_epoch=spe)
  expected = [efficientnet_lr(lr0, k, spe) for k in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-12, atol=0)
  # The decay counts from step 0: right after the warm-up it has decayed twice.
  assert expected[3] == pytest.approx(lr0 * 0.97**2)


def test_slim_schedule_truncates_the_decay_period():
  # Inception-v3 defaults: int(1281167 / 32 * 2.0) = 80072 steps per decay.
  steps = [0, 80071, 80072, 160143, 160144, 800720]
  schedule = recipes.slim_schedule(0.045, batch_size=32)
  expected = [slim_lr(0.045, k, 1281167, 32, 2.0, 0.94) for k in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-12, atol=0)


def test_torchvision_schedule_steps_once_per_lr_step_size_epochs():
  spe = 1252  # ceil(ceil(1281167 / 8) / 128): 8 GPUs at batch 128
  schedule = recipes.torchvision_schedule(0.064, steps_per_epoch=spe)
  steps = [0, 2 * spe - 1, 2 * spe, 4 * spe - 1, 4 * spe, 600 * spe - 1]
  # StepLR.step() once per epoch: epoch e has 0.064 * 0.973 ** (e // 2).
  expected = [0.064 * 0.973 ** ((k // spe) // 2) for k in steps]
  np.testing.assert_allclose(_values(schedule, steps), expected, rtol=1e-12)


# --------------------------------------------------------- the API itself


def test_recipes_are_reachable_from_the_package():
  assert rmsprop_jax.recipes is recipes
  for name in recipes.__all__:
    assert callable(getattr(recipes, name))


def test_kernels_only_selects_leaves_with_more_than_one_dimension():
  params = {
    "conv": jnp.zeros((3, 3, 2, 4)),
    "dense": jnp.zeros((4, 2)),
    "bias": jnp.zeros(2),
    "scale": jnp.zeros(()),
  }
  assert recipes.kernels_only(params) == {
    "bias": False,
    "conv": True,
    "dense": True,
    "scale": False,
  }


@pytest.mark.parametrize(
  ("build", "name"),
  [
    (lambda: recipes.a2c(batch_size=0), "batch_size"),
    (lambda: recipes.efficientnet(batch_size=0), "batch_size"),
    (lambda: recipes.torchvision_mobilenet_v3(steps_per_epoch=0), "steps_per_epoch"),
    (lambda: recipes.impala(total_environment_frames=0), "total_environment_frames"),
    (lambda: recipes.inception_v3(num_samples_per_epoch=10), "decay_steps"),
  ],
)
def test_impossible_sizes_are_refused_by_name(build: Callable[[], Any], name: str):
  with pytest.raises(ValueError, match=name):
    build()


@pytest.mark.parametrize(
  "build",
  [
    recipes.dqn_nature,
    recipes.dqn_dopamine,
    recipes.impala,
    lambda: recipes.a2c(batch_size=80),
    lambda: recipes.efficientnet(batch_size=2048),
    recipes.inception_v3,
    recipes.mobilenet_v2,
    lambda: recipes.torchvision_mobilenet_v3(steps_per_epoch=1252),
    recipes.graves2013,
  ],
)
def test_default_recipe_runs_in_float32_under_jit(build: Callable[[], Any]):
  tx = build()
  params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  for u in jax.tree.leaves(updates):
    assert u.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(u)))
