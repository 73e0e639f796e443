"""Heatmap activations: rectify, then L1-normalise over the spatial cells (paper §4.1, Table 2)."""

from __future__ import annotations

import functools
import typing
from typing import Literal

import jax
import jax.numpy as jnp

from dsnt_jax.ops._checks import Array, ArrayLike, as_float, check_heatmaps, check_positive, spatial_axes

# The heatmap activations of the paper (Table 2); models, training configs and CLIs take their choices from here.
Activation = Literal["softmax", "abs", "relu", "sigmoid"]
ACTIVATIONS: tuple[Activation, ...] = typing.get_args(Activation)

# Rectified maps are divided by (sum + eps), as the paper's code does, so an all-zero ReLU map stays finite.
_RECTIFIED_NORM_EPS = 1e-12


def _validated(x: ArrayLike, spatial_ndim: int, temperature: float | Array, name: str) -> tuple[Array, Array]:
    """Checks the maps' shape and a concrete temperature; returns both as arrays."""
    x = jnp.asarray(x)
    check_heatmaps(x, spatial_ndim, name)
    check_positive(temperature, "temperature")
    return x, jnp.asarray(temperature, jnp.float32)


def _relu(x: Array) -> Array:
    """ReLU whose derivative is NaN at NaN: jax.nn.relu's JVP selects 0 there (NaN > 0 is false).

    The select keys on ``x <= 0`` instead, so NaN takes the identity branch (value NaN, derivative 1, which
    carries the NaN cotangent back); everywhere else, 0 included, value and derivative equal jax.nn.relu's.
    """
    return jnp.where(x <= 0, 0.0, x)


# The one jit-compiled implementation of the three public functions. It stays separate from them because they
# check a concrete `temperature` (> 0), which jit would turn into a tracer before the check could see its value.
# Reductions run over the spatial axes in place (no reshape to [..., H·W]), so that the softmax and the ops
# that consume its output see one layout of the same buffer.
@functools.partial(jax.jit, static_argnames=("kind", "spatial_ndim"))
def _normalize(
    x: Array, temperature: Array, kind: Activation | Literal["log_softmax"], spatial_ndim: int
) -> Array:
    axes = spatial_axes(x, spatial_ndim)
    x = as_float(x) / temperature
    if kind == "softmax":
        return jax.nn.softmax(x, axis=axes)
    if kind == "log_softmax":
        return jax.nn.log_softmax(x, axis=axes)
    rectified = {"abs": jnp.abs, "relu": _relu, "sigmoid": jax.nn.sigmoid}[kind](x)
    return rectified / (jnp.sum(rectified, axis=axes, keepdims=True) + _RECTIFIED_NORM_EPS)


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
    logits, temperature = _validated(logits, spatial_ndim, temperature, "logits")
    return _normalize(logits, temperature, "softmax", spatial_ndim)


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
    logits, temperature = _validated(logits, spatial_ndim, temperature, "logits")
    return _normalize(logits, temperature, "log_softmax", spatial_ndim)


def heatmap_activation(
    x: ArrayLike,
    kind: Activation = "softmax",
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
    if kind not in ACTIVATIONS:
        raise ValueError(f"kind must be one of {ACTIVATIONS}, got {kind!r}")
    x, temperature = _validated(x, spatial_ndim, temperature, "x")
    return _normalize(x, temperature, kind, spatial_ndim)
