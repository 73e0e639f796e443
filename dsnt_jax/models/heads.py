"""Output strategies of the paper (§6.2): heatmap logits → coordinates.

* `dsnt`: heatmap activation (softmax by default) → DSNT expectation.
* `fc`: the same normalised heatmap → one Dense(H·W → 2) shared by all joints.
* `hm`: the raw heatmaps are the output (trained against Gaussians, `hm_encode`); coordinates come
  from `hm_decode` (argmax plus the quarter-pixel shift of Newell et al.).

Coordinates are normalised as everywhere in dsnt_jax (`dsnt_jax.ops`): (x, y), pixel centres at
(2i + 1)/n − 1, ±1 at the outer edges of the heatmap (and so of the image).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast, get_args

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax import ops
from dsnt_jax.models.layers import Dtype, torch_default_bias_init, torch_default_kernel_init
from dsnt_jax.ops import ACTIVATIONS, Activation

Output = Literal["dsnt", "fc", "hm"]
OUTPUTS: tuple[Output, ...] = get_args(Output)

# Name of the fc strategy's Dense(H·W → 2) in the pose models' parameters.
FC_NAME = "out_fc"
# The paper code draws the HM target only inside a 7×7 window around the rounded centre.
HM_WINDOW = 7


class PoseNetwork(nn.Module):
    """The settings every pose network of the paper shares (`ResNetPose`, `HourglassPose` extend it).

    Attributes:
      num_joints: J heatmap channels.
      output: 'dsnt', 'fc' or 'hm' (`OUTPUTS`).
      activation: heatmap activation for dsnt/fc (`ACTIVATIONS`).
      dtype: computation dtype of the network; the head's outputs are float32.
      param_dtype: parameter dtype.
      axis_name: pmap/shard_map axis over which BatchNorm averages batch statistics.
      bn_momentum: BatchNorm running-average momentum (PyTorch's 0.1 is flax's 0.9).
    """

    num_joints: int = 16
    output: str = "dsnt"
    activation: str = "softmax"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9


def check_output(output: str, activation: str = "softmax") -> None:
    """Raises ValueError for an unknown output strategy or heatmap activation."""
    if output not in OUTPUTS:
        raise ValueError(f"unknown output strategy {output!r}; choose one of {OUTPUTS}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown heatmap activation {activation!r}; choose one of {ACTIVATIONS}")


def hm_encode(coords: jax.Array, size: Sequence[int], sigma: float = 1.0,
              window: int = HM_WINDOW) -> jax.Array:
    """The heatmap-matching target of the paper's code (an unnormalised Gaussian per joint).

    Each joint's normalised coordinate is converted to pixels, p = (c + 1)·n/2 − 0.5, and rounded
    half-to-even (Python's `round`, as the reference); the target is exp(−d²/(2σ²)) around that pixel,
    peak exactly 1, drawn only within the `window`×`window` square centred on it (clipped to the map),
    zero elsewhere. Joints whose window misses the map get an all-zero target. There is no joint mask:
    the caller decides what coordinates unannotated joints carry.

    Args:
      coords: [..., J, 2] normalised (x, y) coordinates.
      size: (H, W) of the heatmap.
      sigma: Gaussian standard deviation in heatmap pixels (paper: 1).
      window: odd side of the square drawing window (paper: 7).

    Returns:
      float32 [..., J, H, W] targets.
    """
    height, width = (int(s) for s in size)
    if isinstance(sigma, (int, float)) and sigma <= 0:  # traced values cannot be checked
        raise ValueError(f"sigma must be positive, got {sigma}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of pixels, got {window}")
    coords = jnp.asarray(coords, jnp.float32)
    if coords.ndim < 2 or coords.shape[-1] != 2:
        raise ValueError(f"coords must be [..., J, 2], got shape {coords.shape}")
    px = jnp.round((coords[..., 0] + 1.0) * (width / 2.0) - 0.5)
    py = jnp.round((coords[..., 1] + 1.0) * (height / 2.0) - 0.5)
    radius = window // 2
    dx = jnp.arange(width, dtype=jnp.float32) - px[..., None]   # [..., J, W]
    dy = jnp.arange(height, dtype=jnp.float32) - py[..., None]  # [..., J, H]
    gx = jnp.where(jnp.abs(dx) <= radius, jnp.exp(-jnp.square(dx) / (2.0 * sigma**2)), 0.0)
    gy = jnp.where(jnp.abs(dy) <= radius, jnp.exp(-jnp.square(dy) / (2.0 * sigma**2)), 0.0)
    return gy[..., :, None] * gx[..., None, :]


def hm_decode(heatmaps: jax.Array) -> jax.Array:
    """Coordinates from raw heatmaps by the paper code's rule (Newell et al.'s quarter-pixel shift).

    Per map: the flat argmax (first maximum on ties) gives pixel (x, y) = (idx mod W, idx div W), or
    (0, 0) when the maximum is ≤ 0. For a pixel strictly inside the map, x moves by
    0.25·sign(h[y, x+1] − h[y, x−1]) and y by 0.25·sign(h[y+1, x] − h[y−1, x]). The result is
    normalised, c = (p + 0.5)·2/n − 1. A map holding any NaN or ±inf gives NaN coordinates. Not
    differentiable (argmax); jit/vmap safe.

    Args:
      heatmaps: [..., J, H, W] raw maps, any float dtype.

    Returns:
      float32 [..., J, 2] normalised (x, y).
    """
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be [..., J, H, W], got shape {heatmaps.shape}")
    h = jnp.asarray(heatmaps, jnp.float32)
    height, width = h.shape[-2:]
    flat = h.reshape(*h.shape[:-2], height * width)
    idx = jnp.argmax(flat, axis=-1)
    positive = jnp.max(flat, axis=-1) > 0
    x = jnp.where(positive, idx % width, 0)
    y = jnp.where(positive, idx // width, 0)

    def at(yy: jax.Array, xx: jax.Array) -> jax.Array:
        yy = jnp.clip(yy, 0, height - 1)
        xx = jnp.clip(xx, 0, width - 1)
        return jnp.take_along_axis(flat, (yy * width + xx)[..., None], axis=-1)[..., 0]

    interior = (x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)
    shift_x = 0.25 * jnp.sign(at(y, x + 1) - at(y, x - 1))
    shift_y = 0.25 * jnp.sign(at(y + 1, x) - at(y - 1, x))
    px = x.astype(jnp.float32) + jnp.where(interior, shift_x, 0.0)
    py = y.astype(jnp.float32) + jnp.where(interior, shift_y, 0.0)
    coords = jnp.stack([(px + 0.5) * (2.0 / width) - 1.0, (py + 0.5) * (2.0 / height) - 1.0], axis=-1)
    # A map with a NaN or inf cell has no meaningful argmax: say so instead of a confident corner.
    return jnp.where(jnp.all(jnp.isfinite(flat), axis=-1)[..., None], coords, jnp.nan)


def make_fc(heatmap_hw: int, param_dtype=jnp.float32, name: str = FC_NAME) -> nn.Dense:
    """The FC strategy's Dense(H·W → 2), initialised like PyTorch's nn.Linear, run in float32."""
    return nn.Dense(2, dtype=jnp.float32, param_dtype=param_dtype, name=name,
                    kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(heatmap_hw))


def decode(logits: jax.Array, *, output: str, activation: str = "softmax",
           fc: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Applies an output strategy to heatmap logits: the one decoding of the project.

    Args:
      logits: [B, J, H, W] raw heatmaps, float32.
      output: 'dsnt', 'fc' or 'hm'.
      activation: heatmap activation for 'dsnt'/'fc'.
      fc: for 'fc', the Dense(H·W → 2) as a function [B, J, H·W] → [B, J, 2] (shared by all joints).

    Returns:
      (coords [B, J, 2] normalised (x, y), heatmaps [B, J, H, W]: normalised for dsnt/fc, the logits for hm).
    """
    if output == "hm":
        return hm_decode(jax.lax.stop_gradient(logits)), logits
    heatmaps = ops.heatmap_activation(logits, cast(Activation, activation))
    if output == "dsnt":
        return ops.dsnt(heatmaps), heatmaps
    if fc is None:
        raise ValueError("output='fc' needs the Dense(H·W → 2) (see make_fc, decode_with_params)")
    b, j, h, w = heatmaps.shape
    return fc(heatmaps.reshape(b, j, h * w)), heatmaps


