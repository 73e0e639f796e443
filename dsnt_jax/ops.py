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

Every public function validates shapes (and concrete hyper-parameters) in Python and raises one ``ValueError``
naming the expected shape, then calls a jit-compiled implementation. Inside a user's own ``jit`` the shape checks
still run at trace time; value checks on traced hyper-parameters are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# Added inside the logarithms of the divergences, exactly as dsntnn does, so that a cell where both maps are
# zero contributes 0 with a finite gradient instead of 0·log 0.
DIVERGENCE_EPS = 1e-24

ActivationKind = Literal["softmax", "abs", "relu", "sigmoid"]
_ACTIVATIONS = ("softmax", "abs", "relu", "sigmoid")

# Rectified maps are divided by (sum + eps), as the paper's code does, so an all-zero ReLU map stays finite.
_RECTIFIED_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------------------------------------
# Validation helpers (Python level, before tracing)


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


# ----------------------------------------------------------------------------------------------------------
# Coordinates


def normalized_linspace(n: int, dtype: jnp.dtype = jnp.float32) -> Array:
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
    return jnp.asarray(_check_size(size, d)[::-1], dtype=jnp.float32)


def pixel_to_normalized_coordinates(coords: ArrayLike, size: Sequence[int]) -> Array:
    """Converts pixel coordinates (pixel centres at integers, 0-based) to normalised coordinates.

    Args:
      coords: ``[..., d]`` points in (x, y[, z]) order.
      size: the spatial shape ``(…, H, W)`` in array order (reversed internally to match (x, y, …)).

    Returns:
      ``[..., d]`` float32: ``(2p + 1)/n - 1`` per axis.
    """
    coords = _float(coords)
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
    coords = _float(coords)
    scale = _reversed_size(size, coords.shape[-1] if coords.ndim else 0)
    return ((coords + 1) * scale - 1) / 2


# ----------------------------------------------------------------------------------------------------------
# Heatmap activations


def _spatial_axes(x: Array, spatial_ndim: int) -> tuple[int, ...]:
    return tuple(range(x.ndim - spatial_ndim, x.ndim))


# Reduce over the spatial axes in place rather than flattening them: mixing [..., H·W] and [..., H, W] views
# of the same buffer inside one graph made XLA:CPU emit slow (unvectorised) fusions for softmax → JS.
@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _log_flat_softmax(logits: Array, temperature: Array, spatial_ndim: int) -> Array:
    return jax.nn.log_softmax(_float(logits) / temperature, axis=_spatial_axes(logits, spatial_ndim))


@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _flat_softmax(logits: Array, temperature: Array, spatial_ndim: int) -> Array:
    return jax.nn.softmax(_float(logits) / temperature, axis=_spatial_axes(logits, spatial_ndim))


def flat_softmax(logits: ArrayLike, *, spatial_ndim: int = 2, temperature: float | Array = 1.0) -> Array:
    """Softmax over all spatial cells of each heatmap jointly (the paper's softmax heatmap activation).

    Args:
      logits: ``[..., L, *spatial]`` unnormalised heatmaps, any float dtype.
      spatial_ndim: number of trailing spatial axes.
      temperature: divides the logits before the softmax (``> 0``); larger is flatter. Note that kornia's
        and mmpose's knobs of similar names *multiply*; here ``temperature = 1/beta``.

    Returns:
      ``[..., L, *spatial]`` float32 maps, non-negative, each summing to 1 over its spatial cells.
      Max-subtracted, so logits of any magnitude are safe.
    """
    logits = jnp.asarray(logits)
    _check_heatmaps(logits, spatial_ndim, "logits")
    _check_positive(temperature, "temperature")
    return _flat_softmax(logits, jnp.asarray(temperature, jnp.float32), spatial_ndim)


def log_flat_softmax(logits: ArrayLike, *, spatial_ndim: int = 2, temperature: float | Array = 1.0) -> Array:
    """``log(flat_softmax(logits))`` computed stably (finite for any finite logits).

    Args:
      logits: ``[..., L, *spatial]``.
      spatial_ndim: number of trailing spatial axes.
      temperature: divides the logits (``> 0``).

    Returns:
      ``[..., L, *spatial]`` float32 log-probabilities.
    """
    logits = jnp.asarray(logits)
    _check_heatmaps(logits, spatial_ndim, "logits")
    _check_positive(temperature, "temperature")
    return _log_flat_softmax(logits, jnp.asarray(temperature, jnp.float32), spatial_ndim)


