"""torchvision ResNet weights ⇄ Flax variables (ImageNet initialisation without downloads).

The paper initialised its ResNets from torchvision's ImageNet weights. Nothing is downloaded here: the
user supplies a torchvision-format state dict as a local file, `.pth`/`.pt` (needs PyTorch),
`.safetensors` (needs the `safetensors` package) or `.npz`. Conversion:

* conv weights OIHW → HWIO kernels; BatchNorm weight/bias → scale/bias, running_mean/var → the
  `batch_stats` mean/var;
* `num_batches_tracked` and `fc.*` (the ImageNet classifier, unused by the FCN) are ignored and
  reported as such; the pose head (`hm_conv`) is not in torchvision's dict and keeps its
  initialisation;
* anything missing, unexpected or mis-shaped is an error listing every offending key.

Module names map one to one: `layer3_1/downsample_conv` ⇄ `layer3.1.downsample.0` etc. The
dilation rule changes no parameter shape, so any `res` accepts the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsnt_jax.models.resnet import RESNET_SPECS, ResNet

StateDict = dict[str, np.ndarray]

_IGNORED_PREFIXES = ("fc.",)
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}
_SUPPORTED = (".pth", ".pt", ".safetensors", ".npz")


def backbone_template(arch: str) -> dict[str, Any]:
    """Shapes/dtypes of the {'params', 'batch_stats'} of a ResNet trunk (no computation)."""
    if arch not in RESNET_SPECS:
        raise ValueError(f"unknown ResNet {arch!r}; choose one of {tuple(RESNET_SPECS)}")
    block, stage_sizes = RESNET_SPECS[arch]
    module = ResNet(stage_sizes=stage_sizes, block=block)
    return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))


def _torch_module(flax_name: str) -> str:
    if flax_name == "downsample_conv":
        return "downsample.0"
    if flax_name == "downsample_bn":
        return "downsample.1"
    if flax_name.startswith("layer") and "_" in flax_name:
        return flax_name.replace("_", ".", 1)
    return flax_name


def _key_map(template: Mapping[str, Any]) -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """torchvision key → (collection, flax path, is_conv_kernel) for every leaf of `template`."""
    mapping = {}
    for collection in ("params", "batch_stats"):
        leaves = jax.tree_util.tree_flatten_with_path(template.get(collection, {}))[0]
        for path, _ in leaves:
            names = tuple(p.key for p in path)
            module = ".".join(_torch_module(n) for n in names[:-1])
            leaf = names[-1]
            if leaf == "kernel":
                mapping[f"{module}.weight"] = (collection, names, True)
            elif collection == "params" and leaf in _BN_PARAMS:
                mapping[f"{module}.{_BN_PARAMS[leaf]}"] = (collection, names, False)
            elif collection == "batch_stats" and leaf in _BN_STATS:
                mapping[f"{module}.{_BN_STATS[leaf]}"] = (collection, names, False)
            else:
                raise ValueError(f"no torchvision name for {collection}/{'/'.join(names)}")
    return mapping


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16, so widen low precision
        value = value.detach().cpu()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _normalise_keys(state_dict: Mapping[str, Any]) -> StateDict:
    keys = list(state_dict)
    # nn.DataParallel checkpoints prefix every key with 'module.'.
    strip = bool(keys) and all(k.startswith("module.") for k in keys)
    return {(k[len("module."):] if strip else k): _to_numpy(v) for k, v in state_dict.items()}


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set_leaf(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}): {shown}{more}"


def state_dict_to_variables(state_dict: Mapping[str, Any], arch: str | Mapping[str, Any]
                            ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Converts a torchvision ResNet state dict into the trunk's Flax variables.

    Args:
      state_dict: torchvision key → array (numpy, torch tensor or anything `np.asarray` takes).
      arch: 'resnet18' … 'resnet152', or a template {'params', 'batch_stats'} of a ResNet trunk
        (arrays or ShapeDtypeStructs; the converted arrays take its dtypes).

    Returns:
      ({'params': …, 'batch_stats': …} numpy trees shaped like the template, sorted tuple of the
      ignored keys (fc.*, *.num_batches_tracked)).

    Raises:
      ValueError: listing every missing, unexpected and mis-shaped key.
    """
    template = backbone_template(arch) if isinstance(arch, str) else arch
    arch_name = arch if isinstance(arch, str) else "the given ResNet trunk"
    sd = _normalise_keys(state_dict)
    mapping = _key_map(template)
    ignored = sorted(k for k in sd if k.startswith(_IGNORED_PREFIXES) or k.endswith(_IGNORED_SUFFIXES))
    unexpected = sorted(k for k in sd if k not in mapping and k not in ignored)
    missing = sorted(k for k in mapping if k not in sd)
    misshaped: list[str] = []
    out: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, is_kernel) in mapping.items():
        if key not in sd:
            continue
        value = sd[key]
        if is_kernel:
            value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
        expected = _leaf(template[collection], path)
        if tuple(value.shape) != tuple(expected.shape):
            torch_shape = tuple(sd[key].shape)
            want = tuple(expected.shape)
            if is_kernel and len(want) == 4:
                want = (want[3], want[2], want[0], want[1])
            misshaped.append(f"{key} {torch_shape} (expected {want})")
            continue
        _set_leaf(out[collection], path, np.asarray(value, dtype=expected.dtype))
    if missing or unexpected or misshaped:
        problems = [_listing(t, v) for t, v in (("missing keys", missing),
                                                 ("unexpected keys", unexpected),
                                                 ("mis-shaped keys", misshaped)) if v]
        raise ValueError(f"state dict does not match {arch_name}: " + "; ".join(problems)
                         + ". Is it a torchvision ResNet of that depth?")
    return out, tuple(ignored)


