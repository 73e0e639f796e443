"""The pose loss of the paper's four configurations (HM, FC, DSNT, DSNTr), summed over hourglass stacks.

* DSNT / FC (paper Eq. 3): average_loss(euclidean, mask) + λ·average_loss(reg, mask) per stack, where
  reg is none, 'js' or 'kl' (divergence between the normalised heatmap and a normalised Gaussian of
  σ_t pixels at the target, `dsnt_jax.ops`), or 'var' (paper Eq. 5). The paper's "DSNTr" is
  reg='js', σ_t = 1 px, λ = 1.
* HM: mean squared error between the raw heatmaps and `hm_encode` targets (unnormalised Gaussian,
  σ = `sigma_t` px, 7×7 window) over all B·J·H·W elements, **without** a joint mask, as the paper's
  code (`nn.functional.mse_loss`); `hm_masked=True` averages over the unmasked joints instead.

HM target amplitude (`hm_amplitude`, default 1 = the paper): the target Gaussian's peak. Not in the
paper; a common practice of heatmap-regression codebases (a target or "heatmap multiplier"). It matters
because the MSE is not scale-free: the raw 1×1 heatmap conv starts with outputs of std ~0.7
everywhere and RMSProp moves every weight by about lr per step (10·lr in the first steps, PyTorch's
v₀ = 0), so each step shifts every heatmap pixel by an amount fixed in absolute units, while the part
of the loss that locates the joint, the Gaussian's energy πσ²·A²/(H·W), shrinks with the map. At
24×24 px and A = 1 it is 1 % of the initial loss (0.0055 of 0.52), and a short run ends at the
all-zero prediction (issue #14; the paper trained ~250× longer from ImageNet weights). Scaling the
target by A is the same as dividing the head's initial weights and its learning rate by A; it leaves
`hm_decode` (argmax) unchanged.
Scaling the loss instead does nothing (RMSProp divides the scale out, ε = 1e-8 aside).

Non-finite values (NaN, ±inf): anything that counts propagates, so that the training step's
finiteness check sees it: a non-finite prediction (coords or heatmaps) of an annotated joint, or a
non-finite target of an annotated joint, makes the loss non-finite, for every output and regulariser.
The targets of masked joints (mask = 0) are excluded, whatever they hold: datasets may store NaN for
unannotated joints, and the loss and its gradients must stay finite then. For dsnt/fc they are replaced
by 0 before any loss is computed (the joint is masked out anyway; replacing only after would leave
0·NaN = NaN in the gradients, see `ops.average_loss`); for hm, `hm_encode` draws an all-zero target for
a non-finite coordinate, like a placeholder off the map. A non-finite prediction of a masked joint is
excluded from the value like any masked loss; its NaN gradient still reaches the parameters.

Variance units: `ops.variance_reg_losses` works in pixels² (dsntnn). The paper's code computed the
variance term in normalised units (σ_t converted to 2σ_t/n), and its λ = 100 for 'var' refers to
those, so 'var' here is normalised: Σ_k (Var_k − (2σ_t/n_k)²)² with Var_k in normalised units², which
for an n×n map equals the pixel value divided by (n/2)⁴.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp

from dsnt_jax import ops
from dsnt_jax.models.heads import check_output, hm_encode

# The heatmap regularisers of the DSNT/FC losses (see the module docstring).
Regularizer = Literal["none", "js", "kl", "var"]
REGULARIZERS: tuple[Regularizer, ...] = typing.get_args(Regularizer)


def variance_reg_losses_normalized(heatmaps: jax.Array, sigma_t: float) -> jax.Array:
    """Paper Eq. 5 in normalised units: Σ_k (Var[c_k] − σ_k²)², σ_k = 2·sigma_t/n_k.

    Args:
      heatmaps: [..., J, H, W] normalised heatmaps.
      sigma_t: target standard deviation in heatmap pixels.

    Returns:
      float32 [..., J].
    """
    variance = ops.heatmap_variance(heatmaps)                      # [..., J, 2] (x, y)
    height, width = heatmaps.shape[-2:]
    target = jnp.square(2.0 * sigma_t / jnp.asarray([width, height], jnp.float32))
    return jnp.sum(jnp.square(variance - target), axis=-1)


def _reg_losses(heatmaps: jax.Array, target: jax.Array, reg: Regularizer, sigma_t: float) -> jax.Array:
    if reg == "js":
        return ops.js_reg_losses(heatmaps, target, sigma_t)
    if reg == "kl":
        return ops.kl_reg_losses(heatmaps, target, sigma_t)
    return variance_reg_losses_normalized(heatmaps, sigma_t)


def _mask_targets(target_coords: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, J, 2] targets with those of masked joints (mask == 0) set to 0, so NaN there cannot reach a
    gradient; annotated joints' targets, NaN or not, are kept. For losses that exclude masked joints."""
    return jnp.where((mask != 0)[..., None], target_coords, 0.0)


def _bad_annotated_target(target_coords: jax.Array, mask: jax.Array) -> jax.Array:
    """Scalar: NaN if an annotated joint's target is NaN or ±inf, else 0.0 (a term to add to a loss).

    For the hm loss, whose target maps `hm_encode` draws as zeros for non-finite coordinates (a finite
    loss); a select on [B, J], not on the maps."""
    bad = (mask != 0) & ~jnp.all(jnp.isfinite(target_coords), axis=-1)
    return jnp.sum(jnp.where(bad, jnp.nan, 0.0))


