"""Divergences between heatmaps and the paper's regularisers (Eqs. 5–6): KL, JS and variance."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from dsnt_jax.ops._checks import (
    Array,
    ArrayLike,
    as_float,
    check_coords,
    check_heatmaps,
    check_points_match,
    check_same_shape,
    check_sigma,
    layout,
    outer_product,
    outer_sum,
    sum_spatial,
)
from dsnt_jax.ops.coordinates import heatmap_variance
from dsnt_jax.ops.gaussians import gauss_axes, make_gauss

# Added inside the logarithms of the divergences, exactly as dsntnn does, so that a cell where both maps are
# zero contributes 0 with a finite gradient instead of 0·log 0.
DIVERGENCE_EPS = 1e-24


def _log_eps(x: Array) -> Array:
    # dsntnn's form: log(x + ε) keeps values and gradients finite in cells that are exactly zero.
    return jnp.log(x + DIVERGENCE_EPS)


# The divergences carry hand-written JVPs. Their derivatives reuse the logarithms of the forward pass, so
# reverse mode costs a few multiplies per cell; left to autodiff, XLA on CPU recomputed the logarithms in
# several fusions of the backward pass of softmax → JS (≈ 8× slower at 64×64). The rules are the exact
# derivatives of the ε forms below, so values and gradients equal dsntnn's; forward mode and higher orders
# keep working because the JVP is itself differentiable. They contain no select and no guard: a NaN in p or
# q reaches the value and every coefficient of the point it is in (the target's log-space form included), so
# NaN propagates exactly as through autodiff. Only a SymbolicZero tangent (an input not differentiated) is
# skipped, as autodiff skips it: such an input contributes nothing, not 0·NaN.


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kl_sum(p: Array, q: Array, spatial_ndim: int) -> Array:
    """Σ p (log(p+ε) − log(q+ε)) over the spatial axes: ``[..., L, *spatial]`` → ``[..., L]``."""
    return sum_spatial(p * (_log_eps(p) - _log_eps(q)), spatial_ndim)


# A partial derivative, built only when needed, and the tangent it multiplies.
_Tangent = Array | SymbolicZero
_Term = tuple[Callable[[], Array], _Tangent]


def _tangent_sum(value: Array, terms: Iterable[_Term], spatial_ndim: int) -> Array:
    """Σ_spatial Σ_i coefficient_i(·) · tangent_i, skipping inputs that are not being differentiated."""
    total: Array | None = None
    for coefficient, tangent in terms:
        if isinstance(tangent, SymbolicZero):  # e.g. a constant target: don't build its derivative at all
            continue
        term = coefficient() * tangent
        total = term if total is None else total + term
    return jnp.zeros_like(value) if total is None else sum_spatial(total, spatial_ndim)


@functools.partial(_kl_sum.defjvp, symbolic_zeros=True)
def _kl_sum_jvp(
    spatial_ndim: int, primals: tuple[Array, Array], tangents: tuple[_Tangent, _Tangent]
) -> tuple[Array, Array]:
    p, q = primals
    log_ratio = _log_eps(p) - _log_eps(q)
    value = sum_spatial(p * log_ratio, spatial_ndim)
    # ∂/∂p = log(p+ε) − log(q+ε) + p/(p+ε);  ∂/∂q = −p/(q+ε).
    terms = ((lambda: log_ratio + p / (p + DIVERGENCE_EPS), tangents[0]),
             (lambda: -p / (q + DIVERGENCE_EPS), tangents[1]))
    return value, _tangent_sum(value, terms, spatial_ndim)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _js_sum(p: Array, q: Array, spatial_ndim: int) -> Array:
    """½ KL(p‖m) + ½ KL(q‖m), m = (p+q)/2, each in the ε form: ``[..., L, *spatial]`` → ``[..., L]``."""
    log_m = _log_eps(0.5 * (p + q))
    return 0.5 * sum_spatial(p * (_log_eps(p) - log_m) + q * (_log_eps(q) - log_m), spatial_ndim)


@functools.partial(_js_sum.defjvp, symbolic_zeros=True)
def _js_sum_jvp(
    spatial_ndim: int, primals: tuple[Array, Array], tangents: tuple[_Tangent, _Tangent]
) -> tuple[Array, Array]:
    p, q = primals
    m = 0.5 * (p + q)
    log_m = _log_eps(m)
    p_log_ratio, q_log_ratio = _log_eps(p) - log_m, _log_eps(q) - log_m
    value = 0.5 * sum_spatial(p * p_log_ratio + q * q_log_ratio, spatial_ndim)
    # ∂/∂p = ½ (log(p+ε) − log(m+ε) + p/(p+ε) − m/(m+ε)), and symmetrically for q; the ratio terms cancel
    # (to 0) everywhere but in cells within ~ε of zero.
    m_ratio = m / (m + DIVERGENCE_EPS)
    terms = ((lambda: 0.5 * (p_log_ratio + p / (p + DIVERGENCE_EPS) - m_ratio), tangents[0]),
             (lambda: 0.5 * (q_log_ratio + q / (q + DIVERGENCE_EPS) - m_ratio), tangents[1]))
    return value, _tangent_sum(value, terms, spatial_ndim)


def _divergence_args(p: ArrayLike, q: ArrayLike, spatial_ndim: int) -> tuple[Array, Array]:
    """Checks two ``[..., L, *spatial]`` maps of the same shape; returns them as float arrays."""
    p, q = jnp.asarray(p), jnp.asarray(q)
    check_heatmaps(p, spatial_ndim, "p")
    check_same_shape(p, q, f"p and q ({layout(spatial_ndim)})")
    return as_float(p), as_float(q)


# Shape checks run when jit traces (once per shape), before any computation.
@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def kl_divergence(p: ArrayLike, q: ArrayLike, *, spatial_ndim: int = 2) -> Array:
    """Kullback–Leibler divergence ``KL(p ‖ q)`` between heatmaps, per point.

    Computed as ``Σ p · (log(p + ε) − log(q + ε))`` with ``ε = 1e-24`` (dsntnn's form), in float32, so cells
    that are exactly zero in either map give finite values and gradients.

    Args:
      p: ``[..., L, *spatial]`` normalised heatmaps.
      q: ``[..., L, *spatial]`` normalised heatmaps.
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L]`` float32 divergences (nats). NaN in either map makes that point's divergence and its
      gradients NaN; ±inf gives ±inf or NaN (as dsntnn, the same formula).
    """
    p, q = _divergence_args(p, q, spatial_ndim)
    return _kl_sum(p, q, spatial_ndim)


@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def js_divergence(p: ArrayLike, q: ArrayLike, *, spatial_ndim: int = 2) -> Array:
    """Jensen–Shannon divergence between heatmaps, per point: ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q)/2``.

    Args:
      p: ``[..., L, *spatial]`` normalised heatmaps.
      q: ``[..., L, *spatial]`` normalised heatmaps.
      spatial_ndim: number of trailing spatial axes.

    Returns:
      ``[..., L]`` float32 divergences in nats (bounded by log 2 for distributions), symmetric in ``p`` and
      ``q``. NaN or ±inf in either map makes that point's divergence NaN or inf, with non-finite gradients.
    """
    p, q = _divergence_args(p, q, spatial_ndim)
    return _js_sum(p, q, spatial_ndim)


def _reg_args(heatmaps: ArrayLike, mu_t: ArrayLike, sigma_t: float | ArrayLike) -> tuple[Array, Array, Array]:
    """Checks the regularisers' arguments (``sigma_t`` against its value when concrete); returns them as arrays."""
    heatmaps, mu_t = jnp.asarray(heatmaps), jnp.asarray(mu_t)
    check_coords(mu_t, name="mu_t")
    d = mu_t.shape[-1]
    check_heatmaps(heatmaps, d)
    check_points_match(heatmaps, mu_t, d)
    return heatmaps, as_float(mu_t), check_sigma(sigma_t, mu_t.shape[:-1], "sigma_t")


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _js_gauss_sum(h: Array, mu: Array, sigma: Array, spatial_ndim: int) -> Array:
    """JS(h, N(mu, sigma)) per point with the Gaussian in log space: ``[..., L, *spatial]`` → ``[..., L]``.

    The target's logarithm is exact and cheap (a sum of per-axis log-softmaxes), so only ``h`` and the mixture
    need a logarithm per cell. Equal to ``_js_sum(h, make_gauss(...))`` up to cells where the target is below
    ~1e-20, whose terms (target · log target) vanish in float32 either way.
    """
    return _js_gauss_parts(h, mu, sigma, spatial_ndim)[0]


