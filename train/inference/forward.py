"""A trained network's inference forward: images → coordinates and heatmaps, plainly or with the flip test.

The one place where both validation during training (`train.loop.steps.make_eval_step`) and the inference API
(`train.inference.PoseEstimator`, and through it `train.predict` and `train.evaluate`) turn images into
predictions, so the flip test means the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from data.augment import flip_images, unflip_heatmaps
from dsnt_jax.models import decode_with_params


def predict(apply_fn: Callable[..., Any], variables: Any, images: jax.Array, *, output: str, activation: str,
            flip_test: bool) -> tuple[jax.Array, jax.Array]:
    """Inference-mode (coords [B, J, 2] normalised, heatmaps [B, J, H, W]) of images [B, S, S, 3].

    With `flip_test` (docs/paper-recipe.md §8) the images and their mirrors run as one batch; the mirrored raw
    logits of the last stack are flipped back and their left/right channels swapped, the two logit maps
    averaged, and only then activated and decoded (`dsnt_jax.models.decode`). Heatmaps are normalised for
    dsnt/fc and the raw maps for hm.
    """
    if not flip_test:
        out = apply_fn(variables, images, train=False)
        return out["coords"], out["heatmaps"]
    b = images.shape[0]
    logits = apply_fn(variables, jnp.concatenate([images, flip_images(images)]), train=False)["logits"]
    averaged = 0.5 * (logits[:b] + unflip_heatmaps(logits[b:]))
    return decode_with_params(averaged, variables["params"], output=output, activation=activation)