def _stacks(outputs: dict[str, Any]) -> list[dict[str, jax.Array]]:
    """One dict per supervised output: the hourglass stacks, or the single ResNet output."""
    if "stacks" not in outputs:
        return [outputs]
    stacked = outputs["stacks"]
    n = stacked["coords"].shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(n)]


def pose_loss(outputs: dict[str, Any], target_coords: jax.Array, mask: jax.Array, *,
              output: str, reg: Regularizer = "none", sigma_t: float = 1.0, reg_coeff: float = 1.0,
              hm_masked: bool = False, hm_amplitude: float = 1.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss of a pose model's outputs (see the module docstring).

    Args:
      outputs: a model's output dict: 'coords' [B, J, 2] and 'heatmaps' [B, J, H, W], and for
        hourglass models 'stacks' with the same keys and a leading stack axis (every stack is
        supervised and the losses are summed).
      target_coords: [B, J, 2] normalised (x, y) targets.
      mask: [B, J] joint mask (1 = annotated; bool or float).
      output: the model's output strategy, 'dsnt', 'fc' or 'hm'.
      reg: 'none', 'js', 'kl' or 'var' (dsnt/fc only).
      sigma_t: Gaussian σ in heatmap pixels: the regulariser's target for dsnt/fc, the target
        Gaussian's σ for hm (the paper's `hm_sigma`, 1 px for both).
      reg_coeff: λ of paper Eq. 3.
      hm_masked: hm only; average over unmasked joints instead of all elements (not the paper's).
      hm_amplitude: hm only; peak of the target Gaussian (paper: 1; see the module docstring). The
        loss and aux['mse'] are in the units of the scaled target.

    Non-finite values: see the module docstring (annotated joints propagate NaN/inf to the loss; masked
    joints' targets may hold anything, NaN included, with a finite loss and finite gradients).

    Returns:
      (scalar float32 loss, aux) with aux['per_stack'] [S] the loss of each stack and, summed over
      stacks, aux['euclidean'] and aux['reg'] (unscaled by λ) for dsnt/fc or aux['mse'] for hm.
    """
    # The activation is the model's business, not the loss's: only the output strategy is checked here.
    check_output(output)
    if reg not in REGULARIZERS:
        raise ValueError(f"unknown regulariser {reg!r}; choose one of {REGULARIZERS}")
    if output == "hm" and reg != "none":
        raise ValueError("regularisers apply to dsnt/fc outputs; use reg='none' with output='hm'")
    if isinstance(sigma_t, (int, float)) and not sigma_t > 0:  # NaN too; traced values cannot be checked
        raise ValueError(f"sigma_t must be positive (heatmap pixels), got {sigma_t}")
    if isinstance(hm_amplitude, (int, float)) and not 0 < hm_amplitude < float("inf"):  # NaN too
        raise ValueError(f"hm_amplitude must be a finite number > 0, got {hm_amplitude}")
    target_coords = jnp.asarray(target_coords, jnp.float32)
    mask = jnp.asarray(mask).astype(jnp.float32)
    if target_coords.ndim != 3 or target_coords.shape[-1] != 2:
        raise ValueError(f"target_coords must be [B, J, 2], got shape {target_coords.shape}")
    if mask.shape != target_coords.shape[:-1]:
        raise ValueError(f"mask must be [B, J] = {target_coords.shape[:-1]}, got {mask.shape}")
    stacks = _stacks(outputs)
    if stacks[-1]["coords"].shape != target_coords.shape:
        raise ValueError(f"model coords {stacks[-1]['coords'].shape} and target_coords "
                         f"{target_coords.shape} differ in shape")

    if output == "hm":
        bad_target = _bad_annotated_target(target_coords, mask)
    else:
        target_coords = _mask_targets(target_coords, mask)

    per_stack, parts = [], []
    for out in stacks:
        heatmaps = out["heatmaps"].astype(jnp.float32)
        if output == "hm":
            target_hm = hm_amplitude * hm_encode(target_coords, heatmaps.shape[-2:], sigma_t)
            sq = jnp.square(heatmaps - target_hm)
            if hm_masked:
                mse = ops.average_loss(jnp.mean(sq, axis=(-2, -1)), mask)
            else:
                mse = jnp.mean(sq)
            mse = mse + bad_target
            per_stack.append(mse)
            parts.append({"mse": mse})
            continue
        euclid = ops.average_loss(ops.euclidean_losses(out["coords"], target_coords), mask)
        if reg == "none":
            reg_value = jnp.zeros((), jnp.float32)
        else:
            reg_value = ops.average_loss(_reg_losses(heatmaps, target_coords, reg, sigma_t), mask)
        per_stack.append(euclid + reg_coeff * reg_value)
        parts.append({"euclidean": euclid, "reg": reg_value})

    aux = {k: sum(p[k] for p in parts) for k in parts[0]}
    aux["per_stack"] = jnp.stack(per_stack)
    return jnp.sum(aux["per_stack"]), aux