def variables_to_state_dict(variables: Mapping[str, Any], *, prefix: str | None = "backbone"
                            ) -> StateDict:
    """The inverse of `state_dict_to_variables`: Flax trunk variables → torchvision state dict.

    Args:
      variables: a model's {'params', 'batch_stats'}; the trunk is taken from `prefix` (None: the
        variables are the trunk's own).
      prefix: name of the trunk submodule ('backbone' in `ResNetPose`).

    Returns:
      torchvision key → float32 numpy array (OIHW conv weights), plus an int64 zero
      `num_batches_tracked` per BatchNorm. No `fc.*`: load it with `strict=False` into torchvision.
    """
    trunk = {c: (variables[c][prefix] if prefix else variables[c]) for c in ("params", "batch_stats")}
    sd: StateDict = {}
    for key, (collection, path, is_kernel) in _key_map(trunk).items():
        value = np.array(jax.device_get(_leaf(trunk[collection], path)), dtype=np.float32)
        sd[key] = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)) if is_kernel else value)
        if key.endswith(".running_mean"):
            sd[key[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return sd


def _check_suffix(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SUPPORTED:
        raise ValueError(f"{path}: unsupported state-dict format {suffix!r}; use one of {_SUPPORTED}")
    return suffix


def _import_torch() -> Any:
    try:
        import torch  # here, not at the top: PyTorch is an optional, heavy dependency (.pth files only)
    except ImportError:
        raise ImportError("reading/writing .pth files needs PyTorch (pip install torch); without it, "
                          "convert the state dict to .safetensors or .npz") from None
    return torch


def _import_safetensors_numpy() -> Any:
    try:
        import safetensors.numpy as st  # here, not at the top: needed for .safetensors files only
    except ImportError:
        raise ImportError(".safetensors files need the safetensors package "
                          "(pip install safetensors); or use .npz") from None
    return st


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Reads a state dict (key → numpy array) from .pth/.pt, .safetensors or .npz.

    `.pth` is read with `torch.load(weights_only=True)` (no pickled code runs); a checkpoint dict with
    a 'state_dict' entry is unwrapped.
    """
    path = os.fspath(path)
    suffix = _check_suffix(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state-dict file not found: {path}")
    try:
        if suffix in (".pth", ".pt"):
            torch = _import_torch()
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
                sd = sd["state_dict"]
        elif suffix == ".safetensors":
            sd = _import_safetensors_numpy().load_file(path)
        else:
            with np.load(path, allow_pickle=False) as data:
                sd = {k: data[k] for k in data.files}
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt/foreign files fail in many ways; name the file
        raise ValueError(f"could not read a state dict from {path}: {e}") from None
    if not isinstance(sd, Mapping):
        raise ValueError(  # noqa: TRY004 - bad file content, not a programming error
            f"{path} holds a {type(sd).__name__}, not a state dict (name → tensor)")
    return _normalise_keys(sd)


def save_state_dict_file(state_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes a state dict to .pth/.pt (torch tensors), .safetensors or .npz, chosen by suffix."""
    path = os.fspath(path)
    suffix = _check_suffix(path)
    sd = {k: np.ascontiguousarray(_to_numpy(v)) for k, v in state_dict.items()}
    if suffix in (".pth", ".pt"):
        torch = _import_torch()
        torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}, path)
    elif suffix == ".safetensors":
        _import_safetensors_numpy().save_file(sd, path)
    else:
        with open(path, "wb") as f:  # a file object stops numpy from appending '.npz'
            np.savez(f, **sd)  # type: ignore[arg-type]  # numpy's stub matches **kwds against allow_pickle


def _merge(variables: Mapping[str, Any], trunk: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    merged = {c: dict(v) for c, v in variables.items()}
    for collection, tree in trunk.items():
        merged[collection][prefix] = jax.tree_util.tree_map(jnp.asarray, tree)
    return merged


def load_torchvision_resnet(path: str | os.PathLike, variables: Mapping[str, Any], *,
                            prefix: str = "backbone") -> tuple[dict[str, Any], tuple[str, ...]]:
    """Loads torchvision ResNet weights from a file into a model's variables.

    Args:
      path: .pth/.pt (needs torch), .safetensors (needs safetensors) or .npz file.
      variables: the model's variables, e.g. `create_model('resnet50', res=28).init(...)`; the
        trunk at `variables[c][prefix]` is the template (its shapes and dtypes are checked).
      prefix: the trunk submodule name ('backbone' for `ResNetPose`).

    Returns:
      (new variables with the trunk replaced — head untouched —, the ignored keys).
    """
    for collection in ("params", "batch_stats"):
        if prefix not in variables.get(collection, {}):
            raise ValueError(f"variables have no {collection}/{prefix}: pass the variables of a "
                             f"ResNet pose model (or the trunk's submodule name as `prefix`)")
    template = {c: variables[c][prefix] for c in ("params", "batch_stats")}
    trunk, ignored = state_dict_to_variables(load_state_dict_file(path), template)
    return _merge(variables, trunk, prefix), ignored


def save_torchvision_resnet(path: str | os.PathLike, variables: Mapping[str, Any], *,
                            prefix: str | None = "backbone") -> None:
    """Writes a model's ResNet trunk as a torchvision state dict (.pth/.pt, .safetensors or .npz)."""
    save_state_dict_file(variables_to_state_dict(variables, prefix=prefix), path)
