"""dsnt-jax: the differentiable spatial-to-numerical transform (Nibali et al. 2018) for JAX and Flax."""

from dsnt_jax import ops

__all__ = ["ops"]
__version__ = "0.1.0"
