"""What the ops modules share: shape and value checks (one clear ValueError, raised before any computation)
and small array helpers.

The module is private to ``dsnt_jax.ops``; its names are public because every ops module uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def as_float(x: ArrayLike) -> Array:
    """Returns ``x`` as an array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def layout(spatial_ndim: int) -> str:
    """The heatmap layout in words, e.g. ``[..., L, H, W]`` for ``spatial_ndim = 2`` (for error messages)."""
    axes = {1: "W", 2: "H, W", 3: "D, H, W"}.get(spatial_ndim, f"<{spatial_ndim} spatial axes>")
    return f"[..., L, {axes}]"


def _check_spatial_ndim(spatial_ndim: int) -> None:
    if not isinstance(spatial_ndim, (int, np.integer)) or spatial_ndim < 1:
        raise ValueError(f"spatial_ndim must be a positive integer, got {spatial_ndim!r}")


def check_heatmaps(heatmaps: Array, spatial_ndim: int, name: str = "heatmaps") -> None:
    """``heatmaps`` must be ``[..., L, *spatial]`` with ``spatial_ndim`` non-empty spatial axes."""
    _check_spatial_ndim(spatial_ndim)
    if heatmaps.ndim < spatial_ndim + 1:
        raise ValueError(
            f"{name} must have shape {layout(spatial_ndim)} (points, then {spatial_ndim} spatial axes), "
            f"got shape {tuple(heatmaps.shape)}"
        )
    if any(n == 0 for n in heatmaps.shape[-spatial_ndim:]):
        raise ValueError(f"{name} has an empty spatial axis: shape {tuple(heatmaps.shape)}")


def check_coords(coords: Array, d: int | None = None, name: str = "coordinates") -> None:
    """``coords`` must be ``[..., L, d]`` (any ``d`` when None)."""
    if coords.ndim < 2:
        raise ValueError(f"{name} must have shape [..., L, d], got shape {tuple(coords.shape)}")
    if d is not None and coords.shape[-1] != d:
        raise ValueError(
            f"{name} must have shape [..., L, {d}] with (x, y{', z' if d == 3 else ''}) in the last axis, "
            f"got shape {tuple(coords.shape)}"
        )


def check_same_shape(a: Array, b: Array, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_size(size: Sequence[int], d: int) -> tuple[int, ...]:
    """Validates a spatial shape ``(…, H, W)`` of ``d`` lengths and returns it as a tuple of ints."""
    try:
        size = tuple(int(n) for n in size)
    except TypeError:
        raise ValueError(f"size must be a sequence of {d} spatial lengths (…, H, W), got {size!r}") from None
    if len(size) != d:
        raise ValueError(
            f"size must list the {d} spatial lengths (…, H, W) matching coordinates with {d} values (x, y, …), "
            f"got size {size}"
        )
    if any(n < 1 for n in size):
        raise ValueError(f"every spatial length must be >= 1, got size {size}")
    return size


def _is_concrete(x: object) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_positive(value: ArrayLike, name: str) -> None:
    """Rejects non-positive hyper-parameters when their value is known (not traced)."""
    if _is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_sigma(sigma: ArrayLike, points_shape: tuple[int, ...], name: str = "sigma") -> Array:
    """A Gaussian width in pixels: ``> 0`` when concrete, and a scalar or broadcastable to ``[..., L]``.

    Args:
      sigma: the width, a float or an array.
      points_shape: the points' shape ``[..., L]``.
      name: the argument's name in error messages.

    Returns:
      ``sigma`` as an array (not broadcast).
    """
    sigma = jnp.asarray(sigma)
    check_positive(sigma, name)
    try:
        jnp.broadcast_shapes(sigma.shape, points_shape)
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to the points' shape [..., L] = {tuple(points_shape)}, "
            f"got shape {tuple(sigma.shape)}"
        ) from None
    return sigma


def check_points_match(heatmaps: Array, coords: Array, spatial_ndim: int) -> None:
    """The leading ``[..., L]`` dimensions of heatmaps and coordinates must agree."""
    if heatmaps.shape[:-spatial_ndim] != coords.shape[:-1]:
        raise ValueError(
            f"heatmaps {layout(spatial_ndim)} and coordinates [..., L, {spatial_ndim}] must agree on [..., L]: "
            f"got heatmaps {tuple(heatmaps.shape)} and coordinates {tuple(coords.shape)}"
        )


def spatial_axes(x: Array, spatial_ndim: int) -> tuple[int, ...]:
    """The indices of the ``spatial_ndim`` trailing axes of ``x``."""
    return tuple(range(x.ndim - spatial_ndim, x.ndim))


def sum_spatial(x: Array, spatial_ndim: int) -> Array:
    """``[..., *spatial]`` → ``[...]``: the sum over the trailing spatial axes."""
    return jnp.sum(x, axis=spatial_axes(x, spatial_ndim))


def outer_product(factors: Sequence[Array]) -> Array:
    """Π_k f_k as an outer product: ``[..., n_1], …, [..., n_d]`` → ``[..., n_1, …, n_d]``."""
    d = len(factors)
    total: Array | float = 1.0
    for k, f in enumerate(factors):
        shape = f.shape[:-1] + tuple(f.shape[-1] if j == k else 1 for j in range(d))
        total = total * f.reshape(shape)
    return jnp.asarray(total)


def outer_sum(terms: Sequence[Array]) -> Array:
    """Σ_k t_k as an outer sum: ``[..., n_1], …, [..., n_d]`` → ``[..., n_1, …, n_d]``."""
    d = len(terms)
    total: Array | float = 0.0
    for k, t in enumerate(terms):
        total = total + t.reshape(t.shape[:-1] + tuple(t.shape[-1] if j == k else 1 for j in range(d)))
    return jnp.asarray(total)
