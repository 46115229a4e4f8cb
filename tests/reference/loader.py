"""Loads the recorded reference trajectories and replays them through the presets.

Usage (from the repository root)::

    from tests.reference import loader

    for case in loader.load_cases("torch", dtype="float64"):
      ours = loader.replay(case)             # {leaf: (steps + 1, *shape)}
      theirs = case.params                   # the same, recorded from torch
      print(case.id, abs(ours["w"] - theirs["w"]).max())

See FORMAT.md for the file layout. ``load_cases`` needs only NumPy;
``optax_schedule``, ``make_optimizer`` and ``replay`` import optax and
rmsprop_jax.
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
LIBRARIES = ("torch", "keras", "tf1", "timm")
PRESETS = {
  "torch": "torch_rmsprop",
  "keras": "keras_rmsprop",
  "tf1": "tf1_rmsprop",
  "timm": "timm_rmsprop_tf",
}
# The name each library (and its preset) gives the learning rate.
LR_ARGUMENT = {
  "torch": "lr",
  "keras": "learning_rate",
  "tf1": "learning_rate",
  "timm": "lr",
}


@dataclasses.dataclass(frozen=True)
class Case:
  """One recorded trajectory.

  Attributes:
    library: ``"torch"``, ``"keras"``, ``"tf1"`` or ``"timm"``.
    name: the configuration's name, e.g. ``"momentum_centered"``.
    dtype: ``"float64"`` or ``"float32"``: parameters, gradients and the
      library's arithmetic.
    kwargs: constructor arguments under the library's names (also the preset's).
    schedule: ``None`` or a dict naming the library's learning-rate schedule
      (``kind``) and its arguments; :func:`optax_schedule` gives the optax one.
    weight_decay_mask: ``None`` or ``{leaf: bool}``, True where weight decay
      applies (a PyTorch/timm parameter group with ``weight_decay=0``, Keras'
      ``exclude_from_weight_decay``).
    global_clipnorm: ``None`` or Keras' ``global_clipnorm``.
    hyperparameter_dtype: ``None``, or ``"float32"`` when the library rounded
      the float hyper-parameters in ``kwargs`` to float32 before using them
      (TF1 given Python floats); :func:`make_optimizer` rounds them likewise.
    lrs: ``(steps,)`` the learning rate the library used at each step.
    grads: ``{leaf: (steps, *shape)}`` the gradient given at each step.
    params: ``{leaf: (steps + 1, *shape)}`` parameters before the first step
      and after each step.
    versions: versions of the library and its dependencies.
  """

  library: str
  name: str
  dtype: str
  kwargs: dict[str, Any]
  schedule: dict[str, Any] | None
  weight_decay_mask: dict[str, bool] | None
  global_clipnorm: float | None
  hyperparameter_dtype: str | None
  lrs: np.ndarray
  grads: dict[str, np.ndarray]
  params: dict[str, np.ndarray]
  versions: dict[str, str]

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


def load_cases(library: str | None = None, dtype: str | None = None) -> list[Case]:
  """The recorded cases of one library (or all), optionally of one dtype."""
  cases = []
  for lib in LIBRARIES if library is None else (library,):
    data = load_file(lib)
    for raw in data["cases"]:
      if dtype is not None and raw["dtype"] != dtype:
        continue
      as_array = lambda x, dt=raw["dtype"]: np.asarray(x, dt)  # noqa: E731
      cases.append(
        Case(
          library=lib,
          name=raw["name"],
          dtype=raw["dtype"],
          kwargs=raw["kwargs"],
          schedule=raw["schedule"],
          weight_decay_mask=raw["weight_decay_mask"],
          global_clipnorm=raw["global_clipnorm"],
          hyperparameter_dtype=raw.get("hyperparameter_dtype"),
          lrs=np.asarray(raw["lrs"], np.float64),
          grads={k: as_array(v) for k, v in raw["grads"].items()},
          params={k: as_array(v) for k, v in raw["params"].items()},
          versions=data["versions"],
        )
      )
  return cases


def _preset(library: str) -> Callable[..., Any]:
  import rmsprop_jax

  return getattr(rmsprop_jax, PRESETS[library])


def base_learning_rate(case: Case) -> float:
  """The constant learning rate (or a schedule's start) given to the library."""
  name = LR_ARGUMENT[case.library]
  if name in case.kwargs:
    return case.kwargs[name]
  return inspect.signature(_preset(case.library)).parameters[name].default


def optax_schedule(case: Case) -> Callable[[Any], Any] | None:
  """The optax schedule equal to the library's schedule, or None.

  This is the executable form of the README's schedule table. PyTorch
  schedulers are stepped once after every optimizer step, so step ``k`` (0-based)
  uses ``schedule(k)``; Keras calls its schedule with ``iterations``, the number
  of steps taken so far; TF1 schedules read ``global_step``, which
  ``apply_gradients`` increments after the step.
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
    kind = np.dtype(case.hyperparameter_dtype).type
    kwargs = {
      k: float(kind(x)) if isinstance(x, float) else x for k, x in kwargs.items()
    }
  schedule = optax_schedule(case)
  if schedule is not None and case.dtype == "float64":
    # optax.exponential_decay computes in float32 when given the int32 step
    # count, even with x64 enabled; an int64 step keeps the float64 cases'
    # learning rate in float64, as the libraries compute it.
    schedule = lambda count, f=schedule: f(jnp.asarray(count, jnp.int64))  # noqa: E731
  if schedule is not None:
    kwargs[LR_ARGUMENT[case.library]] = schedule
  if case.weight_decay_mask is not None:
    kwargs["weight_decay_mask"] = case.weight_decay_mask
  opt = _preset(case.library)(**kwargs)
  if case.global_clipnorm is not None:
    opt = optax.chain(optax.clip_by_global_norm(case.global_clipnorm), opt)
  return opt


def replay(case: Case, optimizer: Any = None) -> dict[str, np.ndarray]:
  """Feeds the recorded gradients to ``optimizer`` (default: the preset).

  Runs in the case's dtype (float64 cases inside ``jax.enable_x64``, which
  does not leak out of this call) and returns ``{leaf: (steps + 1, *shape)}``
  like ``case.params``.
  """
  import jax
  import jax.numpy as jnp
  import optax

  with jax.enable_x64(case.dtype == "float64"):
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
