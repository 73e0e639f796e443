"""Per-point coordinate losses (Euclidean, L1, MSE; paper Eq. 2) and their masked average."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsnt_jax.ops._checks import (
    Array,
    ArrayLike,
    _check_coords,
    _check_same_shape,
    _float,
)


def _check_pair(actual: Array, target: Array) -> None:
    _check_coords(actual, name="actual")
    _check_same_shape(actual, target, "actual and target coordinates ([..., L, d])")


@jax.jit
def _euclidean_losses(actual: Array, target: Array) -> Array:
    sq = jnp.sum(jnp.square(_float(actual) - _float(target)), axis=-1)
    # Double `where`: sqrt's derivative is infinite at 0, so feed it a safe value there and define the
    # gradient at zero distance as 0 (a subgradient; torch.norm does the same).
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def euclidean_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Euclidean distance between predicted and target points (paper Eq. 2).

    Args:
      actual: ``[..., L, d]`` predicted coordinates.
      target: ``[..., L, d]`` target coordinates.

    Returns:
      ``[..., L]`` float32 distances. The gradient at zero distance is exactly 0 (never NaN).
    """
    actual, target = jnp.asarray(actual), jnp.asarray(target)
    _check_pair(actual, target)
    return _euclidean_losses(actual, target)


@jax.jit
def _l1_losses(actual: Array, target: Array) -> Array:
    diff = _float(actual) - _float(target)
    # sign(0) = 0, so the gradient at zero error is 0 as in PyTorch.
    return jnp.mean(diff * jax.lax.stop_gradient(jnp.sign(diff)), axis=-1)


def l1_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Mean absolute error over the coordinate axis.

    Args:
      actual: ``[..., L, d]``.
      target: ``[..., L, d]``.

    Returns:
      ``[..., L]`` float32: ``mean_k |actual_k - target_k|`` (mean, not sum, as dsntnn).
    """
    actual, target = jnp.asarray(actual), jnp.asarray(target)
    _check_pair(actual, target)
    return _l1_losses(actual, target)


@jax.jit
def _mse_losses(actual: Array, target: Array) -> Array:
    return jnp.mean(jnp.square(_float(actual) - _float(target)), axis=-1)


def mse_losses(actual: ArrayLike, target: ArrayLike) -> Array:
    """Mean squared error over the coordinate axis.

    Args:
      actual: ``[..., L, d]``.
      target: ``[..., L, d]``.

    Returns:
      ``[..., L]`` float32: ``mean_k (actual_k - target_k)²`` (mean, not sum, as dsntnn).
    """
    actual, target = jnp.asarray(actual), jnp.asarray(target)
    _check_pair(actual, target)
    return _mse_losses(actual, target)


@jax.jit
def _average_loss(losses: Array, mask: Array | None) -> Array:
    losses = _float(losses)
    if mask is None:
        return jnp.sum(losses) / max(losses.size, 1)
    mask = mask.astype(losses.dtype)
    # `where` rather than mask·loss: a masked-out loss that is inf must not turn the sum into NaN.
    total = jnp.sum(jnp.where(mask != 0, mask * losses, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def average_loss(losses: ArrayLike, mask: ArrayLike | None = None) -> Array:
    """Mean of per-point losses, optionally over the unmasked points only.

    Args:
      losses: ``[..., L]`` per-point losses (e.g. from :func:`euclidean_losses`).
      mask: optional ``[..., L]`` mask, 1 for points that count and 0 for the others (bool or float). The
        denominator is ``max(Σ mask, 1)``, as dsntnn, so a fully masked batch gives 0 with zero gradients.
        Meant to be binary: fractional weights summing to less than 1 are not a weighted mean.

    Returns:
      float32 scalar.
    """
    losses = jnp.asarray(losses)
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_same_shape(losses, mask, "losses and mask ([..., L])")
    return _average_loss(losses, mask)


