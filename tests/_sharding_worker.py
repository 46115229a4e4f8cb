"""Runs the sharding checks on 8 simulated CPU devices and prints JSON.

Started by ``tests/test_sharding.py`` in a subprocess, because the device count
must be fixed before JAX initialises and the rest of the suite keeps its
single device. Usage: ``python tests/_sharding_worker.py [orbax_dir]``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib
import json
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _compat
import _sharding_cases as cases

import rmsprop_jax

COLLECTIVE = re.compile(
  r"\b(all-reduce|all-gather|collective-permute|reduce-scatter|all-to-all)"
  r"(-start)?\("
)


def n_collectives(compiled: Any) -> int:
  return len(COLLECTIVE.findall(compiled.as_text()))


def to_json(x: Any) -> Any:
  x = np.asarray(jax.device_get(x))
  if np.iscomplexobj(x):
    return [x.real.astype(np.float64).tolist(), x.imag.astype(np.float64).tolist()]
  return x.astype(np.float64).tolist()


def cast(tree: dict[str, Any]) -> dict[str, np.ndarray]:
  """Casts the float64 data to the leaf dtypes (still NumPy)."""
  return {
    k: np.asarray(v).astype(jnp.dtype(cases.PARAMS[k][1])) for k, v in tree.items()
  }


def mismatched(tree: Any, params: dict[str, jax.Array]) -> list[str]:
  """Paths of leaves of ``tree`` whose sharding differs from their param's."""
  bad = []
  for name, sub in tree.items():
    for k, p in params.items():
      x = sub[k]
      if not x.sharding.is_equivalent_to(p.sharding, p.ndim):
        bad.append(f"{name}.{k}: {x.sharding} vs {p.sharding}")
  return bad


def state_trees(state: Any) -> dict[str, Any]:
  """The per-parameter trees of an ``RMSPropState`` that are not None."""
  return {
    f: getattr(state, f) for f in ("nu", "mu", "trace") if getattr(state, f) is not None
  }


def _ordered(x: Any) -> np.ndarray:
  """Float bits as integers that count representable values (for ulps)."""
  x = np.asarray(jax.device_get(x))
  if np.iscomplexobj(x):
    x = np.stack([x.real, x.imag])
  bits = {2: np.int16, 4: np.int32, 8: np.int64}[x.dtype.itemsize]
  i = x.view(bits).astype(np.int64)
  return np.where(i < 0, np.iinfo(bits).min - i, i)


def max_ulps(a: Any, b: Any) -> int:
  """Largest distance in units in the last place over all leaves (0: bit-equal)."""
  worst = 0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape, (x, y)
    if x.size:
      worst = max(worst, int(np.max(np.abs(_ordered(x) - _ordered(y)))))
  return worst