def decode_with_params(logits: jax.Array, params: Mapping[str, Any], *, output: str,
                       activation: str = "softmax") -> tuple[jax.Array, jax.Array]:
    """`decode` of a pose model's logits [B, J, H, W] outside the model (e.g. after a flip test).

    `params` are the model's parameters: for 'fc' the Dense is read from `params[FC_NAME]`.
    """
    def fc(flat: jax.Array) -> jax.Array:
        return cast(jax.Array, nn.Dense(2, dtype=jnp.float32).apply({"params": params[FC_NAME]}, flat))

    return decode(logits.astype(jnp.float32), output=output, activation=activation,
                  fc=fc if output == "fc" else None)


def outputs_from_logits(logits_nhwc: jax.Array, *, output: str, activation: str = "softmax",
                        fc: nn.Module | None = None) -> dict[str, jax.Array]:
    """Applies an output strategy to a network's heatmap logits (inside the model).

    The one NHWC → [B, J, H, W] transpose of the models happens here, followed by a cast to float32 so
    that the ops (activation, DSNT, losses) always compute in float32, whatever the network's dtype.

    Args:
      logits_nhwc: [B, H, W, J] raw head output, any float dtype.
      output: 'dsnt', 'fc' or 'hm'.
      activation: heatmap activation for 'dsnt'/'fc' ('softmax', 'abs', 'relu', 'sigmoid').
      fc: for 'fc', the Dense(H·W → 2) module (shared by all joints, and by all hourglass stacks).

    Returns:
      {'coords': [B, J, 2] normalised (x, y), 'heatmaps': [B, J, H, W] (normalised for dsnt/fc, the
      raw logits for hm), 'logits': [B, J, H, W] raw}, all float32.
    """
    check_output(output, activation)
    logits = jnp.transpose(logits_nhwc, (0, 3, 1, 2)).astype(jnp.float32)
    coords, heatmaps = decode(logits, output=output, activation=activation, fc=fc)
    return {"coords": coords, "heatmaps": heatmaps, "logits": logits}
