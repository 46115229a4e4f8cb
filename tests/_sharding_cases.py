"""Shared cases for the sharding tests: layouts, configurations, data, reference.

NumPy only, so that both the test process (single device) and the worker
process (eight simulated devices, ``tests/_sharding_worker.py``) import it
without initialising JAX differently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

STEPS = 3

# name -> (shape, dtype). Every non-scalar dimension that is sharded below is
# divisible by 8, so each layout splits it evenly on 8 devices.
PARAMS: dict[str, tuple[tuple[int, ...], str]] = {
  "w1": ((16, 8), "float32"),
  "b1": ((8,), "float32"),
  "w2": ((8, 16), "float32"),
  "h": ((16,), "bfloat16"),
  "c": ((8, 8), "complex64"),
  "scale": ((), "float32"),
}

# name -> (mesh shape, mesh axis names, {param: partition spec}).
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[str, ...], dict[str, tuple]]] = {
  # Data parallel: every parameter replicated.
  "dp": (
    (8,),
    ("data",),
    {"w1": (), "b1": (), "w2": (), "h": (), "c": (), "scale": ()},
  ),
  # FSDP: every (non-scalar) parameter split on one dimension.
  "fsdp": (
    (8,),
    ("fsdp",),
    {
      "w1": ("fsdp", None),
      "b1": ("fsdp",),
      "w2": (None, "fsdp"),
      "h": ("fsdp",),
      "c": (None, "fsdp"),
      "scale": (),
    },
  ),
  # 2-D: (data, model), parameters split on one or both axes.
  "2d": (
    (4, 2),
    ("data", "model"),
    {
      "w1": ("data", "model"),
      "b1": ("model",),
      "w2": ("model", "data"),
      "h": ("data",),
      "c": ("data", "model"),
      "scale": (),
    },
  ),
}

WD_MASK = {"w1": True, "b1": False, "w2": True, "h": True, "c": False, "scale": False}

CONFIGS: dict[str, dict[str, Any]] = {
  "plain": {"learning_rate": 1e-2},
  "momentum_centered": {"learning_rate": 1e-2, "momentum": 0.9, "centered": True},
  "weight_decay": {
    "learning_rate": 1e-2,
    "weight_decay": 0.1,
    "decoupled_weight_decay": True,
    "weight_decay_mask": WD_MASK,
  },
}


def _sample(rng: np.random.Generator, shape: tuple[int, ...], dtype: str):
  x = rng.normal(size=shape)
  if dtype.startswith("complex"):
    x = x + 1j * rng.normal(size=shape)
  return x


def make_data(seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Initial parameters and one gradient tree per step, as float64/complex128.

  The caller casts to each leaf's dtype (``PARAMS``); the reference reads the
  cast values back so that it sees exactly what the optimizer saw.
  """
  rng = np.random.default_rng(seed)
  params = {k: _sample(rng, s, d) for k, (s, d) in PARAMS.items()}
  grads = [
    {k: _sample(rng, s, d) for k, (s, d) in PARAMS.items()} for _ in range(STEPS)
  ]
  return params, grads


def reference(
  config: dict[str, Any],
  params: dict[str, np.ndarray],
  grads: list[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
  """Float64 NumPy transcription of RMSProp for ``CONFIGS``.

  Applies ``update`` once per gradient tree with the parameters held fixed
  (as the worker does) and returns the last step's updates. ``params`` and
  ``grads`` must hold the values the optimizer sees (cast to the leaf dtypes
  and back); the caller compares with a tolerance fitting each leaf's dtype.
  """
  lr = config["learning_rate"]
  decay, eps = 0.9, 1e-8
  m = config.get("momentum")
  centered = config.get("centered", False)
  wd = config.get("weight_decay", 0.0)
  mask = config.get("weight_decay_mask") or {k: True for k in params}
  out = {}
  for k, p in params.items():
    p = np.asarray(p, np.complex128 if np.iscomplexobj(p) else np.float64)
    nu = np.zeros(p.shape)
    mu = np.zeros_like(p)
    tr = np.zeros_like(p)
    u = None
    for g_tree in grads:
      g = g_tree[k]
      nu = decay * nu + (1 - decay) * np.abs(g) ** 2
      var = nu
      if centered:
        mu = decay * mu + (1 - decay) * g
        var = np.maximum(nu - np.abs(mu) ** 2, 0)
      s = g / np.sqrt(var + eps)
      if m is None:
        u = -lr * s
      else:
        tr = m * tr + lr * s
        u = -tr
      if wd and mask[k]:
        u = u - lr * wd * p
    out[k] = u
  return out
