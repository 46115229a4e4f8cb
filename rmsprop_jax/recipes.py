r"""Published RMSProp training configurations, ready to use.

Each recipe is the optimizer of one well-known paper *and* its released code,
built from :func:`rmsprop_jax.rmsprop` or a preset plus optax pieces (gradient
clipping, schedules). Its docstring names the source files and every number;
where the paper and the code disagree, it says which one the recipe follows.

The recipes reproduce the optimizer only. What else shapes the gradient is the
training loop's business and is listed under "Not included" where it matters:
for example whether the loss is summed or averaged over the batch, which changes
how large an ``eps`` of 0.01 or 1.0 is relative to the gradient.

Recipes with a learning-rate schedule take the quantities the schedule is
written in (steps per epoch, frames per update, ...) and expose the schedule as
its own function, so that it can be logged or reused.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rmsprop_jax._alias import rmsprop
from rmsprop_jax._presets import tf1_rmsprop, torch_rmsprop

__all__ = [
  "a2c",
  "a2c_schedule",
  "dqn_dopamine",
  "dqn_nature",
  "efficientnet",
  "efficientnet_schedule",
  "graves2013",
  "impala",
  "impala_schedule",
  "inception_v3",
  "kernels_only",
  "mobilenet_v2",
  "slim_schedule",
  "torchvision_mobilenet_v3",
  "torchvision_schedule",
]

IMAGENET_TRAIN_IMAGES = 1281167  # the ILSVRC-2012 training set, as the sources use


def kernels_only(params: optax.Params) -> Any:
  """Weight-decay mask: True for leaves with more than one dimension.

  Dense and convolution kernels decay; biases and normalisation scales and
  offsets (one-dimensional) do not. Pass it as ``weight_decay_mask``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from rmsprop_jax.recipes import kernels_only
    >>> kernels_only({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)})
    {'b': False, 'w': True}
  """
  return jax.tree.map(lambda x: jnp.ndim(x) > 1, params)


def _float(count: Any) -> jax.Array:
  # The step count is int32: products such as frames per update overflow it,
  # and int32 / int is float32 in JAX even with float64 enabled.
  return jnp.asarray(count, dtype=jnp.result_type(float))


def _of_float_count(schedule: optax.Schedule) -> optax.Schedule:
  """``schedule`` evaluated at the count as a float (float64 under x64)."""
  return lambda count: schedule(_float(count))


def _check_positive(name: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be positive; got {value!r}.")


def _maybe_clip(
  tx: optax.GradientTransformationExtraArgs, max_grad_norm: float | None
) -> optax.GradientTransformationExtraArgs:
  if max_grad_norm is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)


def _tf1_rmsprop_with_l2(
  learning_rate: optax.ScalarOrSchedule,
  *,
  decay: float,
  momentum: float,
  epsilon: float,
  weight_decay: float,
  weight_decay_mask: Any,
  max_grad_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``tf.compat.v1.train.RMSPropOptimizer`` on a loss with an L2 term.

  The TF recipes add ``weight_decay * sum(tf.nn.l2_loss(w))`` to the loss;
  ``l2_loss(w) = sum(w**2) / 2``, so the term adds exactly ``weight_decay * w``
  to the gradient: :func:`tf1_rmsprop`'s ``weight_decay``. Being part of the
  loss, the term is also part of the gradient that clipping sees, so with
  clipping it is added first, by ``optax.add_decayed_weights``.
  """
  if max_grad_norm is None:
    return tf1_rmsprop(
      learning_rate,
      decay=decay,
      momentum=momentum,
      epsilon=epsilon,
      weight_decay=weight_decay,
      weight_decay_mask=weight_decay_mask,
    )
  return optax.chain(
    optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
    optax.clip_by_global_norm(max_grad_norm),
    tf1_rmsprop(learning_rate, decay=decay, momentum=momentum, epsilon=epsilon),
  )


# --------------------------------------------------------------------- DQN


def dqn_nature(
  *, learning_rate: float = 2.5e-4, decay: float = 0.95, eps: float = 0.01
) -> optax.GradientTransformationExtraArgs:
  r"""The RMSProp of DQN (Mnih et al., 2015), as in DeepMind's Lua code.

  Centred RMSProp with :math:`\epsilon` inside the root, no momentum:

  .. math::

    \nu \leftarrow \rho\nu + (1-\rho)g^2, \quad
    \mu \leftarrow \rho\mu + (1-\rho)g, \quad
    \theta \leftarrow \theta - \eta\, g / \sqrt{\nu - \mu^2 + \epsilon}

  with :math:`\nu_0 = \mu_0 = 0`, :math:`\eta = 2.5\times10^{-4}`,
  :math:`\rho = 0.95`, :math:`\epsilon = 0.01`. In ``NeuralQLearner.lua`` the
  averages and the constant are literals (``g:mul(0.95):add(0.05, dw)``,
  ``tmp:add(0.01)``, lines 266-273) and ``run_gpu`` sets ``lr=0.00025``
  (line 25) with no ``lr_end``, so the learning-rate annealing of lines
  260-263 keeps it constant; ``wc`` (L2) is 0.

  The code keeps ``dw`` = minus the gradient (``network:backward`` is fed the
  TD error ``y - Q``) and *adds* ``deltas = lr * dw / sqrt(...)`` to the
  weights (lines 276-277). That is a descent step on the gradient; the
  centred statistics are the same for ``g`` and ``-g``.

  The paper's Extended Data Table 1 calls the two averaging constants
  "gradient momentum" and "squared gradient momentum" (0.95 each) and
  :math:`\epsilon` "min squared gradient" (0.01). They are the decays of
  :math:`\mu` and :math:`\nu`, not a momentum: ``deltas:mul(0)`` discards the
  previous step. Ports that pass ``momentum=0.95`` to ``torch.optim.RMSprop``
  run a different optimizer, and so do ports that put :math:`\epsilon` outside
  the root (its floor on the denominator drops from 0.1 to 0.01).

  Not included: the gradient the Lua code feeds in is the *sum* over the 32
  transitions of the minibatch of the gradients of the TD error clipped to
  [-1, 1] (``clip_delta=1``; ``nn`` accumulates over the batch). With a mean
  loss the gradient is 32 times smaller and the same :math:`\epsilon` weighs
  relatively 1024 times more in :math:`\nu`; sum the loss to match.

  Args:
    learning_rate: step size :math:`\eta` (``lr`` in ``run_gpu``).
    decay: :math:`\rho` of both averages (the 0.95 literals).
    eps: added to the variance inside the root (the 0.01 literal).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.dqn_nature()
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state)
    >>> [round(u / 2.5e-4, 4) for u in updates.tolist()]  # in learning rates
    [-3.3806, 0.1]

  References:
    - Mnih et al., "Human-level control through deep reinforcement learning",
      Nature 518, 2015 (Methods; Extended Data Table 1).
    - DQN 3.0 code released with the paper (deepmind/dqn, mirrored in
      kuz/DeepMind-Atari-Deep-Q-Learner @ 54978fa): ``dqn/NeuralQLearner.lua``,
      ``nql:qLearnMinibatch``, lines 254-277; ``run_gpu``, lines 25 and 31.
  """
  return rmsprop(learning_rate, decay=decay, eps=eps, centered=True, eps_in_sqrt=True)