def max_relative_diff(a: Any, b: Any) -> float:
  """Largest ``|x - y|`` over all leaves, relative to the leaf's largest ``|x|``."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    x, y = np.asarray(jax.device_get(x)), np.asarray(jax.device_get(y))
    if x.size and np.any(x):
      diff = np.abs(x.astype(np.complex128) - y.astype(np.complex128))
      worst = max(worst, float(np.max(diff) / np.max(np.abs(x))))
  return worst


def run_updates(
  update: Any, params: Any, state: Any, grads: list[Any]
) -> tuple[Any, Any]:
  """Calls ``update`` once per gradient tree, parameters held fixed."""
  updates = None
  for g in grads:
    updates, state = update(g, state, params)
  return updates, state


def make_step(opt: Any):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return jax.tree.map(lambda p, u: p + u, params, updates), state

  return step


def layout_case(
  axis_type: AxisType, layout: str, config: str, data: Any, unsharded: dict[str, Any]
) -> dict[str, Any]:
  mesh_shape, axes, specs = cases.LAYOUTS[layout]
  mesh = jax.make_mesh(mesh_shape, axes, axis_types=(axis_type,) * len(axes))
  shard = {k: NamedSharding(mesh, P(*s)) for k, s in specs.items()}
  params0, grads = data
  opt = rmsprop_jax.rmsprop(**cases.CONFIGS[config])
  update = jax.jit(opt.update)
  if config not in unsharded:  # default device, no mesh; same for all layouts
    local_p = {k: jnp.asarray(v) for k, v in params0.items()}
    unsharded[config] = run_updates(
      update,
      local_p,
      opt.init(local_p),
      [{k: jnp.asarray(v) for k, v in g.items()} for g in grads],
    )

  # Explicit axes need the mesh in context under jit; Auto ones run without.
  explicit = axis_type == AxisType.Explicit
  with _compat.set_mesh(mesh) if explicit else contextlib.nullcontext():
    params = {k: jax.device_put(v, shard[k]) for k, v in params0.items()}
    sgrads = [{k: jax.device_put(v, shard[k]) for k, v in g.items()} for g in grads]
    out: dict[str, Any] = {}
    eager_state = opt.init(params)
    jit_init = jax.jit(opt.init)
    out["init_collectives"] = n_collectives(jit_init.lower(params).compile())
    jit_state = jit_init(params)
    out["init_eager_mismatch"] = mismatched(state_trees(eager_state), params)
    out["init_jit_mismatch"] = mismatched(state_trees(jit_state), params)
    out["init_ulps_jit_vs_eager"] = max_ulps(eager_state, jit_state)
    # The scalar step counter (kept for bias correction and schedules):
    # replicated over the params' mesh, so that
    # jax.tree.map(lambda x: x.sharding, state) works as out_shardings.
    counted = rmsprop_jax.rmsprop(
      **{**cases.CONFIGS[config], "bias_correction": True}
    ).init
    out["count_replicated_on_mesh"] = {
      name: isinstance(c.sharding, NamedSharding)
      and c.sharding.mesh == mesh
      and c.sharding.is_fully_replicated
      for name, c in (
        ("eager", counted(params).count),
        ("jit", jax.jit(counted)(params).count),
      )
    }

    out["update_collectives"] = n_collectives(
      update.lower(sgrads[0], jit_state, params).compile()
    )
    updates, state = run_updates(update, params, jit_state, sgrads)
    out["update_jit_mismatch"] = mismatched(
      {"updates": updates, **state_trees(state)}, params
    )
    if config == "plain":  # the module-level jit inside update, called eagerly
      u, s = opt.update(sgrads[0], eager_state, params)
      out["update_eager_mismatch"] = mismatched(
        {"updates": u, **state_trees(s)}, params
      )
    out["ulps_vs_unsharded"] = max_ulps((updates, state), unsharded[config])
    out["updates"] = {k: to_json(updates[k]) for k in params}
  return out


def shard_map_case(data: Any) -> dict[str, Any]:
  """init + update on local shards inside shard_map, vs the global run."""
  mesh_shape, axes, specs = cases.LAYOUTS["fsdp"]
  mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Explicit,))
  pspecs = {k: P(*s) for k, s in specs.items()}
  opt = rmsprop_jax.rmsprop(**cases.CONFIGS["momentum_centered"])
  params0, grads = data
  state_specs = rmsprop_jax.RMSPropState(
    count=None,
    nu=pspecs,
    mu=pspecs,
    trace=pspecs,
  )

  def local(params, gs):
    return run_updates(opt.update, params, opt.init(params), gs)

  with _compat.set_mesh(mesh):
    params = {
      k: jax.device_put(v, NamedSharding(mesh, pspecs[k])) for k, v in params0.items()
    }
    gs = [
      {k: jax.device_put(v, NamedSharding(mesh, pspecs[k])) for k, v in g.items()}
      for g in grads
    ]
    f = jax.jit(
      _compat.shard_map(
        local,
        mesh=mesh,
        in_specs=(pspecs, [pspecs] * len(gs)),
        out_specs=(pspecs, state_specs),
      )
    )
    collectives = n_collectives(f.lower(params, gs).compile())
    got = f(params, gs)
  want = jax.jit(local)(
    {k: jnp.asarray(v) for k, v in params0.items()},
    [{k: jnp.asarray(v) for k, v in g.items()} for g in grads],
  )
  return {
    "ulps_vs_unsharded": max_ulps(got, want),
    "mismatch": mismatched({"updates": got[0], **state_trees(got[1])}, params),
    "collectives": collectives,
  }


def donation_case(data: Any) -> dict[str, Any]:
  """A train step donating params and state: buffers reused, results unchanged."""
  mesh_shape, axes, specs = cases.LAYOUTS["fsdp"]
  mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Auto,))
  shard = {k: NamedSharding(mesh, P(*s)) for k, s in specs.items()}
  opt = rmsprop_jax.rmsprop(**cases.CONFIGS["momentum_centered"])
  params0, grads = data
  step = make_step(opt)
  donating = jax.jit(step, donate_argnums=(0, 1))

  def put(tree):
    return {k: jax.device_put(v, shard[k]) for k, v in tree.items()}

  def train(step, params):
    state = jax.jit(opt.init)(params)
    first = (params, state)
    for g in grads:
      params, state = step(params, state, put(g))
    return first, (params, state)

  _, want = train(jax.jit(step), put(params0))
  first, got = train(donating, put(params0))
  return {
    "params_deleted": all(x.is_deleted() for x in jax.tree.leaves(first[0])),
    "state_deleted": all(
      x.is_deleted() for x in jax.tree.leaves(state_trees(first[1]))
    ),
    "ulps_vs_undonated": max_ulps(got, want),
    "relative_diff_vs_undonated": max_relative_diff(got, want),
    "mismatch": mismatched({"params": got[0], **state_trees(got[1])}, put(params0)),
  }


def orbax_case(data: Any, directory: str) -> dict[str, Any]:
  """The README's checkpoint snippet: save a sharded state, restore it sharded."""
  import orbax.checkpoint as ocp

  mesh_shape, axes, specs = cases.LAYOUTS["fsdp"]
  mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Auto,))
  shard = {k: NamedSharding(mesh, P(*s)) for k, s in specs.items()}
  opt = rmsprop_jax.rmsprop(**cases.CONFIGS["momentum_centered"])
  params0, grads = data
  params = {k: jax.device_put(v, shard[k]) for k, v in params0.items()}
  _, state = jax.jit(opt.update)(
    {k: jax.device_put(v, shard[k]) for k, v in grads[0].items()},
    jax.jit(opt.init)(params),
    params,
  )

  # -- as in the README --
  path = os.path.join(os.path.abspath(directory), "opt_state")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, state)

  abstract_params = jax.tree.map(
    lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
  )
  init = jax.jit(opt.init)
  abstract_state = jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    jax.eval_shape(init, abstract_params),
    init.lower(abstract_params).compile().output_shardings,
  )
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(path, abstract_state)
  # -- end --

  return {
    "ulps": max_ulps(restored, state),
    "mismatch": mismatched(state_trees(restored), params),
    "same_structure": jax.tree.structure(restored) == jax.tree.structure(state),
  }


