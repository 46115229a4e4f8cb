"""Runs the real libraries' RMSProp on the reference problem.

Shared by ``generate.py`` (which records the trajectories) and the live tests
in ``tests/test_presets.py`` (which run a library side by side with the preset
when it is importable). Every library is imported inside its driver, so this
module imports with NumPy alone.

A *spec* describes one configuration (see FORMAT.md): ``kwargs`` holds the
constructor arguments under the library's own names (which are also the
preset's), ``schedule`` an optional learning-rate schedule, ``weight_decay_mask``
an optional ``{leaf: bool}``, ``global_clipnorm`` an optional Keras clip, and
``groups`` optional PyTorch parameter groups, each naming its leaves.
Gradients come from one NumPy function, so every library sees the same problem
and the recorded data does not depend on any library's autodiff. The handover
drivers also take the optimizer's state in the middle of a run. The embedding
drivers run TF's optimizers on a second problem, an embedding table looked up
with ``tf.gather``, whose gradient must come from TF's autodiff to reach the
optimizer as ``tf.IndexedSlices``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

# The reference problem: an ill-conditioned quadratic in ``w`` coupled to a
# non-convex, non-quadratic term in ``b``.
#   L = 1/2 sum(c w^2) + sum(log(1 + b^2) + 0.05 b^4) + 0.3 w_0 sum(b)
#       + 0.5 sin(w_1 + w_2)
CURVATURE = np.array([1.0, 10.0, 100.0])
INITIAL_PARAMS = {
  "w": np.array([1.0, -0.5, 0.25]),
  "b": np.array([[0.8, -1.2], [0.3, 2.0]]),
}
LEAVES = ("w", "b")
PROBLEM = (
  "L = 1/2 sum(c * w**2) + sum(log(1 + b**2) + 0.05 * b**4) "
  "+ 0.3 * w[0] * sum(b) + 0.5 * sin(w[1] + w[2]), c = (1, 10, 100); "
  "gradients computed in float64 from the library's current parameters and "
  "rounded to the case's dtype"
)

Spec = dict[str, Any]
Trajectory = dict[str, Any]


def gradient(params: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
  """The gradient of the reference problem, rounded to ``dtype``."""
  w = np.asarray(params["w"], np.float64)
  b = np.asarray(params["b"], np.float64)
  gw = CURVATURE * w
  gw[0] += 0.3 * b.sum()
  gw[1:] += 0.5 * np.cos(w[1] + w[2])
  gb = 2 * b / (1 + b**2) + 0.2 * b**3 + 0.3 * w[0]
  return {"w": gw.astype(dtype), "b": gb.astype(dtype)}


def _record(
  steps: int,
  dtype: str,
  read_params: Callable[[], dict[str, np.ndarray]],
  read_lr: Callable[[], float],
  apply: Callable[[dict[str, np.ndarray]], None],
  on_step: Callable[[int], None] | None = None,
) -> Trajectory:
  """Runs ``steps`` steps, recording params, gradients and learning rates.

  ``on_step(k)``, if given, runs after the ``k``-th step (1-based).
  """
  params = [read_params()]
  grads, lrs = [], []
  for k in range(1, steps + 1):
    lrs.append(float(read_lr()))
    g = gradient(params[-1], dtype)
    grads.append(g)
    apply(g)
    params.append(read_params())
    if on_step is not None:
      on_step(k)
  return {
    "params": {k: np.stack([p[k] for p in params]) for k in LEAVES},
    "grads": {k: np.stack([g[k] for g in grads]) for k in LEAVES},
    "lrs": np.asarray(lrs, np.float64),
  }


def _record_tf(
  steps: int,
  dtype: str,
  variables: dict[str, Any],
  read_lr: Callable[[], float],
  apply: Callable[[dict[str, np.ndarray]], None],
) -> Trajectory:
  """:func:`_record` of a TensorFlow optimizer stepping ``variables``."""
  return _record(
    steps,
    dtype,
    lambda: {k: variables[k].numpy().copy() for k in LEAVES},
    read_lr,
    apply,
  )


# --------------------------------------------------------------- PyTorch, timm


def _torch_scheduler(schedule: dict[str, Any] | None, opt: Any) -> Any:
  import torch

  if schedule is None:
    return None
  kind = schedule["kind"]
  if kind == "torch.StepLR":
    return torch.optim.lr_scheduler.StepLR(
      opt, step_size=schedule["step_size"], gamma=schedule["gamma"]
    )
  if kind == "torch.ExponentialLR":
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=schedule["gamma"])
  if kind == "torch.LambdaLR":
    rate = schedule["inverse_time"]
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + rate * k))
  raise ValueError(f"unknown PyTorch schedule {kind!r}")


def _torch_optimizer(cls: Any, spec: Spec, params: dict[str, Any]) -> tuple[Any, Any]:
  """The optimizer (and scheduler, or None) a spec describes, on ``params``."""
  mask = spec.get("weight_decay_mask")
  if spec.get("groups"):  # [{"params": [leaf, ...], option: value, ...}, ...]
    groups: Any = [
      {**group, "params": [params[k] for k in group["params"]]}
      for group in spec["groups"]
    ]
  elif mask is None:
    groups = [params[k] for k in LEAVES]
  else:  # a parameter group with weight_decay=0 is PyTorch's mask
    groups = [
      {"params": [params[k] for k in LEAVES if mask[k]]},
      {"params": [params[k] for k in LEAVES if not mask[k]], "weight_decay": 0.0},
    ]
  opt = cls(groups, **spec["kwargs"])
  return opt, _torch_scheduler(spec.get("schedule"), opt)


def _run_torch_optimizer(
  cls: Any,
  spec: Spec,
  dtype: str,
  steps: int,
  on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> Trajectory:
  """Runs a ``torch.optim`` optimizer class on the reference problem.

  ``on_step(k, live)``, if given, runs after the ``k``-th step with ``live``
  holding ``params``, ``optimizer`` and ``scheduler``; it may replace the last
  two, and the following steps use the replacements.
  """
  import torch

  params = {
    k: torch.tensor(INITIAL_PARAMS[k].astype(dtype), requires_grad=True) for k in LEAVES
  }
  opt, scheduler = _torch_optimizer(cls, spec, params)
  live = {"params": params, "optimizer": opt, "scheduler": scheduler}

  def apply(g: dict[str, np.ndarray]) -> None:
    for k in LEAVES:
      params[k].grad = torch.from_numpy(g[k].copy())
    live["optimizer"].step()
    if live["scheduler"] is not None:
      live["scheduler"].step()

  return _record(
    steps,
    dtype,
    lambda: {k: params[k].detach().numpy().copy() for k in LEAVES},
    lambda: live["optimizer"].param_groups[0]["lr"],
    apply,
    None if on_step is None else lambda k: on_step(k, live),
  )


def run_torch(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``torch.optim.RMSprop`` on the reference problem."""
  import torch

  return _run_torch_optimizer(torch.optim.RMSprop, spec, dtype, steps)


