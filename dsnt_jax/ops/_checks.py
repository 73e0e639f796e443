"""Shape and value checks shared by the ops (one clear ValueError, raised before tracing) and small helpers."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _float(x: ArrayLike) -> Array:
    """Returns ``x`` as an array of at least float32 precision."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _layout(spatial_ndim: int) -> str:
    axes = {1: "W", 2: "H, W", 3: "D, H, W"}.get(spatial_ndim, f"<{spatial_ndim} spatial axes>")
    return f"[..., L, {axes}]"


def _check_spatial_ndim(spatial_ndim: int) -> None:
    if not isinstance(spatial_ndim, (int, np.integer)) or spatial_ndim < 1:
        raise ValueError(f"spatial_ndim must be a positive integer, got {spatial_ndim!r}")


def _check_heatmaps(heatmaps: Array, spatial_ndim: int, name: str = "heatmaps") -> None:
    _check_spatial_ndim(spatial_ndim)
    if heatmaps.ndim < spatial_ndim + 1:
        raise ValueError(
            f"{name} must have shape {_layout(spatial_ndim)} (points, then {spatial_ndim} spatial axes), "
            f"got shape {tuple(heatmaps.shape)}"
        )
    if any(n == 0 for n in heatmaps.shape[-spatial_ndim:]):
        raise ValueError(f"{name} has an empty spatial axis: shape {tuple(heatmaps.shape)}")


def _check_coords(coords: Array, d: int | None = None, name: str = "coordinates") -> None:
    if coords.ndim < 2:
        raise ValueError(f"{name} must have shape [..., L, d], got shape {tuple(coords.shape)}")
    if d is not None and coords.shape[-1] != d:
        raise ValueError(
            f"{name} must have shape [..., L, {d}] with (x, y{', z' if d == 3 else ''}) in the last axis, "
            f"got shape {tuple(coords.shape)}"
        )


def _check_same_shape(a: Array, b: Array, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_size(size: Sequence[int], d: int) -> tuple[int, ...]:
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


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_positive(value, name: str) -> None:
    """Rejects non-positive hyper-parameters when their value is known (not traced)."""
    if _is_concrete(value) and not np.all(np.asarray(value) > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_points_match(heatmaps: Array, coords: Array, spatial_ndim: int) -> None:
    """The leading ``[..., L]`` dimensions of heatmaps and coordinates must agree."""
    if heatmaps.shape[:-spatial_ndim] != coords.shape[:-1]:
        raise ValueError(
            f"heatmaps {_layout(spatial_ndim)} and coordinates [..., L, {spatial_ndim}] must agree on [..., L]: "
            f"got heatmaps {tuple(heatmaps.shape)} and coordinates {tuple(coords.shape)}"
        )




def _spatial_axes(x: Array, spatial_ndim: int) -> tuple[int, ...]:
    return tuple(range(x.ndim - spatial_ndim, x.ndim))


def _sum_spatial(x: Array, spatial_ndim: int) -> Array:
    return jnp.sum(x, axis=_spatial_axes(x, spatial_ndim))
