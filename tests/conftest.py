"""Shared pytest configuration: strict dtype promotion and hypothesis profiles.

Every test runs under ``jax.numpy_dtype_promotion("strict")``, as equinox's
tests do: an implicit promotion between two dtypes in the package (a float32
array meeting a float64 one, a bfloat16 state meeting a float32 gradient) is
an error, so that every conversion in the package is one it asks for.

``ci`` (the default hypothesis profile) is derandomised, so a test run is
reproducible, and has no deadline, because the first example of a shape pays
for a compilation and the CI machines are shared. ``fuzz`` draws fresh random
examples, many more of them: ``HYPOTHESIS_PROFILE=fuzz pytest
tests/test_properties.py``.
"""

import os
from collections.abc import Iterator

import jax
import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("fuzz", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request: pytest.FixtureRequest) -> Iterator[None]:
  marked = request.node.get_closest_marker("standard_promotion") is not None
  with jax.numpy_dtype_promotion("standard" if marked else "strict"):
    yield


def pytest_configure(config: pytest.Config) -> None:
  config.addinivalue_line(
    "markers",
    "standard_promotion(reason): the test drives another library's code (optax's "
    "MultiSteps, Keras) that relies on JAX's standard dtype promotion",
  )