def dqn_dopamine(
  *, learning_rate: float = 2.5e-4, decay: float = 0.95, epsilon: float = 1e-5
) -> optax.GradientTransformationExtraArgs:
  r"""The RMSProp of Dopamine's DQN agent (TensorFlow 1).

  ``tf.compat.v1.train.RMSPropOptimizer(learning_rate=0.00025, decay=0.95,
  momentum=0.0, epsilon=0.00001, centered=True)``, the default of
  ``DQNAgent.__init__`` and the value bound in both ``dqn.gin`` and
  ``dqn_nature.gin``. It is :func:`rmsprop_jax.tf1_rmsprop`: centred,
  :math:`\epsilon` inside the root, and the mean square starting at **one**
  (the mean gradient at zero), so the first steps are about
  ``learning_rate * g``.

  Dopamine's ``dqn_nature.gin`` is labelled "Hyperparameters used in Mnih et
  al. (2015)", yet this is not the Nature optimizer (:func:`dqn_nature`):
  :math:`\epsilon` is 1e-5 instead of 0.01 and the mean square starts at 1
  instead of 0. This recipe follows Dopamine's code. Its loss is
  ``tf.reduce_mean`` of the Huber loss over the batch (not a sum as in the Lua
  code).

  This is the TensorFlow agent (``dopamine/agents/dqn``). Dopamine's JAX agent
  (``dopamine/jax/agents/dqn``) trains with Adam by default (``dqn.gin``:
  ``JaxDQNAgent.optimizer = 'adam'``, learning rate 6.25e-5, eps 1.5e-4), and
  its ``'rmsprop'`` option is ``optax.rmsprop(learning_rate, decay=0.999,
  eps=1.5e-4, centered=False)`` (``create_optimizer``, with ``beta2`` as the
  decay): not centred, the mean square starting at zero. That optimizer is
  ``rmsprop_jax.rmsprop(6.25e-5, decay=0.999, eps=1.5e-4)``, not this recipe.

  Args:
    learning_rate: ``learning_rate``.
    decay: ``decay`` of both averages.
    epsilon: ``epsilon``, inside the root.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.dqn_dopamine()
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state)
    >>> [round(u / 2.5e-4, 4) for u in updates.tolist()]  # in learning rates
    [-0.5098, 0.0103]

  References:
    - Castro et al., "Dopamine: A Research Framework for Deep Reinforcement
      Learning", arXiv:1812.06110, 2018.
    - google/dopamine: ``dopamine/agents/dqn/dqn_agent.py`` (@ 9e8c66a, lines
      96-101, the ``optimizer=`` default); ``dopamine/agents/dqn/configs/dqn.gin``
      (@ 1ff6ee2, lines 21-25); ``.../configs/dqn_nature.gin`` (@ 31799e9,
      lines 19-23). The JAX agent: ``dopamine/jax/agents/dqn/dqn_agent.py``
      (@ 016f4b3, ``create_optimizer``) and
      ``dopamine/jax/agents/dqn/configs/dqn.gin`` (@ 9f616b9).
  """
  return tf1_rmsprop(
    learning_rate, decay=decay, momentum=0.0, epsilon=epsilon, centered=True
  )


# ------------------------------------------------------------ actor-critic


