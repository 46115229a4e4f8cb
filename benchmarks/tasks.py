"""Two small training tasks with a loss floor, for comparing optimizers.

* ``mlp``: an MLP classifier (64-256-256-10) on labels sampled from a noisy
  teacher network's softmax;
* ``lm``: a 2-layer causal transformer language model (d=64, 4 heads) on
  sequences from a random order-2 Markov source.

Both losses have a floor well above zero (the teacher's and the source's
entropy), so relative differences of the final held-out loss mean something.
Every batch and every held-out set is generated from the seed: nothing is
downloaded.

Usage::

  task = make_task("mlp", seed=0)
  opt = rmsprop_jax.rmsprop(task.learning_rate, decay=0.99)
  losses = train(task, opt, seed=0, steps=2000, every=100)
  # held-out loss at steps 0, 100, ..., 2000
"""

from __future__ import annotations

import functools
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any  # a pytree of arrays
Batch = Any


class Task(Protocol):
  """A model, its data source and its loss."""

  name: str  # for titles and tables
  learning_rate: float  # the one RMSProp (decay 0.99) uses on it

  def init(self, key: jax.Array) -> Params: ...

  def loss(self, params: Params, batch: Batch) -> jax.Array: ...

  def batch_at(self, key: jax.Array) -> Batch: ...

  def eval_loss(self, params: Params) -> jax.Array: ...


# --------------------------------------------------------------------------
# The models.
# --------------------------------------------------------------------------


def _dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
  return {
    "w": jax.random.normal(key, (n_in, n_out)) / math.sqrt(n_in),
    "b": jnp.zeros((n_out,)),
  }


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  """Dense layers ``sizes[0] -> sizes[1] -> ...``, LeCun-normal weights."""
  keys = jax.random.split(key, len(sizes) - 1)
  return [_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  """GELU between the layers, none after the last."""
  for layer in params[:-1]:
    x = jax.nn.gelu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def _xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _layer_norm(x: jax.Array, gain: jax.Array) -> jax.Array:
  centred = x - x.mean(-1, keepdims=True)
  return gain * centred * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)


# Data and initial parameters are made under jit, each in one computation:
# eagerly, every shape of every random draw would compile on its own.


@jax.jit
def _teacher(key: jax.Array) -> list[dict[str, jax.Array]]:
  # Weights 3x LeCun-normal: confident but not certain labels.
  return jax.tree.map(lambda w: 3 * w, mlp_init(key, (64, 64, 10)))


@jax.jit
def _markov_table(key: jax.Array) -> jax.Array:
  # Each two-token context prefers a few next tokens (entropy ~1.7 nats).
  logits = 2.0 * jax.random.normal(key, (LMTask.vocab,) * 3)
  return jax.nn.log_softmax(logits, axis=-1)


