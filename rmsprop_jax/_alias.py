"""The core's public functions: :func:`rmsprop` and :func:`scale_by_rms`.

Each owns its signature and maps its arguments onto the typed records of the
update rule (``_rule.Rule``, ``_rule.Hyper``), which ``_transform.build``
checks and turns into an optax transformation, as optax's ``alias.py`` does
with its transforms.
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.typing import DTypeLike

from rmsprop_jax import _rule
from rmsprop_jax import _validation as v
from rmsprop_jax._transform import build

#: The core's own names: every argument as :func:`rmsprop` spells it.
CORE_NAMES = v.Names(none_means_off=frozenset({"momentum"}))


def scale_by_rms(
  decay: float | jax.Array = 0.9,
  eps: float | jax.Array = 1e-8,
  *,
  initial_scale: float | jax.Array = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  bias_correction: bool = False,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Divides updates by the root of an average of squared gradients.

  The learning-rate-free building block of :func:`rmsprop`, for optax chains:
  it returns :math:`s = g / d` with :math:`d` the RMSProp denominator (see
  :func:`rmsprop` for the rule). Its state is an :class:`RMSPropState` whose
  ``trace`` is ``None``.

  Args:
    decay: decay rate of the moving averages, in ``[0, 1)``.
    eps: term added to the denominator for numerical stability.
    initial_scale: start value of ``nu`` (1.0 in TF1 and timm's RMSpropTF).
    eps_in_sqrt: whether ``eps`` is added inside the square root (optax, Keras,
      TF) or outside (PyTorch).
    centered: divide by the root of the variance instead of the raw second
      moment (Graves, 2013).
    bias_correction: divide the averages by ``1 - decay^t`` as Adam does.
    state_dtype: storage dtype of ``nu`` and ``mu``; default float32 (float64
      for float64 parameters). Arithmetic stays in at least float32.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp, optax, rmsprop_jax
    >>> opt = optax.chain(rmsprop_jax.scale_by_rms(decay=0.9),
    ...                   optax.scale_by_learning_rate(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(jnp.array([0.5, 0.5]), state)
    >>> updates
    Array([-0.31622767, -0.31622767], dtype=float32)
  """
  tx = build(
    CORE_NAMES,
    _rule.Rule(
      eps_in_sqrt=eps_in_sqrt,
      centered=centered,
      bias_correction=bias_correction,
      scale_only=True,
    ),
    _rule.Hyper(learning_rate=None, decay=decay, eps=eps, initial_scale=initial_scale),
    state_dtype=state_dtype,
  )
  return optax.GradientTransformation(tx.init, tx.update)


