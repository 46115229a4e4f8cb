"""A one-command demo: RMSProp, SGD and Adam train the same MLP on two spirals.

Run it with::

  pip install ".[demo]"
  python -m rmsprop_jax.demo [--steps N] [--out DIR] [--seed S]

It generates the data set itself (no download), trains one small MLP per
optimizer from the same initial weights under ``jax.jit``, prints the loss as
it falls and a final table, and saves two figures into ``DIR`` (default
``demo_output/``), printing where: ``loss_curves.png`` and
``decision_boundary.png``. matplotlib and tqdm are
optional: without tqdm (or without a terminal) progress is printed as plain
lines, and without matplotlib the figures are skipped with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmsprop_jax

Params = dict[str, jax.Array]
LOSS_FILE = "loss_curves.png"
# A folder of its own (ignored by the repository's .gitignore), so that running
# the demo in a clone leaves the clone clean.
DEFAULT_OUT = "demo_output"
BOUNDARY_FILE = "decision_boundary.png"


# --------------------------------------------------------------------- data --


def make_spirals(
  n: int, *, noise: float = 0.25, turns: float = 1.75, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Two interleaved spirals, a classic task no linear model can solve.

  Point ``i`` of class ``c`` lies at angle ``θ = 2π·turns·r`` and radius ``r``
  (``r`` uniform in ``[0.05, 1]``), rotated by ``π·c``, plus Gaussian noise of
  standard deviation ``noise·r/4`` (the arms get blurrier outwards).

  Args:
    n: number of points; half of them (rounded down) in class 0.
    noise: relative noise level; 0 gives two exact curves.
    turns: how many times each arm winds around the centre.
    seed: seed of the NumPy generator, so the data are reproducible.

  Returns:
    ``(x, y)``: float32 inputs of shape ``(n, 2)`` in roughly ``[-1, 1]²`` and
    int32 labels of shape ``(n,)`` in ``{0, 1}``.
  """
  rng = np.random.default_rng(seed)
  y = (np.arange(n) >= n // 2).astype(np.int32)
  r = rng.uniform(0.05, 1.0, size=n)
  theta = 2 * np.pi * turns * r + np.pi * y
  x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
  x += rng.normal(size=(n, 2)) * (noise * r / 4)[:, None]
  perm = rng.permutation(n)
  return x[perm].astype(np.float32), y[perm]


# -------------------------------------------------------------------- model --


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> Params:
  """Weights of an MLP with layer widths ``sizes`` (LeCun-normal, zero bias)."""
  params: Params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (k, fan_in, fan_out) in enumerate(
    zip(keys, sizes[:-1], sizes[1:], strict=True)
  ):
    params[f"w{i}"] = jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)
    params[f"b{i}"] = jnp.zeros((fan_out,))
  return params


def mlp(params: Params, x: jax.Array) -> jax.Array:
  """Logits of the MLP: tanh hidden layers, a linear output layer."""
  depth = len(params) // 2
  h = x
  for i in range(depth):
    h = h @ params[f"w{i}"] + params[f"b{i}"]
    if i < depth - 1:
      h = jnp.tanh(h)
  return h


