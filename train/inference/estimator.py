"""Python API for trained models: load a checkpoint, predict joints for a batch of images.

    from train.inference import PoseEstimator
    estimator = PoseEstimator.from_checkpoint("runs/default")           # best checkpoint by PCKh
    [pred] = estimator.predict([image])                                 # image: uint8 [H, W, 3] RGB
    pred.joints      # [16, 2] (x, y) pixels, 0-based, pixel centres at integers
    pred.heatmaps    # [16, h, w] normalised heatmaps (raw maps for HM models)
    pred.spread      # [16] RMS spread of each heatmap in image pixels (small = confident)

Each image is cropped around a person box exactly as in training (the MPII convention: a square of side
250·scale centred on (cx, cy + 15·scale)); without a box the whole image is used (its longer side framed
by the box). A box's side must be `MIN_BOX_SIDE_FRACTION`–`MAX_BOX_SIDE_FRACTION` (1 %–10×) of the image's
longer side (`scale_range`) and its centre within `MAX_CENTRE_DISTANCE` (100) longer sides of the origin;
a box that overlaps the image by less than `MIN_BOX_OVERLAP` (a quarter of its area) gets a
`BoxOutsideImageWarning`, since the network then sees mostly black padding and still answers.
Images are arrays in the displayed orientation; `train.inference.images.read_rgb` reads files that way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import augment, records
from data.joints import NUM_JOINTS
from dsnt_jax import ops
from dsnt_jax.models import COMPUTE_DTYPES
from dsnt_jax.models import fold as fold_lib
from train.inference import forward
from train.inference.images import to_uint8_rgb
from train.loop import config as config_lib
from train.loop.checkpoint import Checkpointer
from train.loop.workdir import RunDir

# The record image frame is MPII's, 1-based; predictions are returned 0-based (numpy pixel centres).
_FRAME_OFFSET = 1.0

# Sane person boxes: side 250·scale between 1 % and 10× the image's longer side. Outside that range the
# crop is a few pixels blown up, or the image a speck in it (and huge scales overflow the drawing code).
MIN_BOX_SIDE_FRACTION = 0.01
MAX_BOX_SIDE_FRACTION = 10.0
# A box centre further than this many image sides from the origin is an error, not a warning: float64
# box corners lose the box's size there (and it is a typo, not a person).
MAX_CENTRE_DISTANCE = 100.0
# Below this fraction of the box's area inside the image the network mostly sees black padding.
MIN_BOX_OVERLAP = 0.25


class BoxOutsideImageWarning(UserWarning):
    """A person box that overlaps its image by less than `MIN_BOX_OVERLAP` of its area."""


@dataclasses.dataclass(frozen=True)
class Box:
    """A person box in MPII terms: objpos ``center`` (x, y) in 0-based pixels and ``scale`` = height/200."""

    center: tuple[float, float]
    scale: float

    @classmethod
    def whole_image(cls, height: int, width: int) -> Box:
        """The box whose side (250·scale) is the image's longer side, centred on the image."""
        scale = max(height, width) / records.BOX_SIDE_PER_SCALE
        return cls(((width - 1) / 2, (height - 1) / 2 - records.BOX_DY_PER_SCALE * scale), scale)

    def corners(self) -> np.ndarray:
        """float64 [4] (x1, y1, x2, y2), 0-based continuous pixels (pixel i spans [i - 0.5, i + 0.5])."""
        return records.person_box(self.center, self.scale)

    def describe(self) -> str:
        """One-line text of the box for messages: centre, scale and corners."""
        x1, y1, x2, y2 = self.corners()
        return (f"centre ({self.center[0]:g}, {self.center[1]:g}), scale {self.scale:g}: "
                f"x {x1:.0f}..{x2:.0f}, y {y1:.0f}..{y2:.0f}")


def scale_range(height: int, width: int) -> tuple[float, float]:
    """The (lowest, highest) box scale accepted for an image of this size (see `MIN_BOX_SIDE_FRACTION`)."""
    longer = max(height, width) / records.BOX_SIDE_PER_SCALE
    return MIN_BOX_SIDE_FRACTION * longer, MAX_BOX_SIDE_FRACTION * longer


