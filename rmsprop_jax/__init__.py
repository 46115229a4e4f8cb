"""rmsprop_jax: the whole RMSProp family as one exact, fast optax transformation."""

from rmsprop_jax._core import RMSPropState, rmsprop, scale_by_rms
from rmsprop_jax._presets import (
  keras_rmsprop,
  tf1_rmsprop,
  timm_rmsprop_tf,
  torch_rmsprop,
)

__version__ = "0.1.0"

__all__ = [
  "RMSPropState",
  "keras_rmsprop",
  "rmsprop",
  "scale_by_rms",
  "tf1_rmsprop",
  "timm_rmsprop_tf",
  "torch_rmsprop",
]
