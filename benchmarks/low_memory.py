"""8-bit optimizer state: memory, speed and training-curve parity.

Compares ``rmsprop(..., state_dtype=...)`` for float32 (the default), bfloat16
and the block-quantized 8-bit formats on

* memory: bytes of optimizer state per parameter, from the leaves' ``nbytes``;
* speed: wall time of the jitted ``update`` alone, interleaved repeats;
* parity: held-out loss curves of two tasks, an MLP classifier on a noisy
  teacher's labels and a small causal transformer language model on sequences
  from a random second-order Markov source, several seeds each. Both have a
  loss floor well above zero, so relative differences of the final loss mean
  something.

Usage::

  python benchmarks/low_memory.py                  # full run (minutes on CPU)
  python benchmarks/low_memory.py --steps 300 --seeds 1 --no-plot   # smoke

Writes docs/images/low_memory_parity.png (unless ``--no-plot``) and prints a
Markdown summary.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_jax

STATE_DTYPES: dict[str, Any] = {
  "float32": None,
  "bfloat16": jnp.bfloat16,
  "float8_e4m3fn": jnp.float8_e4m3fn,
  "float8_e5m2": jnp.float8_e5m2,
}
PLOT = os.path.join(
  os.path.dirname(os.path.abspath(__file__)),
  "..",
  "docs",
  "images",
  "low_memory_parity.png",
)


# ----------------------------------------------------------------- models


def _dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
  return {
    "w": jax.random.normal(key, (n_in, n_out)) / math.sqrt(n_in),
    "b": jnp.zeros((n_out,)),
  }


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  for layer in params[:-1]:
    x = jax.nn.gelu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


class MLPTask:
  """A noisy teacher MLP labels Gaussian inputs; a wider student learns it."""

  name = "MLP classifier"
  dims = (64, 256, 256, 10)

  def __init__(self, seed: int, batch: int = 128):
    self.batch = batch
    teacher = mlp_init(jax.random.key(10_000 + seed), (64, 64, 10))
    self.teacher = jax.tree.map(lambda w: 3 * w, teacher)
    self.eval_x, self.eval_y = self.sample(jax.random.key(20_000 + seed), 4096)

  def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, 64))
    # Sampling the label from the teacher's softmax sets a loss floor.
    y = jax.random.categorical(ky, mlp_apply(self.teacher, x))
    return x, y

  def init(self, key: jax.Array) -> Any:
    return mlp_init(key, self.dims)

  def loss(self, params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    return _xent(mlp_apply(params, batch[0]), batch[1])

  def batch_at(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.sample(key, self.batch)

  def eval_loss(self, params: Any) -> jax.Array:
    return self.loss(params, (self.eval_x, self.eval_y))


class LMTask:
  """A 2-layer causal transformer on a random order-2 Markov source."""

  name = "Transformer LM"
  vocab, d, heads, layers, seq = 16, 64, 4, 2, 32

  def __init__(self, seed: int, batch: int = 32):
    self.batch = batch
    key = jax.random.key(30_000 + seed)
    # Each two-token context prefers a few next tokens (entropy ~1.7 nats).
    logits = 2.0 * jax.random.normal(key, (self.vocab, self.vocab, self.vocab))
    self.table = jax.nn.log_softmax(logits, axis=-1)
    self.eval_tokens = self.sample(jax.random.key(40_000 + seed), 256)

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    k0, k1, kscan = jax.random.split(key, 3)
    a = jax.random.randint(k0, (n,), 0, self.vocab)
    b = jax.random.randint(k1, (n,), 0, self.vocab)

    def step(carry, k):
      a, b = carry
      c = jax.random.categorical(k, self.table[a, b])
      return (b, c), c

    _, rest = jax.lax.scan(step, (a, b), jax.random.split(kscan, self.seq - 1))
    return jnp.concatenate([a[:, None], b[:, None], rest.T[:, :-1]], axis=1)

  def init(self, key: jax.Array) -> Any:
    d, v = self.d, self.vocab
    keys = iter(jax.random.split(key, 4 + 4 * self.layers))
    params: dict[str, Any] = {
      "embed": jax.random.normal(next(keys), (v, d)) * 0.5,
      "pos": jax.random.normal(next(keys), (self.seq, d)) * 0.1,
      "out": _dense(next(keys), d, v),
      "blocks": [],
    }
    for _ in range(self.layers):
      params["blocks"].append(
        {
          "ln1": jnp.ones((d,)),
          "ln2": jnp.ones((d,)),
          "qkv": _dense(next(keys), d, 3 * d),
          "proj": _dense(next(keys), d, d),
          "up": _dense(next(keys), d, 4 * d),
          "down": _dense(next(keys), 4 * d, d),
        }
      )
    return params

  def logits(self, params: Any, tokens: jax.Array) -> jax.Array:
    n, t = tokens.shape
    h = params["embed"][tokens] + params["pos"][:t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    dh = self.d // self.heads

    def norm(x, g):
      return (
        g
        * (x - x.mean(-1, keepdims=True))
        * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)
      )

    for blk in params["blocks"]:
      x = norm(h, blk["ln1"])
      qkv = x @ blk["qkv"]["w"] + blk["qkv"]["b"]
      q, k, v = jnp.split(qkv.reshape(n, t, 3 * self.heads, dh), 3, axis=2)
      att = jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(dh)
      att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
      x = jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, t, self.d)
      h = h + x @ blk["proj"]["w"] + blk["proj"]["b"]
      x = norm(h, blk["ln2"])
      x = jax.nn.gelu(x @ blk["up"]["w"] + blk["up"]["b"])
      h = h + x @ blk["down"]["w"] + blk["down"]["b"]
    return h @ params["out"]["w"] + params["out"]["b"]

  def loss(self, params: Any, tokens: jax.Array) -> jax.Array:
    logits = self.logits(params, tokens[:, :-1])
    return _xent(logits, tokens[:, 1:])

  def batch_at(self, key: jax.Array) -> jax.Array:
    return self.sample(key, self.batch)

  def eval_loss(self, params: Any) -> jax.Array:
    return self.loss(params, self.eval_tokens)


TASKS: dict[str, Callable[[int], Any]] = {"mlp": MLPTask, "lm": LMTask}
LEARNING_RATES = {"mlp": 1e-3, "lm": 3e-3}


# ----------------------------------------------------------------- training


def train(
  task: Any, lr: float, state_dtype: Any, seed: int, steps: int, every: int
) -> np.ndarray:
  """Held-out loss after every ``every`` steps (and at step 0)."""
  opt = rmsprop_jax.rmsprop(lr, decay=0.99, eps=1e-8, state_dtype=state_dtype)
  params = task.init(jax.random.key(seed))
  state = opt.init(params)

  def one_step(carry, key):
    params, state = carry
    grads = jax.grad(task.loss)(params, task.batch_at(key))
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  @jax.jit
  def chunk(carry, keys):
    carry, _ = jax.lax.scan(one_step, carry, keys)
    return carry, task.eval_loss(carry[0])

  keys = jax.random.split(jax.random.key(50_000 + seed), steps)
  losses = [float(task.eval_loss(params))]
  carry = (params, state)
  for i in range(0, steps, every):
    carry, loss = chunk(carry, keys[i : i + every])
    losses.append(float(loss))
  return np.asarray(losses)


def parity(
  names: list[str], dtypes: list[str], seeds: int, steps: int, every: int
) -> dict[str, dict[str, np.ndarray]]:
  curves: dict[str, dict[str, np.ndarray]] = {}
  for name in names:
    curves[name] = {}
    for dt in dtypes:
      runs = []
      for seed in range(seeds):
        t0 = time.perf_counter()
        task = TASKS[name](seed)
        runs.append(
          train(task, LEARNING_RATES[name], STATE_DTYPES[dt], seed, steps, every)
        )
        print(
          f"  {name:4s} {dt:14s} seed {seed}: final loss {runs[-1][-1]:.4f} "
          f"({time.perf_counter() - t0:.0f} s)",
          flush=True,
        )
      curves[name][dt] = np.stack(runs)
  return curves


# ----------------------------------------------------------------- memory, speed


def bytes_per_param(params: Any, state_dtype: Any) -> float:
  state = rmsprop_jax.rmsprop(1e-3, state_dtype=state_dtype).init(params)
  n = sum(x.size for x in jax.tree.leaves(params))
  return sum(x.nbytes for x in jax.tree.leaves(state)) / n


def speed(
  params: Any, dtypes: list[str], repeats: int, calls: int
) -> dict[str, tuple[float, float, float]]:
  """Milliseconds per jitted ``update``, repeats interleaved across dtypes.

  Returns (min wall, median wall, median CPU) per dtype. On a shared machine
  the minimum wall time is the least disturbed by other load, and process
  CPU time (summed over XLA's threads) ignores time spent descheduled.
  """
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)
  fns = {}
  for dt in dtypes:
    opt = rmsprop_jax.rmsprop(1e-3, state_dtype=STATE_DTYPES[dt])
    update = jax.jit(opt.update)
    state = opt.init(params)
    jax.block_until_ready(update(grads, state, params))
    fns[dt] = functools.partial(update, grads, state, params)
  wall: dict[str, list[float]] = {dt: [] for dt in dtypes}
  cpu: dict[str, list[float]] = {dt: [] for dt in dtypes}
  for _ in range(repeats):
    for dt, fn in fns.items():
      t0, c0 = time.perf_counter(), time.process_time()
      for _ in range(calls):
        out = fn()
      jax.block_until_ready(out)
      wall[dt].append((time.perf_counter() - t0) / calls * 1e3)
      cpu[dt].append((time.process_time() - c0) / calls * 1e3)
  return {
    dt: (min(wall[dt]), statistics.median(wall[dt]), statistics.median(cpu[dt]))
    for dt in dtypes
  }


def speed_model() -> Any:
  """~4.7M parameters: an embedding and a stack of dense layers."""
  key = jax.random.key(0)
  return {
    "embed": jax.random.normal(key, (8192, 256)),
    "dense": mlp_init(key, (256, 1024, 1024, 1024, 256)),
  }


# ----------------------------------------------------------------- report


def plot(curves: dict[str, dict[str, np.ndarray]], every: int, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4))
  axes = np.atleast_1d(axes)
  styles = {
    "float32": ("k", "-"),
    "bfloat16": ("tab:green", ":"),
    "float8_e4m3fn": ("tab:orange", "--"),
    "float8_e5m2": ("tab:blue", "-."),
  }
  for ax, (name, by_dtype) in zip(axes, curves.items(), strict=True):
    for dt, runs in by_dtype.items():
      x = np.arange(runs.shape[1]) * every
      color, ls = styles.get(dt, (None, "-"))
      label = dt + (" (default)" if dt == "float32" else "")
      ax.plot(x, runs.mean(0), color=color, ls=ls, label=label)
      ax.fill_between(x, runs.min(0), runs.max(0), color=color, alpha=0.15)
    task = TASKS[name]
    ax.set_title(f"{task.name}: held-out loss, {runs.shape[0]} seeds")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle("RMSProp state in float32 vs 8 bits (band: min-max over seeds)")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)
  print(f"saved {os.path.normpath(path)}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--every", type=int, default=100)
  parser.add_argument("--tasks", default="mlp,lm")
  parser.add_argument(
    "--dtypes",
    default="float32,float8_e4m3fn",
    help="state dtypes of the parity runs (comma-separated)",
  )
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--no-plot", action="store_true")
  parser.add_argument("--skip-parity", action="store_true")
  parser.add_argument("--skip-speed", action="store_true")
  args = parser.parse_args()

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(ln.split(":", 1)[1].strip() for ln in f if "model name" in ln)
  except (OSError, StopIteration):
    pass
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, {cpu}, "
    f"{os.cpu_count()} CPUs\n"
  )

  if not args.skip_speed:
    model = speed_model()
    n = sum(x.size for x in jax.tree.leaves(model))
    mem = {dt: bytes_per_param(model, STATE_DTYPES[dt]) for dt in STATE_DTYPES}
    ms = speed(model, list(STATE_DTYPES), args.repeats, calls=5)
    print(f"## Memory and speed (plain RMSProp, {n / 1e6:.2f}M parameters)\n")
    print(
      "| state dtype | bytes/param | update ms: min wall / median wall / "
      "median CPU | ratio to float32 (same columns) |"
    )
    print("|---|---|---|---|")
    ref = ms["float32"]
    for dt in STATE_DTYPES:
      cols = " / ".join(f"{x:.2f}" for x in ms[dt])
      ratios = " / ".join(f"{x / r:.2f}x" for x, r in zip(ms[dt], ref, strict=True))
      print(f"| {dt} | {mem[dt]:.4f} | {cols} | {ratios} |")
    print()

  if args.skip_parity:
    return
  names = args.tasks.split(",")
  dtypes = args.dtypes.split(",")
  print(f"## Parity ({args.steps} steps, {args.seeds} seeds)\n", flush=True)
  curves = parity(names, dtypes, args.seeds, args.steps, args.every)
  print("\n| task | state dtype | final loss (per seed) | worst rel. diff vs float32 |")
  print("|---|---|---|---|")
  for name in names:
    ref = curves[name]["float32"][:, -1]
    for dt in dtypes:
      final = curves[name][dt][:, -1]
      rel = np.max(np.abs(final - ref) / ref)
      per_seed = ", ".join(f"{x:.4f}" for x in final)
      print(f"| {TASKS[name].name} | {dt} | {per_seed} | {100 * rel:.2f} % |")
  if not args.no_plot:
    plot(curves, args.every, PLOT)


if __name__ == "__main__":
  main()
