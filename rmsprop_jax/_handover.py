"""Handing a PyTorch or Keras RMSProp run over to rmsprop_jax mid-training, and back.

PyTorch's ``torch.optim.RMSprop`` and Keras 3's ``keras.optimizers.RMSprop``
keep the statistics of :class:`RMSPropState` under other names:

================  ======================  ===================================  =======
``RMSPropState``  PyTorch ``state[i]``    Keras 3 slot                         sign
================  ======================  ===================================  =======
``nu``            ``square_avg``          ``<variable>_velocity``              same
``mu`` (centred)  ``grad_avg``            ``<variable>_average_gradient``      same
``trace``         ``momentum_buffer``     ``<variable>_momentum``              negated
``count``         ``step`` (per param)    ``iterations``                       same
================  ======================  ===================================  =======

Parameter ``i`` of the library (PyTorch's index in ``state_dict()``, the
``i``-th variable the Keras optimizer was built on) is
``jax.tree.leaves(params)[i]``. Neither library is imported before a function
needs it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _presets, _storage
from rmsprop_jax import _validation as v
from rmsprop_jax._quantized import QuantizedArray
from rmsprop_jax._transform import RMSPropState

# ---------------------------------------------------------------------- shared


class _Leaves(NamedTuple):
  """The parameter leaves in the library's order, with their names."""

  shapes: list[tuple[int, ...]]
  dtypes: list[jnp.dtype]
  names: list[str]  # "params['w']"
  treedef: Any


def _param_leaves(params: Any, library: str) -> _Leaves:
  v.check_param_leaves(params)
  with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = _Leaves([], [], [], treedef)
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


def _to_numpy(x: Any) -> np.ndarray:
  """A tensor (without importing torch), array or number as a NumPy array."""
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.asarray(x)


def _leaf_value(
  leaves: _Leaves, i: int, value: np.ndarray | None, *, is_nu: bool
) -> jax.Array:
  """Leaf ``i`` of a state tree, in the dtype ``init`` allocates for it."""
  dtype = _storage.storage_dtype(leaves.dtypes[i], None, is_nu=is_nu)
  if value is None:  # the library has not stepped this parameter yet
    return jnp.zeros(leaves.shapes[i], dtype)
  return jnp.asarray(value, dtype)


def _state_tree(
  leaves: _Leaves, members: frozenset[int], value: Callable[[int], jax.Array]
) -> Any:
  """A tree like ``params``: ``value(i)`` for members, MaskedNode elsewhere."""
  return leaves.treedef.unflatten(
    [value(i) if i in members else optax.MaskedNode() for i in range(len(leaves.names))]
  )


def _check_schedule(schedule: Any, count: int, current: float, where: str) -> None:
  """Warns when a schedule does not continue at the rate the run had reached."""
  expected = float(schedule(jnp.asarray(count, jnp.int32)))
  if not math.isclose(expected, current, rel_tol=1e-5, abs_tol=1e-12):
    v.warn(
      f"the learning-rate schedule gives {expected:.6g} at step {count}, but "
      f"{where} is {current:.6g}: the run continues at {expected:.6g}, not where "
      "it was. Pass the schedule the run was following, as a function of the "
      "number of optimizer steps taken."
    )


def _count_value(count: Any, given: int | None, keyword: str, library: str) -> int:
  """The step count to write: ``state.count``, or ``given`` when there is none."""
  if count is None:
    if given is None:
      raise ValueError(
        f"state.count is None (its optimizer has no learning-rate schedule, so "
        f"it counts no steps), but {library} stores the number of steps taken. "
        f"Pass {keyword}=, the number of optimizer steps the run has taken."
      )
    return int(given)
  value = v.concrete_value(count)
  if value is None:
    raise TypeError(
      "state.count is traced: convert the state outside jax.jit, where its "
      "values are concrete."
    )
  if given is not None and int(given) != int(value):
    raise ValueError(
      f"state.count = {value:.0f} but {keyword}={given}: both are the number of "
      f"steps taken. Leave {keyword} out to use state.count."
    )
  return int(value)


def _positions(tree: Any, name: str) -> dict[int, np.ndarray]:
  """The leaves of a state tree as NumPy arrays, keyed by parameter position."""
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


def _chained_rms_state(state: Any, who: str) -> RMSPropState:
  """The RMSPropState of ``state``, alone or last in an optax.chain of clips."""
  if isinstance(state, RMSPropState):
    return state
  if (
    isinstance(state, tuple)
    and state
    and isinstance(state[-1], RMSPropState)
    and all(isinstance(s, optax.EmptyState) for s in state[:-1])
  ):
    return state[-1]
  raise TypeError(
    f"{who} takes an RMSPropState, or the state (EmptyState(), ..., "
    f"RMSPropState) of an optax.chain of clipping and an RMSProp preset; got "
    f"{type(state).__name__}. Under optax.inject_hyperparams pass "
    "state.inner_state."
  )


# --------------------------------------------------------------------- PyTorch

