"""Framework-exact presets: each maps a library's arguments onto the one builder.

Every preset checks its arguments under the library's own names, so an error
speaks the language of the code being ported. The porting guide in the
documentation tabulates what each library does differently.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax
from jax.typing import DTypeLike

from rmsprop_jax import _transform
from rmsprop_jax._rule import Hyper, Rule
from rmsprop_jax._rule import weight_decay as weight_decay_fields
from rmsprop_jax._validation import Names, check_flag, corrected_max_lr, given

Scalar = float | jax.Array

_TORCH = Names({"learning_rate": "lr", "decay": "alpha"})
_KERAS = Names({"decay": "rho", "eps": "epsilon"}, frozenset({"weight_decay"}))
_TF1 = Names({"eps": "epsilon"})
_TIMM = Names(
  {"learning_rate": "lr", "decay": "alpha", "decoupled_weight_decay": "decoupled_decay"}
)


def _momentum_or_none(names: Names, momentum: Scalar) -> Scalar | None:
  # The libraries allocate no momentum buffer when momentum is 0, and neither
  # do we for a plain number 0. A JAX array keeps its buffer even when it holds
  # 0: optax.inject_hyperparams passes momentum as a concrete array to init but
  # as a tracer to a jitted update, and both must agree on the state's shape.
  # With m = 0 the buffer holds exactly the last step, so the result is equal.
  momentum = given(names, "momentum", momentum)
  if isinstance(momentum, (int, float, np.number)) and momentum == 0:
    return None
  return momentum


def torch_rmsprop(
  lr: optax.ScalarOrSchedule = 1e-2,
  alpha: Scalar = 0.99,
  eps: Scalar = 1e-8,
  weight_decay: Scalar = 0.0,
  momentum: Scalar = 0.0,
  centered: bool = False,
  *,
  maximize: bool = False,
  weight_decay_mask: Any = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``torch.optim.RMSprop``, step for step.

  .. math::

    g &\leftarrow \pm g + \lambda\theta, \qquad
      \nu \leftarrow \alpha\nu + (1-\alpha)g^2 \quad (\nu_0 = 0) \\
    s &= g / (\sqrt{v} + \epsilon), \qquad
      b \leftarrow m b + s, \qquad \theta \leftarrow \theta - \eta_k b

  with :math:`v = \nu - \mu^2` when centred (else :math:`\nu`). PyTorch puts
  ``eps`` *outside* the root and keeps the learning rate *out of* the momentum
  buffer, so a learning-rate change rescales the whole buffer at once.

  Args:
    lr: learning rate, or an optax schedule of the 0-based step. A PyTorch
      ``LRScheduler`` stepped once after every ``optimizer.step()`` gives the
      learning rate ``schedule(k)`` at step ``k``; e.g. ``StepLR(step_size=n,
      gamma=g)`` is ``optax.exponential_decay(lr, n, g, staircase=True)``.
    alpha: smoothing constant of the squared-gradient average, in ``[0, 1)``.
    eps: added to the root of the average (outside it).
    weight_decay: L2 penalty added to the gradient (coupled weight decay).
    momentum: momentum factor in ``[0, 1)``; 0 allocates no buffer.
    centered: normalise by the estimated variance of the gradient.
    maximize: ascend the objective instead of descending it. PyTorch's seventh
      positional argument is ``capturable``, so this one is keyword-only.
    weight_decay_mask: pytree of bools (or a callable returning one) selecting
      the leaves that decay; the equivalent of a parameter group with
      ``weight_decay=0``.
    state_dtype: storage dtype of the statistics (see :func:`rmsprop`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    when ``weight_decay`` is not 0.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.torch_rmsprop(lr=0.01, momentum=0.9)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state, params)
    >>> updates
    Array([-0.10000002, -0.10000002], dtype=float32)
  """
  names = _TORCH
  return _transform.build(
    names,
    Rule(eps_in_sqrt=False, centered=centered, lr_in_momentum=False, maximize=maximize),
    Hyper(
      learning_rate=lr,
      decay=alpha,
      eps=eps,
      initial_scale=0.0,
      momentum=_momentum_or_none(names, momentum),
      coupled_weight_decay=given(names, "weight_decay", weight_decay),
    ),
    weight_decay_mask=weight_decay_mask,
    state_dtype=state_dtype,
  )


