"""Loads the recorded reference trajectories and replays them through the presets.

Usage (from the repository root)::

    from tests.reference import loader

    for case in loader.load_cases("torch", dtype="float64"):
      ours = loader.replay(case)             # {leaf: (steps + 1, *shape)}
      theirs = case.params                   # the same, recorded from torch
      print(case.id, abs(ours["w"] - theirs["w"]).max())

    for handover in loader.load_handovers("torch"):
      handover.state                         # torch's state_dict mid-run
      handover.as_case()                     # the whole run, for replay

    loader.load_embedding_cases("tf1")       # an embedding table, lazy rows

See FORMAT.md for the file layout. ``load_cases``, ``load_embedding_cases`` and
``load_handovers`` need only NumPy; ``optax_schedule``, ``make_optimizer`` and ``replay`` import optax
and rmsprop_jax.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
LIBRARIES = ("torch", "keras", "tf1", "timm", "tf_keras_legacy", "tf_keras")
PRESETS = {
  "torch": "torch_rmsprop",
  "keras": "keras_rmsprop",
  "tf1": "tf1_rmsprop",
  "timm": "timm_rmsprop_tf",
  "tf_keras_legacy": "tf_keras_legacy_rmsprop",
  # Keras 2.11+'s optimizer is Keras 3's, up to rounding (see FORMAT.md).
  "tf_keras": "keras_rmsprop",
}
# The name each library (and its preset) gives the learning rate.
LR_ARGUMENT = {
  "torch": "lr",
  "keras": "learning_rate",
  "tf1": "learning_rate",
  "timm": "lr",
  "tf_keras_legacy": "learning_rate",
  "tf_keras": "learning_rate",
}
# The libraries whose mid-run state is recorded (handover_<library>.json).
HANDOVER_LIBRARIES = ("torch", "keras")
# Each handover file, handover_<name>.json, and the library it records.
HANDOVER_FILES = {"torch": "torch", "keras": "keras", "torch_groups": "torch"}
# The libraries recorded on the embedding problem (embedding_<library>.json).
EMBEDDING_LIBRARIES = ("tf1", "tf_keras_legacy")


@dataclasses.dataclass(frozen=True)
class Recording:
  """What every recording holds: the library, its configuration and dtype.

  Attributes:
    library: one of :data:`LIBRARIES`.
    name: the configuration's name, e.g. ``"momentum_centered"``.
    dtype: ``"float64"`` or ``"float32"``: parameters, gradients and the
      library's arithmetic.
    kwargs: constructor arguments under the library's names (also the preset's).
    schedule: ``None`` or a dict naming the library's learning-rate schedule
      (``kind``) and its arguments; :func:`optax_schedule` gives the optax one.
    weight_decay_mask: ``None`` or ``{leaf: bool}``, True where weight decay
      applies (a PyTorch/timm parameter group with ``weight_decay=0``, Keras'
      ``exclude_from_weight_decay``).
  """

  library: str
  name: str
  dtype: str
  kwargs: dict[str, Any]
  schedule: dict[str, Any] | None
  weight_decay_mask: dict[str, bool] | None


@dataclasses.dataclass(frozen=True)
class Case(Recording):
  """One recorded trajectory: a :class:`Recording` and the following.

  Attributes:
    global_clipnorm: ``None`` or Keras' ``global_clipnorm``.
    hyperparameter_dtype: ``None``, or ``"float32"`` when the library rounded
      the float hyper-parameters in ``kwargs`` to float32 before using them
      (TF1 given Python floats); :func:`make_optimizer` rounds them likewise.
    float32_hyperparameters: ``None``, or ``{name: value}``: the values the
      library rounded to float32 and used instead of ``kwargs`` (and defaults)
      of the same name (``tf_keras_legacy``: ``learning_rate``, ``rho``,
      ``momentum``, held in float32 variables; ``tf_keras``: ``weight_decay``,
      cast through float32); :func:`make_optimizer` passes them on.
    lrs: ``(steps,)`` the learning rate the library used at each step.
    grads: ``{leaf: (steps, *shape)}`` the gradient given at each step.
    params: ``{leaf: (steps + 1, *shape)}`` parameters before the first step
      and after each step.
    versions: versions of the library and its dependencies.
    lazy_rows: ``None``, or ``{leaf: bool}``, True for a leaf whose gradient
      reached the library as ``tf.IndexedSlices`` (the embedding files):
      the preset's ``lazy_rows``.
  """

  global_clipnorm: float | None
  hyperparameter_dtype: str | None
  float32_hyperparameters: dict[str, float] | None
  lrs: np.ndarray
  grads: dict[str, np.ndarray]
  params: dict[str, np.ndarray]
  versions: dict[str, str]
  lazy_rows: dict[str, bool] | None = None

  @property
  def id(self) -> str:
    return f"{self.library}-{self.name}-{self.dtype}"

  @property
  def steps(self) -> int:
    return len(self.lrs)


def load_file(library: str) -> dict[str, Any]:
  """The raw JSON content of ``<library>.json``."""
  if library not in LIBRARIES:
    raise ValueError(f"library must be one of {LIBRARIES}; got {library!r}.")
  return json.loads((HERE / f"{library}.json").read_text())


def load_embedding_file(library: str) -> dict[str, Any]:
  """The raw JSON content of ``embedding_<library>.json``."""
  if library not in EMBEDDING_LIBRARIES:
    raise ValueError(f"library must be one of {EMBEDDING_LIBRARIES}; got {library!r}.")
  return json.loads((HERE / f"embedding_{library}.json").read_text())


def _cases(data: dict[str, Any], dtype: str | None) -> list[Case]:
  cases = []
  for raw in data["cases"]:
    if dtype is not None and raw["dtype"] != dtype:
      continue
    as_array = lambda x, dt=raw["dtype"]: np.asarray(x, dt)
    cases.append(
      Case(
        library=data["library"],
        name=raw["name"],
        dtype=raw["dtype"],
        kwargs=raw["kwargs"],
        schedule=raw["schedule"],
        weight_decay_mask=raw["weight_decay_mask"],
        global_clipnorm=raw["global_clipnorm"],
        hyperparameter_dtype=raw.get("hyperparameter_dtype"),
        float32_hyperparameters=raw.get("float32_hyperparameters"),
        lrs=np.asarray(raw["lrs"], np.float64),
        grads={k: as_array(v) for k, v in raw["grads"].items()},
        params={k: as_array(v) for k, v in raw["params"].items()},
        versions=data["versions"],
        lazy_rows=raw.get("lazy_rows"),
      )
    )
  return cases


def load_cases(library: str | None = None, dtype: str | None = None) -> list[Case]:
  """The recorded cases of one library (or all), optionally of one dtype."""
  libraries = LIBRARIES if library is None else (library,)
  return [case for lib in libraries for case in _cases(load_file(lib), dtype)]


def load_embedding_cases(
  library: str | None = None, dtype: str | None = None
) -> list[Case]:
  """The embedding-problem cases of one library (or both), optionally of one dtype."""
  libraries = EMBEDDING_LIBRARIES if library is None else (library,)
  return [case for lib in libraries for case in _cases(load_embedding_file(lib), dtype)]


def _preset(library: str) -> Callable[..., Any]:
  import rmsprop_jax

  return getattr(rmsprop_jax, PRESETS[library])


def base_learning_rate(case: Case) -> float:
  """The constant learning rate (or a schedule's start) given to the library.

  Where the library held it in a float32 variable, the float32 value.
  """
  name = LR_ARGUMENT[case.library]
  if name in (case.float32_hyperparameters or {}):
    return case.float32_hyperparameters[name]
  if name in case.kwargs:
    return case.kwargs[name]
  return inspect.signature(_preset(case.library)).parameters[name].default


def optax_schedule(case: Case) -> Callable[[Any], Any] | None:
  """The optax schedule equal to the library's schedule, or None.

  This is the executable form of the README's schedule table. PyTorch
  schedulers are stepped once after every optimizer step, so step ``k`` (0-based)
  uses ``schedule(k)``; Keras calls its schedule with ``iterations``, the number
  of steps taken so far; TF1 schedules read ``global_step``, which
  ``apply_gradients`` increments after the step. The legacy tf_keras
  optimizer's ``decay`` argument divides the learning rate by
  ``1 + decay * iterations``, with ``decay`` rounded to float32.
  """
  import optax

  s = case.schedule
  if s is None:
    return None
  kind = s["kind"]
  lr = base_learning_rate(case)
  if kind == "torch.StepLR":
    return optax.exponential_decay(lr, s["step_size"], s["gamma"], staircase=True)
  if kind == "torch.ExponentialLR":
    return optax.exponential_decay(lr, 1, s["gamma"])
  if kind == "torch.LambdaLR":  # any LambdaLR: lr * lambda(k)
    return lambda k: lr / (1 + s["inverse_time"] * k)
  if kind in ("keras.ExponentialDecay", "tf1.exponential_decay"):
    lr = s.get("initial_learning_rate", lr)
    return optax.exponential_decay(
      lr, s["decay_steps"], s["decay_rate"], staircase=s["staircase"]
    )
  if kind in ("keras.PiecewiseConstantDecay", "tf1.piecewise_constant"):
    # Keras and TF switch to values[i + 1] once step > boundaries[i]; optax's
    # join_schedules switches once step >= boundary, hence the + 1.
    return optax.join_schedules(
      [optax.constant_schedule(v) for v in s["values"]],
      [b + 1 for b in s["boundaries"]],
    )
  if kind == "tf_keras.legacy_decay":
    # tf.cast(decay, dtype) makes a float32 tensor of the Python float first.
    decay = float(np.float32(s["decay"]))
    return lambda k: lr / (1 + decay * k)
  if kind == "keras.CosineDecay":
    return optax.cosine_decay_schedule(
      s["initial_learning_rate"], s["decay_steps"], alpha=s["alpha"]
    )
  raise ValueError(f"unknown schedule kind {kind!r}")


def make_optimizer(case: Case) -> Any:
  """The preset configured as the library was, as an optax transformation."""
  import jax.numpy as jnp
  import optax

  kwargs = dict(case.kwargs)
  if case.hyperparameter_dtype is not None:
    # TF1's weight_decay is its loss's L2 coefficient, which TF1 multiplies in
    # the variables' dtype: only the optimizer's arguments are rounded.
    kind = np.dtype(case.hyperparameter_dtype).type
    kwargs = {
      k: float(kind(x)) if isinstance(x, float) and k != "weight_decay" else x
      for k, x in kwargs.items()
    }
  kwargs.update(case.float32_hyperparameters or {})
  if case.library == "timm" and kwargs.get("corrected_weight_decay"):
    # timm divides by the lr the optimizer was built with, whatever a
    # scheduler later sets.
    kwargs["max_lr"] = base_learning_rate(case)
  schedule = optax_schedule(case)
  if schedule is not None and case.dtype == "float64":
    # optax.exponential_decay computes in float32 when given the int32 step
    # count, even with x64 enabled; an int64 step keeps the float64 cases'
    # learning rate in float64, as the libraries compute it.
    schedule = lambda count, f=schedule: f(jnp.asarray(count, jnp.int64))
  if schedule is not None:
    kwargs[LR_ARGUMENT[case.library]] = schedule
  if case.weight_decay_mask is not None:
    kwargs["weight_decay_mask"] = case.weight_decay_mask
  if case.lazy_rows is not None:
    kwargs["lazy_rows"] = case.lazy_rows
  opt = _preset(case.library)(**kwargs)
  if case.global_clipnorm is not None:
    opt = optax.chain(optax.clip_by_global_norm(case.global_clipnorm), opt)
  return opt


def replay(case: Case, optimizer: Any = None) -> dict[str, np.ndarray]:
  """Feeds the recorded gradients to ``optimizer`` (default: the preset).

  Runs in the case's dtype (float64 cases with 64-bit types enabled, which
  does not leak out of this call) and returns ``{leaf: (steps + 1, *shape)}``
  like ``case.params``.
  """
  import jax
  import jax.numpy as jnp
  import optax

  from tests._compat import enable_x64

  with enable_x64(case.dtype == "float64"):
    opt = make_optimizer(case) if optimizer is None else optimizer
    params = {k: jnp.asarray(v[0]) for k, v in case.params.items()}
    state = opt.init(params)
    out = [jax.tree.map(np.asarray, params)]
    for k in range(case.steps):
      grads = {name: jnp.asarray(g[k]) for name, g in case.grads.items()}
      updates, state = opt.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      out.append(jax.tree.map(np.asarray, params))
  return {name: np.stack([p[name] for p in out]) for name in case.params}


# What a replay must meet: float64 within 1e-9 of the recording, float32 within
# 1e-5, each relative to the leaf's scale.
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}


def deviation(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> float:
  """The largest error of ``ours`` relative to each leaf's scale in ``theirs``."""
  return max(
    float(np.max(np.abs(ours[k] - v)) / np.max(np.abs(v))) for k, v in theirs.items()
  )


