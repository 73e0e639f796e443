"""Crop, augmentation and normalisation of one person record (pure numpy/OpenCV, no JAX).

Geometry follows anibali/dsnt-pose2d (docs/paper-recipe.md §5-6). A record's canvas (docs/records.md §3) is a
C x C image whose centre square of side B = 2C/3 is the person box. For augmentation parameters (s, r, flip)
the paper's code flips the canvas, rotates it by r degrees counter-clockwise about its centre, crops the
centre square of side B*s (s > 1 zooms out) and resizes it to the output size S. With box-normalised joint
coordinates u (+-1 = box edges) the output coordinates are

    o = R(r) F u / s,    R(r) = [[cos r, sin r], [-sin r, cos r]] (y down),    F = diag(-1, 1) if flipped.

``o`` uses the DSNT convention (docs/conventions.md §1): o = (2 q + 1) / S - 1 for the 0-based pixel-centre
coordinate q of the output crop, so +-1 are the crop's outer edges.

Here the whole geometric chain is one affine map, applied once to the image (``cv2.warpAffine``) and
exactly to the joints. Antialiasing: the paper rotates at canvas resolution and then area-averages the crop
down to S (``adaptive_avg_pool2d``). We do the same: when the crop (B*s canvas px) is larger than S, the warp
writes an intermediate image of round(B*s) px (a rotation at ~canvas resolution, bilinear), the colour gain is
applied and clipped there (the paper's order), and ``cv2.resize(INTER_AREA)`` averages it down to S. Both steps
keep the normalised coordinates o exactly, because they share the +-1 = outer-edge convention. Differences to
the paper: the crop side is B*s, not int(384*s); OpenCV's area weights are fractional where PyTorch's adaptive
windows overlap; bilinear interpolation uses OpenCV's 1/32 px fixed point.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from data.joints import FLIP_PERMUTATION, MPII_MEAN_RGB, NUM_JOINTS, flip_joints_slots

VARIANTS: tuple[str, ...] = ("paper_code", "paper_text", "none")


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One draw of augmentation parameters.

    Attributes:
        scale: crop side / box side; > 1 zooms out (the person looks smaller).
        rotation_deg: rotation of the image content, degrees, counter-clockwise as seen on screen (PIL rotate).
        flip: mirror horizontally (left/right joint slots swap).
        colour: per-channel (R, G, B) gain applied to [0, 1] pixel values before clipping to [0, 1].
    """

    scale: float = 1.0
    rotation_deg: float = 0.0
    flip: bool = False
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)


IDENTITY = AugmentParams()


def input_mean_rgb(is_resnet: bool) -> tuple[float, float, float] | None:
    """The mean subtracted from a network's [0, 1] RGB input: none for ResNets, the MPII mean for hourglasses
    (the paper's code; docs/paper-recipe.md §1, §3). Input sides: `dsnt_jax.models.input_size_for`."""
    return None if is_resnet else MPII_MEAN_RGB


def sample_augmentation(rng: np.random.Generator, variant: str = "paper_code") -> AugmentParams:
    """Draws augmentation parameters.

    Variants (numbers are drawn unconditionally in the order scale, rotation gate, rotation, flip, colour, so
    one call always consumes the same amount of the generator):

    * ``paper_code`` (the paper's code, = pose-hg-train): s = 2^clip(N(0, 0.25), -0.5, 0.5); with probability
      0.4 r = clip(N(0, 30), -60, 60) degrees, else 0; flip with probability 0.5; gain U(0.6, 1.4) per channel.
    * ``paper_text`` (paper §6.3 / Newell et al. text): s = U(0.75, 1.25) with the same zoom semantics;
      r = U(-30, 30) degrees on every sample; flip with probability 0.5; gain U(0.6, 1.4) per channel.
    * ``none``: the identity (``--no-aug``).

    Args:
        rng: the generator (grain passes one per element).
        variant: one of ``VARIANTS``.

    Returns:
        The parameters.
    """
    if variant == "none":
        return IDENTITY
    if variant == "paper_code":
        scale = 2.0 ** float(np.clip(rng.normal(0.0, 0.25), -0.5, 0.5))
        rotate = rng.uniform() < 0.4
        rotation = float(np.clip(rng.normal(0.0, 30.0), -60.0, 60.0))
    elif variant == "paper_text":
        scale = float(rng.uniform(0.75, 1.25))
        rng.uniform()  # The unused rotation gate keeps the draw order of paper_code.
        rotate = True
        rotation = float(rng.uniform(-30.0, 30.0))
    else:
        raise ValueError(f"unknown augmentation variant {variant!r}; choose one of {VARIANTS}")
    flip = bool(rng.uniform() < 0.5)
    colour = tuple(float(c) for c in rng.uniform(0.6, 1.4, size=3))
    return AugmentParams(scale=scale, rotation_deg=rotation if rotate else 0.0, flip=flip, colour=colour)


