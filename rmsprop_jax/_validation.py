"""Argument and pytree checks shared by the core and the presets.

Every check raises at the call site with a message that names the argument (or
the tree path), the offending value, and what is allowed, so that mistakes never
surface as shape errors deep inside XLA.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import pathlib
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.core import Tracer


def concrete_value(value: Any) -> float | None:
  """Returns ``value`` as a Python float if it is a concrete scalar, else None.

  Traced values (under ``jit``, ``vmap`` or ``inject_hyperparams`` inside a
  jitted step) cannot be inspected, so they are not checked.
  """
  if isinstance(value, Tracer):
    return None
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float, np.number)):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    if not jnp.issubdtype(value.dtype, jnp.number):
      return None
    return float(np.real(np.asarray(value)))
  return None


def check_range(
  name: str,
  value: Any,
  *,
  low: float | None = None,
  high: float | None = None,
  low_open: bool = False,
  high_open: bool = False,
  allowed: str,
) -> None:
  """Checks a scalar hyper-parameter if it is concrete.

  Args:
    name: the argument's name as the user typed it.
    value: the argument.
    low: lower bound, or None.
    high: upper bound, or None.
    low_open: whether ``low`` itself is excluded.
    high_open: whether ``high`` itself is excluded.
    allowed: the allowed set in words, for the message (e.g. ``"0 <= decay < 1"``).
  """
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) != 0:
    raise ValueError(
      f"{name} must be a scalar ({allowed}); got an array of shape {np.shape(value)}."
    )
  if not isinstance(value, (int, float, np.number, np.ndarray, jax.Array, Tracer)):
    raise TypeError(
      f"{name} must be a real number ({allowed}); got {value!r} of type "
      f"{type(value).__name__}."
    )
  x = concrete_value(value)
  if x is None:
    return
  bad = math.isnan(x)
  bad |= low is not None and (x <= low if low_open else x < low)
  bad |= high is not None and (x >= high if high_open else x > high)
  if bad:
    raise ValueError(f"{name} must satisfy {allowed}; got {name}={x!r}.")


@dataclasses.dataclass(frozen=True)
class Names:
  """How one API names the core's hyper-parameters, for its error messages.

  Attributes:
    rename: the API's name of a core argument, where it differs
      (``{"decay": "alpha"}`` for PyTorch).
    none_means_off: the arguments this API switches off with ``None``.
  """

  rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
  none_means_off: frozenset[str] = frozenset()

  def __call__(self, key: str) -> str:
    return self.rename.get(key, key)


# Lower bound (exclusive?) and whether the value must stay below 1.
_BOUNDS: dict[str, tuple[bool, bool]] = {
  "learning_rate": (False, False),
  "decay": (False, True),
  "eps": (False, False),
  "initial_scale": (False, False),
  "momentum": (False, True),
  "weight_decay": (False, False),
  "max_lr": (True, False),
}


def check_hyper(names: Names, key: str, value: Any) -> None:
  """Checks the core argument ``key``, reported under the API's name for it."""
  name = names(key)
  low_open, below_one = _BOUNDS[key]
  if below_one:
    allowed = f"0 <= {name} < 1"
  else:
    allowed = f"{name} {'>' if low_open else '>='} 0"
  if key in names.none_means_off:
    allowed += ", or None"
  check_range(
    name,
    value,
    low=0.0,
    high=1.0 if below_one else None,
    low_open=low_open,
    high_open=True,
    allowed=allowed,
  )


_LIBRARY_DIRS = tuple(
  f"{pathlib.Path(f).parent}{os.sep}" for f in (__file__, optax.__file__, jax.__file__)
)


def warn(message: str) -> None:
  """A ``UserWarning`` attributed to the first caller outside the libraries.

  The line it names is the user's, whichever public function they called and
  however optax wrappers (``inject_hyperparams``) reach the package.
  """
  frame, level = sys._getframe(1), 2
  while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, UserWarning, stacklevel=level)


