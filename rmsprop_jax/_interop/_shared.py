"""What the converters share: the parameter layout, dtypes, counts, positions.

PyTorch and Keras number the parameters an optimizer holds; their parameter
``i`` (PyTorch's index in ``state_dict()``, the ``i``-th variable a Keras
optimizer was built on) is ``jax.tree.leaves(params)[i]``, its *position*.
Every state leaf a converter writes gets the dtype that ``init`` allocates
for its parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _compile, _storage
from rmsprop_jax import _validation as v
from rmsprop_jax._quantized import QuantizedArray
from rmsprop_jax._transform import RMSPropState


def is_rms_state(x: Any) -> bool:
  """Picks the states of :func:`rmsprop` and its presets for the locator."""
  return isinstance(x, RMSPropState)


class Leaves(NamedTuple):
  """The parameter leaves in the library's order, with their names."""

  shapes: list[tuple[int, ...]]
  dtypes: list[jnp.dtype]
  names: list[str]  # "params['w']"
  treedef: Any


def param_leaves(params: Any, library: str) -> Leaves:
  """The leaves of ``params``; complex ones are refused, as ``library``'s."""
  v.check_param_leaves(params)
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = Leaves([], [], [], treedef)
  for path, leaf in with_path:
    name = f"params{jax.tree_util.keystr(path)}"
    dtype = getattr(leaf, "dtype", None)
    dtype = jnp.dtype(np.result_type(leaf) if dtype is None else dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      raise TypeError(
        f"{name} is complex ({dtype.name}): {library} treats a complex parameter "
        "as pairs of real numbers, each with its own average, while rmsprop_jax "
        "averages |g|^2. Hand over real parameters (e.g. a view as real pairs)."
      )
    leaves.shapes.append(tuple(getattr(leaf, "shape", np.shape(leaf))))
    leaves.dtypes.append(dtype)
    leaves.names.append(name)
  return leaves


def init_dtype(param_dtype: Any, *, is_nu: bool) -> jnp.dtype:
  """The dtype ``init`` allocates for a state leaf of such a parameter."""
  return _storage.storage_dtype(param_dtype, None, is_nu=is_nu)


def to_numpy(x: Any) -> np.ndarray:
  """A tensor (without importing torch), array or number as a NumPy array."""
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def leaf_value(
  leaves: Leaves, i: int, value: np.ndarray | None, *, is_nu: bool
) -> jax.Array:
  """Leaf ``i`` of a state tree, in the dtype ``init`` allocates for it."""
  dtype = init_dtype(leaves.dtypes[i], is_nu=is_nu)
  if value is None:  # the library has not stepped this parameter yet
    return jnp.zeros(leaves.shapes[i], dtype)
  return jnp.asarray(value, dtype)


def state_tree(
  leaves: Leaves, members: frozenset[int], value: Callable[[int], jax.Array]
) -> Any:
  """A tree like ``params``: ``value(i)`` for members, MaskedNode elsewhere."""
  return leaves.treedef.unflatten(
    [value(i) if i in members else optax.MaskedNode() for i in range(len(leaves.names))]
  )


def positions(tree: Any, name: str) -> dict[int, np.ndarray]:
  """The leaves of a state tree as NumPy arrays, keyed by parameter position.

  A ``MaskedNode`` (a parameter that ``optax.masked`` or a partition gives
  to another transformation) has no entry.
  """
  flat = jax.tree.leaves(
    tree, is_leaf=lambda x: isinstance(x, (optax.MaskedNode, QuantizedArray))
  )
  out = {}
  for i, x in enumerate(flat):
    if isinstance(x, optax.MaskedNode):
      continue
    _storage.check_full_precision(x, name, "the libraries keep")
    if jnp.iscomplexobj(x):
      raise TypeError(
        f"{name} holds a complex leaf (parameter {i}): the libraries treat "
        "complex parameters as real pairs, which this state does not describe."
      )
    out[i] = np.array(x)  # a writable copy
  return out


def check_schedule(schedule: Any, count: int, current: float, where: str) -> None:
  """Warns when a schedule does not continue at the rate the run had reached."""
  expected = float(_compile.schedule_value(schedule, jnp.asarray(count, jnp.int32)))
  if not math.isclose(expected, current, rel_tol=1e-5, abs_tol=1e-12):
    v.warn(
      f"the learning-rate schedule gives {expected:.6g} at step {count}, but "
      f"{where} is {current:.6g}: the run continues at {expected:.6g}, not where "
      "it was. Pass the schedule the run was following, as a function of the "
      "number of optimizer steps taken."
    )


def count_value(
  count: Any, given: int | None, keyword: str, library: str, name: str
) -> int:
  """The step count to write: ``count`` (``name``), or ``given`` without one."""
  if count is None:
    if given is None:
      raise ValueError(
        f"{name} is None (its optimizer has no learning-rate schedule, so it "
        f"counts no steps), but {library} stores the number of steps taken. "
        f"Pass {keyword}=, the number of optimizer steps the run has taken."
      )
    return int(given)
  value = v.concrete_value(count)
  if value is None:
    raise TypeError(
      f"{name} is traced: convert the state outside jax.jit, where its values "
      "are concrete."
    )
  if given is not None and int(given) != int(value):
    raise ValueError(
      f"{name} = {value:.0f} but {keyword}={given}: both are the number of "
      f"steps taken. Leave {keyword} out to use {name}."
    )
  return int(value)