def impala_schedule(
  learning_rate: float,
  *,
  total_environment_frames: int,
  frames_per_step: int,
) -> optax.Schedule:
  r"""IMPALA's learning rate: linear decay to zero over the environment frames.

  ``tf.train.polynomial_decay(learning_rate, num_env_frames,
  total_environment_frames, 0)`` (power 1) where the global step counts
  environment frames and grows by ``frames_per_step`` after each update, so
  update :math:`k` (0-based) uses

  .. math::

    \eta_k = \eta_0 \left(1 - \min(kF, T) / T\right).

  Args:
    learning_rate: initial learning rate :math:`\eta_0`.
    total_environment_frames: :math:`T`, where the rate reaches zero.
    frames_per_step: :math:`F` = ``batch_size * unroll_length *
      num_action_repeats``.

  Returns:
    An optax schedule of the 0-based update count.

  Examples:
    >>> from rmsprop_jax.recipes import impala_schedule
    >>> schedule = impala_schedule(
    ...   4.8e-4, total_environment_frames=10**9, frames_per_step=12800)
    >>> [round(float(schedule(k)), 8) for k in (0, 39062, 78125)]
    [0.00048, 0.00024, 0.0]
  """
  _check_positive("total_environment_frames", total_environment_frames)
  _check_positive("frames_per_step", frames_per_step)
  by_frames = optax.linear_schedule(learning_rate, 0.0, int(total_environment_frames))

  def schedule(count: Any) -> jax.Array:
    return jnp.asarray(by_frames(_float(count) * frames_per_step))

  return schedule