def assert_trajectory_close(
  ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], dtype: str
) -> None:
  """Asserts ``ours`` within :data:`TOLERANCE` of ``theirs``, elementwise.

  The tolerance times the leaf's scale is a floor, so that a coordinate that
  crosses zero is held to the size of its steps, not to its value.
  """
  tol = TOLERANCE[dtype]
  for leaf, expected in theirs.items():
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(
      ours[leaf], expected, rtol=tol, atol=tol * scale, err_msg=f"leaf {leaf}"
    )


@dataclasses.dataclass(frozen=True)
class Handover(Recording):
  """An optimizer's state in the middle of a run, with the whole run around it.

  A :class:`Recording` (``library`` is ``"torch"`` or ``"keras"``, ``name``
  e.g. ``"two_groups"``) and the following.

  Attributes:
    steps_before: steps taken when the state was read.
    steps_after: steps taken after that.
    state: PyTorch: ``optimizer.state_dict()`` with ``state`` keyed by the
      integer parameter index, tensors as arrays of ``dtype`` and ``step`` as a
      0-d float32 array, ``param_groups`` as PyTorch writes them. Keras:
      ``{variable name: array}`` in ``optimizer.variables`` order.
    param_index: PyTorch only (else ``None``): ``{leaf: parameter index}``.
    scheduler_state: PyTorch only: the scheduler's ``state_dict()``, or None.
    variable_paths: Keras only (else ``None``): each variable's ``path``, in
      the order of ``state``.
    reloaded: PyTorch only: the steps after ``steps_before`` were taken by a
      fresh optimizer (and scheduler) that loaded ``state`` (and
      ``scheduler_state``).
    lrs: ``(steps_before + steps_after,)`` the learning rate of each step.
    grads: ``{leaf: (steps_before + steps_after, *shape)}``.
    params: ``{leaf: (steps_before + steps_after + 1, *shape)}``; row
      ``steps_before`` holds the parameters that go with ``state``.
    versions: versions of the library and its dependencies.
    groups: PyTorch parameter groups (``handover_torch_groups.json``), else
      ``None``: ``[{"params": [leaf, ...], option: value, ...}, ...]`` as
      given to the constructor, with ``kwargs`` the constructor's defaults.
  """

  steps_before: int
  steps_after: int
  state: dict[str, Any]
  param_index: dict[str, int] | None
  scheduler_state: dict[str, Any] | None
  variable_paths: list[str] | None
  reloaded: bool
  lrs: np.ndarray
  grads: dict[str, np.ndarray]
  params: dict[str, np.ndarray]
  versions: dict[str, str]
  groups: list[dict[str, Any]] | None = None

  @property
  def id(self) -> str:
    return f"handover_{self.library}-{self.name}-{self.dtype}"

  @property
  def params_at_handover(self) -> dict[str, np.ndarray]:
    """The parameters after ``steps_before`` steps."""
    return {k: v[self.steps_before] for k, v in self.params.items()}

  def as_case(self) -> Case:
    """The whole uninterrupted run as a :class:`Case`, for :func:`replay`."""
    return Case(
      library=self.library,
      name=f"handover_{self.name}",
      dtype=self.dtype,
      kwargs=self.kwargs,
      schedule=self.schedule,
      weight_decay_mask=self.weight_decay_mask,
      global_clipnorm=None,
      hyperparameter_dtype=None,
      float32_hyperparameters=None,
      lrs=self.lrs,
      grads=self.grads,
      params=self.params,
      versions=self.versions,
    )


