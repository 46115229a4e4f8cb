"""rmsprop_jax: the whole RMSProp family as one exact, fast optax transformation."""

from rmsprop_jax._core import RMSPropState, rmsprop, scale_by_rms

__version__ = "0.1.0"

__all__ = ["RMSPropState", "rmsprop", "scale_by_rms"]