def _js_gauss_parts(
    h: Array, mu: Array, sigma: Array, spatial_ndim: int
) -> tuple[Array, tuple[Array, Array, Array, Array, Array]]:
    log_factors = gauss_axes(mu, h.shape[-spatial_ndim:], sigma, True, log=True)
    log_q = outer_sum(log_factors)
    # The target itself as a product of per-axis probabilities: multiplies per cell instead of exponentials.
    q = outer_product([jnp.exp(f) for f in log_factors])
    m = 0.5 * (h + q)
    log_m = _log_eps(m)
    h_log_ratio = _log_eps(h) - log_m
    value = 0.5 * sum_spatial(h * h_log_ratio + q * (log_q - log_m), spatial_ndim)
    return value, (q, log_q, m, log_m, h_log_ratio)


@functools.partial(_js_gauss_sum.defjvp, symbolic_zeros=True)
def _js_gauss_sum_jvp(
    spatial_ndim: int, primals: tuple[Array, Array, Array], tangents: tuple[_Tangent, _Tangent, _Tangent]
) -> tuple[Array, Array]:
    h, mu, sigma = primals
    dh, dmu, dsigma = tangents
    value, (q, log_q, m, log_m, h_log_ratio) = _js_gauss_parts(h, mu, sigma, spatial_ndim)
    m_ratio = m / (m + DIVERGENCE_EPS)
    terms: list[_Term] = [(lambda: 0.5 * (h_log_ratio + h / (h + DIVERGENCE_EPS) - m_ratio), dh)]
    if not (isinstance(dmu, SymbolicZero) and isinstance(dsigma, SymbolicZero)):
        # The target moves with mu (and sigma): chain through the Gaussian. ∂/∂q of q·log q is log q + 1.
        dmu = jnp.zeros_like(mu) if isinstance(dmu, SymbolicZero) else dmu
        dsigma = jnp.zeros_like(sigma) if isinstance(dsigma, SymbolicZero) else dsigma
        size = h.shape[-spatial_ndim:]
        _, dq = jax.jvp(lambda a, b: make_gauss(a, size, b), (mu, sigma), (dmu, dsigma))
        terms.append((lambda: 0.5 * (log_q - log_m + 1.0 - m_ratio), dq))
    return value, _tangent_sum(value, terms, spatial_ndim)