class MLPTask:
  """A noisy teacher MLP labels Gaussian inputs; a wider student learns it."""

  name = "MLP classifier"
  learning_rate = 1e-3
  dims = (64, 256, 256, 10)

  def __init__(self, seed: int, batch: int = 128):
    self.batch = batch
    self.teacher = _teacher(jax.random.key(10_000 + seed))
    sample = jax.jit(self.sample, static_argnums=1)
    self.eval_x, self.eval_y = sample(jax.random.key(20_000 + seed), 4096)

  def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, 64))
    # Sampling the label from the teacher's softmax sets a loss floor.
    y = jax.random.categorical(ky, mlp_apply(self.teacher, x))
    return x, y

  def init(self, key: jax.Array) -> Params:
    return mlp_init(key, self.dims)

  def loss(self, params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    return _xent(mlp_apply(params, batch[0]), batch[1])

  def batch_at(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.sample(key, self.batch)

  def eval_loss(self, params: Params) -> jax.Array:
    return self.loss(params, (self.eval_x, self.eval_y))


class LMTask:
  """A 2-layer causal transformer on a random order-2 Markov source."""

  name = "Transformer LM"
  learning_rate = 3e-3
  vocab, d, heads, layers, seq = 16, 64, 4, 2, 32

  def __init__(self, seed: int, batch: int = 32):
    self.batch = batch
    self.table = _markov_table(jax.random.key(30_000 + seed))
    sample = jax.jit(self.sample, static_argnums=1)
    self.eval_tokens = sample(jax.random.key(40_000 + seed), 256)

  def sample(self, key: jax.Array, n: int) -> jax.Array:
    k0, k1, kscan = jax.random.split(key, 3)
    a = jax.random.randint(k0, (n,), 0, self.vocab)
    b = jax.random.randint(k1, (n,), 0, self.vocab)

    def step(
      carry: tuple[jax.Array, jax.Array], k: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
      a, b = carry
      c = jax.random.categorical(k, self.table[a, b])
      return (b, c), c

    _, rest = jax.lax.scan(step, (a, b), jax.random.split(kscan, self.seq - 1))
    return jnp.concatenate([a[:, None], b[:, None], rest.T[:, :-1]], axis=1)

  def init(self, key: jax.Array) -> Params:
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

  def logits(self, params: Params, tokens: jax.Array) -> jax.Array:
    n, t = tokens.shape
    h = params["embed"][tokens] + params["pos"][:t]
    mask = jnp.tril(jnp.ones((t, t), bool))
    dh = self.d // self.heads
    for blk in params["blocks"]:
      x = _layer_norm(h, blk["ln1"])
      qkv = x @ blk["qkv"]["w"] + blk["qkv"]["b"]
      q, k, v = jnp.split(qkv.reshape(n, t, 3 * self.heads, dh), 3, axis=2)
      att = jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(dh)
      att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
      x = jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, t, self.d)
      h = h + x @ blk["proj"]["w"] + blk["proj"]["b"]
      x = _layer_norm(h, blk["ln2"])
      x = jax.nn.gelu(x @ blk["up"]["w"] + blk["up"]["b"])
      h = h + x @ blk["down"]["w"] + blk["down"]["b"]
    return h @ params["out"]["w"] + params["out"]["b"]

  def loss(self, params: Params, batch: jax.Array) -> jax.Array:
    logits = self.logits(params, batch[:, :-1])
    return _xent(logits, batch[:, 1:])

  def batch_at(self, key: jax.Array) -> jax.Array:
    return self.sample(key, self.batch)

  def eval_loss(self, params: Params) -> jax.Array:
    return self.loss(params, self.eval_tokens)


TASKS: dict[str, type[MLPTask] | type[LMTask]] = {"mlp": MLPTask, "lm": LMTask}


def make_task(name: str, seed: int) -> Task:
  """The task ``name`` (a key of ``TASKS``), its teacher or source from ``seed``."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; the tasks are {sorted(TASKS)}")
  return TASKS[name](seed)


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


# The task is static: one compilation per task, whichever optimizer trains it.


@functools.partial(jax.jit, static_argnums=0)
def _init(task: Task, key: jax.Array) -> Params:
  return task.init(key)


@functools.partial(jax.jit, static_argnums=0)
def _eval_loss(task: Task, params: Params) -> jax.Array:
  return task.eval_loss(params)


def train(
  task: Task,
  optimizer: optax.GradientTransformation,
  seed: int,
  steps: int,
  every: int = 100,
  param_dtype: Any = jnp.float32,
) -> np.ndarray:
  """Held-out losses of ``task`` trained with ``optimizer``, every ``every`` steps.

  The parameters are initialised from ``seed`` and stored in ``param_dtype``;
  the batches come from ``seed`` too, so two optimizers trained with the same
  seed see the same data in the same order. Each chunk of ``every`` steps is
  one jitted ``lax.scan``.

  Returns:
    ``steps // every + 1`` float losses: at step 0, ``every``, ..., ``steps``.
  """
  if steps <= 0 or every <= 0 or steps % every:
    raise ValueError(
      f"steps={steps} must be a positive multiple of every={every} (both > 0)"
    )
  params = _init(task, jax.random.key(seed))
  params = jax.tree.map(lambda p: p.astype(param_dtype), params)
  carry = (params, optimizer.init(params))

  def one_step(carry: tuple[Params, Any], key: jax.Array) -> tuple[Any, None]:
    params, state = carry
    grads = jax.grad(task.loss)(params, task.batch_at(key))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  def chunk(carry: tuple[Params, Any], keys: jax.Array) -> tuple[Any, jax.Array]:
    carry, _ = jax.lax.scan(one_step, carry, keys)
    return carry, task.eval_loss(carry[0])

  run_chunk = jax.jit(chunk)
  keys = jax.random.split(jax.random.key(50_000 + seed), steps)
  losses = [float(_eval_loss(task, params))]
  for i in range(0, steps, every):
    carry, loss = run_chunk(carry, keys[i : i + every])
    losses.append(float(loss))
  return np.asarray(losses)