_TORCH_REQUIRED = ("lr", "alpha", "eps", "weight_decay", "params")
# What torch's RMSprop.__setstate__ fills in for groups saved by older releases.
_TORCH_DEFAULTS = {"momentum": 0.0, "centered": False, "maximize": False}
# Read by torch for other purposes than the update (kernels, autograd), or
# written by learning-rate schedulers for their own use.
_TORCH_IGNORED = frozenset(
  {
    "foreach",
    "capturable",
    "differentiable",
    "initial_lr",
    "max_lr",
    "min_lr",
    "swa_lr",
  }
)
_TORCH_KNOWN = frozenset(_TORCH_REQUIRED) | frozenset(_TORCH_DEFAULTS) | _TORCH_IGNORED


@dataclasses.dataclass(frozen=True)
class _TorchGroup:
  """One parameter group: its parameters and what torch's update reads."""

  index: int
  params: tuple[int, ...]
  recorded_lr: float  # the group's lr when the state_dict was taken
  lr: Any  # what the preset gets: recorded_lr, or the caller's lr or schedule
  alpha: float
  eps: float
  weight_decay: float
  momentum: float
  centered: bool
  maximize: bool

  def rule(self) -> tuple[Any, ...]:
    """Everything but the weight decay, which a mask can vary per leaf."""
    return (self.lr, self.alpha, self.eps, self.momentum, self.centered, self.maximize)

  def preset(self, weight_decay: float, mask: Any) -> optax.GradientTransformation:
    return _presets.torch_rmsprop(
      self.lr,
      self.alpha,
      self.eps,
      weight_decay,
      self.momentum,
      self.centered,
      self.maximize,
      weight_decay_mask=mask,
    )


class _Unit(NamedTuple):
  """One ``torch_rmsprop`` of the result and the parameters it steps."""

  group: _TorchGroup
  weight_decay: float
  mask: Any  # weight_decay_mask, or None
  members: frozenset[int]


def _check_group_keys(i: int, group: Mapping[str, Any]) -> None:
  missing = [k for k in _TORCH_REQUIRED if k not in group]
  if missing:
    raise ValueError(
      f"param_groups[{i}] has no {missing}: every group of a torch.optim.RMSprop "
      f"state_dict has {list(_TORCH_REQUIRED)} (Adam's has 'betas' instead of "
      "'alpha'). Pass the state_dict of a torch.optim.RMSprop."
    )
  unknown = sorted(set(group) - _TORCH_KNOWN)
  if {"max_momentum", "base_momentum"} & set(unknown):
    raise ValueError(
      f"param_groups[{i}] has 'max_momentum' and 'base_momentum': a OneCycleLR "
      "or CyclicLR with cycle_momentum=True changes the momentum at every step, "
      "and rmsprop_jax's momentum is a constant. Delete those keys to continue "
      f"with the group's current momentum ({group.get('momentum')}) fixed."
    )
  if unknown:
    raise ValueError(
      f"param_groups[{i}] has {unknown}, which torch.optim.RMSprop neither "
      "writes nor reads: the state_dict may come from another optimizer (timm's "
      "RMSpropTF writes 'decoupled_decay' and 'lr_in_momentum') whose update "
      "differs. Delete those keys if they do not change the update."
    )


def _torch_group(i: int, group: Any) -> _TorchGroup:
  if not isinstance(group, Mapping):
    raise TypeError(f"param_groups[{i}] is a {type(group).__name__}, not a dict.")
  _check_group_keys(i, group)
  g = {**_TORCH_DEFAULTS, **group}
  lr = float(_to_numpy(g["lr"]))  # a tensor lr (capturable) too
  return _TorchGroup(
    index=i,
    params=tuple(int(p) for p in g["params"]),
    recorded_lr=lr,
    lr=lr,
    alpha=float(_to_numpy(g["alpha"])),
    eps=float(_to_numpy(g["eps"])),
    weight_decay=float(_to_numpy(g["weight_decay"])),
    momentum=float(_to_numpy(g["momentum"])),
    centered=bool(g["centered"]),
    maximize=bool(g["maximize"]),
  )


def _with_lr(groups: list[_TorchGroup], lr: Any) -> list[_TorchGroup]:
  """The groups with the caller's learning rate or schedule in place of theirs."""
  if lr is None:
    return groups
  if isinstance(lr, Sequence) and not isinstance(lr, str):
    if len(lr) != len(groups):
      raise ValueError(
        f"lr has {len(lr)} entries but the state_dict has {len(groups)} "
        "parameter groups: pass one learning rate or schedule per group (None "
        "keeps the group's own lr), or a single one for every group."
      )
    return [
      g if x is None else dataclasses.replace(g, lr=x)
      for g, x in zip(groups, lr, strict=True)
    ]
  recorded = sorted({g.recorded_lr for g in groups})
  if len(recorded) > 1:
    raise ValueError(
      f"lr applies to every parameter group, but the groups' learning rates "
      f"differ ({', '.join(f'{x:g}' for x in recorded)}): pass a list with one "
      "learning rate or schedule per group, in the order of param_groups."
    )
  return [dataclasses.replace(g, lr=lr) for g in groups]


