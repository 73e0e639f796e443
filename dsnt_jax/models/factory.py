"""Model construction by name: `create_model('resnet34', res=28, output='dsnt')`, `create_model('hg8')`.

`ModelConfig` is the one description of a pose network that the rest of the project passes around (the
training config holds one, a run directory stores it, inference rebuilds from it): a frozen dataclass
validated when it is made, with `build()` and `heatmap_size`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal, get_args

import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.heads import ACTIVATIONS, OUTPUTS, PoseNetwork, check_output
from dsnt_jax.models.hourglass import HOURGLASS_STACKS, HourglassPose
from dsnt_jax.models.resnet import RES_TO_DILATE, RESNET_SPECS, RESOLUTIONS, ResNetPose, feature_size

BACKBONES: tuple[str, ...] = (*RESNET_SPECS, *HOURGLASS_STACKS)
# The network's computation dtype by name (`--precision`); parameters stay float32, heads and losses too.
Precision = Literal["float32", "bfloat16"]
COMPUTE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
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
    cls: type[ResNetPose | HourglassPose]
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


# Module fields that `ModelConfig.overrides` may not set: ModelConfig fields or `build` arguments (the shared
# pose-network settings, but the BatchNorm momentum), and flax's own.
_RESERVED_FIELDS = (frozenset(PoseNetwork.__dataclass_fields__) - {"bn_momentum"}) | {"parent", "name"}


def _freeze(value: Any) -> Any:
    """JSON-ish value → hashable (lists become tuples, as the flax module fields expect)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


class ModelConfigError(ValueError):
    """An invalid `ModelConfig` field; `field` names it, so a command line can name its flag."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a pose network's parameters and shapes; validated when made.

    Attributes:
      backbone: one of `BACKBONES`.
      res: ResNet heatmap side for a 224-px input (7, 14, 28, 56); None for hourglasses.
      output: output strategy, one of `OUTPUTS` ('dsnt', 'fc', 'hm').
      activation: heatmap activation for dsnt/fc, one of `ACTIVATIONS`.
      input_size: input side S in px (the paper: `input_size_for(backbone)`).
      num_joints: J.
      overrides: other fields of `ResNetPose` / `HourglassPose` (widths, stem_width, stage_sizes, upsample,
        num_blocks, features, ...) as sorted (name, value) pairs; `from_dict` accepts a mapping.
    """

    backbone: str = "resnet50"
    res: int | None = 28
    output: str = "dsnt"
    activation: str = "softmax"
    input_size: int = RESNET_INPUT_SIZE
    num_joints: int = 16
    overrides: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ModelConfigError("backbone", f"must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.backbone in RESNET_SPECS and self.res not in RESOLUTIONS:
            raise ModelConfigError("res", f"must be one of {', '.join(map(str, RESOLUTIONS))} for a ResNet, "
                                          f"got {self.res}")
        if self.backbone not in RESNET_SPECS and self.res is not None:
            raise ModelConfigError("res", f"applies to ResNets only; {self.backbone} always gives input/4 heatmaps "
                                          f"(64 px for 256-px inputs): drop it")
        if self.output not in OUTPUTS:
            raise ModelConfigError("output", f"must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.activation not in ACTIVATIONS:
            raise ModelConfigError("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        for name in ("input_size", "num_joints"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ModelConfigError(name, f"must be a positive integer, got {value!r}")
        if self.backbone not in RESNET_SPECS and self.input_size % 64:
            raise ModelConfigError("input_size", f"must be a multiple of 64 px for an hourglass, got {self.input_size}")
        overrides = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        pairs = tuple(sorted((str(k), _freeze(v)) for k, v in overrides))
        fields = set(self.module_class.__dataclass_fields__) - _RESERVED_FIELDS
        unknown = sorted({k for k, _ in pairs} - fields)
        if unknown:
            raise ModelConfigError("overrides", f"{unknown} are not {self.module_class.__name__} fields that may "
                                                f"be overridden; choose among {sorted(fields)}")
        object.__setattr__(self, "overrides", pairs)

    @property
    def is_resnet(self) -> bool:
        return self.backbone in RESNET_SPECS

    @property
    def module_class(self) -> type[ResNetPose | HourglassPose]:
        return ResNetPose if self.is_resnet else HourglassPose

    @property
    def heatmap_size(self) -> int:
        """Heatmap side h = w (an `upsample` override gives stride 4 whatever `res`)."""
        return heatmap_size_for(self.backbone, self.res, self.input_size,
                                upsample=bool(dict(self.overrides).get("upsample")))

    def build(self, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
              axis_name: str | None = None) -> nn.Module:
        """The flax module (see `create_model` for `dtype`, `param_dtype` and `axis_name`)."""
        return create_model(self.backbone, res=self.res, output=self.output, activation=self.activation,
                            num_joints=self.num_joints, dtype=dtype, param_dtype=param_dtype,
                            axis_name=axis_name, **dict(self.overrides))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (overrides as a mapping)."""
        out = dataclasses.asdict(self)
        out["overrides"] = dict(self.overrides)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; `overrides` may also be a JSON object string (the --model-overrides flag).

        Raises:
          ValueError: unknown fields, or an invalid model (see the class docstring).
        """
        values = dict(values)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown model settings {unknown}")
        if isinstance(values.get("overrides"), str):
            values["overrides"] = parse_overrides(values["overrides"])
        return cls(**values)

    def describe(self) -> str:
        """Short name: 'resnet50@28 dsnt', with ' (custom)' when overrides change the named network."""
        res = f"@{self.res}" if self.is_resnet else ""
        custom = " (custom)" if self.overrides else ""
        return f"{self.backbone}{res}{custom} {self.output}"


def parse_overrides(text: str) -> dict[str, Any]:
    """The --model-overrides JSON object, e.g. '{"widths": [8, 16, 16, 16]}' → a dict.

    Raises:
      ModelConfigError: not a JSON object.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelConfigError("overrides", f"must be a JSON object, got {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise ModelConfigError("overrides", f"must be a JSON object, got {text!r}")
    return value
