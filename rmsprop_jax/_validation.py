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


def is_real_number(value: Any) -> bool:
  """Whether ``value`` is a real number: an int or float, or an array of one.

  Booleans and complex numbers are not, nor are strings or ``None``.
  """
  if isinstance(value, (bool, np.bool_)):
    return False
  if isinstance(value, (int, float, np.integer, np.floating)):
    return True
  dtype = getattr(value, "dtype", None)
  if (
    not isinstance(value, (np.ndarray, np.generic, jax.Array, Tracer)) or dtype is None
  ):
    return False
  return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


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
  if not is_real_number(value):
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


@dataclasses.dataclass(frozen=True, eq=False)
class Names:
  """How one API names the core's hyper-parameters, for its error messages.

  One instance per API, compared by identity: it is part of the static
  configuration that keys the compiled update.

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


# Hyper's two weight-decay fields are one argument, weight_decay, to the user.
_HYPER_KEYS = {
  "coupled_weight_decay": "weight_decay",
  "decoupled_weight_decay": "weight_decay",
}


def check_hyperparameters(names: Names, hyper: Any, *, scale_only: bool) -> None:
  """Checks every hyper-parameter of ``hyper`` (a ``_rule.Hyper``) that is given.

  A learning rate of ``None`` is refused outright, except for
  :func:`scale_by_rms`, which has none: every update would be zero.
  """
  if hyper.learning_rate is None and not scale_only:
    name = names("learning_rate")
    raise ValueError(
      f"{name} must be a non-negative number or an optax schedule; got "
      f"{name}=None, with which every update would be zero."
    )
  for key, value in hyper._asdict().items():
    if value is None and (key in _OPTIONAL or key == "learning_rate"):
      continue  # an option that is off, or scale_by_rms's missing learning rate
    if not (key == "learning_rate" and callable(value)):
      check_hyper(names, _HYPER_KEYS.get(key, key), value)


# Hyper's fields that are None when their option is off.
_OPTIONAL = frozenset(
  {"momentum", "coupled_weight_decay", "decoupled_weight_decay", "max_lr"}
)


def given(names: Names, key: str, value: Any) -> Any:
  """``value``, refused if it is ``None`` where the API has no use for ``None``.

  The builder reads ``None`` as "off"; only an API that documents ``None``
  that way (``rmsprop``'s momentum, Keras' weight decay) may pass it on.
  """
  if value is None and key not in names.none_means_off:
    check_hyper(names, key, value)  # raises the type error, with the range
  return value


def check_scalar_value(name: str, value: Any, what: str) -> None:
  """A value computed while tracing (a schedule's) must be a real scalar.

  Args:
    name: the argument's name as the user typed it (``learning_rate``, ``lr``).
    value: the value, concrete or traced.
    what: where the value comes from, for the message.
  """
  if not is_real_number(value):
    raise TypeError(
      f"{name} must be a real scalar, but {what} is {value!r} of type "
      f"{type(value).__name__}"
      + (f" and dtype {value.dtype}" if hasattr(value, "dtype") else "")
      + "."
    )
  if np.ndim(value) != 0:
    raise ValueError(
      f"{name} must be a real scalar, but {what} has shape {np.shape(value)}: it "
      "would be broadcast into every update. Return one number per step."
    )


def check_flag(names: Names, key: str, value: Any) -> bool:
  """A structural option: a Python bool, or a concrete boolean scalar."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  concrete = isinstance(value, (int, np.integer)) or (
    isinstance(value, (np.ndarray, jax.Array))
    and not isinstance(value, Tracer)
    and np.ndim(value) == 0
    and (value.dtype == np.bool_ or jnp.issubdtype(value.dtype, jnp.integer))
  )
  if concrete and int(value) in (0, 1):
    return bool(value)
  hint = ""
  if isinstance(value, Tracer):
    hint = f" Under optax.inject_hyperparams pass static_args=({names(key)!r},)."
  raise TypeError(
    f"{names(key)} must be True or False; got {value!r} of type "
    f"{type(value).__name__}. It changes what is computed, so it is fixed when "
    f"the optimizer is built.{hint}"
  )


def check_needs_momentum(
  names: Names, options: Mapping[str, bool], momentum: Any
) -> None:
  """Options that act on the momentum buffer need one."""
  for option, on in options.items():
    if on and momentum is None:
      raise ValueError(
        f"{names(option)}=True needs {names('momentum')}; got "
        f"{names('momentum')}=None. Pass e.g. {names('momentum')}=0.9."
      )


def corrected_max_lr(
  names: Names, corrected: bool, decoupled: bool, max_lr: Any, learning_rate: Any
) -> Any:
  """The ``max_lr`` of corrected weight decay; ``None`` when that is off."""
  if not corrected:
    if max_lr is not None:
      raise ValueError(
        f"{names('max_lr')} is read only with {names('corrected_weight_decay')}"
        f"=True; got {names('max_lr')}={max_lr!r}."
      )
    return None
  if not decoupled:
    raise ValueError(
      f"{names('corrected_weight_decay')}=True corrects decoupled weight decay; "
      f"pass {names('decoupled_weight_decay')}=True as well."
    )
  if max_lr is None and callable(learning_rate):
    raise ValueError(
      f"{names('corrected_weight_decay')}=True with a learning-rate schedule "
      f"needs {names('max_lr')}, the learning rate the decay is corrected "
      f"against (timm: the lr the optimizer was built with); got "
      f"{names('max_lr')}=None. Pass e.g. {names('max_lr')}=schedule(0)."
    )
  max_lr = learning_rate if max_lr is None else max_lr
  check_hyper(names, "max_lr", max_lr)
  return max_lr


