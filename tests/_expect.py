"""Expecting the package's own warnings where a test provokes them on purpose."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import pytest


@contextlib.contextmanager
def centred_warning(centered: bool, state_dtype: Any) -> Iterator[None]:
  """Asserts the warning of centred RMSProp with sub-32-bit state, where due.

  pyproject.toml turns that warning into an error everywhere else, so a test
  that meets it unannounced fails.
  """
  if centered and state_dtype is not None and jnp.dtype(state_dtype).itemsize < 4:
    with pytest.warns(UserWarning, match="centered=True with state_dtype"):
      yield
  else:
    yield


def _half(x: Any) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


@contextlib.contextmanager
def low_precision_warning(params: Any) -> Iterator[None]:
  """Asserts ``init``'s warning about bfloat16 or float16 params, where due.

  pyproject.toml turns it into an error everywhere else: a test that gives
  ``init`` such params on purpose must say so.
  """
  if any(_half(x) for x in jax.tree.leaves(params)):
    with pytest.warns(UserWarning, match="Low-precision params"):
      yield
  else:
    yield
