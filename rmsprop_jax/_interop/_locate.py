"""The one locator of optimizer states inside the states of optax's wrappers.

A state that a converter reads or writes may sit inside the state of optax's
wrappers, nested to any depth: an element of ``optax.chain``'s tuple, the
``inner_state`` of ``optax.inject_hyperparams`` (and its stateful variant),
``optax.masked`` and ``optax.apply_if_finite``, the
``inner_states[label].inner_state`` of ``optax.transforms.partition``
(``optax.multi_transform``), the ``inner_opt_state`` of ``optax.MultiSteps``.
:func:`locate` finds every node that a predicate picks, with its path, and
:func:`replace` puts a new value in the place of each, keeping the wrappers
around them.

Both run on optax's tree utilities, ``tree_get_all_with_path`` and
``tree_set``, which find a NamedTuple by its class name. Each picked node is
first wrapped in a :class:`_Found`, so that a plain tuple (the state of
``optax.rmsprop``) is found and replaced as readily as a NamedTuple (an
``RMSPropState``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import optax

WRAPPERS = (
  "optax.chain, inject_hyperparams, masked, transforms.partition, MultiSteps "
  "or apply_if_finite"
)

Predicate = Callable[[Any], bool]


class Located(NamedTuple):
  """A node that the locator found."""

  where: str  # the path below the root: "", "[1]", ".inner_states['a'].inner_state"
  name: str  # the root's name and ``where``, for messages: "state[1]"
  value: Any


class _Found(NamedTuple):
  """Marks a picked node, for optax's tree utilities to find by this name."""

  node: Any


def _where(path: Sequence[Any]) -> str:
  return "".join(
    f".{key.name}"
    if isinstance(key, optax.tree_utils.NamedTupleKey)
    else jax.tree_util.keystr((key,))
    for key in path
  )


def _marked(tree: Any, is_target: Predicate) -> tuple[Any, list[tuple[Any, _Found]]]:
  """``tree`` with every picked node marked, and the marks with their paths."""
  marked = jax.tree.map(
    lambda x: _Found(x) if is_target(x) else x, tree, is_leaf=is_target
  )
  found = optax.tree_utils.tree_get_all_with_path(
    marked, _Found.__name__, lambda _, x: isinstance(x, _Found)
  )
  return marked, found


def locate(tree: Any, is_target: Predicate, root: str) -> list[Located]:
  """Every node of ``tree`` that ``is_target`` picks, in the order of its leaves.

  ``is_target`` sees the nodes from the root down; the locator does not look
  inside a node it picked. ``root`` names ``tree`` in :attr:`Located.name`.
  """
  _, found = _marked(tree, is_target)
  return [Located(_where(p), root + _where(p), mark.node) for p, mark in found]


def _at(path: Any) -> Callable[[Any, Any], bool]:
  return lambda p, _: p == path


def replace(
  tree: Any, is_target: Predicate, new: Callable[[Located], Any], root: str
) -> Any:
  """``tree`` with each node that ``is_target`` picks replaced by ``new(found)``."""
  marked, found = _marked(tree, is_target)
  for path, mark in found:
    value = new(Located(_where(path), root + _where(path), mark.node))
    marked = optax.tree_utils.tree_set(marked, _at(path), **{_Found.__name__: value})
  return marked


def describe(x: Any) -> str:
  """What ``x`` is, in a message: a NamedTuple with its fields, a tuple's types."""
  fields = getattr(x, "_fields", None) if isinstance(x, tuple) else None
  if fields is not None:
    return f"{type(x).__name__}{tuple(fields)}"
  if isinstance(x, (tuple, list)):
    return f"{type(x).__name__}({', '.join(type(e).__name__ for e in x)})"
  if isinstance(x, Mapping):
    return f"a dict with keys {sorted(x)}"
  return type(x).__name__


def listed(found: Sequence[Located]) -> str:
  """The names of ``found``, for a message."""
  return ", ".join(f.name for f in found) or "nowhere"


def locate_one(
  tree: Any,
  is_target: Predicate,
  root: str,
  *,
  what: str,
  expected: str,
  why_one: str,
) -> Located:
  """The one node of ``tree`` that ``is_target`` picks.

  Args:
    tree: the state to search.
    is_target: picks the nodes looked for.
    root: the name of ``tree`` in messages.
    what: the nodes looked for, in the plural, for the error for several.
    expected: what ``tree`` must be or hold, opening the error for none.
    why_one: why several will not do, closing the error for several.

  Raises:
    TypeError: ``tree`` holds none.
    ValueError: it holds several, named by path.
  """
  found = locate(tree, is_target, root)
  if not found:
    raise TypeError(
      f"{expected}, alone or inside the state of {WRAPPERS}; got {describe(tree)}."
    )
  if len(found) > 1:
    raise ValueError(
      f"{root} holds {len(found)} {what}, at {listed(found)}: {why_one}."
    )
  return found[0]