def check_state_dtype(state_dtype: Any) -> jnp.dtype | None:
  """Canonicalises ``state_dtype``; it must be a real floating dtype or None."""
  if state_dtype is None:
    return None
  if isinstance(state_dtype, (jax.Array, np.ndarray, Tracer)):
    # optax.inject_hyperparams takes a dtype (a callable) for a schedule and
    # hands us its output, an array.
    raise TypeError(
      f"state_dtype must be a dtype such as jnp.bfloat16; got an array of "
      f"dtype {state_dtype.dtype}. Under optax.inject_hyperparams pass "
      "static_args=('state_dtype',)."
    )
  try:
    dtype = jnp.dtype(state_dtype)
  except TypeError as e:
    if isinstance(state_dtype, str) and state_dtype in ("float8_e4m3", "float8_e3m4"):
      raise ValueError(
        f"state_dtype={state_dtype!r} (8-bit state in that format) needs "
        f"ml_dtypes >= 0.5 (installed: ml_dtypes {_installed('ml_dtypes')}, jax "
        f"{jax.__version__}). Upgrade ml_dtypes, or use jnp.float8_e4m3fn."
      ) from e
    raise ValueError(
      f"state_dtype must be None or a floating dtype such as jnp.float32 or "
      f"jnp.bfloat16; got {state_dtype!r}."
    ) from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f"state_dtype must be None or a floating dtype such as jnp.float32 or "
      f"jnp.bfloat16; got {dtype.name}."
    )
  return dtype


def _installed(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "none"


def _path_str(path: Sequence[Any]) -> str:
  return jax.tree_util.keystr(tuple(path)) or "<root>"


def check_param_leaves(params: Any, what: str = "params") -> None:
  """Raises TypeError naming the path of any non-floating leaf."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.result_type(leaf)
    if not (
      jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)
    ):
      raise TypeError(
        f"{what}{_path_str(path)} has dtype {jnp.dtype(dtype).name}; "
        "RMSProp needs floating or complex leaves. Keep integer and boolean "
        "leaves out of the optimised tree (e.g. with optax.masked or "
        "eqx.filter), or set them to None."
      )


def flatten_like(reference: Any, tree: Any, ref_name: str, tree_name: str) -> list[Any]:
  """Flattens ``tree`` up to the structure of ``reference``.

  Raises:
    ValueError naming both structures when they differ.
  """
  treedef = jax.tree.structure(reference)
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{tree_name} does not have the structure of {ref_name}.\n"
      f"  {ref_name}: {treedef}\n"
      f"  {tree_name}: {jax.tree.structure(tree)}\n"
      f"({e})"
    ) from None


def check_shapes(
  reference: Any,
  ref_shapes: Sequence[tuple[int, ...]],
  other_shapes: Sequence[tuple[int, ...]],
  ref_name: str,
  other_name: str,
) -> None:
  """Raises ValueError naming the first leaf whose shapes differ.

  Shapes must match exactly: a silent broadcast would corrupt the state.
  """
  for i, (a, b) in enumerate(zip(ref_shapes, other_shapes, strict=True)):
    if tuple(a) != tuple(b):
      path = jax.tree_util.tree_flatten_with_path(reference)[0][i][0]
      raise ValueError(
        f"Shape mismatch at {ref_name}{_path_str(path)}: {ref_name} has "
        f"shape {tuple(a)} but {other_name} has shape {tuple(b)}. Shapes "
        "must match exactly; nothing is broadcast."
      )


def broadcast_mask(mask: Any, params: Any) -> tuple[bool, ...]:
  """Resolves a weight-decay mask (a bool pytree prefix of params) to flags.

  Returns one Python bool per parameter leaf.
  """
  if callable(mask):
    mask = mask(params)
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "weight_decay_mask must be a pytree of bools with the structure of "
      "params (or a prefix of it), or a callable returning one.\n"
      f"  params: {jax.tree.structure(params)}\n"
      f"  weight_decay_mask: {jax.tree.structure(mask)}\n({e})"
    ) from None
  flags = []
  for path, m in jax.tree_util.tree_leaves_with_path(full):
    if isinstance(m, (bool, np.bool_)):
      flags.append(bool(m))
    else:
      raise TypeError(
        f"weight_decay_mask{_path_str(path)} must be a Python bool; got "
        f"{m!r}. Elementwise masks are not supported: split the leaf."
      )
  return tuple(flags)