def check_box(box: Box, height: int, width: int) -> None:
    """Raises ValueError unless `box` has a scale within `scale_range(height, width)` and a centre whose
    coordinates are at most `MAX_CENTRE_DISTANCE` times the image's longer side.
    """
    limit = MAX_CENTRE_DISTANCE * max(height, width)
    if not all(abs(float(v)) <= limit for v in box.center):  # False for NaN
        raise ValueError(f"the person box centre {box.center} is too far from the {width}×{height} image: "
                         f"each coordinate must be within ±{limit:g} ({MAX_CENTRE_DISTANCE:g}× its longer side)")
    lo, hi = scale_range(height, width)
    if not (math.isfinite(box.scale) and lo <= box.scale <= hi):
        raise ValueError(
            f"person box scale {box.scale:g} does not fit a {width}×{height} image: the box side 250·scale "
            f"must be {MIN_BOX_SIDE_FRACTION:.0%} to {MAX_BOX_SIDE_FRACTION:g}× the image's longer side, "
            f"i.e. {lo:.3g} <= scale <= {hi:.3g}")


def box_overlap(box: Box, height: int, width: int) -> float:
    """The fraction of the box's area that lies inside the image, in [0, 1]."""
    x1, y1, x2, y2 = box.corners()
    # The image covers [-0.5, W - 0.5] × [-0.5, H - 0.5] in 0-based continuous pixels.
    overlap_w = max(0.0, min(x2, width - 0.5) - max(x1, -0.5))
    overlap_h = max(0.0, min(y2, height - 0.5) - max(y1, -0.5))
    return overlap_w * overlap_h / ((x2 - x1) * (y2 - y1))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's prediction; coordinates in 0-based image pixels."""

    joints: np.ndarray  # [16, 2] (x, y)
    coords: np.ndarray  # [16, 2] normalised (x, y) in the network's input crop (±1 = crop edges)
    heatmaps: np.ndarray  # [16, h, w], covering the input crop
    spread: np.ndarray  # [16] RMS spread of each heatmap, image pixels
    box: Box


def _canvas_size(input_size: int) -> int:
    # The box covers 2/3 of the canvas side; render it at least at the network's resolution, and the
    # canvas side must be a multiple of 6 (records.features).
    return 6 * math.ceil(1.5 * input_size / 6)


