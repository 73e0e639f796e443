"""Stacked hourglass network (Newell et al. 2016) as used by the paper, and the hourglass pose model.

Follows bearpaw/pytorch-pose `HourglassNet` with one residual per block (anibali/dsnt-pose2d builds
`hg1/2/4/8` with `num_blocks=1`): 256 features, depth 4, pre-activation bottlenecks (BN-ReLU-conv ×3,
convs with bias, 1×1-conv shortcut when the channels change), nearest-neighbour upsampling, and
between stacks x ← x + conv1×1(features) + conv1×1(score). A 256-px input gives 64×64 heatmaps.
Convolutions keep PyTorch's default initialisation, as the reference never re-initialises them.
Module names follow bearpaw's attribute names (conv1, layer1, hg_{i}, res_{i}, fc_{i}, score_{i},
fc__{i}, score__{i}).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.heads import PoseNetwork, check_output, make_fc, outputs_from_logits
from dsnt_jax.models.layers import (
    BatchNorm,
    Dtype,
    torch_default_bias_init,
    torch_default_kernel_init,
    torch_padding,
)

HOURGLASS_STACKS: dict[str, int] = {"hg1": 1, "hg2": 2, "hg4": 4, "hg8": 8}


class _Convs:
    """Builds PyTorch-initialised convs (bias init needs the fan-in, known only at call time)."""

    def __init__(self, dtype: Dtype, param_dtype: Dtype):
        self.dtype, self.param_dtype = dtype, param_dtype

    def __call__(self, x: jax.Array, features: int, kernel: int, name: str, *, strides: int = 1,
                 padding: Any = None) -> jax.Array:
        fan_in = x.shape[-1] * kernel * kernel
        conv = nn.Conv(features, (kernel, kernel), (strides, strides),
                       torch_padding(kernel) if padding is None else padding,
                       use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                       kernel_init=torch_default_kernel_init,
                       bias_init=torch_default_bias_init(fan_in), name=name)
        return conv(x)


class PreActBottleneck(nn.Module):
    """bearpaw's pre-activation bottleneck: in → features channels (inner width features/2)."""

    features: int
    norm: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = _Convs(self.dtype, self.param_dtype)
        planes = self.features // 2
        y = conv(nn.relu(self.norm(name="bn1")(x)), planes, 1, "conv1")
        y = conv(nn.relu(self.norm(name="bn2")(y)), planes, 3, "conv2")
        y = conv(nn.relu(self.norm(name="bn3")(y)), self.features, 1, "conv3")
        if x.shape[-1] != self.features:
            x = conv(x, self.features, 1, "downsample")
        return y + x


def _max_pool2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _upsample2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Hourglass(nn.Module):
    """One hourglass of `depth` levels; residual sequences named `level{n}_{k}_{block}`."""

    features: int
    depth: int
    num_blocks: int
    norm: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _residuals(self, x: jax.Array, name: str) -> jax.Array:
        for b in range(self.num_blocks):
            x = PreActBottleneck(self.features, self.norm, self.dtype, self.param_dtype,
                                 name=f"{name}_{b}")(x)
        return x

    def _level(self, n: int, x: jax.Array) -> jax.Array:
        up1 = self._residuals(x, f"level{n - 1}_0")
        low1 = self._residuals(_max_pool2(x), f"level{n - 1}_1")
        if n > 1:
            low2 = self._level(n - 1, low1)
        else:
            low2 = self._residuals(low1, f"level{n - 1}_3")
        low3 = self._residuals(low2, f"level{n - 1}_2")
        return up1 + _upsample2(low3)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return self._level(self.depth, x)


class HourglassPose(PoseNetwork):
    """Stacked hourglass pose network with the paper's output strategies and intermediate supervision.

    Attributes:
      num_stacks: 1, 2, 4 or 8 in the paper (any ≥ 1 works).
      num_blocks: residual blocks per position (paper: 1).
      features: channels in the hourglasses (256); the stem uses features/4 and features/2.
      depth: hourglass levels (4); the input side must be a multiple of 4·2^depth.
      num_joints, output, activation, dtype, param_dtype, axis_name, bn_momentum: see `PoseNetwork`.

    Input: [B, S, S, 3], the paper subtracts the MPII mean RGB from [0, 1] images. Output: the last
    stack's {'coords': [B, J, 2], 'heatmaps': [B, J, S/4, S/4], 'logits': …} plus 'stacks': the same
    three keys with a leading stack axis ([num_stacks, B, J, …]) for intermediate supervision. With
    output='fc' one Dense(H·W → 2) is shared by all joints and stacks, as in the reference.
    """

    num_stacks: int = 2
    num_blocks: int = 1
    features: int = 256
    depth: int = 4

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
        """[B, S, S, 3] → outputs dict (see class docstring)."""
        check_output(self.output, self.activation)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC [B, S, S, 3], got shape {images.shape}")
        multiple = 4 * 2 ** self.depth
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(f"hourglass inputs must have sides that are multiples of {multiple} "
                             f"(depth {self.depth}), got {images.shape[1]}×{images.shape[2]}")
        if self.num_stacks < 1:
            raise ValueError(f"num_stacks must be ≥ 1, got {self.num_stacks}")
        norm = functools.partial(BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 axis_name=self.axis_name, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        conv = _Convs(self.dtype, self.param_dtype)
        res = functools.partial(PreActBottleneck, norm=norm, dtype=self.dtype,
                                param_dtype=self.param_dtype)
        f = self.features

        x = images.astype(self.dtype)
        x = conv(x, f // 4, 7, "conv1", strides=2)
        x = nn.relu(norm(name="bn1")(x))
        x = res(f // 2, name="layer1")(x)
        x = _max_pool2(x)
        x = res(f // 2, name="layer2")(x)
        x = res(f, name="layer3")(x)

        fc_out = None
        if self.output == "fc":
            fc_out = make_fc(x.shape[1] * x.shape[2], self.param_dtype)
        stacks = []
        for i in range(self.num_stacks):
            y = Hourglass(f, self.depth, self.num_blocks, norm, self.dtype, self.param_dtype,
                          name=f"hg_{i}")(x)
            for b in range(self.num_blocks):
                y = res(f, name=f"res_{i}_{b}")(y)
            y = nn.relu(norm(name=f"fc_{i}_bn")(conv(y, f, 1, f"fc_{i}_conv")))
            score = conv(y, self.num_joints, 1, f"score_{i}")
            stacks.append(outputs_from_logits(score, output=self.output,
                                              activation=self.activation, fc=fc_out))
            if i < self.num_stacks - 1:
                x = x + conv(y, f, 1, f"fc__{i}") + conv(score, f, 1, f"score__{i}")
        outputs: dict[str, Any] = dict(stacks[-1])
        outputs["stacks"] = {k: jnp.stack([s[k] for s in stacks]) for k in stacks[-1]}
        return outputs