def keras_rmsprop(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  rho: Scalar = 0.9,
  momentum: Scalar = 0.0,
  epsilon: Scalar = 1e-7,
  centered: bool = False,
  weight_decay: Scalar | None = None,
  *,
  weight_decay_mask: Any = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``keras.optimizers.RMSprop`` (Keras 3), step for step.

  .. math::

    \nu &\leftarrow \rho\nu + (1-\rho)g^2 \quad (\nu_0 = 0), \qquad
      s = g / \sqrt{v + \epsilon} \\
    b &\leftarrow m b + \eta_k s, \qquad
      \theta \leftarrow \theta - \eta_k\lambda\theta - b

  with :math:`v = \nu - \mu^2` when centred (else :math:`\nu`). Keras puts
  ``epsilon`` *inside* the root, the learning rate *inside* the momentum
  buffer, and applies weight decay to the variable itself (scaled by the
  learning rate, before the step), never to the gradient.

  The base-optimizer options map onto optax: ``global_clipnorm=c`` is
  ``optax.chain(optax.clip_by_global_norm(c), keras_rmsprop(...))`` and
  ``clipvalue=c`` is ``optax.clip(c)`` in the same place; a
  ``LearningRateSchedule`` is called with the 0-based step, like an optax
  schedule (the porting guide tabulates each schedule's optax counterpart).

  Args:
    learning_rate: learning rate, or an optax schedule of the 0-based step.
    rho: discounting factor of the squared-gradient average, in ``[0, 1)``.
    momentum: momentum factor in ``[0, 1)``; 0 allocates no buffer.
    epsilon: added to the average inside the root.
    centered: normalise by the estimated variance of the gradient.
    weight_decay: decoupled weight-decay coefficient, or ``None`` for none.
    weight_decay_mask: pytree of bools (or a callable returning one) selecting
      the leaves that decay; ``False`` where Keras'
      ``exclude_from_weight_decay`` would exclude the variable.
    state_dtype: storage dtype of the statistics (see :func:`rmsprop`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    when ``weight_decay`` is set.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.keras_rmsprop(learning_rate=0.1)
    >>> params = jnp.array(10.0)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(params, state, params)  # grad of p**2/2
    >>> params + updates
    Array(9.683772, dtype=float32)
  """
  names = _KERAS
  return _transform.build(
    names,
    Rule(eps_in_sqrt=True, centered=centered, lr_in_momentum=True),
    Hyper(
      learning_rate=learning_rate,
      decay=rho,
      eps=epsilon,
      initial_scale=0.0,
      momentum=_momentum_or_none(names, momentum),
      decoupled_weight_decay=given(names, "weight_decay", weight_decay),
    ),
    weight_decay_mask=weight_decay_mask,
    state_dtype=state_dtype,
  )


def tf1_rmsprop(
  learning_rate: optax.ScalarOrSchedule,
  decay: Scalar = 0.9,
  momentum: Scalar = 0.0,
  epsilon: Scalar = 1e-10,
  *,
  centered: bool = False,
  weight_decay: Scalar = 0.0,
  weight_decay_mask: Any = None,
  lazy_rows: Any = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``tf.compat.v1.train.RMSPropOptimizer``, step for step.

  .. math::

    g &\leftarrow g + \lambda\theta \text{ (an L2 term in the loss)}, \qquad
      \nu \leftarrow \rho\nu + (1-\rho)g^2 \quad (\nu_0 = 1) \\
    s &= g / \sqrt{v + \epsilon}, \qquad
      b \leftarrow m b + \eta_k s, \qquad \theta \leftarrow \theta - b

  with :math:`v = \nu - \mu^2` when centred (else :math:`\nu`). The average
  starts at **one**, so the first steps are about ``learning_rate * g`` rather
  than ``learning_rate * sign(g) / sqrt(1 - decay)``; this is the optimizer of
  the Inception and EfficientNet recipes, whose ``epsilon=1.0`` only makes
  sense inside the root.

  TF1 converts Python-float hyper-parameters to float32 tensors before casting
  them to the variable's dtype, so float64 TF1 code really runs with
  ``float(np.float32(x))``; pass those values here to reproduce it bit for
  bit.

  Args:
    learning_rate: learning rate, or an optax schedule of the 0-based step
      (TF1's ``global_step`` when ``apply_gradients`` increments it).
    decay: discounting factor of the squared-gradient average, in ``[0, 1)``.
    momentum: momentum factor in ``[0, 1)``; 0 allocates no buffer (TF1 keeps
      one, which then holds exactly the last step).
    epsilon: added to the average inside the root.
    centered: normalise by the estimated variance of the gradient. TF1's fifth
      positional argument is ``use_locking``, so this one is keyword-only.
    weight_decay: the coefficient :math:`\lambda` of an L2 term
      ``weight_decay * sum(tf.nn.l2_loss(w))`` that TF1 code adds to the loss:
      ``weight_decay * w`` is added to the gradient (coupled weight decay).
    weight_decay_mask: pytree of bools (or a callable returning one) selecting
      the leaves the L2 term sums over.
    lazy_rows: the leaves TF1 updates from an embedding lookup's sparse
      gradient (``tf.gather``, ``tf.nn.embedding_lookup``): ``True`` for every
      leaf, or the forms of ``weight_decay_mask``. As TF1's sparse kernels do,
      a row that nobody looked up keeps its value, ``nu``, ``mu`` and momentum
      buffer that step. A looked-up row whose gradient sums to exactly zero
      counts as untouched here, where TF1 would decay it (see
      :func:`rmsprop`).
    state_dtype: storage dtype of the statistics (see :func:`rmsprop`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    when ``weight_decay`` is not 0.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.tf1_rmsprop(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state)
    >>> updates
    Array([-0.05198753, -0.05198753], dtype=float32)
  """
  names = _TF1
  return _transform.build(
    names,
    Rule(eps_in_sqrt=True, centered=centered, lr_in_momentum=True),
    Hyper(
      learning_rate=learning_rate,
      decay=decay,
      eps=epsilon,
      initial_scale=1.0,  # TF1 starts its mean square at one
      momentum=_momentum_or_none(names, momentum),
      coupled_weight_decay=given(names, "weight_decay", weight_decay),
    ),
    weight_decay_mask=weight_decay_mask,
    lazy_rows=lazy_rows,
    state_dtype=state_dtype,
  )


def timm_rmsprop_tf(
  lr: optax.ScalarOrSchedule = 1e-2,
  alpha: Scalar = 0.9,
  eps: Scalar = 1e-10,
  weight_decay: Scalar = 0.0,
  momentum: Scalar = 0.0,
  centered: bool = False,
  decoupled_decay: bool = False,
  corrected_weight_decay: bool = False,
  lr_in_momentum: bool = True,
  caution: bool = False,
  *,
  max_lr: Scalar | None = None,
  weight_decay_mask: Any = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""timm's ``RMSpropTF`` (TensorFlow semantics in PyTorch), step for step.

  .. math::

    g &\leftarrow g + \lambda\theta \text{ (coupled)}, \qquad
      \nu \leftarrow \alpha\nu + (1-\alpha)g^2 \quad (\nu_0 = 1), \qquad
      s = g / \sqrt{v + \epsilon} \\
    b &\leftarrow m b + \eta_k s,\ \theta \leftarrow \theta - b
      \text{ (lr in momentum), or }
      b \leftarrow m b + s,\ \theta \leftarrow \theta - \eta_k b \\
    \theta &\leftarrow \theta - \eta_k\lambda\theta \text{ (decoupled), or }
      \theta - (\eta_k^2 / \eta_{\max})\lambda\theta \text{ (corrected)}

  with :math:`v = \nu - \mu^2` when centred (else :math:`\nu`). With
  ``caution`` the step taken from the buffer is zeroed where it disagrees in
  sign with the gradient and rescaled by the leaf's share of kept entries; the
  buffer itself is kept whole. As in timm, ``caution`` acts only with momentum
  and ``corrected_weight_decay`` only with ``decoupled_decay``.

  Args:
    lr: learning rate, or an optax schedule of the 0-based step (a PyTorch
      ``LRScheduler`` stepped after every step, as for :func:`torch_rmsprop`).
    alpha: smoothing constant of the squared-gradient average, in ``[0, 1)``.
    eps: added to the average inside the root.
    weight_decay: weight-decay coefficient.
    momentum: momentum factor in ``[0, 1)``; 0 allocates no buffer.
    centered: normalise by the estimated variance of the gradient.
    decoupled_decay: decay the parameters directly (``-lr * wd * p``) instead
      of adding ``wd * p`` to the gradient.
    corrected_weight_decay: scale the decoupled decay by ``lr**2 / max_lr``
      instead of ``lr``.
    lr_in_momentum: accumulate ``lr * s`` in the momentum buffer (TensorFlow)
      instead of ``s`` (PyTorch).
    caution: Cautious-optimizer masking of the momentum step.
    max_lr: what timm divides by for corrected weight decay, the ``lr`` the
      optimizer was built with; defaults to a constant ``lr``, and is required
      when ``lr`` is a schedule.
    weight_decay_mask: pytree of bools (or a callable returning one) selecting
      the leaves that decay.
    state_dtype: storage dtype of the statistics (see :func:`rmsprop`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``
    when ``weight_decay`` is not 0.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.timm_rmsprop_tf(lr=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state, params)
    >>> updates
    Array([-0.05198753, -0.05198753], dtype=float32)
  """
  names = _TIMM
  m = _momentum_or_none(names, momentum)
  decoupled = check_flag(names, "decoupled_weight_decay", decoupled_decay)
  # As in timm, caution acts only with momentum and corrected weight decay
  # only with decoupled decay.
  corrected = check_flag(names, "corrected_weight_decay", corrected_weight_decay)
  return _transform.build(
    names,
    Rule(
      eps_in_sqrt=True,
      centered=centered,
      lr_in_momentum=lr_in_momentum,
      caution=caution if m is not None else False,
    ),
    Hyper(
      learning_rate=lr,
      decay=alpha,
      eps=eps,
      initial_scale=1.0,
      momentum=m,
      max_lr=corrected_max_lr(
        names,
        corrected and decoupled,
        decoupled,
        max_lr if decoupled or not corrected else None,
        lr,
      ),
      **weight_decay_fields(
        given(names, "weight_decay", weight_decay), decoupled=decoupled
      ),
    ),
    weight_decay_mask=weight_decay_mask,
    state_dtype=state_dtype,
  )


def tf_keras_legacy_rmsprop(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  rho: Scalar = 0.9,
  momentum: Scalar = 0.0,
  epsilon: Scalar = 1e-7,
  centered: bool = False,
  *,
  lazy_rows: Any = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``tf_keras.optimizers.legacy.RMSprop``: TF 2.0–2.10's Keras RMSprop.

  Two kernels behind one name. Without momentum, ``epsilon`` sits *outside*
  the root; with momentum, TF's fused kernel puts it *inside* and the learning
  rate inside the buffer:

  .. math::

    \nu &\leftarrow \rho\nu + (1-\rho)g^2 \quad (\nu_0 = 0) \\
    \theta &\leftarrow \theta - \eta_k g / (\sqrt{v} + \epsilon)
      \text{ without momentum} \\
    b &\leftarrow m b + \eta_k g / \sqrt{v + \epsilon},\quad
      \theta \leftarrow \theta - b \text{ with momentum}

  with :math:`v = \nu - \mu^2` when centred (else :math:`\nu`). Like TF, a
  momentum that is an array (a traced value, or any value under
  ``optax.inject_hyperparams``) selects the momentum kernel even when it is 0;
  list ``momentum`` in ``static_args`` to keep the other one.

  The optimizer holds ``learning_rate``, ``rho`` and ``momentum`` in float32
  variables, even for float64 weights, so a float64 program really runs with
  ``float(np.float32(x))``: pass those values here to reproduce it bit for bit
  (``epsilon`` is converted to the weights' dtype directly).

  Args:
    learning_rate: learning rate, or an optax schedule of the 0-based step
      (a ``LearningRateSchedule`` is called with ``optimizer.iterations``).
    rho: discounting factor of the squared-gradient average, in ``[0, 1)``.
    momentum: momentum factor in ``[0, 1)``; 0 allocates no buffer.
    epsilon: added to the root, or to the average inside it with momentum.
    centered: normalise by the estimated variance of the gradient.
    lazy_rows: the leaves updated from an embedding lookup's sparse gradient
      (the forms of :func:`rmsprop`'s ``lazy_rows``). It acts only with
      momentum, as in TF: with momentum, the optimizer applies a sparse
      gradient with TF's sparse kernel, which leaves the rows nobody looked up
      as they are; without momentum, it decays the whole ``nu`` slot and adds
      the looked-up rows' squares, which is the dense rule.
    state_dtype: storage dtype of the statistics (see :func:`rmsprop`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.tf_keras_legacy_rmsprop(learning_rate=0.1)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state)
    >>> updates
    Array([-0.31622753, -0.31622753], dtype=float32)
  """
  names = _KERAS
  m = _momentum_or_none(names, momentum)
  return _transform.build(
    names,
    Rule(eps_in_sqrt=m is not None, centered=centered, lr_in_momentum=True),
    Hyper(
      learning_rate=learning_rate,
      decay=rho,
      eps=epsilon,
      initial_scale=0.0,
      momentum=m,
    ),
    # TF runs the sparse kernels, which skip untouched rows, only with momentum.
    lazy_rows=lazy_rows if m is not None else None,
    state_dtype=state_dtype,
  )
