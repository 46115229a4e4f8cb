"""Shared pytest configuration: hypothesis profiles.

``ci`` (the default) is derandomised, so a test run is reproducible, and has
no deadline, because the first example of a shape pays for a compilation and
the CI machines are shared. ``fuzz`` draws fresh random examples, many more of
them: ``HYPOTHESIS_PROFILE=fuzz pytest tests/test_properties.py``.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.register_profile("fuzz", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