def impala(
  *,
  learning_rate: float = 4.8e-4,
  decay: float = 0.99,
  momentum: float = 0.0,
  epsilon: float = 0.1,
  total_environment_frames: int = 1_000_000_000,
  batch_size: int = 32,
  unroll_length: int = 100,
  num_action_repeats: int = 4,
  max_grad_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The learner optimizer of IMPALA (Espeholt et al., 2018), DeepMind's code.

  ``tf.train.RMSPropOptimizer(learning_rate, FLAGS.decay, FLAGS.momentum,
  FLAGS.epsilon)`` in ``build_learner`` of ``experiment.py``, with the flag
  defaults ``learning_rate=0.00048``, ``decay=.99``, ``momentum=0.``,
  ``epsilon=.1`` (lines 87-90). It is :func:`rmsprop_jax.tf1_rmsprop`
  (:math:`\epsilon` inside the root, mean square starting at one), with the
  learning rate of :func:`impala_schedule`: linear decay to zero over
  ``total_environment_frames`` (flag default 1e9, line 60), the global step
  advancing by ``batch_size * unroll_length * num_action_repeats`` frames per
  update. The defaults are the README's single-level command
  (``--batch_size=32``; the flag default is 2) with ``unroll_length=100`` and
  ``num_action_repeats=4`` (lines 64-65); the README's DMLab-30 learner uses
  ``learning_rate=0.00031866995608948655`` and
  ``total_environment_frames=10000000000``. The code does not clip gradients.

  The paper fixes no single :math:`\epsilon`: its experiments sweep "the
  weighting of entropy regularisation, the learning rate and the RMSProp
  epsilon", 24 combinations drawn from ranges given in its appendix. So
  :math:`\epsilon = 0.1` is the released code's flag default, which both of
  the README's commands keep; this recipe follows the code.

  Other IMPALA implementations use other numbers: TorchBeast, as quoted in
  optax issue #532, calls ``torch.optim.RMSprop(lr=0.0006, momentum=0,
  eps=0.01, alpha=0.99)`` and clips the gradient norm at 40. PyTorch also puts
  :math:`\epsilon` outside the root and starts the mean square at zero: with
  :math:`\epsilon` = 0.01 or 0.1 that is a different optimizer, and the same
  numbers do not give the same training (the issue's point). This recipe
  follows ``experiment.py``; pass ``epsilon``, ``learning_rate`` and
  ``max_grad_norm`` to change them.

  Not included: the loss in ``experiment.py`` is a *sum* over the time steps
  and batch (``tf.reduce_sum``), which sets the gradient scale that
  :math:`\epsilon = 0.1` is measured against.

  Args:
    learning_rate: initial learning rate (``--learning_rate``).
    decay: ``--decay`` of the mean square.
    momentum: ``--momentum`` (0 allocates no buffer; TF's holds the last step).
    epsilon: ``--epsilon``, inside the root.
    total_environment_frames: ``--total_environment_frames``.
    batch_size: ``--batch_size`` (unrolls per update).
    unroll_length: ``--unroll_length``.
    num_action_repeats: ``--num_action_repeats``.
    max_grad_norm: clip the global gradient norm to this first; ``None`` (the
      code) does not clip.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.impala()
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state)
    >>> [f"{u:.4e}" for u in updates.tolist()]
    ['-2.2962e-04', '4.5976e-06']

  References:
    - Espeholt et al., "IMPALA: Scalable Distributed Deep-RL with Importance
      Weighted Actor-Learner Architectures", ICML 2018, arXiv:1802.01561.
    - deepmind/scalable_agent (google-deepmind/scalable_agent @ c63d4f2):
      ``experiment.py``, flags at lines 60-65 and 87-90, the ``# Optimization``
      block of ``build_learner``; ``README.md``, "Running the Code".
  """
  frames = batch_size * unroll_length * num_action_repeats
  schedule = impala_schedule(
    learning_rate,
    total_environment_frames=total_environment_frames,
    frames_per_step=frames,
  )
  tx = tf1_rmsprop(schedule, decay=decay, momentum=momentum, epsilon=epsilon)
  return _maybe_clip(tx, max_grad_norm)


def a2c_schedule(
  learning_rate: float, *, total_timesteps: int, batch_size: int
) -> optax.Schedule:
  r"""OpenAI Baselines' A2C learning rate (``lrschedule='linear'``).

  ``Scheduler(v=lr, nvalues=total_timesteps, schedule='linear')`` returns
  ``v * (1 - n / nvalues)`` and then increments ``n``; ``Model.train`` calls it
  once per sample of the batch (``for step in range(len(obs))``) and feeds the
  *last* value, so update :math:`k` (0-based) uses

  .. math::

    \eta_k = \eta_0 \left(1 - \frac{(k+1)B - 1}{T}\right),

  with :math:`B` = ``nenvs * nsteps`` samples per update and :math:`T` =
  ``total_timesteps``. Training stops after ``T // B`` updates, before the
  rate reaches zero; past that it is held at zero here.

  Args:
    learning_rate: :math:`\eta_0` (``lr``).
    total_timesteps: :math:`T`.
    batch_size: :math:`B`, samples per update.

  Returns:
    An optax schedule of the 0-based update count.

  Examples:
    >>> from rmsprop_jax.recipes import a2c_schedule
    >>> schedule = a2c_schedule(7e-4, total_timesteps=1000, batch_size=10)
    >>> [round(float(schedule(k)), 8) for k in (0, 1, 99)]
    [0.0006937, 0.0006867, 7e-07]
  """
  _check_positive("total_timesteps", total_timesteps)
  _check_positive("batch_size", batch_size)

  def schedule(count: Any) -> jax.Array:
    n = (_float(count) + 1) * batch_size - 1
    return jnp.maximum(learning_rate * (1 - n / total_timesteps), 0.0)

  return schedule


def a2c(
  *,
  batch_size: int,
  total_timesteps: int = 80_000_000,
  learning_rate: float = 7e-4,
  alpha: float = 0.99,
  epsilon: float = 1e-5,
  max_grad_norm: float | None = 0.5,
) -> optax.GradientTransformationExtraArgs:
  r"""OpenAI Baselines' A2C optimizer.

  In ``baselines/a2c/a2c.py`` the gradients are clipped with
  ``tf.clip_by_global_norm(grads, max_grad_norm)`` (lines 75-78) and applied
  by ``tf.train.RMSPropOptimizer(learning_rate=LR, decay=alpha,
  epsilon=epsilon)`` (line 84): TF1 semantics (:func:`rmsprop_jax.tf1_rmsprop`,
  :math:`\epsilon` inside the root, mean square starting at one, no
  momentum). Defaults of ``Model``/``learn`` (lines 31-33): ``lr=7e-4``,
  ``alpha=0.99``, ``epsilon=1e-5``, ``max_grad_norm=0.5``,
  ``total_timesteps=int(80e6)``, ``lrschedule='linear'`` (see
  :func:`a2c_schedule`; only the linear schedule is provided). The chain is
  ``optax.chain(optax.clip_by_global_norm(max_grad_norm), tf1_rmsprop(...))``.

  PyTorch ports that call ``torch.optim.RMSprop(alpha=0.99, eps=1e-5)`` put
  :math:`\epsilon` outside the root and start the mean square at zero: their
  first steps are about :math:`\eta/\sqrt{1-\alpha} = 10\eta` per coordinate
  where this recipe's are about :math:`\eta g`.

  Args:
    batch_size: samples per update, ``nenvs * nsteps`` (``nsteps=5`` by
      default); sets how fast the schedule advances.
    total_timesteps: ``total_timesteps``.
    learning_rate: ``lr``.
    alpha: ``alpha``, the RMSProp decay.
    epsilon: ``epsilon``, inside the root.
    max_grad_norm: global-norm clipping threshold, or ``None`` for none.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.a2c(batch_size=80)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state)
    >>> [f"{u:.4e}" for u in updates.tolist()]
    ['-3.5125e-04', '7.0338e-06']

  References:
    - Mnih et al., "Asynchronous Methods for Deep Reinforcement Learning",
      ICML 2016 (A3C; A2C is its synchronous variant).
    - openai/baselines: ``baselines/a2c/a2c.py`` (@ 015dc21, lines 31-33, 75-95);
      ``baselines/a2c/utils.py`` (@ 45c0b17, ``linear`` and ``Scheduler``).
  """
  schedule = a2c_schedule(
    learning_rate, total_timesteps=total_timesteps, batch_size=batch_size
  )
  tx = tf1_rmsprop(schedule, decay=alpha, momentum=0.0, epsilon=epsilon)
  return _maybe_clip(tx, max_grad_norm)


# --------------------------------------------------------- image classifiers


def efficientnet_schedule(
  initial_lr: float,
  *,
  steps_per_epoch: float,
  decay_factor: float = 0.97,
  decay_epochs: float = 2.4,
  warmup_epochs: float = 5,
) -> optax.Schedule:
  r"""EfficientNet's learning rate: linear warm-up, then stepwise decay.

  ``build_learning_rate`` of ``models/official/efficientnet/utils.py``:

  .. math::

    \eta_k = \begin{cases}
      \eta_0\, k / W & k < W = \lfloor 5\,S \rfloor \\
      \eta_0\, 0.97^{\lfloor k / (2.4\,S) \rfloor} & \text{otherwise}
    \end{cases}

  with :math:`S` the (fractional) steps per epoch. The decay counts from step
  0, not from the end of the warm-up (``tf.cond(global_step < warmup_steps,
  ...)``), so ``optax.warmup_exponential_decay_schedule`` and
  ``optax.join_schedules``, which restart the decay at the boundary, do not
  fit: this is ``optax.linear_schedule`` before :math:`W` and the staircase
  decay of the step itself after.

  Args:
    initial_lr: :math:`\eta_0`, after scaling by the batch size.
    steps_per_epoch: :math:`S` = ``num_train_images / train_batch_size``.
    decay_factor: factor per decay period.
    decay_epochs: epochs per decay period.
    warmup_epochs: epochs of warm-up (truncated to whole steps); 0 for none.

  Returns:
    An optax schedule of the 0-based step count.

  Examples:
    >>> from rmsprop_jax.recipes import efficientnet_schedule
    >>> schedule = efficientnet_schedule(0.128, steps_per_epoch=10)
    >>> [round(float(schedule(k)), 6) for k in (0, 25, 49, 50, 71, 72)]
    [0.0, 0.064, 0.12544, 0.120435, 0.120435, 0.116822]
  """
  _check_positive("steps_per_epoch", steps_per_epoch)
  _check_positive("decay_epochs", decay_epochs)
  # The decay period is fractional (2.4 epochs of 625.6 steps at batch 2048),
  # which optax.exponential_decay's integer transition_steps does not take.
  decay_steps = steps_per_epoch * decay_epochs
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  warmup = optax.linear_schedule(0.0, initial_lr, max(warmup_steps, 1))

  def schedule(count: Any) -> jax.Array:
    step = _float(count)
    decayed = initial_lr * decay_factor ** jnp.floor(step / decay_steps)
    return jnp.where(step < warmup_steps, warmup(step), decayed)

  return schedule


def efficientnet(
  *,
  batch_size: int,
  num_train_images: int = IMAGENET_TRAIN_IMAGES,
  base_learning_rate: float = 0.016,
  decay: float = 0.9,
  momentum: float = 0.9,
  epsilon: float = 1e-3,
  weight_decay: float = 1e-5,
  weight_decay_mask: Any = kernels_only,
  decay_factor: float = 0.97,
  decay_epochs: float = 2.4,
  warmup_epochs: float = 5,
) -> optax.GradientTransformationExtraArgs:
  r"""EfficientNet's RMSProp (Tan & Le, 2019), TensorFlow TPU reference code.

  ``utils.build_optimizer`` builds ``tf.train.RMSPropOptimizer(learning_rate,
  decay=0.9, momentum=0.9, epsilon=0.001)`` (TF1: mean square starting at
  one, :math:`\epsilon` inside the root, learning rate inside the momentum
  buffer). ``main.py`` scales ``base_learning_rate=0.016`` by
  ``train_batch_size / 256``, sets ``steps_per_epoch = num_train_images /
  train_batch_size`` (1281167 images) and adds ``weight_decay=1e-5`` times
  ``tf.nn.l2_loss`` of the trainable variables to the loss, which is exactly
  ``weight_decay * w`` added to the gradient (coupled). The learning rate is
  :func:`efficientnet_schedule` (5 warm-up epochs, 0.97 every 2.4 epochs).

  The paper gives "RMSProp optimizer with decay 0.9 and momentum 0.9 ...
  weight decay 1e-5; initial learning rate 0.256 that decays by 0.97 every
  2.4 epochs": 0.256 is 0.016 at batch 4096; the code's own default batch is
  2048 (0.128). :math:`\epsilon = 10^{-3}` and the warm-up are only in the
  code. The code exempts variables whose name contains
  ``batch_normalization`` from the L2 term and decays the biases of the
  squeeze-excitation convolutions and the classifier; the default mask here,
  :func:`kernels_only`, also exempts those biases. Pass a mask built from your
  parameter names to match exactly.

  Not included: the exponential moving average of the weights (0.9999, for
  evaluation), label smoothing 0.1, and the cross-replica gradient averaging
  of ``CrossShardOptimizer`` (use the global-batch mean gradient).

  Args:
    batch_size: global training batch size (``--train_batch_size``).
    num_train_images: ``--num_train_images``.
    base_learning_rate: learning rate at batch size 256.
    decay: RMSProp ``decay``.
    momentum: RMSProp ``momentum``.
    epsilon: RMSProp ``epsilon``, inside the root.
    weight_decay: coefficient of the L2 term (``--weight_decay``).
    weight_decay_mask: leaves the L2 term applies to (a pytree of bools or a
      callable of the params).
    decay_factor: learning-rate factor per decay period.
    decay_epochs: epochs per decay period.
    warmup_epochs: epochs of linear warm-up.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.efficientnet(batch_size=2048)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.5)}
    >>> updates, state = opt.update(grads, state, params)  # step 0: lr is 0
    >>> updates, state = opt.update(grads, state, params)
    >>> f"{float(updates['w'][0, 0]):.4e}"
    '-2.2089e-05'

  References:
    - Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
      Networks", ICML 2019, arXiv:1905.11946, section 5.2.
    - tensorflow/tpu: ``models/official/efficientnet/utils.py`` (@ 76d0c67,
      ``build_learning_rate`` lines 31-62, ``build_optimizer`` lines 65-81);
      ``models/official/efficientnet/main.py`` (@ 351e905, the
      ``base_learning_rate``, ``weight_decay``, ``train_batch_size`` and
      ``num_train_images`` flags, the loss and learning rate in ``model_fn``,
      ``steps_per_epoch`` in ``main``).
  """
  _check_positive("batch_size", batch_size)
  schedule = efficientnet_schedule(
    base_learning_rate * batch_size / 256.0,
    steps_per_epoch=num_train_images / batch_size,
    decay_factor=decay_factor,
    decay_epochs=decay_epochs,
    warmup_epochs=warmup_epochs,
  )
  return _tf1_rmsprop_with_l2(
    schedule,
    decay=decay,
    momentum=momentum,
    epsilon=epsilon,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
  )


def slim_schedule(
  learning_rate: float,
  *,
  batch_size: int,
  num_samples_per_epoch: int = IMAGENET_TRAIN_IMAGES,
  num_epochs_per_decay: float = 2.0,
  decay_factor: float = 0.94,
) -> optax.Schedule:
  r"""TF-Slim's ``learning_rate_decay_type='exponential'`` schedule.

  ``_configure_learning_rate`` of ``research/slim/train_image_classifier.py``:
  ``tf.train.exponential_decay(learning_rate, global_step, decay_steps,
  decay_factor, staircase=True)`` with ``decay_steps =
  int(num_samples_per_epoch / batch_size * num_epochs_per_decay)``, i.e.
  :math:`\eta_k = \eta_0 \cdot \text{factor}^{\lfloor k / D \rfloor}` with
  :math:`D` truncated to whole steps.

  Args:
    learning_rate: :math:`\eta_0` (``--learning_rate``).
    batch_size: ``--batch_size`` (per clone).
    num_samples_per_epoch: training-set size.
    num_epochs_per_decay: ``--num_epochs_per_decay``.
    decay_factor: ``--learning_rate_decay_factor``.

  Returns:
    An optax schedule of the 0-based step count.

  Examples:
    >>> from rmsprop_jax.recipes import slim_schedule
    >>> schedule = slim_schedule(0.045, batch_size=32, num_samples_per_epoch=100)
    >>> [round(float(schedule(k)), 6) for k in (5, 6, 12)]
    [0.045, 0.0423, 0.039762]
  """
  _check_positive("batch_size", batch_size)
  decay_steps = int(num_samples_per_epoch / batch_size * num_epochs_per_decay)
  _check_positive(
    "decay_steps (num_samples_per_epoch / batch_size * epochs)", decay_steps
  )
  return _of_float_count(
    optax.exponential_decay(learning_rate, decay_steps, decay_factor, staircase=True)
  )


def _slim_trainer(
  learning_rate: float,
  *,
  batch_size: int,
  num_samples_per_epoch: int,
  num_epochs_per_decay: float,
  decay_factor: float,
  decay: float,
  momentum: float,
  epsilon: float,
  weight_decay: float,
  weight_decay_mask: Any,
  max_grad_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """TF-Slim's ``train_image_classifier.py``: its schedule, TF1 RMSProp and L2."""
  schedule = slim_schedule(
    learning_rate,
    batch_size=batch_size,
    num_samples_per_epoch=num_samples_per_epoch,
    num_epochs_per_decay=num_epochs_per_decay,
    decay_factor=decay_factor,
  )
  return _tf1_rmsprop_with_l2(
    schedule,
    decay=decay,
    momentum=momentum,
    epsilon=epsilon,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    max_grad_norm=max_grad_norm,
  )