# The jit-compiled implementation of kl_reg_losses and js_reg_losses. It stays separate from them because they
# check a concrete `sigma_t` (> 0), which jit would turn into a tracer before the check could see its value.
@functools.partial(jax.jit, static_argnames=("divergence",))
def _divergence_reg_losses(heatmaps: Array, mu_t: Array, sigma_t: Array, divergence: Literal["kl", "js"]) -> Array:
    d = mu_t.shape[-1]
    heatmaps = as_float(heatmaps)
    if divergence == "js":
        sigma_t = jnp.broadcast_to(as_float(sigma_t), mu_t.shape[:-1])
        return _js_gauss_sum(heatmaps, mu_t, sigma_t, d)
    # KL(h ‖ q) keeps dsntnn's log(q + ε): where the target underflows but h does not, ε caps the penalty.
    return _kl_sum(heatmaps, make_gauss(mu_t, heatmaps.shape[-d:], sigma_t), d)


def kl_reg_losses(heatmaps: ArrayLike, mu_t: ArrayLike, sigma_t: float | ArrayLike) -> Array:
    """KL regulariser (paper Eq. 6 with D = KL): ``KL(heatmap ‖ N(mu_t, sigma_t²))`` per point.

    The direction is dsntnn's: the heatmap is the first argument. The target is :func:`make_gauss`
    (normalised) on the heatmap's grid.

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps; the number of spatial axes is ``mu_t.shape[-1]``.
      mu_t: ``[..., L, d]`` target coordinates, normalised (x, y[, z]).
      sigma_t: target standard deviation in heatmap pixels (the paper uses 1), scalar or ``[..., L]``.

    Returns:
      ``[..., L]`` float32 losses. A NaN or ±inf heatmap cell, or a NaN or ±inf coordinate of ``mu_t`` (whose
      target map is then NaN, see :func:`make_gauss`), makes that point's loss non-finite, with NaN gradients.
    """
    return _divergence_reg_losses(*_reg_args(heatmaps, mu_t, sigma_t), "kl")