def _torch_state(raw: dict[str, Any], dtype: str) -> dict[str, Any]:
  return {
    "state": {
      int(index): {
        name: np.asarray(value, np.float32 if name == "step" else dtype)
        for name, value in entry.items()
      }
      for index, entry in raw["state"].items()
    },
    "param_groups": raw["param_groups"],
  }


def load_handovers(name: str, dtype: str | None = None) -> list[Handover]:
  """The mid-run states in ``handover_<name>.json``, optionally of one dtype.

  ``name`` is a library of :data:`HANDOVER_LIBRARIES` or ``"torch_groups"``
  (PyTorch with parameter groups).
  """
  if name not in HANDOVER_FILES:
    raise ValueError(f"name must be one of {tuple(HANDOVER_FILES)}; got {name!r}.")
  library = HANDOVER_FILES[name]
  data = json.loads((HERE / f"handover_{name}.json").read_text())
  handovers = []
  for raw in data["cases"]:
    if dtype is not None and raw["dtype"] != dtype:
      continue
    dt = raw["dtype"]
    if library == "torch":
      state = _torch_state(raw["state_dict"], dt)
      paths = None
    else:
      state = {v["name"]: np.asarray(v["value"], v["dtype"]) for v in raw["variables"]}
      paths = [v["path"] for v in raw["variables"]]
    handovers.append(
      Handover(
        library=library,
        name=raw["name"],
        dtype=dt,
        kwargs=raw["kwargs"],
        schedule=raw["schedule"],
        weight_decay_mask=raw["weight_decay_mask"],
        steps_before=raw["steps_before"],
        steps_after=raw["steps_after"],
        state=state,
        param_index=raw.get("param_index"),
        scheduler_state=raw.get("scheduler_state_dict"),
        variable_paths=paths,
        reloaded=raw.get("reloaded", False),
        lrs=np.asarray(raw["lrs"], np.float64),
        grads={k: np.asarray(v, dt) for k, v in raw["grads"].items()},
        params={k: np.asarray(v, dt) for k, v in raw["params"].items()},
        versions=data["versions"],
        groups=raw.get("groups"),
      )
    )
  return handovers
