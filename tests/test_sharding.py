"""Optimizer state sharded exactly like the parameters.

The multi-device checks run in a subprocess (``tests/_sharding_worker.py``)
with 8 simulated CPU devices, because the device count is fixed when JAX
initialises and the rest of the suite keeps one device. The worker prints one
JSON object; each test below asserts on one part of it. The single-device
tests at the end run in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmsprop_jax
from tests import _compat
from tests import _sharding_cases as cases
from tests._expect import centred_warning, low_precision_warning

WORKER = os.path.join(os.path.dirname(__file__), "_sharding_worker.py")
CASES = [
  f"{axis}/{layout}/{config}"
  for axis in ("Auto", "Explicit")
  for layout in cases.LAYOUTS
  for config in cases.CONFIGS
]
# XLA:CPU contracts a * b + c into one FMA in some vectorised loops and not in
# others, and which loop an element lands in depends on the local shard shape.
# Without FMA (XLA_FLAGS=--xla_cpu_max_isa=AVX) every sharded result is
# bit-equal to the unsharded one; with it, the centred + momentum run drifts by
# up to 3 ulps in 3 steps. A real sharding bug (a reduction over shards, a
# misplaced slice) would be off by far more.
MAX_ULPS = 8


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the worker sets the device count itself
  ckpt = tmp_path_factory.mktemp("orbax")
  try:
    proc = subprocess.run(
      [sys.executable, WORKER, str(ckpt)],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
  except subprocess.TimeoutExpired as e:  # run() has killed the worker
    pytest.fail(f"sharding worker timed out:\n{e.stderr}")
  assert proc.returncode == 0, f"sharding worker failed:\n{proc.stderr[-5000:]}"
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_worker_runs_on_eight_devices(worker):
  assert worker["device_count"] == 8


@pytest.mark.parametrize("case", CASES)
def test_eager_init_places_state_like_params(worker, case):
  assert worker["layouts"][case]["init_eager_mismatch"] == []


@pytest.mark.parametrize("case", CASES)
def test_jitted_init_places_state_like_params(worker, case):
  assert worker["layouts"][case]["init_jit_mismatch"] == []


@pytest.mark.parametrize("case", CASES)
def test_jitted_init_values_equal_eager_init_bitwise(worker, case):
  assert worker["layouts"][case]["init_ulps_jit_vs_eager"] == 0


@pytest.mark.parametrize("case", CASES)
def test_jitted_init_replicates_step_count_over_the_mesh(worker, case):
  assert worker["layouts"][case]["count_replicated_on_mesh"]["jit"]


@pytest.mark.parametrize("case", CASES)
def test_eager_init_replicates_step_count_over_the_mesh(worker, case):
  assert worker["layouts"][case]["count_replicated_on_mesh"]["eager"]


@pytest.mark.parametrize("case", CASES)
def test_jitted_update_keeps_param_sharding(worker, case):
  assert worker["layouts"][case]["update_jit_mismatch"] == []


@pytest.mark.parametrize("case", [c for c in CASES if c.endswith("/plain")])
def test_eager_update_keeps_param_sharding(worker, case):
  assert worker["layouts"][case]["update_eager_mismatch"] == []


@pytest.mark.parametrize("case", CASES)
def test_compiled_init_and_update_have_no_collective(worker, case):
  r = worker["layouts"][case]
  assert (r["init_collectives"], r["update_collectives"]) == (0, 0)


@pytest.mark.parametrize("case", CASES)
def test_sharded_update_matches_unsharded(worker, case):
  assert worker["layouts"][case]["ulps_vs_unsharded"] <= MAX_ULPS


def _seen_by_optimizer(tree: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The data as the worker feeds it (cast to the leaf dtype), in 64 bits."""
  out = {}
  for k, x in tree.items():
    x = np.asarray(x).astype(jnp.dtype(cases.PARAMS[k][1]))
    out[k] = x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
  return out


def _from_json(x: Any, dtype: str) -> np.ndarray:
  if dtype.startswith("complex"):
    return np.asarray(x[0]) + 1j * np.asarray(x[1])
  return np.asarray(x, np.float64)