class PoseEstimator:
    """A trained pose network with its preprocessing; see the module docstring."""

    def __init__(self, cfg: config_lib.Config, variables: dict[str, Any], *, flip_test: bool = False,
                 fold_batchnorm: bool = True, precision: str = "float32"):
        """Wraps restored `variables` ({'params', 'batch_stats'}) of the model described by `cfg`.

        With `fold_batchnorm` (default) each BatchNorm is folded into the convolution before it once, here
        (`dsnt_jax.models.fold_batchnorm`; equal to the unfolded network to float32 rounding), so a call runs
        fewer, fused kernels. Each batch size is compiled ahead of time on first use and reused.
        `precision` is the network's computation dtype ('float32' or 'bfloat16', whatever the run trained
        with); the folded weights are cast to it once, here, and coordinates are computed in float32.
        """
        if precision not in COMPUTE_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(COMPUTE_DTYPES)}, got {precision!r}")
        self.config = cfg
        self.flip_test = flip_test
        self.model = cfg.model.build(dtype=COMPUTE_DTYPES[precision])
        # `apply_fn(self.variables, images, train=False)` is the network's forward, folded or not.
        self.apply_fn = self.model.apply
        if fold_batchnorm:
            size = cfg.model.input_size
            folded = fold_lib.fold_batchnorm(self.model, variables, input_shape=(1, size, size, 3))
            self.apply_fn, variables = folded.apply, folded.variables
        self.variables = jax.device_put(variables)  # device-resident: no copy of the weights per call
        self.mean_rgb = augment.input_mean_rgb(cfg.model.is_resnet)
        self._compiled: dict[int, Any] = {}

    def _forward(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(coords [B, J, 2], heatmaps [B, J, h, w]) of preprocessed images [B, S, S, 3], one program per B."""
        batch = images.shape[0]
        if batch not in self._compiled:
            model = self.config.model
            fn = functools.partial(forward.predict, self.apply_fn, output=model.output,
                                   activation=model.activation, flip_test=self.flip_test)
            self._compiled[batch] = jax.jit(fn).lower(self.variables, images).compile()
        return self._compiled[batch](self.variables, images)

    @classmethod
    def from_checkpoint(cls, workdir: str | os.PathLike, *, step: str | int = "best",
                        flip_test: bool = False) -> PoseEstimator:
        """Loads `workdir` (as written by `python -m train.main --workdir`).

        Args:
          workdir: the training run's directory (holds config.json and checkpoints/).
          step: 'best' (highest validation PCKh; an error if the run was never validated or that checkpoint
            is gone), 'latest', or a step number.
          flip_test: average the predictions of each image and its mirror (docs/paper-recipe.md §8).
        """
        run_dir = RunDir(os.fspath(workdir))
        cfg = run_dir.read_config()
        checkpointer = Checkpointer(run_dir.checkpoints, read_only=True)
        try:
            state, _ = checkpointer.restore_raw(checkpointer.resolve_step(step))
        finally:
            checkpointer.close()
        variables = {"params": state["params"], "batch_stats": state.get("batch_stats", {})}
        return cls(cfg, variables, flip_test=flip_test)

    def preprocess(self, image: np.ndarray, box: Box | None = None) -> dict[str, np.ndarray]:
        """Crops one RGB image [H, W, 3] (uint8, uint16, or float in [0, 1]) to the network input.

        Returns:
          {'image': float32 [S, S, 3], 'normalized_to_image': [2, 3] affine to the MPII (1-based) frame}.

        Raises:
          ValueError: not an RGB image, or a box that fails `check_box`.
        """
        image = to_uint8_rgb(image)
        box = box or Box.whole_image(*image.shape[:2])
        check_box(box, *image.shape[:2])
        canvas_size = _canvas_size(self.config.model.input_size)
        center = np.asarray(box.center, np.float64) + _FRAME_OFFSET
        canvas_to_image = records.canvas_transform(center, box.scale, canvas_size)
        record = {"image": records.render_canvas(image, canvas_to_image, canvas_size),
                  "joints": np.zeros((NUM_JOINTS, 2), np.float32), "annotated": np.zeros(NUM_JOINTS, bool),
                  "canvas_to_image": canvas_to_image}
        sample = augment.preprocess_eval(record, self.config.model.input_size, self.mean_rgb)
        return {"image": sample["image"], "normalized_to_image": sample["normalized_to_image"]}

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box | None] | None = None
                ) -> list[Prediction]:
        """Predicts the 16 MPII joints of one person per image.

        Args:
          images: RGB images [H, W, 3], uint8, uint16 or float in [0, 1], any sizes, in the displayed
            orientation (joints are returned in the frame of the array as given).
          boxes: optional person box per image (None entries: the whole image).

        Returns:
          One Prediction per image.

        Raises:
          ValueError: a malformed image or box (see `preprocess`).

        Warns:
          BoxOutsideImageWarning: a given box overlaps its image by less than `MIN_BOX_OVERLAP`.
        """
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        if len(boxes) != len(images):
            raise ValueError(f"got {len(images)} images but {len(boxes)} boxes")
        if not images:
            return []
        samples = [self.preprocess(im, box) for im, box in zip(images, boxes)]  # checks the boxes
        _warn_boxes_outside(images, boxes)
        batch = jnp.asarray(np.stack([s["image"] for s in samples]))
        coords, heatmaps = jax.device_get(self._forward(batch))
        affines = np.stack([s["normalized_to_image"] for s in samples])
        joints = augment.normalized_to_image_points(coords, affines) - _FRAME_OFFSET
        spread = _spread_pixels(heatmaps, affines) if self.config.model.output != "hm" else np.full(
            heatmaps.shape[:2], np.nan)
        return [Prediction(joints=joints[i].astype(np.float32), coords=coords[i], heatmaps=heatmaps[i],
                           spread=spread[i],
                           box=box or Box.whole_image(*np.asarray(im).shape[:2]))
                for i, (im, box) in enumerate(zip(images, boxes))]


def _warn_boxes_outside(images: Sequence[np.ndarray], boxes: Sequence[Box | None]) -> None:
    for i, (image, box) in enumerate(zip(images, boxes)):
        if box is None:
            continue
        height, width = np.shape(image)[:2]
        overlap = box_overlap(box, height, width)
        if overlap < MIN_BOX_OVERLAP:
            warnings.warn(f"image {i} ({width}×{height}): the person box ({box.describe()}) overlaps it by "
                          f"{overlap:.0%} (< {MIN_BOX_OVERLAP:.0%}); the joints are guesses on black padding",
                          BoxOutsideImageWarning, stacklevel=3)


def _spread_pixels(heatmaps: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """RMS spread of each heatmap [B, J] in image pixels (from its variance in normalised units)."""
    variance = np.asarray(ops.heatmap_variance(heatmaps))  # [B, J, 2] normalised²
    pixels_per_unit = np.abs(affines[:, 0, 0])[:, None]  # isotropic crop: same scale on both axes
    return np.sqrt(variance.mean(axis=-1)) * pixels_per_unit


@functools.lru_cache(maxsize=4)
def load(workdir: str, step: str | int = "best", flip_test: bool = False) -> PoseEstimator:
    """Cached :meth:`PoseEstimator.from_checkpoint` (for notebooks and repeated CLI use)."""
    return PoseEstimator.from_checkpoint(workdir, step=step, flip_test=flip_test)
