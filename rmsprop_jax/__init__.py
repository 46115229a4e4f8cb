"""rmsprop_jax: the whole RMSProp family as one exact, fast optax transformation."""

from rmsprop_jax import recipes as recipes
from rmsprop_jax._alias import rmsprop, scale_by_rms
from rmsprop_jax._interop import (
  from_keras,
  from_optax,
  from_torch,
  to_keras,
  to_optax,
  to_torch,
)
from rmsprop_jax._low_precision import LowPrecisionState, low_precision_params
from rmsprop_jax._presets import (
  keras_rmsprop,
  tf1_rmsprop,
  tf_keras_legacy_rmsprop,
  timm_rmsprop_tf,
  torch_rmsprop,
)
from rmsprop_jax._quantized import QuantizedArray
from rmsprop_jax._transform import RMSPropState

__version__ = "0.3.0"

__all__ = [
  "LowPrecisionState",
  "QuantizedArray",
  "RMSPropState",
  "from_keras",
  "from_optax",
  "from_torch",
  "keras_rmsprop",
  "low_precision_params",
  "rmsprop",
  "scale_by_rms",
  "tf1_rmsprop",
  "tf_keras_legacy_rmsprop",
  "timm_rmsprop_tf",
  "to_keras",
  "to_optax",
  "to_torch",
  "torch_rmsprop",
]