def _torch_groups(state_dict: Any, n_leaves: int, lr: Any) -> list[_TorchGroup]:
  keys = sorted(state_dict) if isinstance(state_dict, Mapping) else None
  if keys is None or not {"state", "param_groups"} <= set(keys):
    raise TypeError(
      "state_dict must be torch_optimizer.state_dict(), a dict with 'state' and "
      f"'param_groups'; got a {type(state_dict).__name__}"
      + ("." if keys is None else f" with keys {keys}.")
    )
  groups = [_torch_group(i, g) for i, g in enumerate(state_dict["param_groups"])]
  indices = sorted(i for g in groups for i in g.params)
  if len(indices) != n_leaves:
    raise ValueError(
      f"the state_dict's param_groups hold {len(indices)} parameters but params "
      f"has {n_leaves} leaves. PyTorch's parameter i is jax.tree.leaves(params)"
      "[i]: pass the parameters the optimizer was built on, in the order of "
      "model.parameters()."
    )
  if indices != list(range(n_leaves)):
    raise ValueError(
      f"param_groups list the parameter indices {indices}; a state_dict numbers "
      f"its parameters 0 to {n_leaves - 1}, each in exactly one group."
    )
  return _with_lr(groups, lr)


def _expected_entry(group: _TorchGroup) -> set[str]:
  keys = {"step", "square_avg"}
  if group.momentum > 0:
    keys.add("momentum_buffer")
  if group.centered:
    keys.add("grad_avg")
  return keys


def _check_entry_keys(i: int, keys: set[str], group: _TorchGroup) -> None:
  expected = _expected_entry(group)
  extra, missing = keys - expected, expected - keys
  where = f"state[{i}]"
  if "momentum_buffer" in extra:
    raise ValueError(
      f"{where} has a 'momentum_buffer' but param_groups[{group.index}] has "
      "momentum=0: torch keeps the buffer only when momentum > 0, so this state "
      "does not belong to these param_groups. Set the group's momentum to the "
      "run's."
    )
  if "grad_avg" in extra:
    raise ValueError(
      f"{where} has a 'grad_avg' but param_groups[{group.index}] has "
      "centered=False: torch keeps it only for centred RMSProp. Set the group's "
      "centered to the run's."
    )
  if extra:
    raise ValueError(
      f"{where} has {sorted(extra)}, which torch.optim.RMSprop does not write: "
      "is this the state_dict of another optimizer?"
    )
  if missing:
    raise ValueError(
      f"{where} has no {sorted(missing)}: with momentum={group.momentum:g} and "
      f"centered={group.centered} (param_groups[{group.index}]) "
      f"torch.optim.RMSprop keeps {sorted(expected)} for every parameter it has "
      "stepped."
    )


def _torch_entry(
  i: int, entry: Any, group: _TorchGroup, leaves: _Leaves
) -> dict[str, np.ndarray]:
  if not isinstance(entry, Mapping):
    raise TypeError(f"state[{i}] is a {type(entry).__name__}, not a dict.")
  _check_entry_keys(i, set(entry), group)
  arrays = {k: _to_numpy(x) for k, x in entry.items()}
  for key, x in arrays.items():
    shape = () if key == "step" else leaves.shapes[i]
    if x.shape != shape:
      raise ValueError(
        f"state[{i}][{key!r}] has shape {x.shape} but "
        + (
          "a step is a scalar."
          if key == "step"
          else f"{leaves.names[i]}, PyTorch's parameter {i}, has shape {shape}. "
          "PyTorch's parameter i is jax.tree.leaves(params)[i]."
        )
      )
  return arrays


def _torch_entries(
  state_dict: Mapping[str, Any], groups: list[_TorchGroup], leaves: _Leaves
) -> dict[int, dict[str, np.ndarray]]:
  group_of = {i: g for g in groups for i in g.params}
  entries = {}
  for key, entry in state_dict["state"].items():
    i = int(key)
    if i not in group_of:
      raise ValueError(
        f"state_dict['state'] has an entry for parameter {key!r}, which no "
        f"parameter group lists (they list 0 to {len(group_of) - 1})."
      )
    entries[i] = _torch_entry(i, entry, group_of[i], leaves)
  return entries


def _torch_units(groups: list[_TorchGroup], leaves: _Leaves) -> list[_Unit]:
  """One preset when the groups differ only in a weight decay or its absence."""
  decays = sorted({g.weight_decay for g in groups if g.weight_decay != 0})
  if all(g.rule() == groups[0].rule() for g in groups) and len(decays) <= 1:
    decay = decays[0] if decays else 0.0
    mask = None
    if decay and any(g.weight_decay == 0 for g in groups):
      flags = {i: g.weight_decay != 0 for g in groups for i in g.params}
      mask = leaves.treedef.unflatten([flags[i] for i in range(len(flags))])
    every = frozenset(range(len(leaves.names)))
    return [_Unit(groups[0], decay, mask, every)]
  return [_Unit(g, g.weight_decay, None, frozenset(g.params)) for g in groups]


def _torch_count(
  entries: dict[int, dict[str, np.ndarray]], members: frozenset[int], leaves: _Leaves
) -> int:
  """torch's step, which must be one number for the parameters of one count."""
  steps = {i: float(entries[i]["step"]) for i in sorted(members) if i in entries}
  for i, step in steps.items():
    if step != int(step) or step < 0:
      raise ValueError(f"state[{i}]['step'] = {step!r} is not a number of steps.")
  differing = [(i, s) for i, s in steps.items() if s != next(iter(steps.values()))]
  if differing:
    (i, a), (j, b) = next(iter(steps.items())), differing[0]
    raise ValueError(
      f"state[{i}]['step'] = {a:.0f} ({leaves.names[i]}) but state[{j}]['step'] = "
      f"{b:.0f} ({leaves.names[j]}): PyTorch counts the steps of each parameter, "
      "and one without a gradient in some steps falls behind, while the "
      "schedule reads one count. Set every 'step' to the number of optimizer "
      "steps taken (the scheduler's last_epoch)."
    )
  return int(next(iter(steps.values()), 0))


