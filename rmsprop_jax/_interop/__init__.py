"""Converting optimizer states between rmsprop_jax and optax, PyTorch, Keras.

One module per framework (``_optax``, ``_torch``, ``_keras``) over one shared
floor: ``_shared`` (parameter layout, dtypes, counts, positions) and
``_locate`` (the one locator of states inside optax's wrappers). The
framework modules import the floor, never each other.
"""

from rmsprop_jax._interop._keras import from_keras, to_keras
from rmsprop_jax._interop._optax import from_optax, to_optax
from rmsprop_jax._interop._torch import from_torch, to_torch

__all__ = ["from_keras", "from_optax", "from_torch", "to_keras", "to_optax", "to_torch"]
