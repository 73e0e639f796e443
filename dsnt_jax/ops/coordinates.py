"""Normalised coordinates and the DSNT itself: expectations (paper Eq. 1) and variances (Eq. 4) of heatmaps."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from dsnt_jax.ops._checks import Array, ArrayLike, as_float, check_heatmaps, check_size


def normalized_linspace(n: int, dtype: DTypeLike = jnp.float32) -> Array:
    """Normalised pixel-centre coordinates of an ``n``-pixel axis: ``(2i + 1)/n - 1`` for ``i = 0..n-1``.

    Args:
      n: number of pixels (>= 1).
      dtype: floating dtype of the result.

    Returns:
      ``[n]`` array; e.g. ``n=4`` gives ``[-0.75, -0.25, 0.25, 0.75]`` and ``n=1`` gives ``[0]``.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    # Built from arange (not linspace) so that every value is exact to the last ulp and n = 1 gives 0.
    return ((2 * jnp.arange(n, dtype=dtype) + 1) / n - 1).astype(dtype)


def _reversed_size(size: Sequence[int], d: int) -> Array:
    return jnp.asarray(check_size(size, d)[::-1], dtype=jnp.float32)


def pixel_to_normalized_coordinates(coords: ArrayLike, size: Sequence[int]) -> Array:
    """Converts pixel coordinates (pixel centres at integers, 0-based) to normalised coordinates.

    Args:
      coords: ``[..., d]`` points in (x, y[, z]) order.
      size: the spatial shape ``(…, H, W)`` in array order (reversed internally to match (x, y, …)).

    Returns:
      ``[..., d]`` float32: ``(2p + 1)/n - 1`` per axis.
    """
    coords = as_float(coords)
    scale = _reversed_size(size, coords.shape[-1] if coords.ndim else 0)
    return (2 * coords + 1) / scale - 1


def normalized_to_pixel_coordinates(coords: ArrayLike, size: Sequence[int]) -> Array:
    """Inverse of :func:`pixel_to_normalized_coordinates`: ``((c + 1)·n - 1)/2`` per axis.

    Args:
      coords: ``[..., d]`` normalised points in (x, y[, z]) order.
      size: the spatial shape ``(…, H, W)`` in array order.

    Returns:
      ``[..., d]`` float32 pixel coordinates, pixel centres at integers.
    """
    coords = as_float(coords)
    scale = _reversed_size(size, coords.shape[-1] if coords.ndim else 0)
    return ((coords + 1) * scale - 1) / 2


def _axis_grids(shape: Sequence[int], normalized: bool, dtype: DTypeLike) -> list[Array]:
    """One coordinate vector per spatial axis, in array (…, H, W) order."""
    if normalized:
        return [normalized_linspace(n, dtype) for n in shape]
    return [jnp.arange(n, dtype=dtype) for n in shape]


def _marginals(heatmap: Array) -> list[Array]:
    """Marginal mass along each axis of one ``[*spatial]`` map, in array order."""
    axes = range(heatmap.ndim)
    return [jnp.sum(heatmap, axis=tuple(a for a in axes if a != k)) for k in axes]


def _dsnt_one(heatmap: Array, normalized: bool) -> Array:
    """DSNT of a single ``[*spatial]`` heatmap → ``[d]`` coordinates in (x, y, …) order (paper Eq. 1)."""
    grids = _axis_grids(heatmap.shape, normalized, heatmap.dtype)
    expectations = [jnp.dot(m, g) for m, g in zip(_marginals(heatmap), grids)]
    return jnp.stack(expectations[::-1])


def _over_points(fn: Callable[[Array], Array], heatmaps: Array, spatial_ndim: int) -> Array:
    """Applies a one-heatmap function vmapped over points and then over the flattened leading dims."""
    lead = heatmaps.shape[: heatmaps.ndim - spatial_ndim]
    maps = heatmaps.reshape((-1, lead[-1]) + heatmaps.shape[-spatial_ndim:])
    out = jax.vmap(jax.vmap(fn))(maps)
    return out.reshape(lead + out.shape[2:])


# Shape checks run when jit traces (once per shape), before any computation; the static arguments are plain
# Python values there, so the checks see them.
@functools.partial(jax.jit, static_argnames=("normalized_coordinates", "spatial_ndim"))
def dsnt(heatmaps: ArrayLike, *, normalized_coordinates: bool = True, spatial_ndim: int = 2) -> Array:
    """The differentiable spatial-to-numerical transform: the expected coordinates of each heatmap.

    Computes ``E[c] = Σ_cells heatmap · grid`` per axis (paper Eq. 1), written for one heatmap and vmapped over
    points and batch. The map is *not* renormalised: feed it the output of :func:`heatmap_activation`
    (an unnormalised map of mass ``s`` scales the result by ``s``, exactly as dsntnn does).

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps (non-negative, summing to 1).
      normalized_coordinates: if True, coordinates in ``(-1, 1)`` with ±1 at the heatmap edges; if False,
        0-based pixel coordinates with pixel centres at integers.
      spatial_ndim: number of trailing spatial axes (2 for images, 3 for volumes).

    Returns:
      ``[..., L, spatial_ndim]`` float32 coordinates in (x, y[, z]) order. A NaN cell makes its point's
      coordinates NaN on every axis; a ±inf cell makes them ±inf, or NaN where inf meets a grid value of 0
      or an opposite inf (dsntnn gives the same). The op is linear, so its own gradient is the constant grid
      even then; the NaN comes back through the loss computed from the coordinates.
    """
    heatmaps = jnp.asarray(heatmaps)
    check_heatmaps(heatmaps, spatial_ndim)
    one = functools.partial(_dsnt_one, normalized=bool(normalized_coordinates))
    return _over_points(one, as_float(heatmaps), spatial_ndim)


soft_argmax = dsnt


def _variance_one(heatmap: Array, normalized: bool) -> Array:
    """Per-axis variance of the coordinate distribution of one map → ``[d]`` in (x, y, …) order (Eq. 4)."""
    grids = _axis_grids(heatmap.shape, normalized, heatmap.dtype)
    out = []
    for m, g in zip(_marginals(heatmap), grids):
        mean = jnp.dot(m, g)
        out.append(jnp.dot(m, jnp.square(g - mean)))
    return jnp.stack(out[::-1])


@functools.partial(jax.jit, static_argnames=("normalized_coordinates", "spatial_ndim"))
def heatmap_variance(heatmaps: ArrayLike, *, normalized_coordinates: bool = True, spatial_ndim: int = 2) -> Array:
    """Per-point spread ``Var[c]`` of each heatmap's coordinate distribution (paper Eq. 4).

    Usable as a confidence: a sharp, single-peaked map has a small variance; a diffuse or multi-peaked map
    (occluded or ambiguous point) a large one. A natural scalar score is ``sqrt(mean over axes)``, the RMS
    spread, in the same units as the coordinates.

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps.
      normalized_coordinates: variance in normalised units² (True) or in pixels² (False). For an ``n``-pixel
        axis, pixels² = normalised² · (n/2)².
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L, spatial_ndim]`` float32 variances in (x, y[, z]) order. A NaN or ±inf cell makes its point's
      variances NaN or inf (and their gradients non-finite); other points are unaffected.
    """
    heatmaps = jnp.asarray(heatmaps)
    check_heatmaps(heatmaps, spatial_ndim)
    one = functools.partial(_variance_one, normalized=bool(normalized_coordinates))
    return _over_points(one, as_float(heatmaps), spatial_ndim)
