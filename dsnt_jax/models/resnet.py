"""Fully convolutional torchvision ResNets with the paper's dilation rule, and the ResNet pose model.

Layout is NHWC; module names mirror torchvision's (conv1, bn1, layer{1..4}_{block}/conv1…) so that
`dsnt_jax.models.pretrained` can map ImageNet weights one to one.

Heatmap resolution (paper §6.1, anibali/dsnt-pose2d `ResNetHumanPoseModel`): the last `dilate` of the
downsampling stages (layer2..layer4) lose their stride; the i-th such stage (i = 0, 1, 2 in layer order)
uses dilation d = 2^(i+1) in its 3×3 convolutions, except block 0's formerly strided 3×3, which keeps
dilation 1 (the reference rewrites each conv: stride 2 → stride 1, *else* 3×3 → dilation d).
torchvision's `replace_stride_with_dilation` differs: it gives that conv the previous stage's dilation
and refuses dilation in BasicBlock (ResNet-18/34). For a 224-px input, dilate 0/1/2/3 gives heatmaps
of 7/14/28/56 px (output stride 32/16/8/4).
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.heads import PoseNetwork, check_output, make_fc, outputs_from_logits
from dsnt_jax.models.layers import (
    BatchNorm,
    Dtype,
    resnet_conv_init,
    torch_default_kernel_init,
    torch_padding,
)

# name → (block, stage sizes), as torchvision.
RESNET_SPECS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# The paper's ResNet heatmap sides for a 224-px input: 7·2^dilate px with 0–3 dilated stages.
Resolution = Literal[7, 14, 28, 56]
RESOLUTIONS: tuple[Resolution, ...] = typing.get_args(Resolution)
# Heatmap side for a 224-px input → number of dilated stages.
RES_TO_DILATE: dict[int, int] = {res: dilate for dilate, res in enumerate(RESOLUTIONS)}


def stage_plan(num_stages: int, dilate: int) -> list[tuple[int, int]]:
    """(stride, dilation) of each stage under the paper's rule.

    Stage 0 (layer1) never downsamples; stages 1.. stride 2 unless among the last `dilate`, which get
    stride 1 and dilation 2, 4, 8 in order.
    """
    if not 0 <= dilate <= num_stages - 1:
        raise ValueError(f"dilate must be in [0, {num_stages - 1}], got {dilate}")
    plan = []
    first_dilated = num_stages - dilate
    for s in range(num_stages):
        if s == 0:
            plan.append((1, 1))
        elif s >= first_dilated:
            plan.append((1, 2 ** (s - first_dilated + 1)))
        else:
            plan.append((2, 1))
    return plan


def output_stride(dilate: int, num_stages: int = 4) -> int:
    """Total stride of the trunk: 4 (stem) × 2 per undilated downsampling stage."""
    return 4 * 2 ** (num_stages - 1 - dilate)


def feature_size(input_size: int, dilate: int, num_stages: int = 4) -> int:
    """Heatmap side for an `input_size` image: every stride-2 layer maps n → ⌈n/2⌉ (PyTorch padding)."""
    n = int(input_size)
    for _ in range(2 + num_stages - 1 - dilate):
        n = -(-n // 2)
    return n


def _layer_factories(module: Any, train: bool) -> tuple[Any, Any]:
    """The bias-free, He-initialised conv and the BatchNorm of `module` (a ResNet or ResNetPose)."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=module.dtype,
                             param_dtype=module.param_dtype, kernel_init=resnet_conv_init)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=module.bn_momentum,
                             axis_name=module.axis_name, dtype=module.dtype, param_dtype=module.param_dtype)
    return conv, norm