def _torch_unit_state(
  unit: _Unit, entries: dict[int, dict[str, np.ndarray]], leaves: _Leaves
) -> RMSPropState:
  g = unit.group
  count = None
  if callable(g.lr):
    count = _torch_count(entries, unit.members, leaves)
    _check_schedule(g.lr, count, g.recorded_lr, f"param_groups[{g.index}]['lr']")

  def tree(key: str, sign: float = 1.0, is_nu: bool = False) -> Any:
    def value(i: int) -> jax.Array:
      x = entries.get(i, {}).get(key)
      return _leaf_value(leaves, i, None if x is None else sign * x, is_nu=is_nu)

    return _state_tree(leaves, unit.members, value)

  return RMSPropState(
    count=None if count is None else jnp.asarray(count, jnp.int32),
    nu=tree("square_avg", is_nu=True),
    mu=tree("grad_avg") if g.centered else None,
    trace=tree("momentum_buffer", sign=-1.0) if g.momentum > 0 else None,
  )


def from_torch(
  state_dict: Mapping[str, Any],
  params: optax.Params,
  *,
  lr: optax.ScalarOrSchedule | Sequence[optax.ScalarOrSchedule | None] | None = None,
) -> tuple[optax.GradientTransformation, optax.OptState]:
  r"""Continues a ``torch.optim.RMSprop`` run under :func:`torch_rmsprop`.

  Reads ``state_dict`` (``torch_optimizer.state_dict()``, its tensors or NumPy
  arrays, e.g. as saved with ``torch.save`` and converted) and returns the
  preset configured from ``param_groups`` together with the state it reaches
  after the same steps: ``square_avg`` becomes ``nu``, ``grad_avg`` ``mu``,
  and the *negated* ``momentum_buffer`` ``trace``. Each leaf gets the dtype
  ``init`` allocates for its parameter. A parameter torch has not stepped yet
  (no entry in ``state``) starts from zeros, as torch would start it.

  PyTorch's parameter ``i`` is ``jax.tree.leaves(params)[i]``; ``params`` may
  be abstract (``jax.ShapeDtypeStruct``). The groups' ``foreach``,
  ``capturable`` and ``differentiable`` do not change the update and are
  ignored, as are the learning-rate schedulers' own keys (``initial_lr``,
  ``max_lr``, ``min_lr``, ``swa_lr``).

  **Parameter groups.** Groups that differ only in ``weight_decay``, with one
  non-zero value (the usual group of biases and norms without decay), become
  one :func:`torch_rmsprop` with a ``weight_decay_mask``, and the state is an
  :class:`RMSPropState`. Groups that differ otherwise become
  ``optax.transforms.partition`` (``optax.multi_transform``) of one
  :func:`torch_rmsprop` per group, labelled ``"group0"``, ``"group1"``, ... in
  the order of ``param_groups``, and the state is its ``PartitionState``.

  **Learning rate.** Without ``lr`` each group keeps its current ``lr``
  (what a scheduler last set) as a constant, and the state keeps no step
  count. With an optax schedule the state's ``count`` is torch's ``step``,
  so the schedule continues from there; it must be the same for every
  parameter that the schedule drives. A warning says when the schedule at
  that step is not the group's current ``lr``.

  Args:
    state_dict: ``torch_optimizer.state_dict()`` of a ``torch.optim.RMSprop``;
      tensors may be replaced by NumPy arrays or numbers, and the indices
      keying ``state`` may be strings (as in JSON).
    params: the parameters, in PyTorch's order (see above).
    lr: a learning rate or optax schedule of the 0-based step replacing every
      group's ``lr`` (the groups must then share one ``lr``), or a sequence
      with one per group, ``None`` keeping that group's own.

  Returns:
    ``(optimizer, state)``: the optax transformation and its state after the
    steps ``state_dict`` records.

  Raises:
    TypeError: ``state_dict`` is not a state dict, or a parameter is complex
      (PyTorch treats it as real pairs) or not floating.
    ValueError: a difference between ``state_dict`` and ``params`` or within
      ``state_dict``, named: the number of parameters, a shape (with the tree
      path and PyTorch's index), a missing or extra key, a momentum buffer
      under ``momentum=0``, steps that differ between the parameters of one
      schedule, or keys of another optimizer.

  Examples:
    >>> import jax.numpy as jnp, numpy as np, rmsprop_jax
    >>> state_dict = {  # torch_optimizer.state_dict(), as NumPy
    ...   "state": {0: {"step": np.float32(5.0),
    ...                 "square_avg": np.array([0.04, 0.09]),
    ...                 "momentum_buffer": np.array([0.5, -0.5])}},
    ...   "param_groups": [{"lr": 0.01, "alpha": 0.99, "eps": 1e-8,
    ...                     "weight_decay": 0, "momentum": 0.9,
    ...                     "centered": False, "maximize": False,
    ...                     "foreach": None, "capturable": False,
    ...                     "differentiable": False, "params": [0]}]}
    >>> params = {"w": jnp.array([1.0, -1.0])}
    >>> opt, state = rmsprop_jax.from_torch(state_dict, params)
    >>> state.trace["w"]  # momentum_buffer, with the update's sign
    Array([-0.5,  0.5], dtype=float32)
    >>> updates, state = opt.update({"w": jnp.array([0.2, 0.3])}, state, params)
    >>> updates["w"]
    Array([-0.0145, -0.0055], dtype=float32)
  """
  leaves = _param_leaves(params, "PyTorch")
  groups = _torch_groups(state_dict, len(leaves.names), lr)
  entries = _torch_entries(state_dict, groups, leaves)
  units = _torch_units(groups, leaves)
  built = [
    (u.group.preset(u.weight_decay, u.mask), _torch_unit_state(u, entries, leaves))
    for u in units
  ]
  if len(units) == 1:
    return built[0][0], cast(optax.OptState, built[0][1])
  label_of = {i: f"group{g.index}" for g in groups for i in g.params}
  labels = leaves.treedef.unflatten([label_of[i] for i in range(len(label_of))])
  tx = optax.transforms.partition(
    {f"group{u.group.index}": t for u, (t, _) in zip(units, built, strict=True)},
    labels,
  )
  state = optax.transforms.PartitionState(
    inner_states={
      f"group{u.group.index}": optax.transforms.MaskedState(inner_state=s)
      for u, (_, s) in zip(units, built, strict=True)
    }
  )
  return tx, cast(optax.OptState, state)


