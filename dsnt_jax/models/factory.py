"""Model construction by name: `create_model('resnet34', res=28, output='dsnt')`, `create_model('hg8')`."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.heads import check_output
from dsnt_jax.models.hourglass import HOURGLASS_STACKS, HourglassPose
from dsnt_jax.models.resnet import RES_TO_DILATE, RESNET_SPECS, ResNetPose, feature_size

BACKBONES: tuple[str, ...] = (*RESNET_SPECS, *HOURGLASS_STACKS)
RESNET_INPUT_SIZE = 224
HOURGLASS_INPUT_SIZE = 256
HOURGLASS_RES = 64


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")


def input_size_for(backbone: str) -> int:
    """The paper's input side for a backbone: 224 for ResNets, 256 for hourglasses."""
    _check_backbone(backbone)
    return RESNET_INPUT_SIZE if backbone in RESNET_SPECS else HOURGLASS_INPUT_SIZE


def heatmap_size_for(backbone: str, res: int | None = None, input_size: int | None = None,
                     upsample: bool = False) -> int:
    """Heatmap side of `backbone` at `res` for an `input_size`-px input (default: the paper's).

    ResNet: `res` (7/14/28/56) names the side for a 224-px input; other inputs give ⌈S/stride⌉ with
    stride 32/16/8/4, or stride 4 whatever `res` with `upsample` (`ResNetPose.upsample` > 0).
    Hourglass: S/4 (`res` must be None or 64).
    """
    _check_backbone(backbone)
    size = input_size_for(backbone) if input_size is None else int(input_size)
    if backbone in RESNET_SPECS:
        dilate = _dilate_for(res)  # also validates res
        return feature_size(size, RES_TO_DILATE[56] if upsample else dilate)
    _check_hg_res(res)
    return size // 4


def _dilate_for(res: int | None) -> int:
    if res not in RES_TO_DILATE:
        raise ValueError(f"ResNet backbones need res in {tuple(RES_TO_DILATE)} (heatmap side for a "
                         f"224-px input), got {res!r}")
    return RES_TO_DILATE[res]


def _check_hg_res(res: int | None) -> None:
    if res not in (None, HOURGLASS_RES):
        raise ValueError(f"hourglass heatmaps are always {HOURGLASS_RES} px for a 256-px input; "
                         f"pass res=None, got {res!r}")


def create_model(backbone: str, *, res: int | None = None, output: str = "dsnt",
                 activation: str = "softmax", num_joints: int = 16, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, axis_name: str | None = None,
                 **overrides: Any) -> nn.Module:
    """Builds one of the paper's pose networks.

    Args:
      backbone: 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'hg1', 'hg2', 'hg4'
        or 'hg8'.
      res: ResNet heatmap side for a 224-px input, 7, 14, 28 or 56 (required for ResNets); None for
        hourglasses (always input/4).
      output: 'dsnt', 'fc' or 'hm' (paper §6.2).
      activation: heatmap activation for dsnt/fc: 'softmax', 'abs', 'relu' or 'sigmoid'.
      num_joints: J output heatmaps.
      dtype: computation dtype of the network (e.g. jnp.bfloat16); heads and losses use float32.
      param_dtype: parameter dtype.
      axis_name: pmap/shard_map axis over which BatchNorm averages batch statistics.
      **overrides: other fields of `ResNetPose` / `HourglassPose` (e.g. widths, stage_sizes,
        num_blocks, features, bn_momentum), for small test networks.

    Returns:
      A flax module; `module.apply(variables, images [B, S, S, 3], train=...)` returns
      {'coords': [B, J, 2], 'heatmaps': [B, J, h, w], 'logits': [B, J, h, w]} (+ 'stacks' for
      hourglasses). Training mode needs `mutable=['batch_stats']`.
    """
    _check_backbone(backbone)
    check_output(output, activation)
    if num_joints < 1:
        raise ValueError(f"num_joints must be ≥ 1, got {num_joints}")
    common = {"num_joints": num_joints, "output": output, "activation": activation,
              "dtype": dtype, "param_dtype": param_dtype, "axis_name": axis_name}
    if backbone in RESNET_SPECS:
        block, stage_sizes = RESNET_SPECS[backbone]
        kwargs = {"block": block, "stage_sizes": stage_sizes, "dilate": _dilate_for(res), **common}
        cls = ResNetPose
    else:
        _check_hg_res(res)
        kwargs = {"num_stacks": HOURGLASS_STACKS[backbone], **common}
        cls = HourglassPose
    unknown = set(overrides) - set(cls.__dataclass_fields__) - {"parent", "name"}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kwargs.update(overrides)
    return cls(**kwargs)
