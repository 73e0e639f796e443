"""The PyTorch equivalent of dsnt-jax's ResNet pose model, for timing and parity checks.

It is what the paper's code (anibali/dsnt-pose2d `ResNetHumanPoseModel`) builds: a torchvision ResNet
trunk (conv1 … layer4; avgpool and fc dropped) dilated by the paper's rule, a 1×1 conv without bias
to J heatmaps, softmax over each map and `dsntnn.dsnt`; the DSNTr loss is dsntnn's Euclidean loss plus
λ·JS divergence (σ_t = 1 px, λ = 1).

The trunk is torchvision's `resnetNN(weights=None)` when torchvision is importable, else the
self-contained copy below with torchvision's module and parameter names, so state dicts are
interchangeable either way (`copy_flax_variables` loads a dsnt-jax model's weights).

Dilation (docs/paper-recipe.md §1), applied to the built network, **not** torchvision's
`replace_stride_with_dilation`: in the last `dilate` of [layer2, layer3, layer4], the i-th (i = 0, 1, 2)
with d = 2^(i+1), every Conv2d of stride 2 gets stride 1 (and keeps dilation 1), every other 3×3 conv
gets dilation d and padding d.

Needs torch and dsntnn (`pip install torch dsntnn`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dsnt_jax.models import RES_TO_DILATE, RESNET_SPECS

try:
    import dsntnn
    import torch
    from torch import nn
except ImportError as e:  # one clear message instead of a failure deep inside a benchmark
    raise ImportError(f"benchmarks.torch_reference needs PyTorch and dsntnn "
                      f"(pip install torch dsntnn): {e}") from None

WIDTHS = (64, 128, 256, 512)


def torchvision_available() -> bool:
    """Whether `import torchvision` works (its ResNets are then used as the trunk)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------
# A minimal torchvision-layout ResNet (used when torchvision is not installed)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: 3×3 (stride) → 3×3, identity or 1×1-conv shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5, stride on the 3×3): 1×1 → 3×3 → 1×1 (×4 channels)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNetTrunk(nn.Module):
    """conv1, bn1, relu, maxpool, layer1 … layer4 of a torchvision ResNet (no avgpool, no fc).

    Initialised as torchvision does: convs kaiming-normal (fan_out, ReLU gain), BatchNorm 1 and 0.
    """

    def __init__(self, block: str, stage_sizes: tuple[int, ...]):
        super().__init__()
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for s, (num_blocks, planes) in enumerate(zip(stage_sizes, WIDTHS)):
            blocks = []
            for b in range(num_blocks):
                blocks.append(block_cls(cin, planes, 2 if (s > 0 and b == 0) else 1))
                cin = planes * block_cls.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet_trunk(arch: str, *, use_torchvision: bool | None = None) -> nn.Module:
    """An undilated ResNet trunk with torchvision's names: torchvision's own or `ResNetTrunk`.

    Args:
      arch: 'resnet18' … 'resnet152'.
      use_torchvision: True to require torchvision, False to use `ResNetTrunk`; None: torchvision
        when importable.

    Returns:
      A module with conv1, bn1, relu, maxpool, layer1 … layer4 (random initialisation; torchvision's
      avgpool and fc are removed).
    """
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown ResNet {arch!r}; choose one of {tuple(RESNET_SPECS)}")
    if use_torchvision is None:
        use_torchvision = torchvision_available()
    if use_torchvision:
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        # The FCN has no classifier; removing it keeps the parameter count and memory honest.
        del net.fc, net.avgpool
        return net
    return ResNetTrunk(*RESNET_SPECS[arch])


def apply_paper_dilation(trunk: nn.Module, dilate: int) -> nn.Module:
    """Dilates the last `dilate` of layer2..layer4 in place by the paper's rule (module docstring)."""
    if not 0 <= dilate <= 3:
        raise ValueError(f"dilate must be 0–3, got {dilate}")
    groups = [trunk.layer2, trunk.layer3, trunk.layer4]
    for i, group in enumerate(groups[len(groups) - dilate:]):
        d = 2 ** (i + 1)
        for m in group.modules():
            if not isinstance(m, nn.Conv2d):
                continue
            if m.stride == (2, 2):
                m.stride = (1, 1)
            elif m.kernel_size == (3, 3):
                m.dilation, m.padding = (d, d), (d, d)
    return trunk


def trunk_forward(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """conv1 … layer4 of a torchvision-layout ResNet (`resnet_trunk`, or a whole torchvision ResNet).

    images [B, 3, S, S] → features [B, C, h, w] (C = 512 basic blocks, 2048 bottlenecks; h = S / stride).
    """
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(images))))
    return trunk.layer4(trunk.layer3(trunk.layer2(trunk.layer1(x))))


# ----------------------------------------------------------------------------------------------------
# Pose model and loss


