"""Validation during training: predictions on the validation split scored with the official PCKh.

The eval loader yields padded batches ('valid' marks real rows, 'index' the source index). Predicted
normalised coordinates are mapped to the original image frame with each example's
`normalized_to_image` affine and scored against the record's image-frame joints, annotation mask and
head size (`data.pckh.compute_pckh`), i.e. exactly the MPII toolkit's protocol. The mean-pose baseline
predicts, for every person, the training set's mean normalised pose mapped through the same affine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from data import pckh
from data.augment import normalized_to_image_points
from train.loop.steps import shard


def _gather_hosts(values: np.ndarray, filled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Combines per-host partial predictions (each host fills its own rows) on every host."""
    if jax.process_count() == 1:
        return values, filled
    all_values = np.asarray(multihost_utils.process_allgather(values))   # [P, N, 16, 2]
    all_filled = np.asarray(multihost_utils.process_allgather(filled))   # [P, N]
    owner = np.argmax(all_filled, axis=0)
    return np.take_along_axis(all_values, owner[None, :, None, None], 0)[0], all_filled.any(0)


def predict_split(eval_step: Callable[[Any, Any], Any], variables: Any, batches: Iterable[Mapping[str, Any]],
                  num_examples: int, num_devices: int, baseline_pose: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Image-frame predictions for every example of a split.

    Args:
      eval_step: pmapped `(variables, images [D, b, S, S, 3]) -> coords [D, b, J, 2]`.
      variables: replicated {'params', 'batch_stats'}.
      batches: the eval loader of this host.
      num_examples: N, the split size.
      num_devices: D, local devices.
      baseline_pose: optional normalised mean pose [J, 2] to map through each example's affine.

    Returns:
      (predictions float64 [N, J, 2], baseline predictions [N, J, 2] or None), image frame.
    """
    preds = np.zeros((num_examples, 16, 2))
    base = None if baseline_pose is None else np.zeros((num_examples, 16, 2))
    filled = np.zeros((num_examples,), bool)
    for batch in batches:
        images = shard({"image": np.asarray(batch["image"])}, num_devices)["image"]
        coords = np.asarray(eval_step(variables, images), np.float64)
        coords = coords.reshape(-1, *coords.shape[2:])
        valid = np.asarray(batch["valid"], bool)
        index = np.asarray(batch["index"])[valid]
        affine = np.asarray(batch["normalized_to_image"])[valid]
        preds[index] = normalized_to_image_points(coords[valid], affine)
        if base is not None:
            pose = np.broadcast_to(baseline_pose, (len(index), *baseline_pose.shape))
            base[index] = normalized_to_image_points(pose, affine)
        filled[index] = True
    preds, all_filled = _gather_hosts(preds, filled)
    if base is not None:
        base, _ = _gather_hosts(base, filled)
    if not all_filled.all():
        raise RuntimeError(f"validation produced predictions for {int(all_filled.sum())} of {num_examples} "
                           f"examples; the eval loader and the source disagree")
    return preds, base


def score(preds: np.ndarray, targets: Mapping[str, np.ndarray]) -> pckh.PCKhResult:
    """Official PCKh of image-frame predictions [N, 16, 2] against `Datasets.val_targets`."""
    return pckh.compute_pckh(preds, targets["joints"], targets["annotated"], targets["head_size"])

