"""FSDP training with rmsprop_jax on one or many processes.

A small MLP regression whose parameters, and therefore RMSProp state, are split
over every device of every process ("fully sharded data parallel"): each device
holds 1/N of each weight matrix and of its ``nu``/``mu``/``trace``, and a
1/N slice of each batch. XLA inserts the weight gathers and gradient reductions
of the forward and backward passes; the optimizer update itself is local.

Run on one machine, simulating devices on the CPU::

  # one process with four devices
  python examples/distributed_train.py --cpu-devices 4 --out single.npz
  # two processes with two devices each (start both)
  python examples/distributed_train.py --num-processes 2 --process-id 0 \\
      --port 12355 --cpu-devices 2 --out multi.npz &
  python examples/distributed_train.py --num-processes 2 --process-id 1 \\
      --port 12355 --cpu-devices 2

Both runs train the same model on the same 4-device mesh and write the same
final parameters. On a GPU or TPU cluster, start the script once per host with
``--cluster``: ``jax.distributed.initialize()`` then reads the coordinator,
process count and id from the cluster environment (SLURM, Open MPI, Cloud
TPU, Kubernetes/GKE).
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import numpy as np

N_IN, N_HIDDEN, N_OUT = 16, 64, 8
N_EXAMPLES, BATCH = 512, 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
  p.add_argument("--num-processes", type=int, default=1)
  p.add_argument("--process-id", type=int, default=0)
  p.add_argument(
    "--host", default="127.0.0.1", help="coordinator host (process 0 listens there)"
  )
  p.add_argument("--port", type=int, default=12355, help="coordinator port")
  p.add_argument(
    "--cluster",
    action="store_true",
    help="let jax.distributed.initialize() detect the cluster "
    "(SLURM, MPI, TPU, GKE) instead of the flags above",
  )
  p.add_argument(
    "--cpu-devices",
    type=int,
    default=0,
    help="run on the CPU with this many devices per process "
    "(0: use the machine's accelerators)",
  )
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--learning-rate", type=float, default=3e-3)
  p.add_argument(
    "--init-timeout",
    type=int,
    default=60,
    help="seconds to wait for the other processes to join",
  )
  p.add_argument(
    "--out", default=None, help="process 0 writes the final parameters here (.npz)"
  )
  return p.parse_args(argv)


def setup(args: argparse.Namespace) -> None:
  """Configures devices and joins the other processes; call before any jax op."""
  import jax

  if args.cpu_devices:
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    # Cross-process collectives on the CPU go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if args.cluster:
    jax.distributed.initialize()
  elif args.num_processes > 1:
    jax.distributed.initialize(
      coordinator_address=f"{args.host}:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=args.init_timeout,
    )


def make_data() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """The same regression data and initial weights on every process."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N_EXAMPLES, N_IN)).astype(np.float32)
  w_true = rng.normal(size=(N_IN, N_OUT)).astype(np.float32)
  y = np.tanh(x @ w_true).astype(np.float32)
  params = {
    "w1": rng.normal(size=(N_IN, N_HIDDEN)) / np.sqrt(N_IN),
    "b1": np.zeros(N_HIDDEN),
    "w2": rng.normal(size=(N_HIDDEN, N_OUT)) / np.sqrt(N_HIDDEN),
    "b2": np.zeros(N_OUT),
  }
  return x, y, {k: v.astype(np.float32) for k, v in params.items()}


def fsdp_spec(shape: tuple[int, ...], n: int) -> Any:
  """Splits the largest dimension divisible by ``n``; replicates otherwise."""
  from jax.sharding import PartitionSpec as P

  dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0]
  if not dims:
    return P()
  spec: list[str | None] = [None] * len(shape)
  spec[dims[0]] = "fsdp"
  return P(*spec)


def loss_fn(params: dict[str, Any], x: Any, y: Any) -> Any:
  import jax
  import jax.numpy as jnp

  h = jax.nn.tanh(x @ params["w1"] + params["b1"])
  pred = h @ params["w2"] + params["b2"]
  return jnp.mean((pred - y) ** 2)


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
  args = parse_args(argv)
  setup(args)

  import jax
  import optax
  from jax.experimental import multihost_utils
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P

  import rmsprop_jax

  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("fsdp",), axis_types=(AxisType.Auto,))
  x_all, y_all, params_np = make_data()

  def put(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Each process fills only the shards that live on its own devices.
    return jax.make_array_from_callback(
      value.shape, sharding, lambda index: value[index]
    )

  param_sharding = {
    k: NamedSharding(mesh, fsdp_spec(v.shape, n)) for k, v in params_np.items()
  }
  batch_sharding = NamedSharding(mesh, P("fsdp"))
  params = {k: put(v, param_sharding[k]) for k, v in params_np.items()}

  opt = rmsprop_jax.rmsprop(args.learning_rate, momentum=0.9, centered=True)
  # init under jit: every nu/mu/trace leaf gets its parameter's sharding.
  opt_state = jax.jit(opt.init)(params)
  state_sharding = jax.tree.map(lambda a: a.sharding, opt_state)
  for leaf, p in zip(
    jax.tree.leaves(opt_state.nu), jax.tree.leaves(params), strict=True
  ):
    assert leaf.sharding.is_equivalent_to(p.sharding, p.ndim)

  @functools.partial(
    jax.jit,
    donate_argnums=(0, 1),
    out_shardings=(param_sharding, state_sharding, None),
  )
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  loss = None
  for step in range(args.steps):
    lo = (step * BATCH) % N_EXAMPLES
    x = put(x_all[lo : lo + BATCH], batch_sharding)
    y = put(y_all[lo : lo + BATCH], batch_sharding)
    params, opt_state, loss = train_step(params, opt_state, x, y)
    if jax.process_index() == 0 and (step % 10 == 0 or step == args.steps - 1):
      print(f"step {step:4d}  loss {float(loss):.6f}", flush=True)
  jax.block_until_ready(params)

  # Every process takes part in the gather; process 0 writes the file.
  final = {
    k: np.asarray(v)
    for k, v in multihost_utils.process_allgather(params, tiled=True).items()
  }
  if jax.process_index() == 0:
    print(
      f"{jax.process_count()} process(es) x {jax.local_device_count()} "
      f"device(s), {args.steps} steps in "
      f"{time.perf_counter() - start:.2f} s",
      flush=True,
    )
    if args.out:
      np.savez(args.out, **final)  # pyright: ignore[reportArgumentType]
  if args.num_processes > 1 or args.cluster:
    jax.distributed.shutdown()
  return final


if __name__ == "__main__":
  main()
