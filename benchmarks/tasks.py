"""Small training tasks with a loss floor, for comparing optimizers.

* ``mlp``: an MLP classifier (64-256-256-10) on labels sampled from a noisy
  teacher network's softmax;
* ``lm``: a 2-layer causal transformer language model (d=64, 4 heads) on
  sequences from a random order-2 Markov source;
* ``regression``: a 2-layer tanh MLP (32-64-1) regressing a random tanh
  teacher's output plus Gaussian noise;
* ``text``: the transformer of ``lm`` predicting the next character of text
  from a small seeded grammar (nested noun phrases, subject-verb number
  agreement), its sizes set per task.

Every loss has a floor well above zero (the teacher's noise, the source's
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
from collections.abc import Callable
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


Activation = Callable[[jax.Array], jax.Array]


def mlp_apply(
  params: list[dict[str, jax.Array]], x: jax.Array, activation: Activation = jax.nn.gelu
) -> jax.Array:
  """``activation`` (GELU by default) between the layers, none after the last."""
  for layer in params[:-1]:
    x = activation(x @ layer["w"] + layer["b"])
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
def _tanh_teacher(key: jax.Array) -> list[dict[str, jax.Array]]:
  # First layer 2x LeCun-normal: a teacher well inside tanh's non-linear range.
  first, last = mlp_init(key, (32, 16, 1))
  return [jax.tree.map(lambda w: 2 * w, first), last]


@jax.jit
def _markov_table(key: jax.Array) -> jax.Array:
  # Each two-token context prefers a few next tokens (entropy ~1.7 nats).
  logits = 2.0 * jax.random.normal(key, (LMTask.vocab,) * 3)
  return jax.nn.log_softmax(logits, axis=-1)


class _TeacherTask:
  """Gaussian inputs labelled by a fixed random teacher; a student MLP learns it.

  A subclass sets ``dims`` (the student's sizes, inputs first), the
  activation, how the teacher is drawn and labels, and the loss.
  """

  dims: tuple[int, ...]
  activation: Activation = staticmethod(jax.nn.gelu)

  def __init__(self, seed: int, batch: int = 128):
    self.batch = batch
    self.teacher = self.make_teacher(jax.random.key(10_000 + seed))
    sample = jax.jit(self.sample, static_argnums=1)
    self.eval_x, self.eval_y = sample(jax.random.key(20_000 + seed), 4096)

  def make_teacher(self, key: jax.Array) -> Params:
    raise NotImplementedError

  def label(self, key: jax.Array, x: jax.Array) -> jax.Array:
    raise NotImplementedError

  def loss(self, params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    raise NotImplementedError

  def sample(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, self.dims[0]))
    return x, self.label(ky, x)

  def init(self, key: jax.Array) -> Params:
    return mlp_init(key, self.dims)

  def predict(self, params: Params, x: jax.Array) -> jax.Array:
    return mlp_apply(params, x, self.activation)

  def batch_at(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.sample(key, self.batch)

  def eval_loss(self, params: Params) -> jax.Array:
    return self.loss(params, (self.eval_x, self.eval_y))


class MLPTask(_TeacherTask):
  """A noisy teacher MLP labels Gaussian inputs; a wider student learns it."""

  name = "MLP classifier"
  learning_rate = 1e-3
  dims = (64, 256, 256, 10)

  def make_teacher(self, key: jax.Array) -> Params:
    return _teacher(key)

  def label(self, key: jax.Array, x: jax.Array) -> jax.Array:
    # Sampling the label from the teacher's softmax sets a loss floor.
    return jax.random.categorical(key, mlp_apply(self.teacher, x))

  def loss(self, params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    return _xent(self.predict(params, batch[0]), batch[1])


class RegressionTask(_TeacherTask):
  """A 32-64-1 tanh MLP regressing a random 32-16-1 tanh teacher plus noise."""

  name = "MLP regression"
  learning_rate = 1e-3
  dims = (32, 64, 1)
  activation = staticmethod(jnp.tanh)
  noise = 0.1  # the loss floor is noise**2

  def make_teacher(self, key: jax.Array) -> Params:
    return _tanh_teacher(key)

  def label(self, key: jax.Array, x: jax.Array) -> jax.Array:
    clean = mlp_apply(self.teacher, x, jnp.tanh)
    return clean + self.noise * jax.random.normal(key, clean.shape)

  def loss(self, params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    return jnp.mean((self.predict(params, batch[0]) - batch[1]) ** 2)


class _Transformer:
  """A causal transformer language model; a subclass gives its tokens.

  Pre-norm blocks (layer norm, multi-head attention, a 4x GELU MLP), learned
  positions, untied output layer. The sizes are the class's unless given.
  """

  vocab, d, heads, layers, seq = 16, 64, 4, 2, 32
  eval_tokens: jax.Array  # (rows, seq + 1): every row a held-out sequence

  def __init__(self, batch: int, **sizes: int):
    unknown = set(sizes) - {"vocab", "d", "heads", "layers", "seq"}
    if unknown:
      raise ValueError(f"unknown transformer sizes {sorted(unknown)}")
    self.batch = batch
    for name, value in sizes.items():
      setattr(self, name, value)

  def batch_at(self, key: jax.Array) -> jax.Array:
    raise NotImplementedError

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

  def eval_loss(self, params: Params) -> jax.Array:
    return self.loss(params, self.eval_tokens)


class LMTask(_Transformer):
  """A 2-layer causal transformer on a random order-2 Markov source."""

  name = "Transformer LM"
  learning_rate = 3e-3

  def __init__(self, seed: int, batch: int = 32):
    super().__init__(batch)
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

  def batch_at(self, key: jax.Array) -> jax.Array:
    return self.sample(key, self.batch)


# A small English-like grammar: determiners and verbs agree with the number
# of the subject; phrases nest; the random choices set the loss floor.
NOUNS = {
  "cat": "cats",
  "dog": "dogs",
  "bird": "birds",
  "child": "children",
  "robot": "robots",
  "teacher": "teachers",
  "farmer": "farmers",
  "fox": "foxes",
}
VERBS = {
  "see": "sees",
  "like": "likes",
  "chase": "chases",
  "find": "finds",
  "watch": "watches",
  "follow": "follows",
}
INTRANSITIVE = {"sleep": "sleeps", "run": "runs", "sing": "sings", "wait": "waits"}
ADJECTIVES = ("big", "small", "red", "old", "quick", "quiet", "happy")
DETERMINERS = {False: ("the", "a", "this", "every"), True: ("the", "some", "these")}
ADVERBS = ("today", "again", "slowly", "often", "at night")
PREPOSITIONS = ("near", "with", "behind")


def _noun_phrase(rng: np.random.Generator, plural: bool, depth: int) -> str:
  words = [str(rng.choice(DETERMINERS[plural]))]
  words += [str(a) for a in rng.choice(ADJECTIVES, rng.integers(0, 3), replace=False)]
  noun = str(rng.choice(list(NOUNS)))
  words.append(NOUNS[noun] if plural else noun)
  if depth < 1 and rng.random() < 0.25:
    words += [
      str(rng.choice(PREPOSITIONS)),
      _noun_phrase(rng, bool(rng.random() < 0.4), depth + 1),
    ]
  if depth < 1 and rng.random() < 0.15:
    words += ["that", _verb_phrase(rng, plural, depth + 1)]
  return " ".join(words)


def _verb_phrase(rng: np.random.Generator, plural: bool, depth: int) -> str:
  if rng.random() < 0.7:
    verb = str(rng.choice(list(VERBS)))
    obj = _noun_phrase(rng, bool(rng.random() < 0.4), depth + 1)
    return f"{verb if plural else VERBS[verb]} {obj}"
  verb = str(rng.choice(list(INTRANSITIVE)))
  return verb if plural else INTRANSITIVE[verb]


def _sentence(rng: np.random.Generator) -> str:
  plural = bool(rng.random() < 0.4)
  words = [_noun_phrase(rng, plural, 0), _verb_phrase(rng, plural, 0)]
  if rng.random() < 0.3:
    words.append(str(rng.choice(ADVERBS)))
  return " ".join(words) + "."


@functools.cache
def grammar_text(chars: int, seed: int) -> str:
  """At least ``chars`` characters of sentences from the grammar."""
  rng = np.random.default_rng(seed)
  parts, n = [], 0
  while n < chars:
    parts.append(_sentence(rng))
    n += len(parts[-1]) + 1
  return " ".join(parts)


_WORDS = (
  *NOUNS.items(),
  *VERBS.items(),
  *INTRANSITIVE.items(),
  ADJECTIVES,
  *DETERMINERS.values(),
  ADVERBS,
  PREPOSITIONS,
  ("that",),
)
# A space, a full stop and every letter the grammar uses: the model's tokens.
ALPHABET = " ." + "".join(sorted(set("".join(w for ws in _WORDS for w in ws)) - {" "}))


def encode(text: str) -> np.ndarray:
  """Characters of the grammar's text as token ids (indices into ``ALPHABET``)."""
  index = {c: i for i, c in enumerate(ALPHABET)}
  return np.asarray([index[c] for c in text], np.int32)


class TextTask(_Transformer):
  """The transformer predicting the next character of the grammar's text.

  One corpus (``chars`` characters, grammar seed 0) for every task seed, which
  picks the initialisation and the batches; held out: a tenth as many
  characters from grammar seed 1, cut into sequences.
  """

  name = "Transformer on text"
  learning_rate = 1e-3

  def __init__(self, seed: int, batch: int = 16, chars: int = 200_000, **sizes: int):
    del seed  # one corpus
    super().__init__(batch, vocab=len(ALPHABET), **sizes)
    self.train_tokens = jnp.asarray(encode(grammar_text(chars, 0)))
    held_out = encode(grammar_text(chars // 10, 1))
    rows = len(held_out) // (self.seq + 1)
    self.eval_tokens = jnp.asarray(
      held_out[: rows * (self.seq + 1)].reshape(rows, self.seq + 1)
    )

  def batch_at(self, key: jax.Array) -> jax.Array:
    """``batch`` windows of ``seq + 1`` characters at random places."""
    n = self.seq + 1
    start = jax.random.randint(key, (self.batch,), 0, self.train_tokens.shape[0] - n)
    return jax.vmap(lambda i: jax.lax.dynamic_slice(self.train_tokens, (i,), (n,)))(
      start
    )


TASKS: dict[str, type[MLPTask | LMTask | RegressionTask | TextTask]] = {
  "mlp": MLPTask,
  "lm": LMTask,
  "regression": RegressionTask,
  "text": TextTask,
}


def make_task(name: str, seed: int, **options: Any) -> Task:
  """The task ``name`` (a key of ``TASKS``), its teacher or source from ``seed``.

  ``options`` go to the task's constructor: ``batch``, and the sizes of the
  ``text`` task (``chars``, ``d``, ``heads``, ``layers``, ``seq``).
  """
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; the tasks are {sorted(TASKS)}")
  return TASKS[name](seed, **options)


# --------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------


# The task is static: one compilation per task, whichever optimizer trains it.


@functools.partial(jax.jit, static_argnums=0)
def _init(task: Task, key: jax.Array) -> Params:
  return task.init(key)


def _float32(params: Params) -> Params:
  return jax.tree.map(lambda p: p.astype(jnp.float32), params)


def _loss(task: Task, params: Params, batch: Batch) -> jax.Array:
  """The task's loss, computed in float32 whatever dtype stores the params."""
  return task.loss(_float32(params), batch)


@functools.partial(jax.jit, static_argnums=0)
def _eval_loss(task: Task, params: Params) -> jax.Array:
  return task.eval_loss(_float32(params))


def train(
  task: Task,
  optimizer: optax.GradientTransformation,
  seed: int,
  steps: int,
  every: int = 100,
  param_dtype: Any = jnp.float32,
) -> np.ndarray:
  """Held-out losses of ``task`` trained with ``optimizer``, every ``every`` steps.

  The parameters are initialised from ``seed`` in float32 and stored in
  ``param_dtype`` (rounded once); the model computes in float32 from them, as
  mixed precision does, and their gradient takes their dtype. The batches
  come from ``seed`` too, so two optimizers trained with the same seed see the
  same data in the same order. Each chunk of ``every`` steps is one jitted
  ``lax.scan``. ``optimizer.update`` gets the params: a wrapper that rounds
  them itself (``rmsprop_jax.low_precision_params``) trains them as it would
  in a training loop.

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
    grads = jax.grad(functools.partial(_loss, task))(params, task.batch_at(key))
    updates, state = optimizer.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  def chunk(carry: tuple[Params, Any], keys: jax.Array) -> tuple[Any, jax.Array]:
    carry, _ = jax.lax.scan(one_step, carry, keys)
    return carry, task.eval_loss(_float32(carry[0]))

  run_chunk = jax.jit(chunk)
  keys = jax.random.split(jax.random.key(50_000 + seed), steps)
  losses = [float(_eval_loss(task, params))]
  for i in range(0, steps, every):
    carry, loss = run_chunk(carry, keys[i : i + every])
    losses.append(float(loss))
  return np.asarray(losses)