def loss_fn(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the MLP's logits against integer labels."""
  logits = mlp(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params: Params, x: jax.Array, y: jax.Array) -> float:
  """Fraction of points whose most likely class is the label."""
  return float(jnp.mean(jnp.argmax(mlp(params, x), axis=-1) == y))


# ----------------------------------------------------------------- training --


def optimizers(steps: int) -> dict[str, optax.GradientTransformation]:
  """The three contestants, each with a peak learning rate that suits it here.

  All three follow a cosine decay of their learning rate over ``steps``.
  """

  def cosine(peak: float) -> optax.Schedule:
    return optax.cosine_decay_schedule(peak, decay_steps=steps)

  return {
    "rmsprop": rmsprop_jax.rmsprop(learning_rate=cosine(1e-2), decay=0.9),
    "sgd": optax.sgd(learning_rate=cosine(0.3), momentum=0.9),
    "adam": optax.adam(learning_rate=cosine(1e-2)),
  }


def make_step(
  opt: optax.GradientTransformation,
) -> Callable[[Params, Any, jax.Array, jax.Array], tuple[Params, Any, jax.Array]]:
  """One training step: gradient, optimizer update, new parameters.

  Returns a pure function of ``(params, state, x, y)`` giving
  ``(new_params, new_state, loss)``, meant to be compiled with ``jax.jit`` so
  that the whole step, optimizer included, is one XLA computation.
  """

  def step(
    params: Params, state: Any, x: jax.Array, y: jax.Array
  ) -> tuple[Params, Any, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = opt.update(grads, state, params)
    new_params = cast(Params, optax.apply_updates(params, updates))
    return new_params, state, loss

  return step


@dataclasses.dataclass
class Result:
  """What one optimizer's run produced."""

  name: str
  params: Params
  losses: np.ndarray  # losses[i]: training loss after i steps
  accuracy: float  # on held-out points
  compile_s: float
  train_s: float


def _progress(name: str, steps: int) -> tuple[Iterator[int], Callable[..., None]]:
  """Steps to iterate and a reporter: a tqdm bar on a terminal, else prints.

  Returns ``(iterator, report)``; ``report(step, loss)`` shows the loss now.
  """
  try:
    from tqdm.auto import tqdm
  except ImportError:
    tqdm = None
  if tqdm is not None and sys.stderr.isatty():
    # An explicit width: tqdm draws nothing on a terminal reporting 0 columns.
    width = shutil.get_terminal_size().columns
    bar = tqdm(range(steps), desc=f"{name:>8}", ncols=width, mininterval=0.2)

    def report_bar(step: int, loss: float) -> None:
      del step
      bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    return iter(bar), report_bar

  every = max(1, steps // 4)

  def report_print(step: int, loss: float) -> None:
    if step % every == 0 or step == steps - 1:
      print(f"  {name:>8}  step {step + 1:>5}/{steps}  loss {loss:.4f}", flush=True)

  return iter(range(steps)), report_print


def train(
  name: str,
  opt: optax.GradientTransformation,
  params: Params,
  data: tuple[jax.Array, ...],
  steps: int,
) -> Result:
  """Trains ``params`` full-batch for ``steps`` steps with ``opt``.

  Compilation is timed apart from training; training time includes waiting
  for the last step to finish.
  """
  x_train, y_train, x_test, y_test = data
  state = opt.init(params)
  t0 = time.perf_counter()
  step = jax.jit(make_step(opt)).lower(params, state, x_train, y_train).compile()
  compile_s = time.perf_counter() - t0

  losses = []
  steps_iter, report = _progress(name, steps)
  t0 = time.perf_counter()
  for i in steps_iter:
    params, state, loss = step(params, state, x_train, y_train)
    losses.append(loss)
    if i % 25 == 0 or i == steps - 1:
      report(i, float(loss))  # float() waits for the step: only now and then
  jax.block_until_ready(params)
  train_s = time.perf_counter() - t0
  losses.append(loss_fn(params, x_train, y_train))
  return Result(
    name=name,
    params=params,
    losses=np.asarray(jnp.stack(losses)),
    accuracy=accuracy(params, x_test, y_test),
    compile_s=compile_s,
    train_s=train_s,
  )


# ------------------------------------------------------------------- report --


def loss_table(results: Sequence[Result], rows: int = 6) -> str:
  """Training loss of every optimizer at ``rows`` evenly spaced steps."""
  steps = len(results[0].losses) - 1
  at = np.unique(np.linspace(0, steps, rows).round().astype(int))
  lines = ["step  " + "".join(f"{r.name:>10}" for r in results)]
  for i in at:
    lines.append(f"{i:>4}  " + "".join(f"{r.losses[i]:>10.4f}" for r in results))
  return "\n".join(lines)


def summary_table(results: Sequence[Result]) -> str:
  """The final Markdown table: losses, held-out accuracy and timings."""
  lines = [
    "| optimizer | first loss | final loss | test accuracy | compile (s) | train (s) |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for r in results:
    lines.append(
      f"| {r.name} | {r.losses[0]:.4f} | {r.losses[-1]:.4f} "
      f"| {r.accuracy:.1%} | {r.compile_s:.2f} | {r.train_s:.2f} |"
    )
  return "\n".join(lines)


# -------------------------------------------------------------------- plots --


def save_plots(
  results: Sequence[Result], data: tuple[jax.Array, ...], out: pathlib.Path
) -> list[pathlib.Path]:
  """Saves the loss curves and each optimizer's decision boundary as PNGs.

  Returns the written paths; an empty list (after saying why) when
  matplotlib is not installed.
  """
  try:
    import matplotlib
  except ImportError:
    print(
      "matplotlib is not installed: skipping the figures "
      '(pip install "rmsprop_jax[demo]" to get them).'
    )
    return []
  matplotlib.use("Agg")  # files only; works without a display
  import matplotlib.pyplot as plt

  out.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for r in results:
    ax.plot(r.losses, label=r.name, lw=1.5)
  ax.set(
    xlabel="step",
    ylabel="training loss",
    yscale="log",
    title="Two spirals: training loss",
  )
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  loss_path = out / LOSS_FILE
  fig.savefig(loss_path, dpi=90, bbox_inches="tight")
  plt.close(fig)

  x_train, y_train = np.asarray(data[0]), np.asarray(data[1])
  grid = np.linspace(-1.2, 1.2, 150, dtype=np.float32)
  gx, gy = np.meshgrid(grid, grid)
  points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
  fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.4))
  for ax, r in zip(np.atleast_1d(axes), results, strict=True):
    prob = jax.nn.softmax(mlp(r.params, points))[:, 1].reshape(gx.shape)
    ax.contourf(gx, gy, np.asarray(prob), levels=20, cmap="RdBu_r", alpha=0.8)
    ax.contour(gx, gy, np.asarray(prob), levels=[0.5], colors="k", linewidths=1)
    ax.scatter(
      x_train[:, 0], x_train[:, 1], c=y_train, cmap="RdBu_r", s=4, edgecolors="none"
    )
    ax.set(
      title=f"{r.name}: {r.accuracy:.1%} test acc.",
      xticks=[],
      yticks=[],
      aspect="equal",
    )
  fig.tight_layout()
  boundary_path = out / BOUNDARY_FILE
  fig.savefig(boundary_path, dpi=80, bbox_inches="tight")
  plt.close(fig)
  return [loss_path, boundary_path]


# --------------------------------------------------------------------- main --


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The command line: ``--steps``, ``--out``, ``--seed``."""
  parser = argparse.ArgumentParser(
    prog="python -m rmsprop_jax.demo",
    description="Train a small MLP on two spirals with RMSProp, SGD and Adam.",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=1000,
    help="training steps per optimizer (default: 1000)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path(DEFAULT_OUT),
    help=f"folder for the PNG figures (default: {DEFAULT_OUT})",
  )
  parser.add_argument(
    "--seed", type=int, default=0, help="seed of the data and the initial weights"
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be a positive integer; got {args.steps}.")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the demo; returns the process exit code."""
  args = parse_args(argv)
  x_train, y_train = make_spirals(1000, seed=args.seed)
  x_test, y_test = make_spirals(1000, seed=args.seed + 1)
  data = tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))
  params = init_mlp(jax.random.key(args.seed), [2, 64, 64, 2])
  print(
    f"Two spirals: {len(x_train)} training and {len(x_test)} test points; "
    f"MLP 2-64-64-2; {args.steps} full-batch steps per optimizer with a "
    f"cosine-decayed learning rate, on {jax.devices()[0].platform}."
  )
  results = [
    train(name, opt, params, data, args.steps)
    for name, opt in optimizers(args.steps).items()
  ]
  print("\nTraining loss\n" + loss_table(results))
  print("\n" + summary_table(results))
  for path in save_plots(results, data, args.out):
    print(f"saved {path.resolve()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
