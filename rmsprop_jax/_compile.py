"""Where a computation runs: inlined into the caller's trace, or compiled once.

Called eagerly (a notebook, a debugging session) or under an eager ``vmap`` or
``grad``, ``update`` should run as one compiled computation, not one dispatch
per operation and leaf. Inside the caller's ``jit`` it should trace directly
into the caller's program: a nested ``jit`` would trace every leaf twice, into
its own program and again when inlined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.core import Tracer


def staging(args: Any) -> bool:
  """Whether JAX is recording operations (``jit``, ``scan``, ...), not running them.

  Concrete ``args`` mean an eager call. With tracers, the probe tells a
  recording trace, which stages out every operation, even one on constants,
  from ``vmap`` or ``grad`` called eagerly, which run an operation on
  constants at once. The probe is a scalar add, dead code in any program.
  """
  if not any(isinstance(x, Tracer) for x in jax.tree.leaves(args)):
    return False
  return isinstance(jax.lax.add(np.int32(0), np.int32(0)), Tracer)


def run(
  compiled: Callable[..., Any], direct: Callable[..., Any], *args: Any, **static: Any
) -> Any:
  """Calls ``direct`` when staging, else ``compiled`` (its ``jax.jit``)."""
  fn = direct if staging(args) else compiled
  return fn(*args, **static)


def schedule_value(schedule: Callable[[jax.Array], Any], count: jax.Array) -> Any:
  """``schedule(count)``, under JAX's standard dtype promotion.

  A schedule is the user's code or optax's (a Python float times the int32
  count is a promotion); the package's own code may run under
  ``jax.numpy_dtype_promotion("strict")``, a schedule need not.
  """
  with jax.numpy_dtype_promotion("standard"):
    return schedule(count)
