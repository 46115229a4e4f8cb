"""optax's wrappers around an optimizer, each with the way to the state inside.

``WRAPPERS[name] = (wrap, inner)``: ``wrap(factory, kwargs)`` builds the
optimizer ``factory(**kwargs)`` inside the wrapper, and ``inner(state)`` is the
optimizer's own state inside the wrapper's, reached by hand. ``masked`` and
``partition`` give the first parameter leaf to another transformation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def _all_but_first(params: Any, first: Any, value: Any) -> Any:
  leaves, treedef = jax.tree.flatten(params)
  return treedef.unflatten([first] + [value] * (len(leaves) - 1))


Wrap = Callable[[Callable[..., Any], dict[str, Any]], Any]

WRAPPERS: dict[str, tuple[Wrap, Callable[[Any], Any]]] = {
  "chain": (
    lambda f, kw: optax.chain(optax.clip(1.0), f(**kw)),
    lambda state: state[1],
  ),
  "inject_hyperparams": (
    lambda f, kw: optax.inject_hyperparams(f)(**kw),
    lambda state: state.inner_state,
  ),
  "masked": (
    lambda f, kw: optax.masked(f(**kw), lambda p: _all_but_first(p, False, True)),
    lambda state: state.inner_state,
  ),
  "partition": (
    lambda f, kw: optax.transforms.partition(
      {"rms": f(**kw), "sgd": optax.sgd(0.1)},
      lambda p: _all_but_first(p, "sgd", "rms"),
    ),
    lambda state: state.inner_states["rms"].inner_state,
  ),
  "MultiSteps": (
    lambda f, kw: optax.MultiSteps(f(**kw), every_k_schedule=2),
    lambda state: state.inner_opt_state,
  ),
  "apply_if_finite": (
    lambda f, kw: optax.apply_if_finite(f(**kw), max_consecutive_errors=3),
    lambda state: state.inner_state,
  ),
}