def _rms_states(state: Any) -> list[tuple[str, RMSPropState]]:
  """The RMSPropStates of ``state`` with their names, for the messages."""
  if isinstance(state, RMSPropState):
    return [("state", state)]
  if isinstance(state, optax.transforms.PartitionState):
    out = []
    for label, inner in state.inner_states.items():
      rms = getattr(inner, "inner_state", inner)
      if not isinstance(rms, RMSPropState):
        break
      out.append((f"state.inner_states[{label!r}].inner_state", rms))
    else:
      return out
  raise TypeError(
    "state must be an RMSPropState, or the optax.transforms.partition state of "
    "RMSPropStates that from_torch builds for several parameter groups; got "
    f"{type(state).__name__}. Under optax.inject_hyperparams pass "
    "state.inner_state; of an optax.chain, its RMSPropState element."
  )


def _torch_entries_of(
  name: str, rms: RMSPropState, step: int
) -> dict[int, dict[str, np.ndarray]]:
  entries = {
    i: {"step": np.asarray(step, np.float32), "square_avg": x}
    for i, x in _positions(rms.nu, f"{name}.nu").items()
  }
  if rms.trace is not None:
    for i, x in _positions(rms.trace, f"{name}.trace").items():
      entries[i]["momentum_buffer"] = -x
  if rms.mu is not None:
    for i, x in _positions(rms.mu, f"{name}.mu").items():
      entries[i]["grad_avg"] = x
  return entries


def _as_tensors(entries: dict[int, dict[str, np.ndarray]]) -> dict[int, dict[str, Any]]:
  try:
    torch = importlib.import_module("torch")  # only here: from_torch reads NumPy
  except ImportError as e:
    raise ImportError(
      "to_torch needs PyTorch (pip install torch); with as_numpy=True it "
      f"returns NumPy arrays instead. ({e})"
    ) from e
  # torch's _get_scalar_dtype: the dtype RMSprop gives 'step'.
  step_dtype = (
    torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
  )
  return {
    i: {
      k: torch.tensor(float(x), dtype=step_dtype)
      if k == "step"
      else torch.from_numpy(x)
      for k, x in entry.items()
    }
    for i, entry in entries.items()
  }


