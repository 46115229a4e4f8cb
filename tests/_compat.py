"""The same test code on the oldest supported JAX and Flax and on the newest.

Each helper uses the current public API where it exists and the one that did
the same job at the supported floor otherwise (see ``.ci/floor-constraints.txt``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

import jax
from jax.sharding import Mesh


def installed(package: str) -> str:
  """The installed version of ``package``, as its metadata spells it."""
  return importlib.metadata.version(package)


def version(package: str) -> tuple[int, ...]:
  """The installed version of ``package`` as a tuple of its leading numbers."""
  parts = []
  for part in installed(package).split("."):
    digits = "".join(c for c in part if c.isdigit())
    if not digits:
      break
    parts.append(int(digits))
  return tuple(parts)


def enable_x64(new_val: bool = True) -> contextlib.AbstractContextManager[Any]:
  """A scope with 64-bit types on (``new_val``) or off, restored on exit."""
  if hasattr(jax, "enable_x64"):  # jax >= 0.8
    return jax.enable_x64(new_val)
  from jax.experimental import enable_x64 as legacy

  return legacy(new_val)


def set_mesh(mesh: Mesh) -> contextlib.AbstractContextManager[Any]:
  """``mesh`` as the context mesh (needed under jit on ``Explicit`` axes)."""
  if hasattr(jax, "set_mesh"):  # jax >= 0.7.1
    return jax.set_mesh(mesh)
  return jax.sharding.use_mesh(mesh)


def shard_map(
  f: Callable[..., Any], *, mesh: Mesh, in_specs: Any, out_specs: Any
) -> Callable[..., Any]:
  """``f`` run on each device's shard of its arguments."""
  if hasattr(jax, "shard_map"):  # jax >= 0.6.1
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
  from jax.experimental.shard_map import shard_map as legacy

  return legacy(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


@contextlib.contextmanager
def event_duration_listener(
  listener: Callable[..., None],
) -> Iterator[None]:
  """``listener`` receives JAX's duration events (compilations) in the block."""
  active = True

  def scoped(event: str, duration: float, **kwargs: Any) -> None:
    if active:
      listener(event, duration, **kwargs)

  jax.monitoring.register_event_duration_secs_listener(scoped)
  try:
    yield
  finally:
    active = False
    # jax < 0.8.1 has no public way to unregister: the listener stays, switched off.
    unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
    if unregister is not None:
      unregister(scoped)


def nnx_optimizer_update(optimizer: Any, model: Any, grads: Any) -> None:
  """``nnx.Optimizer.update``: ``(model, grads)`` since flax 0.11, ``(grads)`` before."""
  if version("flax") >= (0, 11):
    optimizer.update(model, grads)
  else:
    optimizer.update(grads)


def nnx_to_pure_dict(state: Any) -> dict[str, Any]:
  """An ``nnx.State`` as nested dicts of arrays (``nnx.to_pure_dict`` since flax 0.11)."""
  from flax import nnx

  if hasattr(nnx, "to_pure_dict"):
    return nnx.to_pure_dict(state)
  return state.to_pure_dict()