@functools.partial(jax.jit, static_argnames=("kind", "spatial_ndim"))
def _heatmap_activation(x: Array, temperature: Array, kind: str, spatial_ndim: int) -> Array:
    if kind == "softmax":
        return _flat_softmax(x, temperature, spatial_ndim)
    x = _float(x) / temperature
    rectified = {"abs": jnp.abs, "relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid}[kind](x)
    return rectified / (jnp.sum(rectified, axis=_spatial_axes(x, spatial_ndim), keepdims=True) + _RECTIFIED_NORM_EPS)


def heatmap_activation(
    x: ArrayLike,
    kind: ActivationKind = "softmax",
    *,
    spatial_ndim: int = 2,
    temperature: float | Array = 1.0,
) -> Array:
    """Normalises raw heatmaps: rectify, then divide by the sum (paper §4.1, Table 2).

    Args:
      x: ``[..., L, *spatial]`` raw network output.
      kind: rectification: ``"softmax"`` (exp, the paper's default and best), ``"abs"``, ``"relu"`` or
        ``"sigmoid"``. The non-softmax kinds divide by ``sum + 1e-12`` as the paper's code does, so an
        all-zero ReLU map gives an all-zero heatmap (DSNT output 0) rather than NaN.
      spatial_ndim: number of trailing spatial axes.
      temperature: divides ``x`` before rectification (``> 0``). It only matters for softmax and sigmoid.

    Returns:
      ``[..., L, *spatial]`` float32 maps summing to 1 over their spatial cells.
    """
    if kind not in _ACTIVATIONS:
        raise ValueError(f"kind must be one of {_ACTIVATIONS}, got {kind!r}")
    x = jnp.asarray(x)
    _check_heatmaps(x, spatial_ndim, "x")
    _check_positive(temperature, "temperature")
    return _heatmap_activation(x, jnp.asarray(temperature, jnp.float32), kind, spatial_ndim)


# ----------------------------------------------------------------------------------------------------------
# DSNT


def _axis_grids(shape: Sequence[int], normalized: bool, dtype) -> list[Array]:
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


def _over_points(fn, heatmaps: Array, spatial_ndim: int) -> Array:
    """Applies a one-heatmap function vmapped over points and then over the flattened leading dims."""
    lead = heatmaps.shape[: heatmaps.ndim - spatial_ndim]
    maps = heatmaps.reshape((-1, lead[-1]) + heatmaps.shape[-spatial_ndim:])
    out = jax.vmap(jax.vmap(fn))(maps)
    return out.reshape(lead + out.shape[2:])


@functools.partial(jax.jit, static_argnames=("normalized_coordinates", "spatial_ndim"))
def _dsnt(heatmaps: Array, normalized_coordinates: bool, spatial_ndim: int) -> Array:
    one = functools.partial(_dsnt_one, normalized=normalized_coordinates)
    return _over_points(one, _float(heatmaps), spatial_ndim)


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
      ``[..., L, spatial_ndim]`` float32 coordinates in (x, y[, z]) order.
    """
    heatmaps = jnp.asarray(heatmaps)
    _check_heatmaps(heatmaps, spatial_ndim)
    return _dsnt(heatmaps, bool(normalized_coordinates), spatial_ndim)


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
def _heatmap_variance(heatmaps: Array, normalized_coordinates: bool, spatial_ndim: int) -> Array:
    one = functools.partial(_variance_one, normalized=normalized_coordinates)
    return _over_points(one, _float(heatmaps), spatial_ndim)


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
      ``[..., L, spatial_ndim]`` float32 variances in (x, y[, z]) order.
    """
    heatmaps = jnp.asarray(heatmaps)
    _check_heatmaps(heatmaps, spatial_ndim)
    return _heatmap_variance(heatmaps, bool(normalized_coordinates), spatial_ndim)


# ----------------------------------------------------------------------------------------------------------
# Coordinate losses (per point; reduce with average_loss)


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


# ----------------------------------------------------------------------------------------------------------
# Gaussians


def _gauss_axes(means: Array, size: tuple[int, ...], sigma: Array, normalize: bool) -> list[Array]:
    """Per-axis factors of an isotropic Gaussian on the normalised grid, in array (…, H, W) order.

    ``means`` is ``[..., L, d]`` in (x, y, …) order and ``sigma`` (pixels) broadcasts against ``[..., L]``.
    With ``normalize`` every factor is a softmax over its axis, so the separable product sums to 1 however
    small ``sigma`` is or wherever the mean lies (dsntnn's joint normalisation underflows there).
    """
    d = len(size)
    sigma = jnp.broadcast_to(sigma, means.shape[:-1])[..., None]
    factors = []
    for k, n in enumerate(size):
        mu = means[..., d - 1 - k][..., None]
        grid = normalized_linspace(n, means.dtype)
        two_var = 2.0 * jnp.square(2.0 * sigma / n)  # σ in pixels → normalised units on this axis
        if not normalize:
            factors.append(jnp.exp(-jnp.square(grid - mu) / two_var))
            continue
        # Measure the exponent from the grid point nearest the mean, (g−μ)² − (g*−μ)² = (g−g*)(g+g*−2μ):
        # the same softmax, but without subtracting two huge, nearly equal numbers when σ is tiny or the
        # mean is far off the map, which would cost float32 all its digits.
        nearest = jnp.clip(jnp.round(((mu + 1.0) * n - 1.0) / 2.0), 0, n - 1)
        g_star = jax.lax.stop_gradient((2.0 * nearest + 1.0) / n - 1.0)
        factors.append(jax.nn.softmax(-(grid - g_star) * (grid + g_star - 2.0 * mu) / two_var, axis=-1))
    return factors


def _outer_product(factors: list[Array]) -> Array:
    """Π_k f_k as an outer product: ``[..., n_1], …, [..., n_d]`` → ``[..., n_1, …, n_d]``."""
    d = len(factors)
    total = 1.0
    for k, f in enumerate(factors):
        shape = f.shape[:-1] + tuple(f.shape[-1] if j == k else 1 for j in range(d))
        total = total * f.reshape(shape)
    return total


@functools.partial(jax.jit, static_argnames=("size", "normalize"))
def _make_gauss(means: Array, size: tuple[int, ...], sigma: Array, normalize: bool) -> Array:
    return _outer_product(_gauss_axes(_float(means), size, _float(sigma), normalize))


def _check_sigma(sigma, means: Array, name: str = "sigma") -> Array:
    sigma = jnp.asarray(sigma)
    _check_positive(sigma, name)
    try:
        jnp.broadcast_shapes(sigma.shape, means.shape[:-1])
    except ValueError:
        raise ValueError(
            f"{name} must be a scalar or broadcastable to the points' shape [..., L] = {tuple(means.shape[:-1])}, "
            f"got shape {tuple(sigma.shape)}"
        ) from None
    return sigma


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
      ``[..., L, *size]`` float32 maps.
    """
    means = jnp.asarray(means)
    _check_coords(means, name="means")
    size = _check_size(size, means.shape[-1])
    sigma = _check_sigma(sigma, means)
    return _make_gauss(means, size, sigma, bool(normalize))


# ----------------------------------------------------------------------------------------------------------
# Divergences and regularisers


def _sum_spatial(x: Array, spatial_ndim: int) -> Array:
    return jnp.sum(x, axis=_spatial_axes(x, spatial_ndim))


def _log_eps(x: Array) -> Array:
    # dsntnn's form: log(x + ε) keeps values and gradients finite in cells that are exactly zero.
    return jnp.log(x + DIVERGENCE_EPS)


# The divergences carry hand-written JVPs. Their derivatives reuse the logarithms of the forward pass, so
# reverse mode costs a few multiplies per cell; left to autodiff, XLA on CPU recomputed the logarithms in
# several fusions of the backward pass of softmax → JS (≈ 8× slower at 64×64). The rules are the exact
# derivatives of the ε forms below, so values and gradients equal dsntnn's; forward mode and higher orders
# keep working because the JVP is itself differentiable.


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kl_sum(p: Array, q: Array, spatial_ndim: int) -> Array:
    """Σ p (log(p+ε) − log(q+ε)) over the spatial axes: ``[..., L, *spatial]`` → ``[..., L]``."""
    return _sum_spatial(p * (_log_eps(p) - _log_eps(q)), spatial_ndim)


def _tangent_sum(value: Array, terms, spatial_ndim: int) -> Array:
    """Σ_spatial Σ_i coefficient_i(·) · tangent_i, skipping inputs that are not being differentiated."""
    total = None
    for coefficient, tangent in terms:
        if isinstance(tangent, SymbolicZero):  # e.g. a constant target: don't build its derivative at all
            continue
        term = coefficient() * tangent
        total = term if total is None else total + term
    return jnp.zeros_like(value) if total is None else _sum_spatial(total, spatial_ndim)


@functools.partial(_kl_sum.defjvp, symbolic_zeros=True)
def _kl_sum_jvp(spatial_ndim, primals, tangents):
    p, q = primals
    log_ratio = _log_eps(p) - _log_eps(q)
    value = _sum_spatial(p * log_ratio, spatial_ndim)
    # ∂/∂p = log(p+ε) − log(q+ε) + p/(p+ε);  ∂/∂q = −p/(q+ε).
    terms = ((lambda: log_ratio + p / (p + DIVERGENCE_EPS), tangents[0]),
             (lambda: -p / (q + DIVERGENCE_EPS), tangents[1]))
    return value, _tangent_sum(value, terms, spatial_ndim)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _js_sum(p: Array, q: Array, spatial_ndim: int) -> Array:
    """½ KL(p‖m) + ½ KL(q‖m), m = (p+q)/2, each in the ε form: ``[..., L, *spatial]`` → ``[..., L]``."""
    log_m = _log_eps(0.5 * (p + q))
    return 0.5 * _sum_spatial(p * (_log_eps(p) - log_m) + q * (_log_eps(q) - log_m), spatial_ndim)


@functools.partial(_js_sum.defjvp, symbolic_zeros=True)
def _js_sum_jvp(spatial_ndim, primals, tangents):
    p, q = primals
    m = 0.5 * (p + q)
    log_m = _log_eps(m)
    p_log_ratio, q_log_ratio = _log_eps(p) - log_m, _log_eps(q) - log_m
    value = 0.5 * _sum_spatial(p * p_log_ratio + q * q_log_ratio, spatial_ndim)
    # ∂/∂p = ½ (log(p+ε) − log(m+ε) + p/(p+ε) − m/(m+ε)), and symmetrically for q; the ratio terms cancel
    # (to 0) everywhere but in cells within ~ε of zero.
    m_ratio = m / (m + DIVERGENCE_EPS)
    terms = ((lambda: 0.5 * (p_log_ratio + p / (p + DIVERGENCE_EPS) - m_ratio), tangents[0]),
             (lambda: 0.5 * (q_log_ratio + q / (q + DIVERGENCE_EPS) - m_ratio), tangents[1]))
    return value, _tangent_sum(value, terms, spatial_ndim)


@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _kl_divergence(p: Array, q: Array, spatial_ndim: int) -> Array:
    return _kl_sum(_float(p), _float(q), spatial_ndim)


@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _js_divergence(p: Array, q: Array, spatial_ndim: int) -> Array:
    return _js_sum(_float(p), _float(q), spatial_ndim)


def _check_divergence_args(p: Array, q: Array, spatial_ndim: int) -> None:
    _check_heatmaps(p, spatial_ndim, "p")
    _check_same_shape(p, q, f"p and q ({_layout(spatial_ndim)})")


def kl_divergence(p: ArrayLike, q: ArrayLike, *, spatial_ndim: int = 2) -> Array:
    """Kullback–Leibler divergence ``KL(p ‖ q)`` between heatmaps, per point.

    Computed as ``Σ p · (log(p + ε) − log(q + ε))`` with ``ε = 1e-24`` (dsntnn's form), in float32, so cells
    that are exactly zero in either map give finite values and gradients.

    Args:
      p: ``[..., L, *spatial]`` normalised heatmaps.
      q: ``[..., L, *spatial]`` normalised heatmaps.
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L]`` float32 divergences (nats).
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    _check_divergence_args(p, q, spatial_ndim)
    return _kl_divergence(p, q, spatial_ndim)


def js_divergence(p: ArrayLike, q: ArrayLike, *, spatial_ndim: int = 2) -> Array:
    """Jensen–Shannon divergence between heatmaps, per point: ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q)/2``.

    Args:
      p: ``[..., L, *spatial]`` normalised heatmaps.
      q: ``[..., L, *spatial]`` normalised heatmaps.
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L]`` float32 divergences in nats (bounded by log 2), symmetric in ``p`` and ``q``.
    """
    p, q = jnp.asarray(p), jnp.asarray(q)
    _check_divergence_args(p, q, spatial_ndim)
    return _js_divergence(p, q, spatial_ndim)


def _check_reg_args(heatmaps: Array, mu_t: Array, sigma_t) -> tuple[int, Array]:
    _check_coords(mu_t, name="mu_t")
    d = mu_t.shape[-1]
    _check_heatmaps(heatmaps, d)
    _check_points_match(heatmaps, mu_t, d)
    return d, _check_sigma(sigma_t, mu_t, "sigma_t")


@functools.partial(jax.jit, static_argnames=("divergence",))
def _divergence_reg_losses(heatmaps: Array, mu_t: Array, sigma_t: Array, divergence: str) -> Array:
    d = mu_t.shape[-1]
    heatmaps = _float(heatmaps)
    target = _make_gauss(mu_t, heatmaps.shape[-d:], sigma_t, True)
    return (_kl_sum if divergence == "kl" else _js_sum)(heatmaps, target, d)


def kl_reg_losses(heatmaps: ArrayLike, mu_t: ArrayLike, sigma_t: float | ArrayLike) -> Array:
    """KL regulariser (paper Eq. 6 with D = KL): ``KL(heatmap ‖ N(mu_t, sigma_t²))`` per point.

    The direction is dsntnn's: the heatmap is the first argument. The target is :func:`make_gauss`
    (normalised) on the heatmap's grid.

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps; the number of spatial axes is ``mu_t.shape[-1]``.
      mu_t: ``[..., L, d]`` target coordinates, normalised (x, y[, z]).
      sigma_t: target standard deviation in heatmap pixels (the paper uses 1), scalar or ``[..., L]``.

    Returns:
      ``[..., L]`` float32 losses.
    """
    heatmaps, mu_t = jnp.asarray(heatmaps), jnp.asarray(mu_t)
    _, sigma_t = _check_reg_args(heatmaps, mu_t, sigma_t)
    return _divergence_reg_losses(heatmaps, _float(mu_t), sigma_t, "kl")


def js_reg_losses(heatmaps: ArrayLike, mu_t: ArrayLike, sigma_t: float | ArrayLike) -> Array:
    """Jensen–Shannon regulariser (paper Eq. 6 with D = JS, the paper's "DSNTr") per point.

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps; the number of spatial axes is ``mu_t.shape[-1]``.
      mu_t: ``[..., L, d]`` target coordinates, normalised (x, y[, z]).
      sigma_t: target standard deviation in heatmap pixels (the paper uses 1), scalar or ``[..., L]``.

    Returns:
      ``[..., L]`` float32 losses. The paper's recommended loss is
      ``average_loss(euclidean_losses(coords, t) + js_reg_losses(heatmaps, t, 1.0), mask)``.
    """
    heatmaps, mu_t = jnp.asarray(heatmaps), jnp.asarray(mu_t)
    _, sigma_t = _check_reg_args(heatmaps, mu_t, sigma_t)
    return _divergence_reg_losses(heatmaps, _float(mu_t), sigma_t, "js")


@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _variance_reg_losses(heatmaps: Array, sigma_t: Array, spatial_ndim: int) -> Array:
    heatmaps = _float(heatmaps)
    variance = _heatmap_variance(heatmaps, True, spatial_ndim)
    # Normalised² → pixels²: an n-pixel axis spans 2 normalised units.
    half_sizes = jnp.asarray(heatmaps.shape[-spatial_ndim:][::-1], heatmaps.dtype) / 2
    variance_px = variance * jnp.square(half_sizes)
    target = jnp.square(jnp.broadcast_to(_float(sigma_t), heatmaps.shape[:-spatial_ndim]))[..., None]
    return jnp.sum(jnp.square(variance_px - target), axis=-1)


def variance_reg_losses(heatmaps: ArrayLike, sigma_t: float | ArrayLike, *, spatial_ndim: int = 2) -> Array:
    """Variance regulariser (paper Eq. 5): ``Σ_axes (Var[c_k] − sigma_t²)²`` per point, in **pixel** units.

    Units are dsntnn's: variances in pixels² and ``sigma_t`` in pixels, so the value does not depend on the
    heatmap size. The paper's code computed it in normalised units instead (its λ = 100 refers to those);
    for an ``n × n`` map the value here is ``(n/2)⁴`` times the normalised one (× 38416 at n = 28).

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps.
      sigma_t: target standard deviation in pixels, scalar or ``[..., L]``.
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L]`` float32 losses.
    """
    heatmaps = jnp.asarray(heatmaps)
    _check_heatmaps(heatmaps, spatial_ndim)
    sigma_t = jnp.asarray(sigma_t)
    _check_positive(sigma_t, "sigma_t")
    lead = heatmaps.shape[: heatmaps.ndim - spatial_ndim]
    try:
        jnp.broadcast_shapes(sigma_t.shape, lead)
    except ValueError:
        raise ValueError(
            f"sigma_t must be a scalar or broadcastable to the points' shape [..., L] = {lead}, "
            f"got shape {tuple(sigma_t.shape)}"
        ) from None
    return _variance_reg_losses(heatmaps, sigma_t, spatial_ndim)


__all__ = [
    "DIVERGENCE_EPS",
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