class TorchPoseModel(nn.Module):
    """ResNet trunk → 1×1 conv (no bias) → softmax → DSNT, as the paper's `ResNetHumanPoseModel`.

    forward(images [B, 3, S, S] float in [0, 1]) → {'coords': [B, J, 2] normalised (x, y),
    'heatmaps': [B, J, h, w] softmax maps, 'logits': [B, J, h, w]}.
    """

    def __init__(self, trunk: nn.Module, features: int, num_joints: int = 16):
        super().__init__()
        self.backbone = trunk
        self.hm_conv = nn.Conv2d(features, num_joints, 1, bias=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = trunk_forward(self.backbone, images)
        # Like dsnt-jax, the head's outputs are float32 whatever the trunk computed in (autocast).
        # contiguous(): under channels_last the conv returns NHWC strides, and dsntnn's flat_softmax
        # calls .view(), which fails on them (a no-op for NCHW).
        logits = self.hm_conv(x).float().contiguous()
        heatmaps = dsntnn.flat_softmax(logits)
        return {"coords": dsntnn.dsnt(heatmaps), "heatmaps": heatmaps, "logits": logits}


def build_torch_model(backbone: str, res: int, num_joints: int = 16, *,
                      use_torchvision: bool | None = None) -> TorchPoseModel:
    """The PyTorch equivalent of `dsnt_jax.models.create_model(backbone, res=res, output='dsnt')`.

    Args:
      backbone: 'resnet18' … 'resnet152' (the hourglass has no PyTorch twin here).
      res: heatmap side for a 224-px input: 7, 14, 28 or 56.
      num_joints: J heatmaps.
      use_torchvision: see `resnet_trunk`.

    Returns:
      A `TorchPoseModel` on the CPU in training mode (call `.eval()`, `.to(device)` as needed).
    """
    if backbone not in RESNET_SPECS:
        raise ValueError(f"no PyTorch reference for {backbone!r}; it exists for {tuple(RESNET_SPECS)}")
    if res not in RES_TO_DILATE:
        raise ValueError(f"res must be one of {tuple(RES_TO_DILATE)} (heatmap side for a 224-px input), "
                         f"got {res!r}")
    trunk = apply_paper_dilation(resnet_trunk(backbone, use_torchvision=use_torchvision),
                                 RES_TO_DILATE[res])
    expansion = (BasicBlock if RESNET_SPECS[backbone][0] == "basic" else Bottleneck).expansion
    return TorchPoseModel(trunk, WIDTHS[-1] * expansion, num_joints)


def torch_loss(outputs: Mapping[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor, *,
               reg: str = "js", sigma_t: float = 1.0, reg_coeff: float = 1.0) -> torch.Tensor:
    """The paper's DSNT loss with dsntnn: masked mean Euclidean + λ·masked mean regulariser.

    Args:
      outputs: `TorchPoseModel` outputs ('coords' [B, J, 2], 'heatmaps' [B, J, h, w]).
      target: [B, J, 2] normalised (x, y).
      mask: [B, J] 1 for annotated joints (float).
      reg: 'js' (DSNTr, default), 'kl' or 'none'.
      sigma_t: target Gaussian σ in heatmap pixels.
      reg_coeff: λ.

    Returns:
      Scalar loss (dsnt-jax's `pose_loss(..., output='dsnt', reg=reg)`).
    """
    if reg not in ("js", "kl", "none"):
        raise ValueError(f"reg must be 'js', 'kl' or 'none', got {reg!r}")
    mask = mask.to(outputs["coords"].dtype)
    loss = dsntnn.average_loss(dsntnn.euclidean_losses(outputs["coords"], target), mask)
    if reg != "none":
        reg_fn = dsntnn.js_reg_losses if reg == "js" else dsntnn.kl_reg_losses
        loss = loss + reg_coeff * dsntnn.average_loss(reg_fn(outputs["heatmaps"], target, sigma_t), mask)
    return loss


def copy_flax_variables(model: TorchPoseModel, variables: Mapping[str, Any]) -> TorchPoseModel:
    """Loads a dsnt-jax ResNet pose model's variables into `model` (in place; also returns it).

    The trunk goes through `dsnt_jax.models.variables_to_state_dict` (torchvision keys, OIHW); the
    head's HWIO [1, 1, C, J] kernel becomes hm_conv's [J, C, 1, 1] weight. Strict: any key mismatch
    raises.
    """
    from dsnt_jax.models import variables_to_state_dict

    sd = {f"backbone.{k}": torch.from_numpy(np.array(v)) for k, v in
          variables_to_state_dict(variables).items()}
    kernel = np.asarray(variables["params"]["hm_conv"]["kernel"], dtype=np.float32)
    sd["hm_conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"variables do not fit the torch model: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    return model
