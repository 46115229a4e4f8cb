"""The one RMSProp core: every variant is a visible branch of ``_leaf_update``."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax.core import Tracer
from jax.interpreters import partial_eval as pe
from jax.sharding import NamedSharding, PartitionSpec
from jax.typing import DTypeLike

from rmsprop_jax import _storage
from rmsprop_jax import _validation as v


class RMSPropState(NamedTuple):
  """The state of :func:`rmsprop` and :func:`scale_by_rms`.

  Attributes:
    count: number of updates applied so far (int32 scalar; saturates at the
      int32 maximum instead of wrapping); ``None`` unless a learning-rate
      schedule or bias correction needs it.
    nu: exponential moving average of the squared gradient, one leaf per
      parameter.
    mu: exponential moving average of the gradient; ``None`` unless centred.
    trace: momentum buffer, kept with the sign of the update (the negation of
      PyTorch's, Keras' and TF's buffer); ``None`` unless momentum is enabled.
  """

  count: jax.Array | None  # pyright: ignore[reportIncompatibleMethodOverride]
  nu: optax.Updates
  mu: optax.Updates | None
  trace: optax.Updates | None


@dataclasses.dataclass(frozen=True)
class _Options:
  """The structural (compile-time) options; numbers travel as arguments."""

  eps_in_sqrt: bool
  centered: bool
  bias_correction: bool
  momentum: bool = False
  nesterov: bool = False
  lr_in_momentum: bool = True
  maximize: bool = False
  weight_decay: Literal["coupled", "decoupled"] | None = None
  schedule: Callable[[jax.Array], Any] | None = None
  scale_only: bool = False  # scale_by_rms: return g / denominator, no lr
  # Set per update call by update_fn:
  decay_leaf: tuple[bool, ...] | None = None  # per-leaf weight-decay mask
  out_dtypes: tuple[str, ...] | None = None  # when params' dtypes differ from grads'

  @property
  def counts(self) -> bool:
    """Whether the state keeps a step count (schedules and bias correction).

    Nothing else reads it, and it would be one more kernel to compile and run
    (optax's rmsprop keeps none either).
    """
    return self.schedule is not None or self.bias_correction


def _leaf_update(
  g: jax.Array,
  nu: Any,
  mu: Any,
  trace: Any,
  p: jax.Array | None,
  *,
  sc: _Scalars,
  decays: bool,
  opts: _Options,
) -> tuple[jax.Array, Any, Any, Any]:
  """The RMSProp rule for one leaf; returns (update, nu, mu, trace)."""
  dtype = _storage.compute_dtype(g.dtype, _dtype_of(nu))
  cdtype = jnp.result_type(dtype, g.dtype)  # complex stays complex
  decay, eps = sc.decay, sc.eps
  g = g.astype(cdtype)
  if opts.maximize:
    g = -g
  # update_fn only enables weight decay together with params.
  if not decays or opts.weight_decay is None:
    p = None
  if p is not None and sc.weight_decay is not None and opts.weight_decay == "coupled":
    g = g + sc.weight_decay * p.astype(cdtype)

  bias = sc.bias
  new_nu = sc.one_minus_decay * _abs_sq(g) + decay * _storage.load(nu, dtype)
  nu_hat = new_nu if bias is None else new_nu / bias
  new_mu = None
  if opts.centered:
    new_mu = sc.one_minus_decay * g + decay * _storage.load(mu, dtype)
    mu_hat = new_mu if bias is None else new_mu / bias
    # nu - |mu|^2 is a difference of two nearly equal numbers when the gradient
    # barely varies; rounding can make it negative and the root NaN. Clamp it.
    var = jnp.maximum(nu_hat - _abs_sq(mu_hat), 0)
  else:
    var = nu_hat

  if opts.eps_in_sqrt:
    s = g * jax.lax.rsqrt(var + eps)
  else:
    s = g / (jnp.sqrt(var) + eps)
  if opts.scale_only:
    return s, new_nu, new_mu, None

  lr, neg_lr, m = sc.lr, sc.neg_lr, sc.momentum
  new_trace = None
  if m is None:
    u = neg_lr * s  # == -(lr * s) exactly: negation is exact
  else:
    # The buffer keeps the sign of the update, so that without Nesterov the
    # update *is* the new buffer: one fused kernel per leaf fewer, as in optax.
    # Negation is exact, so every value equals the libraries' up to its sign.
    old = _storage.load(trace, dtype)
    if opts.lr_in_momentum:  # optax, Keras, TF: the buffer holds -lr * s
      new_trace = m * old + neg_lr * s
      u = neg_lr * s + m * new_trace if opts.nesterov else new_trace
    else:  # PyTorch: the buffer holds -s, lr scales it afterwards
      new_trace = m * old - s
      u = lr * (m * new_trace - s) if opts.nesterov else lr * new_trace

  if (
    p is not None
    and sc.lr_weight_decay is not None
    and opts.weight_decay == "decoupled"
  ):
    u = u - sc.lr_weight_decay * p.astype(cdtype)
  return u, new_nu, new_mu, new_trace


def _abs_sq(x: jax.Array) -> jax.Array:
  if jnp.iscomplexobj(x):
    return (x.conj() * x).real
  return x * x


def _dtype_of(stored: Any) -> Any:
  return getattr(stored, "dtype", None)


_Leaves = list[Any]


class _Scalars(NamedTuple):
  """The hyper-parameters in one compute dtype, derived once per update."""

  decay: jax.Array
  one_minus_decay: jax.Array
  eps: jax.Array
  lr: jax.Array
  neg_lr: jax.Array
  bias: jax.Array | None  # 1 - decay^(k+1), with bias correction
  momentum: jax.Array | None
  weight_decay: jax.Array | None
  lr_weight_decay: jax.Array | None


def _scalars(
  dtype: jnp.dtype,
  *,
  lr: jax.Array,
  hp: dict[str, jax.Array],
  count: jax.Array | None,
  opts: _Options,
) -> _Scalars:
  """The hyper-parameter scalars in compute dtype ``dtype``.

  Deriving them inside ``_leaf_update`` repeats the same casts, ``1 - decay``
  and negations for each of hundreds of leaves. XLA folds the duplicates, but
  only after tracing and lowering them: it made compiling a 100-leaf update
  about 1.3x slower than optax's.
  """
  decay = hp["decay"].astype(dtype)
  lr = lr.astype(dtype)
  wd = hp["weight_decay"].astype(dtype) if opts.weight_decay is not None else None
  return _Scalars(
    decay=decay,
    one_minus_decay=1 - decay,
    eps=hp["eps"].astype(dtype),
    lr=lr,
    neg_lr=-lr,
    # Bias correction uses the step count after this update (k + 1).
    bias=1 - decay ** count.astype(dtype)
    if opts.bias_correction and count is not None
    else None,
    momentum=hp["momentum"].astype(dtype) if opts.momentum else None,
    weight_decay=wd,
    lr_weight_decay=lr * wd if wd is not None else None,
  )


def _update_leaves(
  grads: list[jax.Array],
  nus: _Leaves,
  mus: _Leaves | None,
  traces: _Leaves | None,
  params: list[jax.Array] | None,
  count: jax.Array | None,
  hp: dict[str, Any],
  opts: _Options,
) -> tuple[tuple[list[jax.Array], _Leaves, _Leaves, _Leaves], jax.Array | None]:
  """Applies ``_leaf_update`` to flat lists of leaves, as one computation."""
  lr = hp.get("lr")
  if opts.schedule is not None:
    assert count is not None  # update_fn refuses a state without one
    lr = opts.schedule(count)
  lr = jnp.asarray(0.0 if lr is None else lr)
  hp = {k: jnp.asarray(x) for k, x in hp.items()}
  new_count = count
  if opts.counts and count is not None:
    new_count = jnp.asarray(optax.safe_increment(count))
  # One set of hyper-parameter scalars per compute dtype, not one per leaf.
  scalars = functools.cache(
    functools.partial(_scalars, lr=lr, hp=hp, count=new_count, opts=opts)
  )
  out: tuple[list[jax.Array], _Leaves, _Leaves, _Leaves] = ([], [], [], [])
  for i, g in enumerate(grads):
    decays = opts.decay_leaf is None or opts.decay_leaf[i]
    u, nu, mu, tr = _leaf_update(
      g,
      nus[i],
      mus[i] if mus is not None else None,
      traces[i] if traces is not None else None,
      params[i] if params is not None else None,
      sc=scalars(_storage.compute_dtype(g.dtype, _dtype_of(nus[i]))),
      decays=decays,
      opts=opts,
    )
    out_dtype = opts.out_dtypes[i] if opts.out_dtypes is not None else g.dtype
    out[0].append(u.astype(out_dtype))
    out[1].append(_storage.store(nu, nus[i]))
    if mus is not None:
      out[2].append(_storage.store(mu, mus[i]))
    if traces is not None:
      out[3].append(_storage.store(tr, traces[i]))
  return out, new_count


# Called eagerly (a notebook), ``update`` runs as this one compiled computation
# instead of one dispatch per operation and leaf; so does an eager ``vmap`` or
# ``grad`` of it. Inside a user's ``jit`` it calls ``_update_leaves`` directly:
# the leaves are traced once, not into a nested jaxpr and again when inlining
# it, which made lowering 1000 leaves 1.25x slower than optax's.
_update_leaves_jit = jax.jit(_update_leaves, static_argnames=("opts",), inline=True)


def _under_jit_only(args: Any) -> bool:
  """Whether ``args`` hold tracers and all of them belong to a ``jit`` trace.

  False for concrete arrays (an eager call) and for ``vmap``/``grad`` tracers,
  which then go through ``_update_leaves_jit`` and stay one computation.
  """
  tracers = [x for x in jax.tree.leaves(args) if isinstance(x, Tracer)]
  return bool(tracers) and all(isinstance(x, pe.DynamicJaxprTracer) for x in tracers)


def _make(
  *,
  decay: Any,
  eps: Any,
  initial_scale: Any,
  state_dtype: jnp.dtype | None,
  opts: _Options,
  learning_rate: Any = None,
  momentum: Any = None,
  weight_decay: Any = 0.0,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """Builds the transformation from validated arguments."""
  hp: dict[str, Any] = {"decay": decay, "eps": eps}
  if not opts.scale_only and opts.schedule is None:
    hp["lr"] = learning_rate
  if opts.momentum:
    hp["momentum"] = momentum
  if opts.weight_decay is not None:
    hp["weight_decay"] = weight_decay

  def init_fn(params: optax.Params) -> optax.OptState:
    v.check_param_leaves(params)

    def fill(value: Any, is_nu: bool) -> optax.Updates:
      return jax.tree.map(
        lambda p: _storage.init_leaf(p, value, state_dtype, is_nu=is_nu),
        params,
      )

    state = RMSPropState(
      count=_replicated_count(params) if opts.counts else None,
      nu=fill(initial_scale, True),
      mu=fill(0.0, False) if opts.centered else None,
      trace=fill(0.0, False) if opts.momentum else None,
    )
    # optax's OptState alias has no room for the None fields of disabled options.
    return cast(optax.OptState, state)

  def update_fn(
    updates: optax.Updates,
    state: optax.OptState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.OptState]:
    del extra_args
    if not isinstance(state, RMSPropState):
      raise TypeError(
        f"state must be the RMSPropState returned by init; got {type(state).__name__}."
      )
    st = cast(RMSPropState, state)
    grads, treedef = jax.tree.flatten(updates)
    grad_shapes = [g.shape for g in grads]
    nus = v.flatten_like(updates, st.nu, "updates", "state.nu")
    v.check_shapes(
      updates,
      grad_shapes,
      [_storage.logical_shape(n) for n in nus],
      "updates",
      "state.nu",
    )
    mus = _optional_leaves(updates, st.mu, opts.centered, "mu", "centered")
    traces = _optional_leaves(updates, st.trace, opts.momentum, "trace", "momentum")
    if opts.counts and st.count is None:
      needs = "a learning-rate schedule" if opts.schedule else "bias correction"
      raise ValueError(
        f"state.count is None but {needs} is enabled: this state comes from an "
        "optimizer without a schedule or bias correction; call init with this "
        "one."
      )
    leaves_p = None
    opts_now = opts
    if params is not None:
      leaves_p = v.flatten_like(updates, params, "updates", "params")
      v.check_shapes(
        updates,
        grad_shapes,
        [jnp.shape(p) for p in leaves_p],
        "updates",
        "params",
      )
      dtypes = tuple(_dtype_of(p) or jnp.result_type(p) for p in leaves_p)
      if any(a != g.dtype for a, g in zip(dtypes, grads, strict=True)):
        opts_now = dataclasses.replace(
          opts_now, out_dtypes=tuple(jnp.dtype(d).name for d in dtypes)
        )
    if opts.weight_decay is not None:
      if params is None:
        raise ValueError(
          "weight_decay is enabled (weight_decay="
          f"{hp['weight_decay']!r}), so update needs params: call "
          "update(grads, state, params). Under optax.inject_hyperparams "
          "weight_decay is traced even when it is 0: pass params, or add "
          "'weight_decay' to static_args."
        )
      if weight_decay_mask is not None:
        opts_now = dataclasses.replace(
          opts_now, decay_leaf=v.broadcast_mask(weight_decay_mask, params)
        )
    args = (
      grads,
      nus,
      mus,
      traces,
      leaves_p if opts.weight_decay is not None else None,
      st.count,
      hp,
    )
    core = _update_leaves if _under_jit_only(args) else _update_leaves_jit
    (us, new_nus, new_mus, new_traces), count = core(*args, opts=opts_now)
    new_state = RMSPropState(
      count=count,
      nu=treedef.unflatten(new_nus),
      mu=treedef.unflatten(new_mus) if opts.centered else None,
      trace=treedef.unflatten(new_traces) if opts.momentum else None,
    )
    return treedef.unflatten(us), cast(optax.OptState, new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _replicated_count(params: optax.Params) -> jax.Array:
  """A zero step count, replicated over the params' mesh when they have one.

  Without this an eager ``init`` of mesh-sharded params leaves the scalar on
  device 0, and a jitted step whose ``out_shardings`` mirror the state then
  fails with "incompatible devices".
  """
  count = jnp.zeros([], jnp.int32)
  for leaf in jax.tree.leaves(params):
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(leaf, Tracer) and isinstance(sharding, NamedSharding):
      return jax.device_put(count, NamedSharding(sharding.mesh, PartitionSpec()))
  return count


def _optional_leaves(
  updates: Any, tree: Any, enabled: bool, field: str, option: str
) -> list[Any] | None:
  if not enabled:
    return None
  if tree is None and jax.tree.leaves(updates):
    raise ValueError(
      f"state.{field} is None but {option} is enabled: the state was "
      f"created by an optimizer without {option}. Call init again with this "
      "optimizer."
    )
  if tree is None:  # init(None): an empty tree has no buffers to keep
    return []
  return v.flatten_like(updates, tree, "updates", f"state.{field}")


def _warn_if_centered_state_cancels(centered: bool, state_dtype: Any) -> None:
  """Centred RMSProp computes nu - |mu|^2, which low-precision storage cancels."""
  if centered and state_dtype is not None and jnp.dtype(state_dtype).itemsize < 4:
    warnings.warn(
      f"centered=True with state_dtype={jnp.dtype(state_dtype).name}: the "
      "variance nu - |mu|^2 is a difference of two rounded numbers, and with "
      "an 8-bit mantissa it rounds to 0 once the gradient's spread is below a "
      "few percent of its mean, so steps grow towards lr * g / sqrt(eps). "
      "Use float32 state for centred RMSProp.",
      UserWarning,
      stacklevel=4,  # _warn <- _check_common <- rmsprop <- caller
    )


def _check_common(
  decay: Any, eps: Any, initial_scale: Any, centered: bool, state_dtype: Any
) -> jnp.dtype | None:
  """Checks the arguments rmsprop and scale_by_rms share; returns state_dtype."""
  v.check_range(
    "decay", decay, low=0.0, high=1.0, high_open=True, allowed="0 <= decay < 1"
  )
  v.check_range("eps", eps, low=0.0, allowed="eps >= 0")
  v.check_range("initial_scale", initial_scale, low=0.0, allowed="initial_scale >= 0")
  state_dtype = v.check_state_dtype(state_dtype)
  _warn_if_centered_state_cancels(centered, state_dtype)
  return state_dtype


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
  state_dtype = _check_common(decay, eps, initial_scale, centered, state_dtype)
  opts = _Options(
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    bias_correction=bool(bias_correction),
    scale_only=True,
  )
  tx = _make(
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    state_dtype=state_dtype,
    opts=opts,
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
  weight_decay_mask: Any = None,
  lr_in_momentum: bool = True,
  maximize: bool = False,
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
    u &= -\alpha_k s \text{ without momentum; with momentum }
      b \leftarrow m b + \alpha_k s,\ u = -b \text{ (lr in momentum) or }
      b \leftarrow m b + s,\ u = -\alpha_k b \\
    u &\leftarrow u - \alpha_k\lambda\theta \text{ (decoupled weight decay)}

  With Nesterov momentum the update uses the look-ahead buffer:
  :math:`u = -(\alpha_k s + m b)` or :math:`u = -\alpha_k(s + m b)`. The
  state's ``trace`` holds :math:`-b`, the buffer with the update's sign.

  ``update`` is compiled once per configuration and takes the numeric
  hyper-parameters as arguments, so it is fast when called eagerly (e.g. in a
  notebook), and changing a hyper-parameter through
  ``optax.inject_hyperparams`` compiles nothing new.

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
    weight_decay_mask: a pytree of bools with the params' structure (or a
      prefix of it), or a callable ``params -> pytree``; weight decay applies
      only where True.
    lr_in_momentum: whether the momentum buffer accumulates ``lr * s``
      (optax, Keras, TF) or ``s`` with the learning rate applied afterwards
      (PyTorch). They differ once the learning rate changes.
    maximize: ascend the objective instead of descending it.
    state_dtype: storage dtype of ``nu``, ``mu`` and ``trace``; default
      float32 (float64 for float64 parameters). ``jnp.bfloat16`` halves the
      state memory; arithmetic always happens in at least float32.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`RMSPropState`.

  Raises:
    ValueError: a hyper-parameter outside its allowed range (checked when it
      is a concrete number), or ``nesterov`` without ``momentum``.

  Examples:
    >>> import jax, jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.rmsprop(learning_rate=0.1)
    >>> params = {"w": jnp.array([1.0, -2.0])}
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> updates["w"]
    Array([-0.31622773,  0.31622773], dtype=float32)

  References:
    Hinton, Lecture 6e of "Neural Networks for Machine Learning", 2012.
    Graves, "Generating Sequences With Recurrent Neural Networks", 2013.
  """
  schedule = learning_rate if callable(learning_rate) else None
  if schedule is None:
    v.check_range("learning_rate", learning_rate, low=0.0, allowed="learning_rate >= 0")
  state_dtype = _check_common(decay, eps, initial_scale, centered, state_dtype)
  if momentum is not None:
    v.check_range(
      "momentum",
      momentum,
      low=0.0,
      high=1.0,
      high_open=True,
      allowed="0 <= momentum < 1, or None",
    )
  if nesterov and momentum is None:
    raise ValueError(
      "nesterov=True needs momentum; got momentum=None. Pass e.g. momentum=0.9."
    )
  v.check_range("weight_decay", weight_decay, low=0.0, allowed="weight_decay >= 0")
  wd_value = v.concrete_value(weight_decay)
  wd_mode = None
  if wd_value is None or wd_value != 0.0:
    wd_mode = "decoupled" if decoupled_weight_decay else "coupled"
  opts = _Options(
    eps_in_sqrt=bool(eps_in_sqrt),
    centered=bool(centered),
    momentum=momentum is not None,
    nesterov=bool(nesterov),
    bias_correction=bool(bias_correction),
    lr_in_momentum=bool(lr_in_momentum),
    maximize=bool(maximize),
    weight_decay=wd_mode,
    schedule=schedule,
  )
  return _make(
    learning_rate=learning_rate,
    decay=decay,
    eps=eps,
    initial_scale=initial_scale,
    momentum=momentum,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    state_dtype=state_dtype,
    opts=opts,
  )