def js_reg_losses(heatmaps: ArrayLike, mu_t: ArrayLike, sigma_t: float | ArrayLike) -> Array:
    """Jensen–Shannon regulariser (paper Eq. 6 with D = JS, the paper's "DSNTr") per point.

    Args:
      heatmaps: ``[..., L, *spatial]`` normalised heatmaps; the number of spatial axes is ``mu_t.shape[-1]``.
      mu_t: ``[..., L, d]`` target coordinates, normalised (x, y[, z]).
      sigma_t: target standard deviation in heatmap pixels (the paper uses 1), scalar or ``[..., L]``.

    Returns:
      ``[..., L]`` float32 losses. The paper's recommended loss is
      ``average_loss(euclidean_losses(coords, t) + js_reg_losses(heatmaps, t, 1.0), mask)``. Non-finite
      heatmap cells or ``mu_t`` make that point's loss non-finite, with NaN gradients (a NaN ``mu_t`` as
      dsntnn; for ±inf ``mu_t`` dsntnn compares with an all-zero target instead).
    """
    return _divergence_reg_losses(*_reg_args(heatmaps, mu_t, sigma_t), "js")


# The jit-compiled implementation of variance_reg_losses, separate for the same reason: the check of a concrete
# `sigma_t`.
@functools.partial(jax.jit, static_argnames=("spatial_ndim",))
def _variance_reg_losses(heatmaps: Array, sigma_t: Array, spatial_ndim: int) -> Array:
    heatmaps = as_float(heatmaps)
    variance = heatmap_variance(heatmaps, spatial_ndim=spatial_ndim)
    # Normalised² → pixels²: an n-pixel axis spans 2 normalised units.
    half_sizes = jnp.asarray(heatmaps.shape[-spatial_ndim:][::-1], heatmaps.dtype) / 2
    variance_px = variance * jnp.square(half_sizes)
    target = jnp.square(jnp.broadcast_to(as_float(sigma_t), heatmaps.shape[:-spatial_ndim]))[..., None]
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
      ``[..., L]`` float32 losses. A NaN or ±inf heatmap cell makes that point's loss NaN or inf, as dsntnn.
    """
    heatmaps = jnp.asarray(heatmaps)
    check_heatmaps(heatmaps, spatial_ndim)
    sigma_t = check_sigma(sigma_t, heatmaps.shape[: heatmaps.ndim - spatial_ndim], "sigma_t")
    return _variance_reg_losses(heatmaps, sigma_t, spatial_ndim)
