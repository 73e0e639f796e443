"""Inference with BatchNorm folded into the convolutions before it (fast batch-1 inference).

In eval mode BatchNorm is a per-channel affine map, y = x·m + a with m = γ/√(var + ε) and
a = β − mean·m. When x is the output of a convolution and nothing else reads that output, the map
moves into the convolution: kernel' = kernel·m (per output channel), bias' = (bias or 0)·m + a. On
GPU the conv + bias + ReLU then runs as one cuDNN call instead of a conv followed by a normalisation.
BatchNorms that cannot be folded (the pre-activation BNs of the hourglass residual units, which read
the residual stream; the upsampling head's bn1, which reads a sum of two convs) keep the affine map
with m and a precomputed, so no batch_stats and no rsqrt remain.

`fold_batchnorm` finds the conv → BN pairs from the module tree itself: it traces `model.init` once
with every Conv output and every BatchNorm replaced by an `optimization_barrier` marker, then reads
the data flow in the jaxpr. A BN is folded iff its input is a conv's output that has no other reader,
so models that reuse a conv output elsewhere (a skip from before the BN) stay correct. The folded
forward is the model's own `apply` under `flax.linen.intercept_methods`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.layers import BatchNorm

Path = tuple[str, ...]
_BN_TYPES = (BatchNorm, nn.BatchNorm)


@dataclasses.dataclass(frozen=True)
class FoldedModel:
    """Result of `fold_batchnorm`.

    Attributes:
      apply: `apply(variables, images [B, S, S, 3], train=False) -> outputs dict`, equal to
        `model.apply(original_variables, images, train=False)` and called like it (`train=True` is an
        error: a folded network has no training mode); jit-able (pure in its arguments).
      variables: the folded variables, without the BNs' batch_stats. Folded convs hold `kernel` and
        `bias` in the conv's compute dtype (other convs too are cast to it once); unfoldable BNs hold
        float32 `mul` and `add` [C].
      folded: (conv path, BN path) of every folded pair, in call order.
      affine: paths of the BNs applied as a precomputed scale and shift.
    """

    apply: Callable[..., dict[str, Any]]
    variables: dict[str, Any]
    folded: tuple[tuple[Path, Path], ...]
    affine: tuple[Path, ...]


def _is_call(ctx: nn.module.InterceptorContext, types: Any) -> bool:
    return ctx.method_name == "__call__" and isinstance(ctx.module, types)


def _check_inference_bn(bn: nn.Module, x: jax.Array, kwargs: Mapping[str, Any]) -> None:
    ura = kwargs.get("use_running_average", bn.use_running_average)
    if not ura:
        raise ValueError(f"BatchNorm {'/'.join(bn.path)} is not in inference mode; cannot fold")
    if getattr(bn, "axis", -1) not in (-1, x.ndim - 1):
        raise ValueError(f"BatchNorm {'/'.join(bn.path)} normalises axis {bn.axis}, not channels")


def _find_pairs(model: nn.Module, images: jax.ShapeDtypeStruct) -> tuple[list, list, dict, dict]:
    """Traces `model.init`; returns (folded pairs, affine BN paths, conv dtypes, BN epsilons)."""
    events: list[tuple[str, Path]] = []  # one per marker, in trace order
    dtypes: dict[Path, Any] = {}
    epsilons: dict[Path, float] = {}

    def mark(next_fun, args, kwargs, ctx):
        if _is_call(ctx, nn.Conv):
            events.append(("conv", ctx.module.path))
            dtypes[ctx.module.path] = ctx.module.dtype
            return jax.lax.optimization_barrier(next_fun(*args, **kwargs))
        if _is_call(ctx, _BN_TYPES):
            _check_inference_bn(ctx.module, args[0], kwargs)
            events.append(("bn", ctx.module.path))
            epsilons[ctx.module.path] = ctx.module.epsilon
            # Shapes are all the trace needs; the marker also makes the BN read its input once.
            return jax.lax.optimization_barrier(args[0])
        return next_fun(*args, **kwargs)

    def init(x):
        with nn.intercept_methods(mark):
            # With the output, so that a conv output that is also a model output counts as read.
            return model.init_with_output(jax.random.key(0), x, train=False)

    jaxpr = jax.make_jaxpr(init)(images).jaxpr
    markers = [e for e in jaxpr.eqns if e.primitive.name == "optimization_barrier"]
    if len(markers) != len(events):
        raise NotImplementedError("convs or BatchNorms inside jit/remat/scan transforms are not "
                                  "supported by fold_batchnorm")
    readers = collections.Counter(v for e in jaxpr.eqns for v in e.invars
                                  if isinstance(v, jex_core.Var))
    readers.update(v for v in jaxpr.outvars if isinstance(v, jex_core.Var))
    # A module called more than once shares its weights between calls: fold none of them.
    calls = collections.Counter(path for _, path in events)
    conv_of = {m.outvars[0]: path for (kind, path), m in zip(events, markers)
               if kind == "conv" and calls[path] == 1}
    folded, affine = [], []
    for (kind, path), m in zip(events, markers):
        if kind == "bn" and path not in affine:
            conv = conv_of.get(m.invars[0])
            if conv is not None and readers[m.invars[0]] == 1 and calls[path] == 1:
                folded.append((conv, path))
            else:
                affine.append(path)
    return folded, affine, dtypes, epsilons


def _get(tree: Mapping[str, Any], path: Path) -> Any:
    """The subtree at `path`; {} where it is missing (a BN without scale and bias has no params)."""
    for k in path:
        tree = tree.get(k, {})
    return tree


def _set(tree: dict[str, Any], path: Path, value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _pop(tree: dict[str, Any], path: Path) -> None:
    """Deletes `path`, if present, and every dict it leaves empty."""
    if path[0] not in tree:
        return
    if len(path) > 1:
        _pop(tree[path[0]], path[1:])
        if tree[path[0]]:
            return
    del tree[path[0]]


def _to_dict(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _to_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def bn_affine(params: Mapping[str, jax.Array], stats: Mapping[str, jax.Array],
              epsilon: float) -> tuple[jax.Array, jax.Array]:
    """Eval-mode BatchNorm as float32 (mul, add) [C]: y = x·mul + add.

    `params` may lack `scale` or `bias` (flax's use_scale/use_bias=False).
    """
    mean = jnp.asarray(stats["mean"], jnp.float32)
    mul = jax.lax.rsqrt(jnp.asarray(stats["var"], jnp.float32) + epsilon)
    if "scale" in params:
        mul = mul * params["scale"].astype(jnp.float32)
    add = -mean * mul
    if "bias" in params:
        add = add + params["bias"].astype(jnp.float32)
    return mul, add


def fold_conv(conv: Mapping[str, jax.Array], mul: jax.Array, add: jax.Array,
              dtype: Any = None) -> dict[str, jax.Array]:
    """Conv params {kernel [kh, kw, Cin, C], bias [C]?} with the affine map folded into them.

    Computed in float32 and cast once to `dtype` (the conv's compute dtype; None keeps the kernel's),
    so the folded forward casts no weights.
    """
    kernel = conv["kernel"].astype(jnp.float32) * mul
    bias = add if "bias" not in conv else conv["bias"].astype(jnp.float32) * mul + add
    dtype = conv["kernel"].dtype if dtype is None else dtype
    return {"kernel": kernel.astype(dtype), "bias": bias.astype(dtype)}


def _bn_out_dtype(bn: nn.Module, x: jax.Array) -> Any:
    if bn.dtype is not None:
        return bn.dtype
    # layers.BatchNorm keeps the input's dtype; flax's promotes it with its float32 statistics.
    return x.dtype if isinstance(bn, BatchNorm) else jnp.promote_types(x.dtype, jnp.float32)


def _folded_forward(model: nn.Module, convs: frozenset, folded_bns: frozenset,
                    affine_bns: frozenset) -> Callable[..., dict[str, Any]]:
    def run(next_fun, args, kwargs, ctx):
        m = ctx.module
        if _is_call(ctx, nn.Conv) and m.path in convs:
            # A standalone copy with a bias reuses flax's padding/dilation/dtype handling.
            return m.clone(parent=None, use_bias=True).apply(dict(m.variables), *args)
        if _is_call(ctx, _BN_TYPES) and m.path in folded_bns | affine_bns:
            x = args[0]
            out_dtype = _bn_out_dtype(m, x)
            if m.path in folded_bns:
                return x.astype(out_dtype)
            p = m.variables["params"]
            x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            return (x32 * p["mul"] + p["add"]).astype(out_dtype)
        return next_fun(*args, **kwargs)

    def apply(variables: Mapping[str, Any], images: jax.Array, train: bool = False) -> dict[str, Any]:
        if train:
            raise ValueError("a folded network has no training mode; train the unfolded model")
        with nn.intercept_methods(run):
            return cast(dict[str, Any], model.apply(variables, images, train=False))

    return apply


def fold_batchnorm(model: nn.Module, variables: Mapping[str, Any],
                   input_shape: Sequence[int] | None = None) -> FoldedModel:
    """Folds every eval-mode BatchNorm of `model` into the conv before it, or into a scale/shift.

    Args:
      model: a pose model from `create_model` (ResNetPose, HourglassPose) or any linen module called
        as `model(images, train=False)` whose BNs are `layers.BatchNorm` or `nn.BatchNorm`.
      variables: its {'params', 'batch_stats'}.
      input_shape: [B, S, S, 3] of the tracing probe (default S = 4·2^depth, 64 for ResNets), which
        only needs to be valid for the model; the pairing does not depend on it.

    Returns:
      A `FoldedModel`; `jax.jit(f.apply)(f.variables, images)` ≈ `model.apply(variables, images,
      train=False)`.
    """
    if input_shape is None:
        side = 4 * 2 ** getattr(model, "depth", 4)
        input_shape = (1, side, side, 3)
    probe = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    folded, affine, dtypes, epsilons = _find_pairs(model, probe)
    params = _to_dict(variables["params"])
    stats = _to_dict(variables.get("batch_stats", {}))
    for conv, bn in folded:
        mul, add = bn_affine(_get(params, bn), _get(stats, bn), epsilons[bn])
        _set(params, conv, fold_conv(_get(params, conv), mul, add, dtypes[conv]))
        _pop(params, bn)
        _pop(stats, bn)
    for conv in set(dtypes) - {c for c, _ in folded}:
        if dtypes[conv] is not None:  # a conv with no BN after it, e.g. the heatmap conv
            # Cast once here rather than in every call (numerically the same as flax's per-call cast).
            _set(params, conv, {k: v.astype(dtypes[conv]) for k, v in _get(params, conv).items()})
    for bn in affine:
        mul, add = bn_affine(_get(params, bn), _get(stats, bn), epsilons[bn])
        _set(params, bn, {"mul": mul, "add": add})
        _pop(stats, bn)
    out = {k: _to_dict(v) for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = params
    if stats:  # other modules' statistics, untouched
        out["batch_stats"] = stats
    apply = _folded_forward(model, frozenset(c for c, _ in folded), frozenset(b for _, b in folded),
                            frozenset(affine))
    return FoldedModel(apply, out, tuple(folded), tuple(affine))