def to_torch(
  state: optax.OptState, *, step: int | None = None, as_numpy: bool = False
) -> dict[int, dict[str, Any]]:
  r"""The ``state`` of a ``torch.optim.RMSprop`` state dict holding ``state``.

  The inverse of :func:`from_torch`: returns what goes into
  ``optimizer.state_dict()["state"]``, keyed by PyTorch's parameter index
  (the position in ``jax.tree.leaves(params)``), each entry as torch 2.x
  writes it: ``step`` (a 0-d tensor of float32, or float64 when that is
  torch's default dtype), ``square_avg`` (``nu``), ``momentum_buffer`` (the
  negated ``trace``, when the optimizer has momentum) and ``grad_avg``
  (``mu``, when centred). Tensors keep the state's dtype; ``load_state_dict``
  casts them to each parameter's dtype and device.

  PyTorch stores a step count; ``state.count`` exists only when a
  learning-rate schedule reads it. Without one, pass ``step``, the number of
  optimizer steps taken; with one, ``step`` may be left out (and must agree
  with ``state.count`` when given).

  Only the layout is converted, not the hyper-parameters: build the PyTorch
  optimizer (its ``param_groups``) with the arguments the run continues with.

  Args:
    state: the state of :func:`torch_rmsprop` (an :class:`RMSPropState`), or
      the ``PartitionState`` that :func:`from_torch` returns for several
      groups.
    step: the step count to store, required when ``state.count`` is None.
    as_numpy: return NumPy arrays (``step`` a 0-d float32 array) instead of
      tensors, e.g. to save them without PyTorch; ``torch.from_numpy`` turns
      them into tensors.

  Returns:
    ``{index: {"step": ..., "square_avg": ..., ...}}``.

  Raises:
    ImportError: PyTorch is not installed and ``as_numpy`` is False.
    TypeError: ``state`` is not of a kind above, is traced, or holds
      block-quantized or complex leaves.
    ValueError: ``state.count`` is None and ``step`` is not given, or they
      differ.

  Examples:
    >>> import jax.numpy as jnp, rmsprop_jax
    >>> opt = rmsprop_jax.torch_rmsprop(lr=0.01, momentum=0.9)
    >>> params = [jnp.array([1.0, -1.0])]
    >>> _, state = opt.update([jnp.array([0.2, 0.3])], opt.init(params), params)
    >>> entry = rmsprop_jax.to_torch(state, step=1, as_numpy=True)[0]
    >>> sorted(entry)
    ['momentum_buffer', 'square_avg', 'step']
    >>> entry["momentum_buffer"]  # -trace: torch's sign
    array([10.      , 10.000002], dtype=float32)
  """
  entries: dict[int, dict[str, np.ndarray]] = {}
  for name, rms in _rms_states(state):
    count = _count_value(rms.count, step, "step", "PyTorch")
    entries.update(_torch_entries_of(name, rms, count))
  entries = dict(sorted(entries.items()))
  return cast(dict[int, dict[str, Any]], entries) if as_numpy else _as_tensors(entries)


# ----------------------------------------------------------------------- Keras


def _keras() -> Any:
  try:
    import keras
  except ImportError as e:
    raise ImportError(f"from_keras and to_keras need Keras 3 ({e}).") from e
  return keras


def _checked_keras(optimizer: Any, who: str) -> Any:
  """Keras, once ``optimizer`` is known to be a built Keras 3 RMSprop we handle."""
  keras = _keras()
  if not isinstance(optimizer, keras.optimizers.RMSprop):
    raise TypeError(
      f"{who} takes a keras.optimizers.RMSprop (Keras 3); got "
      f"{type(optimizer).__module__}.{type(optimizer).__name__}."
    )
  if not optimizer.built:
    raise ValueError(
      "the optimizer is not built, so it has no variables yet: call "
      "optimizer.build(model.trainable_variables) first (Keras builds it at the "
      "first step)."
    )
  if optimizer.use_ema:
    raise ValueError(
      "the optimizer has use_ema=True: its moving average of the weights has no "
      "place in rmsprop_jax's state. Use an optimizer without use_ema, and keep "
      "the average yourself."
    )
  if optimizer.gradient_accumulation_steps:
    raise ValueError(
      f"the optimizer has gradient_accumulation_steps="
      f"{optimizer.gradient_accumulation_steps}: its accumulators are state that "
      "rmsprop_jax does not hold. Use an optimizer without it, and "
      "optax.MultiSteps around the preset on the JAX side."
    )
  return keras


def _keras_slots(optimizer: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
  """The trainable variables and the velocity, momentum, average slots."""
  # Keras 3's RMSprop keeps its slots in build order, one per variable.
  return (
    list(optimizer._trainable_variables),
    list(optimizer._velocities),
    list(optimizer._momentums),
    list(optimizer._average_gradients),
  )


def _check_keras_shapes(
  variables: list[Any], shapes: list[tuple[int, ...]], names: list[str], what: str
) -> None:
  if len(variables) != len(shapes):
    raise ValueError(
      f"the optimizer was built on {len(variables)} variables but {what} has "
      f"{len(shapes)} leaves. The optimizer's variable i is "
      "jax.tree.leaves(params)[i]: build it on model.trainable_variables, in order."
    )
  for i, (var, shape) in enumerate(zip(variables, shapes, strict=True)):
    if tuple(var.shape) != tuple(shape):
      raise ValueError(
        f"{names[i]} has shape {tuple(shape)} but the optimizer's variable {i} "
        f"({var.path!r}) has shape {tuple(var.shape)}. The optimizer's variable i "
        "is jax.tree.leaves(params)[i]."
      )


def _keras_learning_rate(keras: Any, optimizer: Any, learning_rate: Any) -> Any:
  own = optimizer._learning_rate
  if learning_rate is not None:
    return learning_rate
  if isinstance(own, keras.optimizers.schedules.LearningRateSchedule):
    if keras.backend.backend() != "jax":
      raise ValueError(
        f"the optimizer's learning rate is a {type(own).__name__}, which computes "
        f"with the {keras.backend.backend()} backend: pass learning_rate=, its "
        "optax counterpart."
      )
    return own  # called with the step count, as Keras calls it with iterations
  if isinstance(own, keras.Variable):
    return float(np.asarray(own.value))
  raise ValueError(
    f"the optimizer's learning rate is a callable of no arguments ({own!r}), "
    "which optax cannot call with the step: pass learning_rate=, a number or an "
    "optax schedule."
  )


def _keras_count(optimizer: Any, lr: Any) -> int | None:
  """``iterations`` when a schedule reads the count, else None (as ``init``)."""
  if not callable(lr):
    return None
  count = int(np.asarray(optimizer.iterations.value))
  current = optimizer.learning_rate  # a schedule's value at iterations
  current = float(np.asarray(getattr(current, "value", current)))
  _check_schedule(lr, count, current, "the optimizer's learning rate")
  return count


def _keras_clip(optimizer: Any) -> optax.GradientTransformation | None:
  """Keras' gradient clipping as an optax transformation, or None."""
  if optimizer.clipnorm and optimizer.clipnorm > 0:
    c = optimizer.clipnorm
    return optax.stateless_with_tree_map(
      lambda g, _: g * c / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(g))), c)
    )
  if optimizer.global_clipnorm and optimizer.global_clipnorm > 0:
    return optax.clip_by_global_norm(optimizer.global_clipnorm)
  if optimizer.clipvalue and optimizer.clipvalue > 0:
    return optax.clip(optimizer.clipvalue)
  return None


