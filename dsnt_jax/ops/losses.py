"""Per-point coordinate losses (Euclidean, L1, MSE; paper Eq. 2) and their masked average."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsnt_jax.ops._checks import Array, ArrayLike, as_float, check_coords, check_same_shape

# Every op here is jit-compiled whole: its shape checks run when jit traces (once per shape), before any
# computation, and raise from there.


def _pair(actual: ArrayLike, target: ArrayLike) -> tuple[Array, Array]:
    """Checks two ``[..., L, d]`` coordinate arrays of the same shape; returns them as float arrays."""
    actual, target = jnp.asarray(actual), jnp.asarray(target)
    check_coords(actual, name="actual")
    check_same_shape(actual, target, "actual and target coordinates ([..., L, d])")
    return as_float(actual), as_float(target)


@jax.jit
def euclidean_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Euclidean distance between predicted and target points (paper Eq. 2).

    Args:
      actual: ``[..., L, d]`` predicted coordinates.
      target: ``[..., L, d]`` target coordinates.

    Returns:
      ``[..., L]`` float32 distances. The gradient at zero distance is exactly 0 (never NaN). Non-finite
      inputs propagate as in dsntnn (``torch.norm``): a NaN coordinate gives a NaN distance and NaN
      gradients for that point, ±inf gives ``inf`` with NaN gradients (inf/inf); other points are unaffected.
    """
    actual, target = _pair(actual, target)
    sq = jnp.sum(jnp.square(actual - target), axis=-1)
    # Double `where`: sqrt's derivative is infinite at 0, so feed it a safe value there and define the
    # gradient at zero distance as 0 (a subgradient; torch.norm does the same). The guard is `sq == 0`, not
    # `sq > 0`: NaN compares false to both, and must take the sqrt branch so that it reaches the loss.
    zero = sq == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


@jax.jit
def l1_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Mean absolute error over the coordinate axis.

    Args:
      actual: ``[..., L, d]``.
      target: ``[..., L, d]``.

    Returns:
      ``[..., L]`` float32: ``mean_k |actual_k - target_k|`` (mean, not sum, as dsntnn). NaN gives NaN with
      NaN gradients (dsntnn's gradient there is 0, since ``torch.sign(nan) = 0``); ±inf gives ``inf`` with
      the finite slope ±1/d.
    """
    actual, target = _pair(actual, target)
    diff = actual - target
    # sign(0) = 0, so the gradient at zero error is 0 as in PyTorch.
    return jnp.mean(diff * jax.lax.stop_gradient(jnp.sign(diff)), axis=-1)


@jax.jit
def mse_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Mean squared error over the coordinate axis.

    Args:
      actual: ``[..., L, d]``.
      target: ``[..., L, d]``.

    Returns:
      ``[..., L]`` float32: ``mean_k (actual_k - target_k)²`` (mean, not sum, as dsntnn). NaN and ±inf
      propagate to the value (NaN, inf) and gradient (NaN, ±inf) of their point, as in dsntnn.
    """
    actual, target = _pair(actual, target)
    return jnp.mean(jnp.square(actual - target), axis=-1)


@jax.jit
def average_loss(losses: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Mean of per-point losses, optionally over the unmasked points only.

    Args:
      losses: ``[..., L]`` per-point losses (e.g. from :func:`euclidean_losses`).
      mask: optional ``[..., L]`` mask, 1 for points that count and 0 for the others (bool or float). The
        denominator is ``max(Σ mask, 1)``, as dsntnn, so a fully masked batch gives 0 with zero gradients.
        Meant to be binary: fractional weights summing to less than 1 are not a weighted mean.

    Returns:
      float32 scalar.

    Non-finite losses: a NaN or ±inf loss of a point that counts (mask ≠ 0, or no mask) makes the average
    NaN or ±inf, as in dsntnn, so a training loop can detect it. A point with mask = 0 is excluded
    *entirely*: whatever its loss, even NaN, it adds exactly 0 to the value and receives a zero gradient
    (and the mask's gradient stays finite). This deliberately differs from dsntnn, whose ``losses * mask``
    turns a masked NaN into a NaN average: datasets may hold garbage, even NaN, coordinates for
    unannotated joints, and the paper's training code masks those out; they must not poison the batch.
    A NaN mask entry is not 0 and poisons the average.

    One limit no reduction can lift: the zero cotangent of a masked point still meets the partial
    derivatives of the op that produced its loss, and 0·NaN = NaN. If a masked joint's *target* is NaN,
    ``grad(average_loss(euclidean_losses(pred, target), mask))`` is NaN for that joint's prediction although
    the value is finite. Replace masked targets by a finite value first, e.g.
    ``jnp.where(mask[..., None] != 0, target, 0.0)``, as :func:`dsnt_jax.models.pose_loss` does.
    """
    losses = as_float(losses)
    if mask is None:
        return jnp.sum(losses) / max(losses.size, 1)
    mask = jnp.asarray(mask)
    check_same_shape(losses, mask, "losses and mask ([..., L])")
    mask = mask.astype(losses.dtype)
    # Select, then weight: a masked-out loss that is NaN or inf must not reach the sum (mask·loss would give
    # 0·NaN = NaN), nor the mask's gradient, which is the selected loss. A NaN mask entry is != 0: it stays.
    kept = jnp.where(mask != 0, losses, 0.0)
    return jnp.sum(mask * kept) / jnp.maximum(jnp.sum(mask), 1.0)
