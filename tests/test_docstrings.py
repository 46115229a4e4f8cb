"""The ``Examples:`` in the public docstrings run and print what they show."""

from __future__ import annotations

import doctest

import pytest

from rmsprop_jax import _alias, _presets, recipes
from rmsprop_jax._interop import _keras, _optax, _torch


# The examples run optax.rmsprop and Keras beside the package, whose own code
# relies on JAX's standard dtype promotion.
@pytest.mark.standard_promotion
@pytest.mark.parametrize(
  "module",
  [_alias, _presets, _optax, _torch, _keras, recipes],
  ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0
  assert result.failed == 0