def _keras_mask(optimizer: Any, variables: list[Any], leaves: _Leaves) -> Any:
  if optimizer.weight_decay is None:
    return None
  flags = [bool(optimizer._use_weight_decay(var)) for var in variables]
  return None if all(flags) else leaves.treedef.unflatten(flags)


def from_keras(
  optimizer: Any,
  params: optax.Params,
  *,
  learning_rate: optax.ScalarOrSchedule | None = None,
) -> tuple[optax.GradientTransformation, optax.OptState]:
  r"""Continues a ``keras.optimizers.RMSprop`` run under :func:`keras_rmsprop`.

  Reads a built Keras 3 optimizer and returns the preset configured as it is
  (``rho``, ``momentum``, ``epsilon``, ``centered``, ``weight_decay`` and the
  variables ``exclude_from_weight_decay`` excludes, as a
  ``weight_decay_mask``) together with its state: the ``velocity`` slots
  become ``nu``, ``average_gradient`` ``mu``, and the *negated* ``momentum``
  slots ``trace``, each in the dtype ``init`` allocates for its parameter.

  The optimizer's variable ``i`` (the ``i``-th of the list it was built on,
  ``model.trainable_variables``) is ``jax.tree.leaves(params)[i]``.

  **Learning rate.** A constant learning rate is the optimizer's current one.
  A ``LearningRateSchedule`` is used as the optax schedule itself (on the JAX
  backend its ops are JAX's), and the state's ``count`` is ``iterations``, so
  it continues from there, as does a schedule passed as ``learning_rate``. A
  warning says when that schedule at ``iterations`` is not the optimizer's
  current learning rate.

  **Clipping.** ``global_clipnorm``, ``clipvalue`` and ``clipnorm`` become
  ``optax.chain(clip, keras_rmsprop(...))`` (``optax.clip_by_global_norm``,
  ``optax.clip``, a per-leaf norm clip), whose state is
  ``(optax.EmptyState(), state)``. ``loss_scale_factor`` scales the loss and
  unscales the gradients before the update, so it has no counterpart here.

  Args:
    optimizer: a built ``keras.optimizers.RMSprop`` (Keras 3), without
      ``use_ema`` or ``gradient_accumulation_steps``.
    params: the parameters, in the order of the optimizer's variables.
    learning_rate: a learning rate or optax schedule of the 0-based step to
      use instead of the optimizer's; needed for a callable learning rate
      without arguments, or a schedule on a backend other than JAX.

  Returns:
    ``(optimizer, state)``: the optax transformation and its state after the
    steps the Keras optimizer has taken.

  Raises:
    ImportError: Keras is not installed.
    TypeError: ``optimizer`` is not a Keras 3 ``RMSprop``, or a parameter is
      complex or not floating.
    ValueError: the optimizer is not built or uses an option above that has
      no counterpart; the number of variables or a shape differs (named by
      tree path and Keras path); or its learning rate needs
      ``learning_rate``.

  Examples:
    >>> import os
    >>> _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import jax.numpy as jnp, keras, numpy as np, rmsprop_jax
    >>> w = keras.Variable(np.array([1.0, -2.0], np.float32), name="w")
    >>> keras_opt = keras.optimizers.RMSprop(learning_rate=0.1, momentum=0.9)
    >>> keras_opt.apply([np.array([0.5, 0.5], np.float32)], [w])
    >>> params = {"w": jnp.asarray(w.value)}
    >>> opt, state = rmsprop_jax.from_keras(keras_opt, params)
    >>> state.trace["w"]  # Keras' momentum slot, with the update's sign
    Array([-0.31622714, -0.31622714], dtype=float32)
    >>> updates, state = opt.update({"w": jnp.array([0.5, 0.5])}, state, params)
    >>> updates["w"]
    Array([-0.5140199, -0.5140199], dtype=float32)
  """
  keras = _checked_keras(optimizer, "from_keras")
  leaves = _param_leaves(params, "Keras")
  variables, velocities, momentums, averages = _keras_slots(optimizer)
  _check_keras_shapes(variables, leaves.shapes, leaves.names, "params")
  lr = _keras_learning_rate(keras, optimizer, learning_rate)
  count = _keras_count(optimizer, lr)
  every = frozenset(range(len(variables)))

  def tree(slots: list[Any], sign: float = 1.0, is_nu: bool = False) -> Any:
    return _state_tree(
      leaves,
      every,
      lambda i: _leaf_value(leaves, i, sign * np.asarray(slots[i].value), is_nu=is_nu),
    )

  state = RMSPropState(
    count=None if count is None else jnp.asarray(count, jnp.int32),
    nu=tree(velocities, is_nu=True),
    mu=tree(averages) if optimizer.centered else None,
    trace=tree(momentums, sign=-1.0) if optimizer.momentum > 0 else None,
  )
  tx = _presets.keras_rmsprop(
    lr,
    optimizer.rho,
    optimizer.momentum,
    optimizer.epsilon,
    optimizer.centered,
    optimizer.weight_decay,
    weight_decay_mask=_keras_mask(optimizer, variables, leaves),
  )
  clip = _keras_clip(optimizer)
  if clip is None:
    return tx, cast(optax.OptState, state)
  return optax.chain(clip, tx), cast(optax.OptState, (optax.EmptyState(), state))