def lazy_rows_case() -> dict[str, Any]:
  """An embedding table sharded over its rows: lazy_rows needs no collective.

  Each shard holds whole rows, so the test of a row's gradient is local; with
  the table sharded over its columns, the row test must combine the shards.
  """
  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(0)
  table = rng.normal(size=(64, 16)).astype(np.float32)
  grad = np.zeros_like(table)
  grad[[3, 17, 17, 40]] = rng.normal(size=(4, 16))  # row 17 looked up twice
  opt = rmsprop_jax.rmsprop(0.05, momentum=0.9, centered=True, lazy_rows=True)
  step = jax.jit(make_step(opt))
  want = make_step(opt)({"t": table}, opt.init({"t": table}), {"t": grad})
  out: dict[str, Any] = {}
  for name, spec in (("rows", P("data", None)), ("columns", P(None, "data"))):
    shard = NamedSharding(mesh, spec)
    params = {"t": jax.device_put(table, shard)}
    state = jax.jit(opt.init)(params)
    g = {"t": jax.device_put(grad, shard)}
    got = step(params, state, g)
    out[name] = {
      "collectives": n_collectives(step.lower(params, state, g).compile()),
      "mismatch": mismatched({"params": got[0], **state_trees(got[1])}, params),
      "ulps_vs_unsharded": max_ulps(got, want),
    }
  return out


def main() -> None:
  raw_params, raw_grads = cases.make_data()
  data = (cast(raw_params), [cast(g) for g in raw_grads])
  results: dict[str, Any] = {"device_count": jax.device_count(), "layouts": {}}
  unsharded: dict[str, Any] = {}
  for axis_type in (AxisType.Auto, AxisType.Explicit):
    for layout in cases.LAYOUTS:
      for config in cases.CONFIGS:
        key = f"{axis_type.name}/{layout}/{config}"
        results["layouts"][key] = layout_case(
          axis_type, layout, config, data, unsharded
        )
  results["shard_map"] = shard_map_case(data)
  results["donation"] = donation_case(data)
  results["lazy_rows"] = lazy_rows_case()
  if len(sys.argv) > 1:
    results["orbax"] = orbax_case(data, sys.argv[1])
  print(json.dumps(results))


if __name__ == "__main__":
  main()