def inception_v3(
  *,
  batch_size: int = 32,
  num_samples_per_epoch: int = IMAGENET_TRAIN_IMAGES,
  learning_rate: float = 0.045,
  decay: float = 0.9,
  momentum: float = 0.9,
  epsilon: float = 1.0,
  weight_decay: float = 4e-5,
  weight_decay_mask: Any = kernels_only,
  num_epochs_per_decay: float = 2.0,
  decay_factor: float = 0.94,
  max_grad_norm: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Inception-v3's RMSProp (Szegedy et al., 2016) with TF-Slim's trainer.

  The paper: "RMSProp with decay of 0.9 and :math:`\epsilon` = 1.0 ... a
  learning rate of 0.045, decayed every two epoch using an exponential rate of
  0.94", batch size 32 per replica. TF-Slim's ``train_image_classifier.py``
  builds ``tf.train.RMSPropOptimizer(learning_rate, decay=rmsprop_decay,
  momentum=rmsprop_momentum, epsilon=opt_epsilon)`` with flag defaults
  ``rmsprop_decay=0.9``, ``rmsprop_momentum=0.9``, ``opt_epsilon=1.0``,
  ``batch_size=32``, ``num_epochs_per_decay=2.0``,
  ``learning_rate_decay_factor=0.94``, ``weight_decay=0.00004`` (its
  ``learning_rate`` flag defaults to 0.01; this recipe takes the paper's
  0.045). TF1 semantics: mean square starting at one and :math:`\epsilon`
  inside the root, where 1.0 damps every step (an :math:`\epsilon` of 1.0
  outside the root would be another optimizer). The L2 term is
  ``slim.l2_regularizer(weight_decay)`` on the weights of ``conv2d`` and
  ``fully_connected`` layers only, i.e. ``weight_decay * w`` on the gradient
  of the kernels (:func:`kernels_only`). Schedule: :func:`slim_schedule`.

  The paper's momentum is not stated (slim's 0.9 is used) and neither is the
  kind of its "gradient clipping with threshold 2.0"; slim's script does not
  clip, so ``max_grad_norm`` defaults to ``None``; ``max_grad_norm=2.0``
  clips the global norm of the gradient first (L2 term included, as part of
  the loss). The paper's 50 replicas ran asynchronously;
  here the step is one synchronous update.

  Args:
    batch_size: ``--batch_size``.
    num_samples_per_epoch: training-set size.
    learning_rate: initial learning rate.
    decay: ``--rmsprop_decay``.
    momentum: ``--rmsprop_momentum``.
    epsilon: ``--opt_epsilon``, inside the root.
    weight_decay: ``--weight_decay`` (L2 on the kernels).
    weight_decay_mask: leaves the L2 term applies to.
    num_epochs_per_decay: ``--num_epochs_per_decay``.
    decay_factor: ``--learning_rate_decay_factor``.
    max_grad_norm: optional global-norm clipping threshold.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.inception_v3()
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.5)}
    >>> updates, state = opt.update(grads, state, params)
    >>> round(float(updates["b"][0]), 5)
    -0.01622

  References:
    - Szegedy et al., "Rethinking the Inception Architecture for Computer
      Vision", CVPR 2016, arXiv:1512.00567, section 8.
    - tensorflow/models: ``research/slim/train_image_classifier.py`` (@ 07ed366,
      the optimization and learning-rate flags, ``_configure_learning_rate``,
      ``_configure_optimizer``); ``research/slim/nets/inception_v3.py``
      (``inception_v3_arg_scope``, ``weight_decay=0.00004``).
  """
  return _slim_trainer(
    learning_rate,
    batch_size=batch_size,
    num_samples_per_epoch=num_samples_per_epoch,
    num_epochs_per_decay=num_epochs_per_decay,
    decay_factor=decay_factor,
    decay=decay,
    momentum=momentum,
    epsilon=epsilon,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    max_grad_norm=max_grad_norm,
  )


def mobilenet_v2(
  *,
  batch_size: int = 96,
  num_samples_per_epoch: int = IMAGENET_TRAIN_IMAGES,
  learning_rate: float = 0.045,
  decay: float = 0.9,
  momentum: float = 0.9,
  epsilon: float = 1.0,
  weight_decay: float = 4e-5,
  weight_decay_mask: Any = kernels_only,
  num_epochs_per_decay: float = 1.0,
  decay_factor: float = 0.98,
) -> optax.GradientTransformationExtraArgs:
  r"""MobileNetV2's RMSProp (Sandler et al., 2018) with TF-Slim's trainer.

  The paper: "the standard RMSPropOptimizer with both decay and momentum set
  to 0.9 ... weight decay is set to 0.00004 ... initial learning rate of
  0.045, and learning rate decay rate of 0.98 per epoch ... 16 GPU
  asynchronous workers, and a batch size of 96". The optimizer is TF-Slim's
  (see :func:`inception_v3`): TF1 RMSProp with ``opt_epsilon=1.0`` inside the
  root and the L2 term on the kernels; schedule :func:`slim_schedule`.

  Two numbers differ between the sources. :math:`\epsilon`: "standard" could
  mean TF's default 1e-10, but the slim script always passes ``opt_epsilon``
  (default 1.0), which is used here. The decay period: the paper says 0.98 per
  epoch (the default here); the README of ``research/slim/nets/mobilenet``
  trains with ``--learning_rate=0.045*NUM_GPUS``, ``--batch_size=96`` per
  clone and ``--num_epochs_per_decay=2.5/NUM_GPUS`` (0.98 every 2.5 epochs of
  the whole data): pass ``learning_rate=0.045 * n`` and
  ``num_epochs_per_decay=2.5 / n`` for that. Not included: label smoothing
  0.1 and the 0.9999 moving average of the weights from that README.

  Args:
    batch_size: ``--batch_size`` (per clone).
    num_samples_per_epoch: training-set size.
    learning_rate: initial learning rate.
    decay: ``--rmsprop_decay``.
    momentum: ``--rmsprop_momentum``.
    epsilon: ``--opt_epsilon``, inside the root.
    weight_decay: ``--weight_decay`` (L2 on the kernels).
    weight_decay_mask: leaves the L2 term applies to.
    num_epochs_per_decay: ``--num_epochs_per_decay``.
    decay_factor: ``--learning_rate_decay_factor``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.mobilenet_v2()
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> grads = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(2, 0.5)}
    >>> updates, state = opt.update(grads, state, params)
    >>> round(float(updates["b"][0]), 5)
    -0.01622
    >>> schedule = rmsprop_jax.recipes.slim_schedule(
    ...   0.045, batch_size=96, num_epochs_per_decay=1.0, decay_factor=0.98)
    >>> round(float(schedule(13345)), 6)  # one epoch is 13345 steps of 96
    0.0441

  References:
    - Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
      CVPR 2018, arXiv:1801.04381, section 6.1.
    - tensorflow/models: ``research/slim/train_image_classifier.py`` (@ 07ed366);
      ``research/slim/nets/mobilenet/README.md`` (training flags).
  """
  return _slim_trainer(
    learning_rate,
    batch_size=batch_size,
    num_samples_per_epoch=num_samples_per_epoch,
    num_epochs_per_decay=num_epochs_per_decay,
    decay_factor=decay_factor,
    decay=decay,
    momentum=momentum,
    epsilon=epsilon,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
  )


def torchvision_schedule(
  learning_rate: float,
  *,
  steps_per_epoch: int,
  lr_step_size: int = 2,
  lr_gamma: float = 0.973,
) -> optax.Schedule:
  r"""torchvision's ``--lr-scheduler steplr``, counted in optimizer steps.

  ``torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step_size,
  gamma=lr_gamma)``, stepped once after every epoch, gives step :math:`k`
  (0-based) the rate :math:`\eta_0 \gamma^{\lfloor \lfloor k/S \rfloor / n
  \rfloor}` with :math:`S` steps per epoch, which is
  ``optax.exponential_decay(lr, n * S, gamma, staircase=True)``.

  Args:
    learning_rate: :math:`\eta_0` (``--lr``).
    steps_per_epoch: :math:`S` = ``len(data_loader)``.
    lr_step_size: :math:`n` (``--lr-step-size``, in epochs).
    lr_gamma: :math:`\gamma` (``--lr-gamma``).

  Returns:
    An optax schedule of the 0-based step count.

  Examples:
    >>> from rmsprop_jax.recipes import torchvision_schedule
    >>> schedule = torchvision_schedule(0.064, steps_per_epoch=1252)
    >>> [round(float(schedule(k)), 6) for k in (2503, 2504, 5008)]
    [0.064, 0.062272, 0.060591]
  """
  _check_positive("steps_per_epoch", steps_per_epoch)
  _check_positive("lr_step_size", lr_step_size)
  return _of_float_count(
    optax.exponential_decay(
      learning_rate, lr_step_size * steps_per_epoch, lr_gamma, staircase=True
    )
  )


def torchvision_mobilenet_v3(
  *,
  steps_per_epoch: int,
  learning_rate: float = 0.064,
  alpha: float = 0.9,
  eps: float = 0.0316,
  momentum: float = 0.9,
  weight_decay: float = 1e-5,
  weight_decay_mask: Any = None,
  lr_step_size: int = 2,
  lr_gamma: float = 0.973,
) -> optax.GradientTransformationExtraArgs:
  r"""torchvision's reference RMSprop recipe (MobileNetV3 Large and Small).

  ``references/classification/train.py`` with ``--opt rmsprop`` builds
  ``torch.optim.RMSprop(parameters, lr=args.lr, momentum=args.momentum,
  weight_decay=args.weight_decay, eps=0.0316, alpha=0.9)`` (``--momentum``
  defaults to 0.9); :func:`rmsprop_jax.torch_rmsprop`: :math:`\epsilon`
  outside the root, mean square starting at zero, learning rate outside the
  momentum buffer, L2 weight decay on the gradient. The README's MobileNetV3
  command sets ``--lr 0.064 --wd 0.00001 --lr-step-size 2 --lr-gamma 0.973``
  with ``--batch-size 128`` on 8 GPUs (a global batch of 1024; DDP averages
  the gradients). ``StepLR`` is stepped once per epoch: the learning rate
  is :func:`torchvision_schedule`.

  :math:`\epsilon = 0.0316 \approx \sqrt{10^{-3}}` is the floor that TF's
  :math:`\epsilon = 10^{-3}` (EfficientNet's) puts under the denominator
  inside the root; the code does not say where the number comes from.
  Without ``--norm-weight-decay`` every parameter decays, so the default mask
  is ``None`` (all). torchvision trains no RMSprop EfficientNet:
  its EfficientNet-B weights are ported from timm and EfficientNetV2 uses SGD.

  Not included: averaging the last three checkpoints, AutoAugment and random
  erasing (data side).

  Args:
    steps_per_epoch: optimizer steps per epoch (``len(data_loader)``).
    learning_rate: ``--lr``.
    alpha: smoothing constant (0.9 in ``train.py``).
    eps: added outside the root (0.0316 in ``train.py``).
    momentum: ``--momentum``.
    weight_decay: ``--wd``, L2 added to the gradient.
    weight_decay_mask: leaves that decay (``None``: all).
    lr_step_size: ``--lr-step-size`` in epochs.
    lr_gamma: ``--lr-gamma``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.torchvision_mobilenet_v3(steps_per_epoch=1251)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state, params)
    >>> [round(u, 4) for u in updates.tolist()]
    [-0.1687, 0.0184]

  References:
    - Howard et al., "Searching for MobileNetV3", ICCV 2019, arXiv:1905.02244.
    - pytorch/vision: ``references/classification/train.py`` (the ``rmsprop``
      branch of the optimizer selection in ``main``);
      ``references/classification/README.md``, "MobileNetV3 Large & Small".
  """
  schedule = torchvision_schedule(
    learning_rate,
    steps_per_epoch=steps_per_epoch,
    lr_step_size=lr_step_size,
    lr_gamma=lr_gamma,
  )
  return torch_rmsprop(
    schedule,
    alpha=alpha,
    eps=eps,
    weight_decay=weight_decay,
    momentum=momentum,
    weight_decay_mask=weight_decay_mask,
  )


# ------------------------------------------------------------------ Graves


def graves2013(
  *,
  learning_rate: float = 1e-4,
  decay: float = 0.95,
  momentum: float = 0.9,
  eps: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
  r"""Centred RMSProp with momentum from Graves (2013), eqs. (38)-(41).

  .. math::

    n_i &\leftarrow \aleph n_i + (1-\aleph)\varepsilon_i^2, \qquad
    g_i \leftarrow \aleph g_i + (1-\aleph)\varepsilon_i \\
    \Delta_i &\leftarrow \beth \Delta_i
      - \gimel\, \varepsilon_i / \sqrt{n_i - g_i^2 + \daleth}, \qquad
    w_i \leftarrow w_i + \Delta_i

  with :math:`\varepsilon_i = \partial L/\partial w_i` and the paper's
  :math:`\aleph = 0.95`, :math:`\beth = 0.9`, :math:`\gimel = 10^{-4}`,
  :math:`\daleth = 10^{-4}` (the handwriting-prediction networks). The
  learning rate is inside the momentum buffer and the constant inside the
  root: :func:`rmsprop_jax.rmsprop` with ``centered=True``, ``momentum=0.9``,
  ``eps_in_sqrt=True``. No code was released with the paper; Chainer's
  ``RMSpropGraves`` (``chainer/optimizers/rmsprop_graves.py``) transcribes the
  same equations with ``lr=1e-4, alpha=0.95, momentum=0.9, eps=1e-4``,
  "the ones in the original paper" (its v1 source). Not included: the paper
  also clips derivatives inside the network during backpropagation, which is
  not a clipping of the parameter gradient.

  Args:
    learning_rate: :math:`\gimel`.
    decay: :math:`\aleph`, of both averages.
    momentum: :math:`\beth`.
    eps: :math:`\daleth`, inside the root.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.recipes.graves2013()
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, -0.01]), state)
    >>> [round(u / 1e-4, 4) for u in updates.tolist()]  # in learning rates
    [-4.5691, 0.9771]

  References:
    - Graves, "Generating Sequences With Recurrent Neural Networks",
      arXiv:1308.0850, 2013, eqs. (38)-(41).
    - chainer/chainer: ``chainer/optimizers/rmsprop_graves.py``
      (``RMSpropGravesRule.update_core_cpu``).
  """
  return rmsprop(
    learning_rate,
    decay=decay,
    eps=eps,
    centered=True,
    eps_in_sqrt=True,
    momentum=momentum,
    lr_in_momentum=True,
  )
