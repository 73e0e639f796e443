"""Isotropic Gaussian target heatmaps on the normalised grid, σ in heatmap pixels."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from dsnt_jax.ops._checks import (
    Array,
    ArrayLike,
    as_float,
    check_coords,
    check_sigma,
    check_size,
    outer_product,
)
from dsnt_jax.ops.coordinates import normalized_linspace


def gauss_axes(
    means: Array, size: Sequence[int], sigma: Array, normalize: bool, log: bool = False
) -> list[Array]:
    """Per-axis factors of an isotropic Gaussian on the normalised grid, in array (…, H, W) order.

    The separable form behind :func:`make_gauss`, also used by the JS regulariser, which needs the log factors.

    ``means`` is ``[..., L, d]`` in (x, y, …) order and ``sigma`` (pixels) broadcasts against ``[..., L]``.
    With ``normalize`` every factor is a softmax over its axis, so the separable product sums to 1 however
    small ``sigma`` is or wherever the mean lies (dsntnn's joint normalisation underflows there). With
    ``log`` (normalised only) the factors are log-probabilities, finite even where the probability underflows.
    """
    d = len(size)
    sigma = jnp.broadcast_to(sigma, means.shape[:-1])[..., None]
    factors = []
    for k, n in enumerate(size):
        mu = means[..., d - 1 - k][..., None]
        grid = normalized_linspace(n, means.dtype)
        two_var = 2.0 * jnp.square(2.0 * sigma / n)  # σ in pixels → normalised units on this axis
        if not normalize:
            # exp(−(g − ±inf)²) is an all-zero map that a loss would take at face value: make a non-finite
            # mean NaN instead. Added (not selected) so that its gradient still carries the NaN back to mu.
            mu = mu + jnp.where(jnp.isfinite(mu), 0.0, jnp.nan)
            factors.append(jnp.exp(-jnp.square(grid - mu) / two_var))
            continue
        # (A non-finite mean needs no such care here: ±inf clips to an edge g*, where (g − g*)·(±inf) = 0·inf
        # is NaN, and NaN stays NaN, so the softmax's whole axis is NaN.)
        # Measure the exponent from the grid point nearest the mean, (g−μ)² − (g*−μ)² = (g−g*)(g+g*−2μ):
        # the same softmax, but without subtracting two huge, nearly equal numbers when σ is tiny or the
        # mean is far off the map, which would cost float32 all its digits.
        nearest = jnp.clip(jnp.round(((mu + 1.0) * n - 1.0) / 2.0), 0, n - 1)
        g_star = jax.lax.stop_gradient((2.0 * nearest + 1.0) / n - 1.0)
        logits = -(grid - g_star) * (grid + g_star - 2.0 * mu) / two_var
        factors.append((jax.nn.log_softmax if log else jax.nn.softmax)(logits, axis=-1))
    return factors


# The jit-compiled implementation of make_gauss. It stays separate because make_gauss checks a concrete `sigma`
# (> 0), which jit would turn into a tracer before the check could see its value.
@functools.partial(jax.jit, static_argnames=("size", "normalize"))
def _make_gauss(means: Array, size: tuple[int, ...], sigma: Array, normalize: bool) -> Array:
    return outer_product(gauss_axes(as_float(means), size, as_float(sigma), normalize))


def make_gauss(
    means: ArrayLike, size: Sequence[int], sigma: float | ArrayLike, normalize: bool = True
) -> Array:
    """Renders isotropic Gaussians centred on normalised points (the paper's target distribution).

    Separable: a product over axes of ``exp(-(g - μ)² / (2 σ_n²))`` on the normalised pixel-centre grid ``g``,
    with ``σ_n = 2σ/n`` so that ``sigma`` is in heatmap pixels on every axis (isotropic in pixel space).

    Args:
      means: ``[..., L, d]`` centres in normalised (x, y[, z]) coordinates; may lie between pixels or outside
        the map.
      size: the spatial shape ``(…, H, W)`` of the maps to draw, ``d`` lengths.
      sigma: standard deviation in pixels (``> 0``): a float, or an array broadcastable to ``[..., L]``.
      normalize: if True (default) each map sums to 1 as a discrete distribution over pixel centres (the
        normalisation is done per axis in log space, so it holds even for σ = 0.05 px with an off-grid mean or
        a mean far outside the map, where dsntnn's maps underflow to zero). If False the peak value is ≤ 1.

    Returns:
      ``[..., L, *size]`` float32 maps. A NaN or ±inf coordinate in a mean makes that point's whole map NaN,
      and the gradients with respect to that mean NaN too (dsntnn agrees for NaN; for ±inf it draws an
      all-zero map). A traced NaN ``sigma`` gives NaN; ``sigma = inf`` gives the uniform map, its limit, as
      dsntnn. Concrete ``sigma`` that is NaN or ≤ 0 is rejected.
    """
    means = jnp.asarray(means)
    check_coords(means, name="means")
    size = check_size(size, means.shape[-1])
    sigma = check_sigma(sigma, means.shape[:-1])
    return _make_gauss(means, size, sigma, bool(normalize))