def rmsprop(
  learning_rate: optax.ScalarOrSchedule,
  decay: float | jax.Array = 0.9,
  eps: float | jax.Array = 1e-8,
  *,
  initial_scale: float | jax.Array = 0.0,
  eps_in_sqrt: bool = True,
  centered: bool = False,
  momentum: float | jax.Array | None = None,
  nesterov: bool = False,
  bias_correction: bool = False,
  weight_decay: float | jax.Array = 0.0,
  decoupled_weight_decay: bool = False,
  corrected_weight_decay: bool = False,
  max_lr: float | jax.Array | None = None,
  weight_decay_mask: Any = None,
  lazy_rows: Any = None,
  lr_in_momentum: bool = True,
  maximize: bool = False,
  caution: bool = False,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The RMSProp optimizer, with every published variant as an option.

  Per parameter, with gradient :math:`g`, step :math:`k` (0-based), learning
  rate :math:`\alpha_k`, decay :math:`\rho`, momentum :math:`m`, weight decay
  :math:`\lambda`:

  .. math::

    g &\leftarrow -g \text{ if maximize};\quad
      g \leftarrow g + \lambda\theta \text{ (coupled weight decay)} \\
    \nu &\leftarrow \rho\nu + (1-\rho)|g|^2, \qquad
      \mu \leftarrow \rho\mu + (1-\rho)g \text{ (centred)} \\
    \hat\nu &= \nu / (1-\rho^{k+1}) \text{ if bias correction, else } \nu
      \quad(\text{same for } \hat\mu) \\
    v &= \max(\hat\nu - |\hat\mu|^2, 0) \text{ (centred), else } \hat\nu \\
    s &= g / \sqrt{v + \epsilon} \text{ (eps in sqrt), else }
      g / (\sqrt{v} + \epsilon) \\
    u &= -\alpha_k s \text{ without momentum; with momentum either} \\
      b &\leftarrow m b + \alpha_k s,\ u = -b \text{ (lr in momentum), or }
      b \leftarrow m b + s,\ u = -\alpha_k b \\
    u &\leftarrow u - \alpha_k\lambda\theta \text{ (decoupled weight decay)}

  With Nesterov momentum the update uses the look-ahead buffer:
  :math:`u = -(\alpha_k s + m b)` or :math:`u = -\alpha_k(s + m b)`. With
  ``caution`` the update is zeroed where it points along the gradient and the
  rest is divided by its share of the leaf. The state's ``trace`` holds
  :math:`-b`, the buffer with the update's sign. With ``lazy_rows``, a row of a
  marked leaf whose gradient :math:`g` (after the coupled weight-decay term) is
  zero everywhere is skipped: :math:`u = 0` there and its :math:`\nu`,
  :math:`\mu` and :math:`b` keep their stored values.

  ``update`` takes the numeric hyper-parameters as arguments of one compiled
  computation: it is fast when called eagerly (e.g. in a notebook), and
  changing a hyper-parameter through ``optax.inject_hyperparams`` compiles
  nothing new.

  Args:
    learning_rate: a non-negative scalar, or an optax schedule of the 0-based
      step count.
    decay: decay rate :math:`\rho` of the moving averages (PyTorch ``alpha``,
      Keras ``rho``), in ``[0, 1)``.
    eps: term added to the denominator for numerical stability.
    initial_scale: start value of ``nu``; TF1 and timm's RMSpropTF use 1.0.
    eps_in_sqrt: add ``eps`` inside the root (optax, Keras, TF) or outside it
      (PyTorch).
    centered: divide by the root of the variance estimate (Graves, 2013); the
      variance is clamped at zero so that it never turns the step into NaN.
    momentum: momentum coefficient in ``[0, 1)``, or ``None`` for none (then
      no buffer is allocated).
    nesterov: use Nesterov momentum; requires ``momentum``.
    bias_correction: divide the averages by ``1 - decay^(k+1)`` as Adam does.
    weight_decay: weight-decay coefficient :math:`\lambda \ge 0`.
    decoupled_weight_decay: if False, L2 regularisation added to the gradient
      (PyTorch ``weight_decay``); if True, ``-lr * weight_decay * param`` added
      to the update (Keras, AdamW style).
    corrected_weight_decay: scale the decoupled decay by
      ``lr**2 / max_lr`` instead of ``lr`` (timm; Defazio, 2025).
    max_lr: the learning rate corrected weight decay divides by; defaults to a
      constant ``learning_rate`` and is required with a schedule.
    weight_decay_mask: a pytree of bools with the params' structure (or a
      prefix of it), or a callable ``params -> pytree``; weight decay applies
      only where True.
    lazy_rows: the leaves updated row by row, as TF updates embedding tables
      from a lookup's sparse gradient: ``True`` for every leaf, or the forms of
      ``weight_decay_mask``. On such a leaf, a row (an index along axis 0)
      whose gradient is zero in every entry is left exactly as it is that step:
      its update is 0 and its ``nu``, ``mu`` and momentum buffer keep their
      stored values, bit for bit; the step count still advances. 0-d leaves
      have no rows and follow the dense rule. A row that was looked up but
      whose gradient sums to exactly zero counts as untouched, where TF would
      decay it (see the porting guide).
    lr_in_momentum: whether the momentum buffer accumulates ``lr * s``
      (optax, Keras, TF) or ``s`` with the learning rate applied afterwards
      (PyTorch). They differ once the learning rate changes.
    maximize: ascend the objective instead of descending it.
    caution: Cautious-optimizer masking of the momentum step (timm); requires
      ``momentum``.
    state_dtype: storage dtype of ``nu``, ``mu`` and ``trace``; default
      float32 (float64 for float64 parameters). ``jnp.bfloat16`` halves the
      state memory, an 8-bit float dtype quarters it (block-quantized, see
      :class:`QuantizedArray`); arithmetic always happens in at least float32.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`RMSPropState`.

  Raises:
    ValueError: a hyper-parameter outside its allowed range (checked when it
      is a concrete number, and a schedule's value when it is traced), a
      learning rate of ``None``, or an option without the one it needs.
    TypeError: a value of the wrong type, e.g. a string for a number or an
      array for a flag.

  Examples:
    >>> import jax, jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.rmsprop(learning_rate=0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> updates["w"].round(6)
    Array([-0.316228,  0.316228], dtype=float32)

  References:
    - Hinton, Lecture 6e of "Neural Networks for Machine Learning", 2012.
    - Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
    - Liang et al., "Cautious Optimizers: Improving Training with One Line of
      Code", arXiv:2411.16085, 2024.
    - Defazio, "Why Gradients Rapidly Increase Near the End of Training",
      arXiv:2506.02285, 2025.
  """
  names = CORE_NAMES
  decoupled = v.check_flag(names, "decoupled_weight_decay", decoupled_weight_decay)
  corrected = v.check_flag(names, "corrected_weight_decay", corrected_weight_decay)
  return build(
    names,
    _rule.Rule(
      eps_in_sqrt=eps_in_sqrt,
      centered=centered,
      bias_correction=bias_correction,
      nesterov=nesterov,
      lr_in_momentum=lr_in_momentum,
      maximize=maximize,
      caution=caution,
    ),
    _rule.Hyper(
      learning_rate=learning_rate,
      decay=decay,
      eps=eps,
      initial_scale=initial_scale,
      momentum=momentum,
      max_lr=v.corrected_max_lr(names, corrected, decoupled, max_lr, learning_rate),
      **_rule.weight_decay(
        v.given(names, "weight_decay", weight_decay), decoupled=decoupled
      ),
    ),
    weight_decay_mask=weight_decay_mask,
    lazy_rows=lazy_rows,
    state_dtype=state_dtype,
  )