def _check_keras_layout(rms: RMSPropState, optimizer: Any) -> None:
  for option, on, field, tree in (
    ("momentum > 0", optimizer.momentum > 0, "trace", rms.trace),
    ("centered=True", bool(optimizer.centered), "mu", rms.mu),
  ):
    if on and tree is None:
      raise ValueError(
        f"the optimizer has {option} but state.{field} is None: the state "
        f"comes from an optimizer without it. Build the Keras optimizer with "
        "the options the run used."
      )
    if not on and tree is not None:
      raise ValueError(
        f"state.{field} is set but the optimizer does not have {option} "
        f"(momentum={optimizer.momentum}, centered={optimizer.centered}): "
        "build the Keras optimizer with the options the run used."
      )


def to_keras(
  state: optax.OptState, optimizer: Any, *, iterations: int | None = None
) -> None:
  r"""Writes ``state`` into a built ``keras.optimizers.RMSprop``, in place.

  The inverse of :func:`from_keras`: ``nu`` goes into the ``velocity`` slots,
  ``mu`` into ``average_gradient``, the negated ``trace`` into ``momentum``,
  and the step count into ``iterations`` (which a ``LearningRateSchedule``
  reads). Leaf ``i`` of the state goes to the optimizer's variable ``i``;
  Keras casts each value to its slot's dtype. Every check runs before the
  first assignment, so a refused state leaves the optimizer as it was.

  Only the layout is checked (momentum or not, centred or not, the number of
  variables and their shapes), not the hyper-parameters: build the Keras
  optimizer with the arguments the run continues with.

  Args:
    state: an :class:`RMSPropState` (the state of :func:`keras_rmsprop`), or
      the ``(optax.EmptyState(), ..., state)`` of the chain that
      :func:`from_keras` returns for a clipping optimizer.
    optimizer: a built ``keras.optimizers.RMSprop`` (Keras 3), e.g.
      ``optimizer.build(model.trainable_variables)``.
    iterations: the number of steps taken, required when ``state.count`` is
      None (no learning-rate schedule); otherwise ``state.count`` is used.

  Raises:
    ImportError: Keras is not installed.
    TypeError: ``optimizer`` or ``state`` is not of a kind above, or holds
      block-quantized or complex leaves.
    ValueError: the optimizer is not built, uses ``use_ema`` or
      ``gradient_accumulation_steps``, or its layout differs from the
      state's, named; or the step count is missing or contradicts
      ``iterations``.

  Examples:
    >>> import os
    >>> _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import jax.numpy as jnp, keras, numpy as np, rmsprop_jax
    >>> opt = rmsprop_jax.keras_rmsprop(learning_rate=0.1, momentum=0.9)
    >>> params = [jnp.array([1.0, -2.0])]
    >>> _, state = opt.update([jnp.array([0.5, 0.5])], opt.init(params), params)
    >>> w = keras.Variable(np.asarray(params[0]), name="w")
    >>> keras_opt = keras.optimizers.RMSprop(learning_rate=0.1, momentum=0.9)
    >>> keras_opt.build([w])
    >>> rmsprop_jax.to_keras(state, keras_opt, iterations=1)
    >>> keras_opt.iterations.value, keras_opt.variables[-1].value  # momentum slot
    (Array(1, dtype=int32), Array([0.31622708, 0.31622708], dtype=float32))
  """
  _checked_keras(optimizer, "to_keras")
  rms = _chained_rms_state(state, "to_keras")
  _check_keras_layout(rms, optimizer)
  variables, velocities, momentums, averages = _keras_slots(optimizer)
  writes = []
  for slots, tree, field, sign in (
    (velocities, rms.nu, "nu", 1.0),
    (momentums, rms.trace, "trace", -1.0),
    (averages, rms.mu, "mu", 1.0),
  ):
    if tree is None:
      continue
    values = _positions(tree, f"state.{field}")
    names = [f"state.{field}[{i}]" for i in values]
    shapes = [x.shape for x in values.values()]
    _check_keras_shapes(variables, shapes, names, f"state.{field}")
    writes += [(slots[i], sign * x) for i, x in values.items()]
  count = _count_value(rms.count, iterations, "iterations", "Keras")
  for slot, value in writes:
    slot.assign(value)
  optimizer.iterations.assign(count)