@pytest.mark.parametrize("case", CASES)
def test_sharded_update_matches_numpy_reference(worker, case):
  config = case.split("/")[2]
  params, grads = cases.make_data()
  want = cases.reference(
    cases.CONFIGS[config],
    _seen_by_optimizer(params),
    [_seen_by_optimizer(g) for g in grads],
  )
  got = worker["layouts"][case]["updates"]
  for k, (_, dtype) in cases.PARAMS.items():
    tol = 1e-2 if dtype == "bfloat16" else 2e-5
    np.testing.assert_allclose(
      _from_json(got[k], dtype),
      want[k],
      rtol=tol,
      atol=tol * 1e-2,
      err_msg=f"leaf {k}",
    )


def test_init_and_update_inside_shard_map_on_local_shards(worker):
  r = worker["shard_map"]
  assert r["mismatch"] == []
  assert r["collectives"] == 0
  assert r["ulps_vs_unsharded"] <= MAX_ULPS


def test_donated_params_and_state_are_consumed_and_results_agree_to_rounding(worker):
  r = worker["donation"]
  assert r["params_deleted"] and r["state_deleted"]
  assert r["relative_diff_vs_undonated"] < 1e-6
  assert r["mismatch"] == []


@pytest.mark.skipif(
  _compat.version("jaxlib") < (0, 6),
  reason="XLA:CPU before jaxlib 0.6 contracts the donated step's complex arithmetic "
  "into FMAs differently (about 1e-7 relative); bit-equal results need "
  f"jaxlib >= 0.6 (installed: {_compat.installed('jaxlib')})",
)
def test_donated_results_equal_undonated_bitwise(worker):
  assert worker["donation"]["ulps_vs_undonated"] == 0


def test_lazy_rows_of_a_table_sharded_over_rows_need_no_collective(worker):
  rows, columns = worker["lazy_rows"]["rows"], worker["lazy_rows"]["columns"]
  assert rows["collectives"] == 0
  assert rows["mismatch"] == [] and columns["mismatch"] == []
  assert rows["ulps_vs_unsharded"] <= MAX_ULPS
  assert columns["ulps_vs_unsharded"] <= MAX_ULPS
  # Sharded over its columns, a row's test must combine the shards: the
  # worker's check can see a collective when there is one.
  assert columns["collectives"] > 0


def test_orbax_checkpoint_restores_sharded_state(worker):
  r = worker["orbax"]
  assert r["same_structure"]
  assert r["ulps"] == 0
  assert r["mismatch"] == []


# -- single device, in this process: the jitted fill is exact ----------------

DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.complex64]
SHAPES = [(), (0,), (3, 0), (5,), (2, 3)]


def _bits(x: jax.Array) -> np.ndarray:
  return np.asarray(x).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_jitted_init_equals_eager_init_bitwise(dtype, shape):
  params = {"p": jnp.full(shape, -1.5, dtype)}
  for state_dtype in (None, jnp.bfloat16):
    with centred_warning(True, state_dtype):
      opt = rmsprop_jax.rmsprop(
        0.1,
        initial_scale=0.25,
        momentum=0.9,
        centered=True,
        state_dtype=state_dtype,
      )
    with low_precision_warning(params):
      eager, jitted = opt.init(params), jax.jit(opt.init)(params)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
      assert (a.shape, a.dtype) == (b.shape, b.dtype)
      np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_jitted_init_keeps_nonfinite_and_negative_zero_params_out(dtype):
  p = jnp.array([jnp.nan, jnp.inf, -jnp.inf, -0.0, -3.0, 2.0]).astype(dtype)
  if jnp.iscomplexobj(p):
    imag = jnp.array([0.0, jnp.nan, 1.0, -jnp.inf, -0.0, 0.0], jnp.real(p).dtype)
    p = jax.lax.complex(jnp.real(p), imag)
  with low_precision_warning(p):
    state = jax.jit(
      rmsprop_jax.rmsprop(0.1, initial_scale=0.5, momentum=0.9, centered=True).init
    )(p)
  np.testing.assert_array_equal(np.asarray(state.nu), np.full(6, 0.5))
  for buf in (state.mu, state.trace):
    x = np.asarray(buf)
    parts = (np.real(x), np.imag(x)) if np.iscomplexobj(x) else (x,)
    for part in parts:  # +0.0 everywhere, sign bit clear
      np.testing.assert_array_equal(part, np.zeros(6))
      assert not np.signbit(part).any()
