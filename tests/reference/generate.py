"""Records RMSProp trajectories from PyTorch, Keras 3, TF1 and timm.

Not run by the test suite: it needs the real libraries, which live in their own
environment (see FORMAT.md). From the repository root::

    python -m venv /path/to/venv-ref
    /path/to/venv-ref/bin/pip install torch tensorflow-cpu keras jax numpy
    /path/to/venv-ref/bin/pip install --no-deps timm
    /path/to/venv-ref/bin/python tests/reference/generate.py [torch keras tf1 timm]

It writes ``tests/reference/<library>.json``. The grid below sets every
argument of every preset at least once, alone and in combination, with and
without a learning-rate schedule, in float64 and float32.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.reference import drivers  # noqa: E402

STEPS = 30
DTYPES = ("float64", "float32")
MASK = {"w": True, "b": False}


def case(
  name: str,
  kwargs: dict[str, Any],
  schedule: dict[str, Any] | None = None,
  weight_decay_mask: dict[str, bool] | None = None,
  global_clipnorm: float | None = None,
  hyperparameter_dtype: str | None = None,
  dtypes: tuple[str, ...] = DTYPES,
) -> dict[str, Any]:
  return {
    "name": name,
    "kwargs": kwargs,
    "schedule": schedule,
    "weight_decay_mask": weight_decay_mask,
    "global_clipnorm": global_clipnorm,
    "hyperparameter_dtype": hyperparameter_dtype,
    "dtypes": dtypes,
  }


GRID: dict[str, list[dict[str, Any]]] = {
  "torch": [
    case("defaults", {}),
    case("alpha_eps", {"lr": 0.02, "alpha": 0.9, "eps": 1e-6}),
    case("eps_1", {"lr": 0.05, "eps": 1.0}),
    case("centered", {"centered": True}),
    case("momentum", {"lr": 0.005, "momentum": 0.9}),
    case("momentum_centered", {"lr": 0.005, "momentum": 0.8, "centered": True}),
    case("weight_decay", {"weight_decay": 0.1}),
    case("weight_decay_mask", {"weight_decay": 0.1}, weight_decay_mask=MASK),
    case("maximize", {"lr": 0.005, "maximize": True}),
    case(
      "everything",
      {
        "lr": 0.005,
        "alpha": 0.95,
        "eps": 1e-4,
        "weight_decay": 0.05,
        "momentum": 0.7,
        "centered": True,
        "maximize": True,
      },
    ),
    case(
      "step_lr_momentum",
      {"lr": 0.01, "momentum": 0.9},
      schedule={"kind": "torch.StepLR", "step_size": 7, "gamma": 0.5},
    ),
    case(
      "exponential_lr",
      {"lr": 0.02},
      schedule={"kind": "torch.ExponentialLR", "gamma": 0.95},
    ),
    case(
      "lambda_lr_centered_momentum",
      {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.05},
      schedule={"kind": "torch.LambdaLR", "inverse_time": 0.1},
    ),
  ],
  "keras": [
    case("defaults", {}),
    case("rho_epsilon", {"learning_rate": 0.01, "rho": 0.95, "epsilon": 1e-4}),
    case("epsilon_1", {"learning_rate": 0.05, "epsilon": 1.0}),
    case("centered", {"learning_rate": 0.01, "centered": True}),
    case("momentum", {"learning_rate": 0.005, "momentum": 0.9}),
    case(
      "momentum_centered",
      {"learning_rate": 0.005, "momentum": 0.8, "centered": True},
    ),
    case("weight_decay", {"learning_rate": 0.01, "weight_decay": 0.5}),
    case(
      "weight_decay_mask",
      {"learning_rate": 0.01, "weight_decay": 0.5},
      weight_decay_mask=MASK,
    ),
    case(
      "everything",
      {
        "learning_rate": 0.005,
        "rho": 0.8,
        "epsilon": 1e-3,
        "momentum": 0.7,
        "centered": True,
        "weight_decay": 0.2,
      },
    ),
    case("global_clipnorm", {"learning_rate": 0.01}, global_clipnorm=1.0),
    case(
      "exponential_decay_momentum",
      {"momentum": 0.9},
      schedule={
        "kind": "keras.ExponentialDecay",
        "initial_learning_rate": 0.01,
        "decay_steps": 5,
        "decay_rate": 0.8,
        "staircase": True,
      },
    ),
    case(
      "piecewise_constant_momentum",
      {"momentum": 0.9, "weight_decay": 0.1},
      schedule={
        "kind": "keras.PiecewiseConstantDecay",
        "boundaries": [9, 19],
        "values": [0.01, 0.005, 0.001],
      },
    ),
    case(
      "cosine_decay_centered",
      {"centered": True},
      schedule={
        "kind": "keras.CosineDecay",
        "initial_learning_rate": 0.01,
        "decay_steps": 25,
        "alpha": 0.1,
      },
      # keras.ops.cos returns float32 for a float64 input (Keras 3.15,
      # JAX backend), so Keras' CosineDecay is float32 even in a float64
      # program: there is no float64 trajectory to compare with.
      dtypes=("float32",),
    ),
  ],
  "tf1": [
    case("defaults", {"learning_rate": 0.01}),
    case("decay_epsilon", {"learning_rate": 0.02, "decay": 0.95, "epsilon": 1e-6}),
    case("epsilon_1", {"learning_rate": 0.05, "epsilon": 1.0}),
    case("centered", {"learning_rate": 0.01, "centered": True}),
    case("momentum", {"learning_rate": 0.005, "momentum": 0.9}),
    case(
      "everything",
      {
        "learning_rate": 0.005,
        "decay": 0.8,
        "momentum": 0.7,
        "epsilon": 1e-3,
        "centered": True,
      },
    ),
    case(
      "exponential_decay_momentum",
      {"learning_rate": 0.01, "momentum": 0.9},
      schedule={
        "kind": "tf1.exponential_decay",
        "decay_steps": 5,
        "decay_rate": 0.8,
        "staircase": True,
      },
    ),
    case(
      "piecewise_constant_centered",
      {"learning_rate": 0.01, "centered": True, "momentum": 0.5},
      schedule={
        "kind": "tf1.piecewise_constant",
        "boundaries": [9, 19],
        "values": [0.01, 0.005, 0.001],
      },
    ),
    # Python floats, as most TF1 code passes them: TF1 rounds them to float32,
    # even for float64 variables.
    case(
      "python_float_hyperparameters",
      {"learning_rate": 0.01, "decay": 0.9, "momentum": 0.9, "epsilon": 1e-6},
      hyperparameter_dtype="float32",
      dtypes=("float64",),
    ),
  ],
  "timm": [
    case("defaults", {}),
    case("alpha_eps", {"alpha": 0.99, "eps": 1e-8}),
    case("eps_1", {"lr": 0.05, "eps": 1.0}),
    case("centered", {"centered": True}),
    case("momentum", {"lr": 0.005, "momentum": 0.9}),
    case(
      "momentum_lr_outside",
      {"lr": 0.005, "momentum": 0.9, "lr_in_momentum": False},
    ),
    case("weight_decay", {"weight_decay": 0.1}),
    case("decoupled_decay", {"weight_decay": 0.5, "decoupled_decay": True}),
    case(
      "decoupled_decay_mask",
      {"weight_decay": 0.5, "decoupled_decay": True},
      weight_decay_mask=MASK,
    ),
    case(
      "everything",
      {
        "lr": 0.005,
        "alpha": 0.8,
        "eps": 1e-3,
        "weight_decay": 0.05,
        "momentum": 0.7,
        "centered": True,
        "decoupled_decay": True,
        "lr_in_momentum": False,
      },
    ),
    case(
      "step_lr_momentum",
      {"lr": 0.01, "momentum": 0.9},
      schedule={"kind": "torch.StepLR", "step_size": 7, "gamma": 0.5},
    ),
    case(
      "step_lr_momentum_lr_outside",
      {"lr": 0.01, "momentum": 0.9, "lr_in_momentum": False},
      schedule={"kind": "torch.StepLR", "step_size": 7, "gamma": 0.5},
    ),
  ],
}


def _nested(x: Any) -> Any:
  return {k: v.tolist() for k, v in x.items()} if isinstance(x, dict) else x.tolist()


def record(library: str) -> dict[str, Any]:
  run = drivers.RUNNERS[library]
  cases = []
  for grid_case in GRID[library]:
    spec = {k: v for k, v in grid_case.items() if k != "dtypes"}
    for dtype in grid_case["dtypes"]:
      trajectory = run(spec, dtype, STEPS)
      cases.append(
        {
          **spec,
          "dtype": dtype,
          "lrs": trajectory["lrs"].tolist(),
          "grads": _nested(trajectory["grads"]),
          "params": _nested(trajectory["params"]),
        }
      )
  return {
    "library": library,
    "versions": drivers.library_versions(library),
    "problem": drivers.PROBLEM,
    "steps": STEPS,
    "cases": cases,
  }


def main(libraries: list[str]) -> None:
  if "keras" in libraries:
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 Keras variables
  for library in libraries:
    data = record(library)
    path = HERE / f"{library}.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"{path}: {len(data['cases'])} cases, {data['versions']}")


if __name__ == "__main__":
  main(sys.argv[1:] or list(drivers.RUNNERS))