class _Block(nn.Module):
    """The fields of a residual block: `features` channels (× `expansion` out), the stage's stride, the
    dilation of the 3×3 that carries the stride (`stride_conv_dilation`) and of the other 3×3 (`dilation`),
    a 1×1-conv shortcut (`downsample`) and the conv / norm factories (`_layer_factories`)."""

    features: int
    strides: int
    dilation: int
    stride_conv_dilation: int
    downsample: bool
    conv: Any
    norm: Any

    # Output channels per `features` (a class constant, not a module field).
    expansion: ClassVar[int] = 1


class BasicBlock(_Block):
    """torchvision BasicBlock: 3×3 → 3×3, identity or 1×1-conv shortcut. Output `features` channels.

    `stride_conv_dilation` is the dilation of conv1 (the 3×3 that carries a stage's stride); `dilation`
    that of conv2.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d0, d1 = self.stride_conv_dilation, self.dilation
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), torch_padding(3, d0),
                      kernel_dilation=(d0, d0), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), (1, 1), torch_padding(3, d1),
                      kernel_dilation=(d1, d1), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.downsample:
            x = self.conv(self.features, (1, 1), (self.strides, self.strides), "VALID",
                          name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(y + x)


class Bottleneck(_Block):
    """torchvision Bottleneck (v1.5, stride on the 3×3): 1×1 → 3×3 → 1×1 (×4 channels)."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d0 = self.stride_conv_dilation
        y = self.conv(self.features, (1, 1), (1, 1), "VALID", name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), (self.strides, self.strides), torch_padding(3, d0),
                      kernel_dilation=(d0, d0), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.features * self.expansion, (1, 1), (1, 1), "VALID", name="conv3")(y)
        y = self.norm(name="bn3")(y)
        if self.downsample:
            x = self.conv(self.features * self.expansion, (1, 1), (self.strides, self.strides), "VALID",
                          name="downsample_conv")(x)
            x = self.norm(name="downsample_bn")(x)
        return nn.relu(y + x)


# `RESNET_SPECS` block name → block module.
BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet trunk conv1 … layer4 without average pooling and fc (torchvision layout, NHWC).

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-34/50.
      block: 'basic' or 'bottleneck'.
      dilate: how many trailing downsampling stages are dilated instead (0–3; see module docstring).
      widths: base channels per stage (bottleneck output is 4×).
      stem_width: channels of conv1.
      dtype / param_dtype: computation and parameter dtypes.
      axis_name: BatchNorm cross-device axis (pmap/shard_map), or None.
      bn_momentum: flax-convention BatchNorm momentum (0.9 = PyTorch's 0.1).
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    dilate: int = 0
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str | None = None
    bn_momentum: float = 0.9

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_stages: bool = False) -> Any:
        """[B, S, S, 3] images → [B, s, s, C] features, s = feature_size(S, dilate).

        With `return_stages`, the list of every stage's output instead (first: stride 4).
        """
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {tuple(BLOCKS)}, got {self.block!r}")
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"widths {tuple(self.widths)} and stage_sizes "
                             f"{tuple(self.stage_sizes)} must have the same length")
        conv, norm = _layer_factories(self, train)
        block_cls = BLOCKS[self.block]
        expansion = block_cls.expansion

        x = x.astype(self.dtype)
        x = conv(self.stem_width, (7, 7), (2, 2), torch_padding(7), name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_features = self.stem_width
        plan = stage_plan(len(self.stage_sizes), self.dilate)
        stages = []
        for s, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            stride, dilation = plan[s]
            # The shortcut conv exists iff torchvision builds one (original stride 2 or a channel
            # change), so the parameter tree does not depend on `dilate`.
            original_stride = 1 if s == 0 else 2
            for b in range(num_blocks):
                x = block_cls(
                    features=width,
                    strides=stride if b == 0 else 1,
                    dilation=dilation,
                    stride_conv_dilation=1 if b == 0 else dilation,
                    downsample=b == 0 and (original_stride != 1 or in_features != width * expansion),
                    conv=conv, norm=norm, name=f"layer{s + 1}_{b}")(x)
                in_features = width * expansion
            stages.append(x)
        return stages if return_stages else x


class UpsamplingHead(nn.Module):
    """Brings the trunk output back to the first stage's stride-4 grid (one FPN-style top-down step).

    Not in the paper, whose ResNets reach finer heatmaps only by dilating more stages; that costs the
    square of the heatmap side in every dilated stage, while this head works at stride 4 with
    `features` channels only. The trunk output [B, h, w, C] goes through a 1×1 conv to `features`
    channels and is repeated `factor`× along both axes; a 1×1 projection of the first stage's output
    [B, H, W, C1] is added; then BN-ReLU, a 3×3 conv, BN-ReLU. Output: [B, H, W, features].
    """

    features: int
    factor: int
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, top: jax.Array, lateral: jax.Array) -> jax.Array:
        y = self.conv(self.features, (1, 1), name="reduce")(top)
        if self.factor > 1:
            y = jnp.repeat(jnp.repeat(y, self.factor, axis=1), self.factor, axis=2)
        # ⌈n/2⌉ rounding in the strided layers can leave one row/column more than the first stage has.
        y = y[:, :lateral.shape[1], :lateral.shape[2]]
        y = y + self.conv(self.features, (1, 1), name="lateral")(lateral)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=torch_padding(3), name="conv")(y)
        return nn.relu(self.norm(name="bn2")(y))


