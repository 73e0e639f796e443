"""DSNT and its companions as pure JAX functions: activations, coordinates, Gaussians, losses, regularisers.

Conventions (those of the paper and of the PyTorch library ``dsntnn`` 0.5.3, so switching is painless):

* Heatmaps are laid out ``[..., L, *spatial]``: any leading batch dimensions, ``L`` points (joints), then
  ``spatial_ndim`` spatial axes (default 2, i.e. ``[B, L, H, W]``; 3 gives ``[B, L, D, H, W]``).
* Coordinates are ``[..., L, d]`` in **(x, y[, z])** order, the reverse of the spatial axis order.
* Normalised coordinates put the centre of pixel ``i`` of an ``n``-pixel axis at ``(2i + 1)/n - 1``; ``-1`` and
  ``+1`` are the outer *edges* of the heatmap (not the centres of the edge pixels, as in kornia).
* Gaussian widths ``sigma`` are in heatmap pixels.
* Everything is computed in at least float32: bfloat16/float16 inputs are cast up, results come back float32
  (float64 stays float64 when x64 is enabled).

The conventions in full, other libraries' conventions, the numerical traps the ops avoid and every deliberate
difference from dsntnn: docs/conventions.md (§1 coordinates, §2 layouts and units, §3 traps, §5 differences).

Every public op is jit-compiled and validates shapes (and concrete hyper-parameters) in Python, raising one
``ValueError`` naming the expected shape before anything is computed. Shape checks run when the op is traced,
also inside a user's own ``jit``. The ops with a positive hyper-parameter (``temperature``, ``sigma``,
``sigma_t``) check its value first, outside their jit-compiled core, when it is concrete; a traced one is not
checked.
"""

from dsnt_jax.ops.activations import ACTIVATIONS, Activation, flat_softmax, heatmap_activation, log_flat_softmax
from dsnt_jax.ops.coordinates import (
    dsnt,
    heatmap_variance,
    normalized_linspace,
    normalized_to_pixel_coordinates,
    pixel_to_normalized_coordinates,
    soft_argmax,
)
from dsnt_jax.ops.divergences import (
    DIVERGENCE_EPS,
    js_divergence,
    js_reg_losses,
    kl_divergence,
    kl_reg_losses,
    variance_reg_losses,
)
from dsnt_jax.ops.gaussians import make_gauss
from dsnt_jax.ops.losses import average_loss, euclidean_losses, l1_losses, mse_losses

__all__ = [
    "ACTIVATIONS",
    "DIVERGENCE_EPS",
    "Activation",
    "average_loss",
    "dsnt",
    "euclidean_losses",
    "flat_softmax",
    "heatmap_activation",
    "heatmap_variance",
    "js_divergence",
    "js_reg_losses",
    "kl_divergence",
    "kl_reg_losses",
    "l1_losses",
    "log_flat_softmax",
    "make_gauss",
    "mse_losses",
    "normalized_linspace",
    "normalized_to_pixel_coordinates",
    "pixel_to_normalized_coordinates",
    "soft_argmax",
    "variance_reg_losses",
]