def decode_canvas(image: Any) -> np.ndarray:
    """Returns the canvas as RGB uint8 [C, C, 3] from an array of that shape or its JPEG/PNG bytes."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        buffer = np.frombuffer(image, dtype=np.uint8)
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
        if bgr is None:
            raise ValueError("record 'image' bytes could not be decoded as an image (expected JPEG/PNG bytes)")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(
            f"record 'image' must be a square RGB uint8 canvas [C, C, 3]; got {image.dtype} {image.shape}")
    return image


def normalized_to_canvas(canvas_size: int, params: AugmentParams) -> np.ndarray:
    """Affine [2, 3] (float64) from normalised output coordinates (o_x, o_y, 1) to canvas pixel centres.

    Inverts o = R F u / s with u = (2 p + 1 - C) / B, B = 2C/3: p = (C - 1)/2 + (B s / 2) F R^T o.
    """
    if not params.scale > 0:
        raise ValueError(f"augmentation scale must be > 0, got {params.scale}")
    theta = math.radians(params.rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    rotation_t = np.array([[cos, -sin], [sin, cos]])
    flip = np.diag([-1.0 if params.flip else 1.0, 1.0])
    box = 2.0 * canvas_size / 3.0
    linear = (box * params.scale / 2.0) * flip @ rotation_t
    centre = np.full((2, 1), (canvas_size - 1) / 2.0)
    return np.concatenate([linear, centre], axis=1)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Returns the [2, 3] affine outer(inner(x))."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]], axis=1)


def _invert(affine: np.ndarray) -> np.ndarray:
    """Inverts a [2, 3] affine map (raises ValueError if singular)."""
    linear = affine[:, :2]
    if abs(np.linalg.det(linear)) < 1e-12:
        raise ValueError(f"affine map is singular: {affine.tolist()}")
    inv = np.linalg.inv(linear)
    return np.concatenate([inv, -inv @ affine[:, 2:]], axis=1)


def _pixels_to_normalized(size: int) -> np.ndarray:
    """Affine [2, 3]: pixel centre q of a size-px square -> o = (2 q + 1) / size - 1."""
    return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0]])


def _warp(canvas: np.ndarray, to_canvas: np.ndarray, size: int) -> np.ndarray:
    """Samples a size-px square whose normalised coordinates map to the canvas by ``to_canvas`` (bilinear)."""
    dst_to_src = _compose(to_canvas, _pixels_to_normalized(size))
    return cv2.warpAffine(canvas, dst_to_src, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _check_record(record: Mapping[str, Any]) -> None:
    missing = [k for k in ("image", "joints", "annotated", "canvas_to_image") if k not in record]
    if missing:
        raise ValueError(f"record is missing {missing}; records must follow docs/records.md §2")
    if np.shape(record["joints"]) != (NUM_JOINTS, 2) or np.shape(record["annotated"]) != (NUM_JOINTS,):
        raise ValueError(f"record 'joints' must be [{NUM_JOINTS}, 2] and 'annotated' [{NUM_JOINTS}]; got "
                         f"{np.shape(record['joints'])} and {np.shape(record['annotated'])}")
    if np.shape(record["canvas_to_image"]) != (2, 3):
        raise ValueError(f"record 'canvas_to_image' must be [2, 3], got {np.shape(record['canvas_to_image'])}")


def augment(record: Mapping[str, Any], params: AugmentParams, *, out_size: int,
            mean_rgb: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """Crops, augments and normalises one person record.

    Args:
        record: a person record (docs/records.md §2): ``image`` RGB uint8 canvas [C, C, 3] or its JPEG bytes,
            ``joints`` [16, 2] image frame, ``annotated`` bool [16], ``canvas_to_image`` [2, 3].
        params: augmentation parameters (``IDENTITY`` for none).
        out_size: output side S in px (224 ResNet, 256 hourglass).
        mean_rgb: per-channel mean subtracted after scaling to [0, 1] (``MPII_MEAN_RGB`` for the hourglass).

    Returns:
        ``image`` float32 [S, S, 3] (RGB in [0, 1], minus ``mean_rgb``); ``coords`` float32 [16, 2], normalised
        (x, y) in the output crop (+-1 = crop edges; unannotated slots hold the transformed image-frame
        placeholder, as the paper's code); ``mask`` float32 [16], 1 where the joint is annotated and strictly
        inside the crop; ``normalized_to_image`` float32 [2, 3], mapping (o_x, o_y, 1) of the output to the
        original image frame. When ``params.flip`` is set, slot j holds the joint ``FLIP_PERMUTATION[j]`` of the
        record (the mirrored person's joint j); ``normalized_to_image`` is purely geometric.
    """
    _check_record(record)
    if not (isinstance(out_size, (int, np.integer)) and out_size > 0):
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")
    canvas = decode_canvas(record["image"])
    size = canvas.shape[0]
    to_canvas = normalized_to_canvas(size, params)

    # Rotate/flip at about canvas resolution, then area-average down: antialiased like the paper's code.
    crop_px = int(round(2.0 * size / 3.0 * params.scale))
    if crop_px > out_size:
        image = _warp(canvas, to_canvas, crop_px)
    else:
        image = _warp(canvas, to_canvas, out_size)
    gain = np.asarray(params.colour, dtype=np.float32) / np.float32(255.0)
    image = np.clip(image.astype(np.float32) * gain, 0.0, 1.0)
    if image.shape[0] != out_size:
        image = cv2.resize(image, (out_size, out_size), interpolation=cv2.INTER_AREA)
    if mean_rgb is not None:
        image = image - np.asarray(mean_rgb, dtype=np.float32)

    canvas_to_image = np.asarray(record["canvas_to_image"], dtype=np.float64)
    normalized_to_image = _compose(canvas_to_image, to_canvas)
    joints = np.asarray(record["joints"], dtype=np.float64)
    image_to_normalized = _invert(normalized_to_image)
    coords = joints @ image_to_normalized[:, :2].T + image_to_normalized[:, 2]
    mask = np.asarray(record["annotated"], dtype=bool) & np.all(np.abs(coords) < 1.0, axis=-1)
    if params.flip:
        coords, mask = flip_joints_slots(coords), flip_joints_slots(mask)
    return {
        "image": np.ascontiguousarray(image, dtype=np.float32),
        "coords": coords.astype(np.float32),
        "mask": mask.astype(np.float32),
        "normalized_to_image": normalized_to_image.astype(np.float32),
    }


def preprocess_eval(record: Mapping[str, Any], out_size: int,
                    mean_rgb: tuple[float, float, float] | None = None) -> dict[str, np.ndarray]:
    """``augment`` without augmentation: the person box resized to ``out_size`` (same outputs and shapes)."""
    return augment(record, IDENTITY, out_size=out_size, mean_rgb=mean_rgb)


def normalized_to_image_points(coords: np.ndarray, normalized_to_image: np.ndarray) -> np.ndarray:
    """Maps normalised output coordinates [..., J, 2] to the image frame with affines [..., 2, 3]."""
    coords = np.asarray(coords, dtype=np.float64)
    affine = np.asarray(normalized_to_image, dtype=np.float64)
    return np.einsum("...ij,...kj->...ki", affine[..., :2], coords) + affine[..., None, :, 2]


# Flip test-time augmentation (docs/paper-recipe.md §8). Written with plain indexing so that numpy and jax.numpy
# arrays both work (also under jit).
_FLIP_INDEX = np.asarray(FLIP_PERMUTATION)


def flip_images(images: Any) -> Any:
    """Mirrors images [..., H, W, C] left-right."""
    return images[..., :, ::-1, :]


def unflip_coords(coords: Any) -> Any:
    """Maps normalised coords [..., 16, 2] predicted on mirrored images back to the originals.

    Mirroring is exactly x -> -x in the DSNT convention; slot j of the original is the mirrored prediction of
    slot ``FLIP_PERMUTATION[j]`` (the permutation is an involution).
    """
    return coords[..., _FLIP_INDEX, :] * np.asarray([-1.0, 1.0], dtype=np.float32)


def unflip_heatmaps(heatmaps: Any) -> Any:
    """Maps heatmaps [..., 16, H, W] predicted on mirrored images back to the originals (as the paper's code)."""
    return heatmaps[..., _FLIP_INDEX, :, ::-1]