class ResNetPose(PoseNetwork):
    """The paper's ResNet pose network: trunk → 1×1 conv (no bias) to J heatmaps → output strategy.

    Attributes:
      stage_sizes, block, widths, stem_width: trunk shape (see `ResNet`; `RESNET_SPECS`).
      dilate: 0–3 dilated stages (heatmap 7·2^dilate px for a 224-px input).
      num_joints, output, activation, dtype, param_dtype, axis_name, bn_momentum: see `PoseNetwork`.
      upsample: 0 (the paper): the 1×1 heatmap conv reads the trunk output. Otherwise the channels of an
        `UpsamplingHead` in between, which gives heatmaps at stride 4 (side ⌈S/4⌉) whatever `dilate`.

    Input: [B, S, S, 3] RGB in [0, 1] (the paper feeds ImageNet-pretrained weights unnormalised
    images). Output: {'coords': [B, J, 2], 'heatmaps': [B, J, h, w], 'logits': [B, J, h, w]}.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    dilate: int = 0
    widths: Sequence[int] = (64, 128, 256, 512)
    stem_width: int = 64
    upsample: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """[B, S, S, 3] → dict of [B, J, 2] coords and [B, J, h, w] maps (see class docstring)."""
        check_output(self.output, self.activation)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC [B, S, S, 3], got shape {images.shape}")
        if self.upsample < 0:
            raise ValueError(f"upsample must be 0 (off) or a channel count > 0, got {self.upsample}")
        stages = ResNet(stage_sizes=self.stage_sizes, block=self.block, dilate=self.dilate,
                        widths=self.widths, stem_width=self.stem_width, dtype=self.dtype,
                        param_dtype=self.param_dtype, axis_name=self.axis_name,
                        bn_momentum=self.bn_momentum, name="backbone")(images, train, return_stages=True)
        feats = stages[-1]
        if self.upsample:
            conv, norm = _layer_factories(self, train)
            factor = output_stride(self.dilate, len(self.stage_sizes)) // 4
            feats = UpsamplingHead(self.upsample, factor, conv, norm, name="upsample")(feats, stages[0])
        # The reference leaves hm_conv at PyTorch's default Conv2d init.
        logits = nn.Conv(self.num_joints, (1, 1), use_bias=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, kernel_init=torch_default_kernel_init,
                         name="hm_conv")(feats)
        fc = None
        if self.output == "fc":
            fc = make_fc(logits.shape[1] * logits.shape[2], self.param_dtype)
        return outputs_from_logits(logits, output=self.output, activation=self.activation, fc=fc)
