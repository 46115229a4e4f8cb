"""Records RMSProp trajectories from PyTorch, Keras, TensorFlow and timm.

Not run by the test suite: it needs the real libraries, which live in their own
environment (see FORMAT.md). From the repository root::

    python -m venv /path/to/venv-ref
    /path/to/venv-ref/bin/pip install torch tensorflow-cpu tf-keras keras jax numpy
    /path/to/venv-ref/bin/pip install --no-deps timm
    /path/to/venv-ref/bin/python tests/reference/generate.py [TARGET ...]

A target is a library (``torch keras tf1 timm tf_keras_legacy tf_keras``),
which writes ``tests/reference/<library>.json``; ``handover_torch``,
``handover_torch_groups`` or ``handover_keras``, which write the mid-run state
files of the same names; or ``embedding_tf1`` / ``embedding_tf_keras_legacy``,
which write the embedding-table (lazy rows) files of the same names; no target
records them all. The library grid sets every argument of every preset at
least once, alone and in combination, with and without a learning-rate
schedule, in float64 and float32.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.reference import drivers, loader  # noqa: E402

STEPS = 30
DTYPES = ("float64", "float32")
MASK = {"w": True, "b": False}
# PyTorch's StepLR, stepped after every optimizer step (torch and timm cases).
STEP_LR = {"kind": "torch.StepLR", "step_size": 7, "gamma": 0.5}
# Every Keras-style option at once (Keras 3 and tf_keras add weight decay).
KERAS_EVERYTHING = {
  "learning_rate": 0.005,
  "rho": 0.8,
  "epsilon": 1e-3,
  "momentum": 0.7,
  "centered": True,
}
# Learning rates 0.01, 0.005, 0.001, switching after steps 9 and 19.
PIECEWISE = {"boundaries": [9, 19], "values": [0.01, 0.005, 0.001]}


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


# The arguments Keras 3, tf_keras and tf_keras' legacy RMSprop share.
KERAS_STYLE_CASES: list[dict[str, Any]] = [
  case("defaults", {}),
  case("rho_epsilon", {"learning_rate": 0.01, "rho": 0.95, "epsilon": 1e-4}),
  case("epsilon_1", {"learning_rate": 0.05, "epsilon": 1.0}),
  case("centered", {"learning_rate": 0.01, "centered": True}),
  case("momentum", {"learning_rate": 0.005, "momentum": 0.9}),
]

EXPONENTIAL_DECAY_MOMENTUM = case(
  "exponential_decay_momentum",
  {"momentum": 0.9},
  schedule={
    "kind": "keras.ExponentialDecay",
    "initial_learning_rate": 0.01,
    "decay_steps": 5,
    "decay_rate": 0.8,
    "staircase": True,
  },
)

# Keras 3 and Keras 2.11+ (tf_keras) take the same arguments, schedules,
# global_clipnorm and exclusions: one list serves both, and each library adds
# the cases only it records.
KERAS_CASES: list[dict[str, Any]] = [
  *KERAS_STYLE_CASES,
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
  case("everything", {**KERAS_EVERYTHING, "weight_decay": 0.2}),
  case("global_clipnorm", {"learning_rate": 0.01}, global_clipnorm=1.0),
  EXPONENTIAL_DECAY_MOMENTUM,
]

STEP_LR_MOMENTUM = case(
  "step_lr_momentum", {"lr": 0.01, "momentum": 0.9}, schedule=STEP_LR
)

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
    STEP_LR_MOMENTUM,
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
    *KERAS_CASES,
    case(
      "piecewise_constant_momentum",
      {"momentum": 0.9, "weight_decay": 0.1},
      schedule={
        "kind": "keras.PiecewiseConstantDecay",
        **PIECEWISE,
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
        **PIECEWISE,
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
    # TF1's optimizer has no weight decay: TF1 code adds an L2 term
    # weight_decay * sum(tf.nn.l2_loss(v)) to the loss, which the driver does
    # with kwargs' weight_decay (the preset's coupled weight decay).
    case("weight_decay", {"learning_rate": 0.01, "weight_decay": 0.1}),
    case(
      "weight_decay_mask_momentum",
      {"learning_rate": 0.005, "momentum": 0.9, "weight_decay": 0.1},
      weight_decay_mask=MASK,
    ),
    case(
      "weight_decay_centered",
      {"learning_rate": 0.01, "centered": True, "weight_decay": 0.05},
    ),
    case(
      "weight_decay_mask_exponential_decay_momentum_centered",
      {"learning_rate": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.05},
      schedule={
        "kind": "tf1.exponential_decay",
        "decay_steps": 5,
        "decay_rate": 0.8,
        "staircase": True,
      },
      weight_decay_mask={"w": False, "b": True},
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
    STEP_LR_MOMENTUM,
    case(
      "step_lr_momentum_lr_outside",
      {"lr": 0.01, "momentum": 0.9, "lr_in_momentum": False},
      schedule=STEP_LR,
    ),
    case("caution_momentum", {"lr": 0.005, "momentum": 0.9, "caution": True}),
    case(
      "caution_momentum_lr_outside",
      {"lr": 0.005, "momentum": 0.9, "lr_in_momentum": False, "caution": True},
      dtypes=("float64",),  # float32: in caution_corrected_exponential_lr
    ),
    # Strong enough coupled decay that the gradient's sign with and without it
    # differ where caution looks: caution compares with the decayed gradient.
    case(
      "caution_momentum_centered_weight_decay",
      {
        "lr": 0.01,
        "momentum": 0.8,
        "centered": True,
        "weight_decay": 0.5,
        "caution": True,
      },
    ),
    # With a constant learning rate the corrected decay lr**2 / max_lr is lr
    # up to rounding: this case differs from decoupled_decay only there.
    case(
      "corrected_decoupled_decay",
      {"weight_decay": 0.5, "decoupled_decay": True, "corrected_weight_decay": True},
      dtypes=("float64",),
    ),
    case(
      "corrected_decoupled_decay_step_lr_momentum",
      {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 0.5,
        "decoupled_decay": True,
        "corrected_weight_decay": True,
      },
      schedule=STEP_LR,
      dtypes=("float64",),  # float32: in caution_corrected_exponential_lr
    ),
    case(
      "caution_corrected_exponential_lr",
      {
        "lr": 0.02,
        "momentum": 0.9,
        "lr_in_momentum": False,
        "weight_decay": 0.5,
        "decoupled_decay": True,
        "corrected_weight_decay": True,
        "caution": True,
      },
      schedule={"kind": "torch.ExponentialLR", "gamma": 0.9},
    ),
  ],
  "tf_keras_legacy": [
    *KERAS_STYLE_CASES,
    # With momentum the fused kernel puts epsilon inside the root.
    case(
      "momentum_epsilon_1",
      {"learning_rate": 0.005, "momentum": 0.9, "epsilon": 1.0},
    ),
    case(
      "momentum_centered",
      {"learning_rate": 0.005, "momentum": 0.8, "centered": True},
    ),
    case("everything", KERAS_EVERYTHING),
    EXPONENTIAL_DECAY_MOMENTUM,
    case(
      "piecewise_constant_centered",
      {"centered": True},
      schedule={
        "kind": "keras.PiecewiseConstantDecay",
        **PIECEWISE,
      },
    ),
    case(
      "legacy_decay",
      {"learning_rate": 0.02},
      schedule={"kind": "tf_keras.legacy_decay", "decay": 0.1},
    ),
  ],
  "tf_keras": [
    *KERAS_CASES,
    case(
      "piecewise_constant_weight_decay",
      {"weight_decay": 0.1},
      schedule={
        "kind": "keras.PiecewiseConstantDecay",
        **PIECEWISE,
      },
    ),
  ],
}

# Mid-run state: the optimizer's state after STEPS_BEFORE steps, and the whole
# uninterrupted trajectory of STEPS_BEFORE + STEPS_AFTER steps.
STEPS_BEFORE = 12
STEPS_AFTER = 18
HANDOVER_GRID: dict[str, list[dict[str, Any]]] = {
  "torch": [
    case("defaults", {}),
    case("momentum", {"lr": 0.005, "momentum": 0.9}),
    case(
      "centered_momentum_weight_decay",
      {"lr": 0.005, "momentum": 0.8, "centered": True, "weight_decay": 0.05},
    ),
    STEP_LR_MOMENTUM,
    # The same run, continued by a fresh optimizer and scheduler that load the
    # recorded state dicts: PyTorch's own handover.
    {
      **case(
        "step_lr_momentum_reloaded", {"lr": 0.01, "momentum": 0.9}, schedule=STEP_LR
      ),
      "reload": True,
    },
    case(
      "two_groups",
      {"lr": 0.005, "momentum": 0.5, "weight_decay": 0.1},
      weight_decay_mask=MASK,
    ),
  ],
  "keras": [
    case("defaults", {}),
    case("momentum", {"learning_rate": 0.005, "momentum": 0.9}),
    case(
      "centered_momentum_weight_decay",
      {"learning_rate": 0.005, "momentum": 0.8, "centered": True, "weight_decay": 0.1},
    ),
  ],
  # Parameter groups that differ in more than weight decay: from_torch makes
  # them an optax partition. kwargs are the constructor's defaults for every
  # group; a group's own options override them.
  "torch_groups": [
    {
      **case("lr_momentum_centered", {}),
      "groups": [
        {"params": ["w"], "lr": 0.01, "momentum": 0.9},
        {"params": ["b"], "lr": 0.003, "centered": True, "weight_decay": 0.1},
      ],
    },
    # b in the first group, so PyTorch's parameter 0 is b; StepLR scales each
    # group's own lr.
    {
      **case("step_lr_b_first", {"alpha": 0.9}, schedule=STEP_LR),
      "groups": [
        {"params": ["b"], "lr": 0.02, "momentum": 0.8},
        {"params": ["w"], "lr": 0.005, "momentum": 0.5, "centered": True},
      ],
    },
  ],
}

# Lazy rows: TF1 and the legacy tf_keras optimizer on an embedding table whose
# gradient is a tf.IndexedSlices, beside a dense layer. Each optimizer's
# default epsilon and 0.1, with and without momentum and centring.
EMBEDDING_STEPS = 12
EMBEDDING_LEARNING_RATE = {"tf1": 0.05, "tf_keras_legacy": 0.01}


def embedding_cases(library: str) -> list[dict[str, Any]]:
  cases = []
  for momentum, centered, epsilon in itertools.product(
    (0.0, 0.875), (False, True), (None, 0.1)
  ):
    name, kwargs = "embedding", {"learning_rate": EMBEDDING_LEARNING_RATE[library]}
    if momentum:
      name, kwargs["momentum"] = f"{name}_momentum", momentum
    if centered:
      name, kwargs["centered"] = f"{name}_centered", True
    if epsilon:
      name, kwargs["epsilon"] = f"{name}_epsilon_{epsilon}", epsilon
    cases.append({**case(name, kwargs), "lazy_rows": {"table": True, "dense": False}})
  return cases


def _nested(x: Any) -> Any:
  return {k: v.tolist() for k, v in x.items()} if isinstance(x, dict) else x.tolist()


def _record_cases(
  grid: list[dict[str, Any]], run: Callable[..., Any], steps: int
) -> list[dict[str, Any]]:
  cases = []
  for grid_case in grid:
    spec = {k: v for k, v in grid_case.items() if k != "dtypes"}
    for dtype in grid_case["dtypes"]:
      trajectory = run(spec, dtype, steps)
      recorded = {
        **spec,
        "dtype": dtype,
        "lrs": trajectory["lrs"].tolist(),
        "grads": _nested(trajectory["grads"]),
        "params": _nested(trajectory["params"]),
      }
      if "float32_hyperparameters" in trajectory:
        recorded["float32_hyperparameters"] = trajectory["float32_hyperparameters"]
      cases.append(recorded)
  return cases


def record(library: str) -> dict[str, Any]:
  return {
    "library": library,
    "versions": drivers.library_versions(library),
    "problem": drivers.PROBLEM,
    "steps": STEPS,
    "cases": _record_cases(GRID[library], drivers.RUNNERS[library], STEPS),
  }


def record_embedding(library: str) -> dict[str, Any]:
  run = drivers.EMBEDDING_RUNNERS[library]
  return {
    "library": library,
    "versions": drivers.library_versions(library),
    "problem": drivers.EMBEDDING_PROBLEM,
    "steps": EMBEDDING_STEPS,
    "indices": drivers.EMBEDDING_DATA["indices"][:EMBEDDING_STEPS].tolist(),
    "targets": drivers.EMBEDDING_DATA["targets"][:EMBEDDING_STEPS].tolist(),
    "cases": _record_cases(embedding_cases(library), run, EMBEDDING_STEPS),
  }


def record_handover(name: str) -> dict[str, Any]:
  """``handover_<name>.json``'s content (``name`` a key of ``HANDOVER_GRID``)."""
  library = loader.HANDOVER_FILES[name]
  handover = drivers.HANDOVERS[library]
  cases = []
  for grid_case in HANDOVER_GRID[name]:
    spec = {k: v for k, v in grid_case.items() if k not in ("dtypes", "reload", "name")}
    extra = {"reload": True} if grid_case.get("reload") else {}
    for dtype in grid_case["dtypes"]:
      out = handover(spec, dtype, STEPS_BEFORE, STEPS_AFTER, **extra)
      state = {
        k: out[k]
        for k in ("param_index", "state_dict", "scheduler_state_dict", "variables")
        if k in out
      }
      cases.append(
        {
          "name": grid_case["name"],
          "dtype": dtype,
          "kwargs": spec["kwargs"],
          "schedule": spec["schedule"],
          "weight_decay_mask": spec["weight_decay_mask"],
          **({"groups": spec["groups"]} if "groups" in spec else {}),
          **({"reloaded": bool(extra)} if library == "torch" else {}),
          "steps_before": STEPS_BEFORE,
          "steps_after": STEPS_AFTER,
          **state,
          "lrs": out["lrs"].tolist(),
          "grads": _nested(out["grads"]),
          "params": _nested(out["params"]),
        }
      )
  return {
    "library": library,
    "versions": drivers.library_versions(library),
    "problem": drivers.PROBLEM,
    "steps_before": STEPS_BEFORE,
    "steps_after": STEPS_AFTER,
    "cases": cases,
  }


def _write(path: Path, data: dict[str, Any]) -> None:
  path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
  size = path.stat().st_size // 1024
  print(f"{path}: {len(data['cases'])} cases, {size} KiB, {data['versions']}")


def main(targets: list[str]) -> None:
  if {"keras", "handover_keras"} & set(targets):
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 Keras variables
  for target in targets:
    if target.startswith("handover_"):
      data = record_handover(target.removeprefix("handover_"))
    elif target.startswith("embedding_"):
      data = record_embedding(target.removeprefix("embedding_"))
    else:
      data = record(target)
    _write(HERE / f"{target}.json", data)


if __name__ == "__main__":
  main(
    sys.argv[1:]
    or [
      *drivers.RUNNERS,
      *(f"handover_{name}" for name in loader.HANDOVER_FILES),
      *(f"embedding_{library}" for library in drivers.EMBEDDING_RUNNERS),
    ]
  )
