"""Handing a ``torch.optim.RMSprop`` run over to rmsprop_jax mid-training, and back.

PyTorch keeps the statistics of :class:`RMSPropState` under other names, in
``state_dict()["state"][i]`` for the parameter at position ``i``:

================  ======================  =======
``RMSPropState``  PyTorch ``state[i]``    sign
================  ======================  =======
``nu``            ``square_avg``          same
``mu`` (centred)  ``grad_avg``            same
``trace``         ``momentum_buffer``     negated
``count``         ``step`` (per param)    same
================  ======================  =======

PyTorch is not imported before a function needs it.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmsprop_jax import _presets
from rmsprop_jax import _validation as v
from rmsprop_jax._interop import _locate
from rmsprop_jax._interop import _shared as s
from rmsprop_jax._transform import RMSPropState

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
    try:
      return _presets.torch_rmsprop(
        lr=self.lr,
        alpha=self.alpha,
        eps=self.eps,
        weight_decay=weight_decay,
        momentum=self.momentum,
        centered=self.centered,
        maximize=self.maximize,
        weight_decay_mask=mask,
      )
    except (ValueError, TypeError) as e:  # a value torch would refuse too
      raise type(e)(f"param_groups[{self.index}]: {e}") from None


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

  def number(key: str) -> float:
    x = s.to_numpy(g[key])  # a tensor too (a capturable lr)
    if x.ndim or not v.is_real_number(x):
      raise TypeError(
        f"param_groups[{i}][{key!r}] must be a real number; got {g[key]!r}."
      )
    return float(x)

  def flag(key: str) -> bool:
    if not isinstance(g[key], (bool, np.bool_)):
      raise TypeError(f"param_groups[{i}][{key!r}] must be a bool; got {g[key]!r}.")
    return bool(g[key])

  params = g["params"]
  if not isinstance(params, Sequence) or not all(
    isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in params
  ):
    raise TypeError(
      f"param_groups[{i}]['params'] must be a list of parameter indices; got "
      f"{params!r}."
    )
  lr = number("lr")
  return _TorchGroup(
    index=i,
    params=tuple(int(p) for p in params),
    recorded_lr=lr,
    lr=lr,
    alpha=number("alpha"),
    eps=number("eps"),
    weight_decay=number("weight_decay"),
    momentum=number("momentum"),
    centered=flag("centered"),
    maximize=flag("maximize"),
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
  i: int, entry: Any, group: _TorchGroup, leaves: s.Leaves
) -> dict[str, np.ndarray]:
  if not isinstance(entry, Mapping):
    raise TypeError(f"state[{i}] is a {type(entry).__name__}, not a dict.")
  _check_entry_keys(i, set(entry), group)
  arrays = {k: s.to_numpy(x) for k, x in entry.items()}
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
  state_dict: Mapping[str, Any], groups: list[_TorchGroup], leaves: s.Leaves
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


def _torch_units(groups: list[_TorchGroup], leaves: s.Leaves) -> list[_Unit]:
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
  entries: dict[int, dict[str, np.ndarray]], members: frozenset[int], leaves: s.Leaves
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
  unit: _Unit, entries: dict[int, dict[str, np.ndarray]], leaves: s.Leaves
) -> RMSPropState:
  g = unit.group
  count = None
  if callable(g.lr):
    count = _torch_count(entries, unit.members, leaves)
    s.check_schedule(g.lr, count, g.recorded_lr, f"param_groups[{g.index}]['lr']")

  def tree(key: str, sign: float = 1.0, is_nu: bool = False) -> Any:
    def value(i: int) -> jax.Array:
      x = entries.get(i, {}).get(key)
      return s.leaf_value(leaves, i, None if x is None else sign * x, is_nu=is_nu)

    return s.state_tree(leaves, unit.members, value)

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
  leaves = s.param_leaves(params, "PyTorch")
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


def _torch_entries_of(
  name: str, rms: RMSPropState, step: int
) -> dict[int, dict[str, np.ndarray]]:
  """The entries of the parameters ``rms`` holds, keyed by position."""
  entries = {
    i: {"step": np.asarray(step, np.float32), "square_avg": x}
    for i, x in s.positions(rms.nu, f"{name}.nu").items()
  }
  if rms.trace is not None:
    for i, x in s.positions(rms.trace, f"{name}.trace").items():
      entries[i]["momentum_buffer"] = -x
  if rms.mu is not None:
    for i, x in s.positions(rms.mu, f"{name}.mu").items():
      entries[i]["grad_avg"] = x
  return entries


def _torch_state(
  found: list[_locate.Located], step: int | None
) -> dict[int, dict[str, np.ndarray]]:
  """The entries of the RMSPropStates ``found``, each parameter in at most one."""
  entries: dict[int, dict[str, np.ndarray]] = {}
  held_by: dict[int, str] = {}
  for rms in found:
    count = s.count_value(rms.value.count, step, "step", "PyTorch", f"{rms.name}.count")
    for i, entry in _torch_entries_of(rms.name, rms.value, count).items():
      if i in held_by:
        raise ValueError(
          f"{held_by[i]} and {rms.name} both hold a state for parameter {i}, "
          "while PyTorch keeps one per parameter: the states of several "
          "RMSProps convert together when each holds parameters of its own, as "
          "under optax.transforms.partition."
        )
      held_by[i], entries[i] = rms.name, entry
  return dict(sorted(entries.items()))


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

  The state may be wrapped: every :class:`RMSPropState` inside the states of
  ``optax.chain``, ``inject_hyperparams``, ``masked``,
  ``transforms.partition``, ``MultiSteps`` and ``apply_if_finite`` is
  converted, as one state dict, provided each holds parameters of its own
  (the groups of the partition that :func:`from_torch` returns). A parameter
  that a wrapper masks out (``optax.MaskedNode``) has no entry, as one that
  torch has not stepped.

  Args:
    state: the state of :func:`torch_rmsprop` (an :class:`RMSPropState`),
      alone or wrapped as above, e.g. the ``PartitionState`` that
      :func:`from_torch` returns for several groups.
    step: the step count to store, required when ``state.count`` is None.
    as_numpy: return NumPy arrays (``step`` a 0-d float32 array) instead of
      tensors, e.g. to save them without PyTorch; ``torch.from_numpy`` turns
      them into tensors.

  Returns:
    ``{index: {"step": ..., "square_avg": ..., ...}}``.

  Raises:
    ImportError: PyTorch is not installed and ``as_numpy`` is False.
    TypeError: ``state`` holds no :class:`RMSPropState`, or one that is
      traced or holds block-quantized or complex leaves.
    ValueError: ``state.count`` is None and ``step`` is not given, or they
      differ; or two of its RMSPropStates hold the same parameter (named by
      path).

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
  found = _locate.locate(state, s.is_rms_state, "state")
  if not found:
    raise TypeError(
      "state must be an RMSPropState (the state of torch_rmsprop), alone or "
      f"inside the state of {_locate.WRAPPERS}; got {_locate.describe(state)}."
    )
  entries = _torch_state(found, step)
  return cast(dict[int, dict[str, Any]], entries) if as_numpy else _as_tensors(entries)