def timm_rmsprop_tf_class() -> Any:
  """timm's ``RMSpropTF`` class.

  ``import timm`` pulls in its models, which need torchvision; the optimizer
  needs only torch. When the package import fails, the optimizer's module is
  loaded from the installed timm without running the package ``__init__``.
  """
  try:
    from timm.optim import RMSpropTF

    return RMSpropTF
  except ImportError:
    pass
  for name in ("timm.optim", "timm"):  # drop a half-imported package
    sys.modules.pop(name, None)
  spec = importlib.util.find_spec("timm")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("timm is not installed")
  root = list(spec.submodule_search_locations)[0]
  for name, path in (("timm", root), ("timm.optim", f"{root}/optim")):
    package = types.ModuleType(name)
    package.__path__ = [path]
    sys.modules[name] = package
  return importlib.import_module("timm.optim.rmsprop_tf").RMSpropTF


def run_timm(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """timm's ``RMSpropTF`` on the reference problem."""
  return _run_torch_optimizer(timm_rmsprop_tf_class(), spec, dtype, steps)


# ---------------------------------------------------------------------- Keras


def _keras_schedule(s: Any, schedule: dict[str, Any], dtype: str) -> Any:
  """The schedule from ``s``: Keras 3's or tf_keras' ``optimizers.schedules``."""
  kind = schedule["kind"]
  # Given a Python float, CosineDecay computes in float32 even when floatx is
  # float64, and tf_keras' ExponentialDecay rounds decay_rate to float32
  # (tf.cast converts a Python float to a float32 tensor first); NumPy scalars
  # of the case's dtype keep the float64 cases float64.
  number = np.dtype(dtype).type
  lr = number(schedule.get("initial_learning_rate", 0.0))
  if kind == "keras.ExponentialDecay":
    return s.ExponentialDecay(
      lr,
      schedule["decay_steps"],
      number(schedule["decay_rate"]),
      staircase=schedule["staircase"],
    )
  if kind == "keras.PiecewiseConstantDecay":
    values = [number(x) for x in schedule["values"]]
    return s.PiecewiseConstantDecay(schedule["boundaries"], values)
  if kind == "keras.CosineDecay":
    return s.CosineDecay(
      lr,
      schedule["decay_steps"],
      alpha=schedule["alpha"],
    )
  raise ValueError(f"unknown Keras schedule {kind!r}")


def _built_rmsprop(
  optimizers: Any, spec: Spec, variables: dict[str, Any], dtype: str
) -> Any:
  """Keras 3's or tf_keras' ``RMSprop`` as the spec asks, built on ``variables``.

  ``optimizers`` is ``keras.optimizers`` or ``tf_keras.optimizers``: both take
  the same arguments, schedules, ``global_clipnorm`` and exclusions.
  """
  kwargs = dict(spec["kwargs"])
  if spec.get("schedule") is not None:
    kwargs["learning_rate"] = _keras_schedule(
      optimizers.schedules, spec["schedule"], dtype
    )
  if spec.get("global_clipnorm") is not None:
    kwargs["global_clipnorm"] = spec["global_clipnorm"]
  opt = optimizers.RMSprop(**kwargs)
  mask = spec.get("weight_decay_mask")
  if mask is not None:
    opt.exclude_from_weight_decay(
      var_list=[variables[k] for k in LEAVES if not mask[k]]
    )
  opt.build([variables[k] for k in LEAVES])
  return opt


def _run_keras(
  spec: Spec,
  dtype: str,
  steps: int,
  on_step: Callable[[int, Any], None] | None = None,
) -> Trajectory:
  """``run_keras``; ``on_step(k, optimizer)``, if given, runs after step ``k``."""
  import keras

  old_floatx = keras.config.floatx()
  keras.config.set_floatx(dtype)
  try:
    variables = {
      k: keras.Variable(INITIAL_PARAMS[k].astype(dtype), dtype=dtype, name=k)
      for k in LEAVES
    }
    opt = _built_rmsprop(keras.optimizers, spec, variables, dtype)
    var_list = [variables[k] for k in LEAVES]

    def apply(g: dict[str, np.ndarray]) -> None:
      opt.apply([keras.ops.convert_to_tensor(g[k]) for k in LEAVES], var_list)

    return _record(
      steps,
      dtype,
      # .value is the backend array: NumPy 2 warns on Variable.__array__.
      lambda: {k: np.array(variables[k].value) for k in LEAVES},
      lambda: np.asarray(getattr(opt.learning_rate, "value", opt.learning_rate)),
      apply,
      None if on_step is None else lambda k: on_step(k, opt),
    )
  finally:
    keras.config.set_floatx(old_floatx)


def run_keras(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``keras.optimizers.RMSprop`` (Keras 3) on the reference problem.

  The caller chooses the backend (``KERAS_BACKEND``); float64 with the JAX
  backend needs ``jax_enable_x64``. ``floatx`` is set to ``dtype`` while the
  optimizer runs, so that its learning rate and schedules are computed in the
  variables' precision, as a float64 Keras program would.
  """
  return _run_keras(spec, dtype, steps)


# ------------------------------------------------------------------- tf_keras


@contextlib.contextmanager
def _tf_keras_floatx(dtype: str) -> Iterator[None]:
  """Sets tf_keras' ``floatx`` to ``dtype`` inside a ``with`` block."""
  import tf_keras

  old = tf_keras.backend.floatx()
  tf_keras.backend.set_floatx(dtype)
  try:
    yield
  finally:
    tf_keras.backend.set_floatx(old)


def _tf_keras_legacy_optimizer(
  spec: Spec, dtype: str
) -> tuple[Any, Callable[[], float]]:
  """``tf_keras.optimizers.legacy.RMSprop`` as the spec asks, and its learning rate.

  Call inside ``_tf_keras_floatx(dtype)``. The reader gives the learning rate
  the next step uses (schedule and decay applied, cast to ``dtype``), as the
  optimizer computes it.
  """
  import tensorflow as tf
  import tf_keras

  kwargs = dict(spec["kwargs"])
  schedule = spec.get("schedule")
  if schedule is not None and schedule["kind"] == "tf_keras.legacy_decay":
    kwargs["decay"] = schedule["decay"]
  elif schedule is not None:
    kwargs["learning_rate"] = _keras_schedule(
      tf_keras.optimizers.schedules, schedule, dtype
    )
  opt = tf_keras.optimizers.legacy.RMSprop(**kwargs)
  return opt, lambda: float(opt._decayed_lr(tf.as_dtype(dtype)).numpy())


def _tf_keras_legacy_float32_hyperparameters(opt: Any) -> dict[str, float]:
  """The hyper-parameters the legacy optimizer holds in float32 variables."""
  import tensorflow as tf

  # ``decay`` is held in a float32 variable too, but the decayed learning rate
  # reads the Python float.
  held = {name: opt._hyper[name] for name in ("learning_rate", "rho", "momentum")}
  return {
    name: float(v.numpy())
    for name, v in held.items()
    if isinstance(v, tf.Variable) and v.dtype == tf.float32
  }


def _record_tf_keras(
  steps: int,
  dtype: str,
  variables: dict[str, Any],
  opt: Any,
  read_lr: Callable[[], float],
) -> Trajectory:
  """:func:`_record` of a tf_keras optimizer (legacy or not) on ``variables``."""
  import tensorflow as tf

  def apply(g: dict[str, np.ndarray]) -> None:
    opt.apply_gradients([(tf.constant(g[k]), variables[k]) for k in LEAVES])

  return _record_tf(steps, dtype, variables, read_lr, apply)


def run_tf_keras_legacy(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``tf_keras.optimizers.legacy.RMSprop`` (eager) on the reference problem.

  This is TF 2.0-2.10's ``tf.keras.optimizers.RMSprop``. Hyper-parameters are
  Python floats, as Keras code passes them: the optimizer holds
  ``learning_rate``, ``rho`` and ``momentum`` in float32 variables whatever
  ``floatx`` and the variables' dtype, and casts them to the variables' dtype
  at each step. The returned trajectory carries the values it used under
  ``float32_hyperparameters``. A ``tf_keras.legacy_decay`` schedule is the
  constructor's ``decay`` argument; other schedules are tf_keras schedules,
  given NumPy numbers of ``dtype`` so that they compute in ``dtype``.
  """
  import tensorflow as tf

  with _tf_keras_floatx(dtype):
    variables = {
      k: tf.Variable(INITIAL_PARAMS[k].astype(dtype), name=k) for k in LEAVES
    }
    opt, read_lr = _tf_keras_legacy_optimizer(spec, dtype)
    trajectory = _record_tf_keras(steps, dtype, variables, opt, read_lr)
  trajectory["float32_hyperparameters"] = _tf_keras_legacy_float32_hyperparameters(opt)
  return trajectory


def run_tf_keras(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``tf_keras.optimizers.RMSprop`` (Keras 2.11+) on the reference problem.

  ``floatx`` is set to ``dtype`` while the optimizer runs, as for Keras 3:
  the learning-rate variable has dtype ``floatx``. Schedules are given NumPy
  numbers of ``dtype``. The optimizer casts the Python float ``weight_decay``
  to the variables' dtype with ``tf.cast``, through float32: the returned
  trajectory carries the value it used under ``float32_hyperparameters``.
  """
  import tensorflow as tf
  import tf_keras

  tdtype = tf.as_dtype(dtype)
  with _tf_keras_floatx(dtype):
    variables = {
      k: tf.Variable(INITIAL_PARAMS[k].astype(dtype), name=k) for k in LEAVES
    }
    opt = _built_rmsprop(tf_keras.optimizers, spec, variables, dtype)

    def read_lr() -> float:
      # With a schedule, apply_gradients evaluates it at ``iterations`` before
      # the step; ``opt.learning_rate`` still holds the previous step's value.
      lr = opt._learning_rate
      if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(opt.iterations)
      return float(tf.cast(lr, tdtype).numpy())

    trajectory = _record_tf_keras(steps, dtype, variables, opt, read_lr)
  if opt.weight_decay is not None:
    used = tf.cast(opt.weight_decay, tdtype)  # as _apply_weight_decay does
    trajectory["float32_hyperparameters"] = {"weight_decay": float(used.numpy())}
  return trajectory


# ------------------------------------------------------------------------ TF1


def _tf1_optimizer(
  spec: Spec, dtype: str, global_step: Any
) -> tuple[Any, Callable[[], float]]:
  """``tf.compat.v1.train.RMSPropOptimizer`` as the spec asks, and its learning rate.

  Hyper-parameters (the defaults included) are passed as tensors of ``dtype``,
  or as Python floats under ``"hyperparameter_dtype": "float32"`` (see
  :func:`run_tf1`). Schedules read ``global_step``. ``kwargs["weight_decay"]``
  is not the optimizer's: :func:`run_tf1` puts it in the loss.
  """
  import tensorflow as tf

  tdtype = tf.as_dtype(dtype)
  python_floats = spec.get("hyperparameter_dtype") == "float32"

  def constant(x: float) -> Any:
    return x if python_floats else tf.constant(x, tdtype)

  kwargs = dict(spec["kwargs"])
  learning_rate: Any = constant(kwargs.pop("learning_rate"))
  schedule = spec.get("schedule")
  if schedule is not None:
    kind = schedule["kind"]
    if kind == "tf1.exponential_decay":
      learning_rate = tf.compat.v1.train.exponential_decay(
        learning_rate,
        global_step,
        schedule["decay_steps"],
        tf.constant(schedule["decay_rate"], tdtype),
        staircase=schedule["staircase"],
      )
    elif kind == "tf1.piecewise_constant":
      learning_rate = tf.compat.v1.train.piecewise_constant(
        global_step,
        [tf.constant(b, tf.int64) for b in schedule["boundaries"]],
        [tf.constant(x, tdtype) for x in schedule["values"]],
      )
    else:
      raise ValueError(f"unknown TF1 schedule {kind!r}")
  cls = tf.compat.v1.train.RMSPropOptimizer
  defaults = inspect.signature(cls).parameters
  hyper = {
    k: constant(kwargs.get(k, defaults[k].default))
    for k in ("decay", "momentum", "epsilon")
  }
  opt = cls(learning_rate, centered=kwargs.get("centered", False), **hyper)

  def read_lr() -> float:
    lr = learning_rate() if callable(learning_rate) else learning_rate
    # As the optimizer does: a tensor (float32 for a Python float), then cast.
    return float(tf.cast(tf.convert_to_tensor(lr), tdtype).numpy())

  return opt, read_lr


def run_tf1(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``tf.compat.v1.train.RMSPropOptimizer`` (eager) on the reference problem.

  Hyper-parameters (the defaults included) are passed as tensors of the
  variables' dtype: given Python floats, TF1 rounds them to float32 before
  casting, even for float64 variables. A spec with
  ``"hyperparameter_dtype": "float32"`` passes Python floats instead, as most
  TF1 code does, to record that rounding.

  ``kwargs["weight_decay"]`` (not an argument of the optimizer) adds TF1's L2
  term ``weight_decay * sum(tf.nn.l2_loss(v))`` over the variables
  ``weight_decay_mask`` marks (all without a mask) to the loss: its gradient,
  by TF's autodiff, is added to the problem's before the step. The recorded
  gradient is the problem's alone.
  """
  import tensorflow as tf

  variables = {k: tf.Variable(INITIAL_PARAMS[k].astype(dtype)) for k in LEAVES}
  global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  opt, read_lr = _tf1_optimizer(spec, dtype, global_step)
  weight_decay = spec["kwargs"].get("weight_decay", 0.0)
  mask = spec.get("weight_decay_mask") or dict.fromkeys(LEAVES, True)
  decayed = [k for k in LEAVES if mask[k]]

  def apply(g: dict[str, np.ndarray]) -> None:
    grads = {k: tf.constant(g[k]) for k in LEAVES}
    if weight_decay:
      with tf.GradientTape() as tape:
        l2 = tf.constant(weight_decay, tf.as_dtype(dtype)) * tf.add_n(
          [tf.nn.l2_loss(variables[k]) for k in decayed]
        )
      l2_grads = tape.gradient(l2, [variables[k] for k in decayed])
      for k, l2_grad in zip(decayed, l2_grads, strict=True):
        grads[k] = grads[k] + l2_grad
    opt.apply_gradients(
      [(grads[k], variables[k]) for k in LEAVES], global_step=global_step
    )

  return _record_tf(steps, dtype, variables, read_lr, apply)


RUNNERS: dict[str, Callable[[Spec, str, int], Trajectory]] = {
  "torch": run_torch,
  "keras": run_keras,
  "tf1": run_tf1,
  "timm": run_timm,
  "tf_keras_legacy": run_tf_keras_legacy,
  "tf_keras": run_tf_keras,
}


# ------------------------------------------------------------------ embedding

# The embedding problem: a table whose rows are looked up with ``tf.gather``,
# so that TF hands the optimizer ``tf.IndexedSlices`` and takes its sparse
# path, beside a dense layer.
#   L_k = 1/2 sum((tanh(table[indices_k]) @ dense - targets_k)^2)
EMBEDDING_LEAVES = ("table", "dense")
EMBEDDING_ROWS, EMBEDDING_WIDTH, EMBEDDING_OUTPUTS, EMBEDDING_LOOKUPS = 12, 4, 2, 3
EMBEDDING_MAX_STEPS = 30
EMBEDDING_PROBLEM = (
  "L_k = 1/2 sum((tanh(table[indices[k]]) @ dense - targets[k])**2), table "
  "(12, 4), dense (4, 2), 3 rows looked up per step with tf.gather (indices[k], "
  "the third a repeat of the first every fourth step from step 1); gradients by "
  "TF's autodiff in the case's dtype, the table's an IndexedSlices, recorded "
  "converted to dense (duplicates summed)"
)


def _embedding_data() -> dict[str, np.ndarray]:
  """The seeded problem: initial parameters, then indices and targets per step."""
  rng = np.random.default_rng(20)
  table = rng.normal(scale=0.5, size=(EMBEDDING_ROWS, EMBEDDING_WIDTH))
  dense = rng.normal(scale=0.5, size=(EMBEDDING_WIDTH, EMBEDDING_OUTPUTS))
  indices = np.stack(
    [
      rng.choice(EMBEDDING_ROWS, EMBEDDING_LOOKUPS, replace=False)
      for _ in range(EMBEDDING_MAX_STEPS)
    ]
  )
  indices[1::4, 2] = indices[1::4, 0]  # a row looked up twice in one step
  targets = rng.normal(size=(EMBEDDING_MAX_STEPS, EMBEDDING_LOOKUPS, EMBEDDING_OUTPUTS))
  return {"table": table, "dense": dense, "indices": indices, "targets": targets}


EMBEDDING_DATA = _embedding_data()


def _run_embedding(
  dtype: str,
  steps: int,
  read_lr: Callable[[], float],
  apply: Callable[[list[tuple[Any, Any]]], Any],
) -> Trajectory:
  """Runs an optimizer on the embedding problem, recording as :func:`_record`.

  ``apply(grads_and_vars)`` steps the optimizer, ``read_lr()`` reads its
  learning rate. The table's gradient goes to the optimizer as the
  ``tf.IndexedSlices`` TF's autodiff makes; the trajectory holds it converted
  to dense. A step whose looked-up rows do not all have a
  non-zero summed gradient, or whose other rows do not all have a zero one,
  is an error: the recording must tell looked-up rows from the others by the
  dense gradient alone.
  """
  import tensorflow as tf

  variables = {
    k: tf.Variable(EMBEDDING_DATA[k].astype(dtype), name=k) for k in EMBEDDING_LEAVES
  }

  def read_params() -> dict[str, np.ndarray]:
    return {k: variables[k].numpy().copy() for k in EMBEDDING_LEAVES}

  params, grads, lrs = [read_params()], [], []
  for k in range(steps):
    lrs.append(read_lr())
    indices = EMBEDDING_DATA["indices"][k]
    with tf.GradientTape() as tape:
      rows = tf.tanh(tf.gather(variables["table"], indices))
      error = tf.matmul(rows, variables["dense"]) - EMBEDDING_DATA["targets"][k].astype(
        dtype
      )
      loss = 0.5 * tf.reduce_sum(tf.square(error))
    table_grad, dense_grad = tape.gradient(
      loss, [variables[name] for name in EMBEDDING_LEAVES]
    )
    if not isinstance(table_grad, tf.IndexedSlices):
      raise TypeError(f"the table's gradient is a {type(table_grad).__name__}")
    g = {"table": tf.convert_to_tensor(table_grad).numpy(), "dense": dense_grad.numpy()}
    moving = np.flatnonzero(np.any(g["table"] != 0, axis=1))
    if set(moving) != set(indices):
      raise ValueError(f"step {k}: rows {moving} have a gradient, {indices} looked up")
    grads.append(g)
    apply([(table_grad, variables["table"]), (dense_grad, variables["dense"])])
    params.append(read_params())
  return {
    "params": {k: np.stack([p[k] for p in params]) for k in EMBEDDING_LEAVES},
    "grads": {k: np.stack([g[k] for g in grads]) for k in EMBEDDING_LEAVES},
    "lrs": np.asarray(lrs, np.float64),
  }


def run_tf1_embedding(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``tf.compat.v1.train.RMSPropOptimizer`` on the embedding problem.

  The table takes ``ResourceSparseApplyRMSProp`` (or its centred kernel) on the
  looked-up rows, duplicates summed; the dense layer the dense kernel.
  """
  import tensorflow as tf

  global_step = tf.Variable(0, dtype=tf.int64, trainable=False)
  opt, read_lr = _tf1_optimizer(spec, dtype, global_step)
  return _run_embedding(
    dtype,
    steps,
    read_lr,
    lambda pairs: opt.apply_gradients(pairs, global_step=global_step),
  )


def run_tf_keras_legacy_embedding(spec: Spec, dtype: str, steps: int) -> Trajectory:
  """``tf_keras.optimizers.legacy.RMSprop`` on the embedding problem.

  With momentum the table takes TF's sparse kernels, as TF1 does; without, the
  optimizer's Python sparse path, which decays the whole ``rms`` (and ``mg``)
  slot and updates the looked-up rows. The trajectory carries
  ``float32_hyperparameters`` as :func:`run_tf_keras_legacy`'s does.
  """
  with _tf_keras_floatx(dtype):
    opt, read_lr = _tf_keras_legacy_optimizer(spec, dtype)
    trajectory = _run_embedding(dtype, steps, read_lr, opt.apply_gradients)
  trajectory["float32_hyperparameters"] = _tf_keras_legacy_float32_hyperparameters(opt)
  return trajectory


EMBEDDING_RUNNERS: dict[str, Callable[[Spec, str, int], Trajectory]] = {
  "tf1": run_tf1_embedding,
  "tf_keras_legacy": run_tf_keras_legacy_embedding,
}


# ------------------------------------------------------------------ handover


def torch_state_dict_to_json(state_dict: dict[str, Any]) -> dict[str, Any]:
  """A ``torch.optim`` state dict as JSON values.

  Tensors become (nested) lists of numbers, and the parameter indices keying
  ``state`` become strings, as JSON object keys are; ``param_groups`` is kept
  as PyTorch writes it.
  """
  import torch

  return {
    "state": {
      str(index): {
        name: value.tolist() if torch.is_tensor(value) else value
        for name, value in entry.items()
      }
      for index, entry in state_dict["state"].items()
    },
    "param_groups": copy.deepcopy(state_dict["param_groups"]),
  }


def torch_state_dict_from_json(data: dict[str, Any], dtype: str) -> dict[str, Any]:
  """The inverse of :func:`torch_state_dict_to_json`, for ``dtype`` parameters.

  ``step`` becomes a 0-d tensor of PyTorch's scalar dtype (float32 unless the
  default dtype is float64), the other entries tensors of ``dtype``.
  """
  import torch

  step_dtype = (
    torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
  )
  return {
    "state": {
      int(index): {
        name: torch.tensor(
          value, dtype=step_dtype if name == "step" else getattr(torch, dtype)
        )
        for name, value in entry.items()
      }
      for index, entry in data["state"].items()
    },
    "param_groups": copy.deepcopy(data["param_groups"]),
  }


def handover_torch(
  spec: Spec, dtype: str, steps_before: int, steps_after: int, reload: bool = False
) -> dict[str, Any]:
  """``torch.optim.RMSprop`` for ``steps_before + steps_after`` steps.

  Returns the trajectory together with ``state_dict`` (JSON form),
  ``scheduler_state_dict`` (or None) taken after ``steps_before`` steps, and
  ``param_index``, the index PyTorch gives each leaf. With
  ``reload``, the optimizer and scheduler are then replaced by fresh ones that
  load those state dicts, read back from their JSON form, so the remaining
  steps come from the fresh optimizer.
  """
  import torch

  saved: dict[str, Any] = {}

  def on_step(k: int, live: dict[str, Any]) -> None:
    if k != steps_before:
      return
    opt, scheduler = live["optimizer"], live["scheduler"]
    saved["state_dict"] = torch_state_dict_to_json(opt.state_dict())
    # PyTorch numbers parameters across groups, in the groups' order.
    order = [p for group in opt.param_groups for p in group["params"]]
    saved["param_index"] = {
      k: next(i for i, p in enumerate(order) if p is live["params"][k]) for k in LEAVES
    }
    saved["scheduler_state_dict"] = (
      None if scheduler is None else copy.deepcopy(scheduler.state_dict())
    )
    if reload:
      fresh, fresh_scheduler = _torch_optimizer(
        torch.optim.RMSprop, spec, live["params"]
      )
      fresh.load_state_dict(torch_state_dict_from_json(saved["state_dict"], dtype))
      if fresh_scheduler is not None:
        fresh_scheduler.load_state_dict(copy.deepcopy(saved["scheduler_state_dict"]))
      live["optimizer"], live["scheduler"] = fresh, fresh_scheduler

  trajectory = _run_torch_optimizer(
    torch.optim.RMSprop, spec, dtype, steps_before + steps_after, on_step
  )
  return {**trajectory, **saved}


def handover_keras(
  spec: Spec, dtype: str, steps_before: int, steps_after: int
) -> dict[str, Any]:
  """``keras.optimizers.RMSprop`` for ``steps_before + steps_after`` steps.

  Returns the trajectory together with ``variables``: the optimizer's
  variables after ``steps_before`` steps, in ``optimizer.variables`` order,
  each as ``{"name", "path", "dtype", "value"}``. Keras' session is cleared
  first, so that the optimizer gets its default name (``rm_sprop``) in every
  case and the paths do not depend on the optimizers made before.
  """
  import keras

  keras.backend.clear_session()
  saved: dict[str, Any] = {}

  def on_step(k: int, opt: Any) -> None:
    if k == steps_before:
      saved["variables"] = [
        {
          "name": v.name,
          "path": v.path,
          "dtype": str(v.dtype),
          "value": np.asarray(v.value).tolist(),
        }
        for v in opt.variables
      ]

  return {**_run_keras(spec, dtype, steps_before + steps_after, on_step), **saved}


HANDOVERS: dict[str, Callable[..., dict[str, Any]]] = {
  "torch": handover_torch,
  "keras": handover_keras,
}


def library_versions(library: str) -> dict[str, str]:
  """The versions of the packages a library's driver uses."""
  from importlib.metadata import version

  packages = {
    "torch": ["torch"],
    "keras": ["keras", "jax"],
    "tf1": ["tensorflow-cpu", "tensorflow"],
    "timm": ["timm", "torch"],
    "tf_keras_legacy": ["tf_keras", "tensorflow-cpu", "tensorflow"],
    "tf_keras": ["tf_keras", "tensorflow-cpu", "tensorflow"],
  }[library]
  found = {}
  for package in packages:
    try:
      found[package] = version(package)
    except Exception:
      continue
  if library == "keras":
    import keras

    found["keras_backend"] = keras.backend.backend()
  found["numpy"] = np.__version__
  return found