def centered_state_warning(centered: bool, state_dtype: jnp.dtype | None) -> None:
  """Centred RMSProp computes nu - |mu|^2, which low-precision storage cancels."""
  if not centered or state_dtype is None or state_dtype.itemsize >= 4:
    return
  bits = int(jnp.finfo(state_dtype).nmant)
  # Rounding nu and |mu|^2 to the format loses about 2**-(bits + 1) of each, as
  # much as the variance holds once the spread is below 2**-((bits + 1) / 2).
  spread = 100 * 2.0 ** (-(bits + 1) / 2)
  warn(
    f"centered=True with state_dtype={state_dtype.name}: the variance "
    f"nu - |mu|^2 is a difference of two rounded numbers, and with a {bits}-bit "
    f"mantissa it rounds to 0 once the gradient's spread is below about "
    f"{spread:.0f}% of its mean, so steps grow towards lr * g / sqrt(eps). "
    "Use float32 state for centred RMSProp."
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
  check_array_leaves(params, what)
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


def check_array_leaves(tree: Any, name: str) -> None:
  """Raises TypeError naming the first leaf of ``tree`` that is no array or number.

  An abstract array (``jax.ShapeDtypeStruct``) counts as an array.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    array_like = hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    if not array_like and not isinstance(leaf, (int, float, complex)):
      raise TypeError(
        f"{name}{_path_str(path)} is {leaf!r} of type {type(leaf).__name__}, not "
        "an array or a number."
      )


def flatten_like(
  reference: Any, tree: Any, ref_name: str, tree_name: str, *, arrays: bool = False
) -> list[Any]:
  """Flattens ``tree`` up to the structure of ``reference``.

  With ``arrays``, every leaf found must be an array or a number, not a
  subtree where ``reference`` has a leaf (the params beside the updates; a
  state leaf may be a ``QuantizedArray``).

  Raises:
    ValueError naming both structures when they differ.
  """
  treedef = jax.tree.structure(reference)
  try:
    leaves = treedef.flatten_up_to(tree)
    if arrays:
      for leaf in leaves:
        if jax.tree.structure(leaf).num_nodes != 1:
          raise ValueError(f"a subtree {leaf!r} stands where an array belongs")
    return leaves
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


def _mask_flag(name: str, path: Sequence[Any], m: Any) -> bool:
  if isinstance(m, (bool, np.bool_)):
    return bool(m)
  hint = "Masks are per leaf (elementwise masks are not supported): split the leaf."
  if isinstance(m, (jax.Array, np.ndarray)) and np.ndim(m) == 0:
    hint = (
      "optax.inject_hyperparams takes a callable for a schedule and passes its "
      f"value on: pass static_args=({name!r},)."
    )
  where = name + jax.tree_util.keystr(tuple(path))  # the name alone at the root
  raise TypeError(f"{where} must be a Python bool; got {m!r}. {hint}")


@dataclasses.dataclass(frozen=True)
class StaticMask:
  """A bool pytree in a hashable form: its treedef and its leaves."""

  treedef: Any
  flags: tuple[bool, ...]

  def tree(self) -> Any:
    return self.treedef.unflatten(self.flags)


def static_mask(mask: Any, name: str) -> Any:
  """``mask`` as a hashable value, checked when the optimizer is built.

  ``None`` and callables stay as they are (a callable is resolved against the
  params when the update is traced); a bool pytree becomes a
  :class:`StaticMask`, so that it can key the compiled update.
  """
  if mask is None or callable(mask):
    return mask
  flags = []
  for path, m in jax.tree_util.tree_leaves_with_path(mask):
    flags.append(_mask_flag(name, path, m))
  return StaticMask(jax.tree.structure(mask), tuple(flags))


def broadcast_mask(mask: Any, params: Any, name: str) -> tuple[bool, ...]:
  """Resolves a mask (a bool pytree prefix of params) to one flag per leaf.

  Args:
    mask: a :class:`StaticMask`, or a callable ``params -> bool pytree``.
    params: the tree the mask selects leaves of.
    name: the argument's name, for messages (``weight_decay_mask``).
  """
  mask = mask.tree() if isinstance(mask, StaticMask) else mask(params)
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{name} must be a pytree of bools with the structure of params (or a "
      "prefix of it), or a callable returning one.\n"
      f"  params: {jax.tree.structure(params)}\n"
      f"  {name}: {jax.tree.structure(mask)}\n({e})"
    ) from None
  flags = []
  for path, m in jax.tree_util.tree_leaves_with_path(full):
    flags.append(_mask_flag(name, path, m))
  return tuple(flags)
