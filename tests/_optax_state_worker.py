"""Converts an FSDP-sharded optax.rmsprop state on 8 simulated CPU devices.

Started by ``tests/test_optax_state.py`` in a subprocess, because the device
count must be fixed before JAX initialises. Prints one JSON object.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _sharding_cases as cases

import rmsprop_jax

OPTIONS: dict[str, Any] = dict(
  centered=True, momentum=0.9, nesterov=True, bias_correction=True, eps=0.1
)


def mismatched(trees: dict[str, Any], params: dict[str, jax.Array]) -> list[str]:
  """``field.param`` for every leaf whose sharding differs from its param's."""
  return [
    f"{field}.{k}: {tree[k].sharding} vs {p.sharding}"
    for field, tree in trees.items()
    for k, p in params.items()
    if not tree[k].sharding.is_equivalent_to(p.sharding, p.ndim)
  ]


def ours_trees(state: rmsprop_jax.RMSPropState) -> dict[str, Any]:
  return {"nu": state.nu, "mu": state.mu, "trace": state.trace}


def optax_trees(state: Any) -> dict[str, Any]:
  return {"nu": state[0].nu, "mu": state[0].mu, "trace": state[2].trace}


def max_rel(a: Any, b: Any) -> float:
  """The largest difference relative to the largest element of ``b``."""
  a, b = (np.asarray(jax.device_get(x)).astype(np.complex128) for x in (a, b))
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def bitwise_equal(a: Any, b: Any) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    x.dtype == y.dtype
    and np.asarray(x).tobytes() == np.asarray(y).tobytes()
    and x.sharding.is_equivalent_to(y.sharding, x.ndim)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def main() -> None:
  _, axes, specs = cases.LAYOUTS["fsdp"]
  mesh = jax.make_mesh((8,), axes, axis_types=(AxisType.Auto,))
  shard = {k: NamedSharding(mesh, P(*s)) for k, s in specs.items()}

  def put(tree: dict[str, Any]) -> dict[str, jax.Array]:
    return {
      k: jax.device_put(np.asarray(x).astype(jnp.dtype(cases.PARAMS[k][1])), shard[k])
      for k, x in tree.items()
    }

  params0, grads0 = cases.make_data()
  params, grads = put(params0), [put(g) for g in grads0]
  lr = optax.exponential_decay(0.01, 2, 0.5)
  theirs = optax.rmsprop(lr, **OPTIONS)
  ours = rmsprop_jax.rmsprop(lr, **OPTIONS)
  step_theirs = jax.jit(lambda g, s: theirs.update(g, s))
  step_ours = jax.jit(lambda g, s: ours.update(g, s))

  optax_state = theirs.init(params)
  for g in grads[:-1]:
    _, optax_state = step_theirs(g, optax_state)
  state = rmsprop_jax.from_optax(optax_state)
  state_jit = jax.jit(rmsprop_jax.from_optax)(optax_state)
  u_ours, continued = step_ours(grads[-1], state)
  u_theirs, _ = step_theirs(grads[-1], optax_state)
  back = rmsprop_jax.to_optax(continued, jax.eval_shape(theirs.init, params))
  out = {
    "device_count": jax.device_count(),
    "optax_state_mismatch": mismatched(optax_trees(optax_state), params),
    "from_optax_mismatch": mismatched(ours_trees(state), params),
    "from_optax_jit_mismatch": mismatched(ours_trees(state_jit), params),
    "continued_mismatch": mismatched(ours_trees(continued), params),
    "to_optax_mismatch": mismatched(optax_trees(back), params),
    "continuation_rel": {k: max_rel(u_ours[k], u_theirs[k]) for k in params},
    "round_trip_bitwise": bitwise_equal(
      rmsprop_jax.to_optax(state, optax_state), optax_state
    ),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
