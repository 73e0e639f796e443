"""Heatmap activations: rectify, then L1-normalise over the spatial cells (paper §4.1, Table 2)."""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from dsnt_jax.ops._checks import (
    Array,
    ArrayLike,
    _check_heatmaps,
    _check_positive,
    _float,
    _spatial_axes,
)

ActivationKind = Literal["softmax", "abs", "relu", "sigmoid"]
_ACTIVATIONS = ("softmax", "abs", "relu", "sigmoid")

# Rectified maps are divided by (sum + eps), as the paper's code does, so an all-zero ReLU map stays finite.
_RECTIFIED_NORM_EPS = 1e-12


# Reduce over the spatial axes in place (no reshape to [..., H·W]), so that the softmax and the ops that
# consume its output see one layout of the same buffer.
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
      Max-subtracted, so logits of any magnitude are safe. Non-finite logits behave as in dsntnn: a NaN
      or +inf logit makes its whole map NaN (values and gradients), other maps unaffected; a −inf logit is
      a cell of probability exactly 0 (finite, unless the whole map is −inf, which is NaN).
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
      ``[..., L, *spatial]`` float32 log-probabilities. NaN or +inf logits make their map NaN; a −inf logit
      gives −inf in its own cell only.
    """
    logits = jnp.asarray(logits)
    _check_heatmaps(logits, spatial_ndim, "logits")
    _check_positive(temperature, "temperature")
    return _log_flat_softmax(logits, jnp.asarray(temperature, jnp.float32), spatial_ndim)


def _relu(x: Array) -> Array:
    """ReLU whose derivative is NaN at NaN: jax.nn.relu's JVP selects 0 there (NaN > 0 is false).

    The select keys on ``x <= 0`` instead, so NaN takes the identity branch (value NaN, derivative 1, which
    carries the NaN cotangent back); everywhere else, 0 included, value and derivative equal jax.nn.relu's.
    """
    return jnp.where(x <= 0, 0.0, x)


@functools.partial(jax.jit, static_argnames=("kind", "spatial_ndim"))
def _heatmap_activation(x: Array, temperature: Array, kind: str, spatial_ndim: int) -> Array:
    if kind == "softmax":
        return _flat_softmax(x, temperature, spatial_ndim)
    x = _float(x) / temperature
    rectified = {"abs": jnp.abs, "relu": _relu, "sigmoid": jax.nn.sigmoid}[kind](x)
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

    Non-finite input: NaN anywhere in a map makes the whole map NaN, for every kind, and its gradients carry
    the NaN back (the cell's own too, for relu). ±inf gives the limits: softmax as :func:`flat_softmax`;
    abs (±inf) and relu (+inf) put NaN (inf/inf) in that cell and 0 elsewhere, so coordinates are NaN;
    relu's −inf and sigmoid's ±inf are ordinary saturated cells (0, or 1 before normalising), finite.
    """
    if kind not in _ACTIVATIONS:
        raise ValueError(f"kind must be one of {_ACTIVATIONS}, got {kind!r}")
    x = jnp.asarray(x)
    _check_heatmaps(x, spatial_ndim, "x")
    _check_positive(temperature, "temperature")
    return _heatmap_activation(x, jnp.asarray(temperature, jnp.float32), kind, spatial_ndim)


