"""Pictures of predictions: skeletons and per-joint heatmap grids (no display; plots: train/experiments/plots.py).

* `draw_skeleton`: the 15 MPII bones and 16 joints on an image, right side red, left side blue, centre
  (pelvis, thorax, neck, head) green; line width scales with the image.
* `heatmap_grid`: one tile per joint, its heatmap upsampled onto the image (the paper's Fig. 2c / 5),
  the joint's name above it and the predicted location marked.

Coordinates are image pixels, 0-based, with integer values at pixel centres (the convention of
`dsnt_jax.ops.normalized_to_pixel_coordinates`). Images are [H, W, 3] RGB, uint8 or float in [0, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from data.joints import BONES, JOINT_NAMES, NUM_JOINTS

# RGB colours by body side; joint j's side is read off its name ('r_…', 'l_…', else centre).
SIDE_COLOURS: dict[str, tuple[int, int, int]] = {
    "right": (230, 40, 40),
    "left": (40, 110, 240),
    "centre": (40, 200, 60),
}
_OUTLINE = (255, 255, 255)
# cv2 drawing takes fixed-point coordinates with this many fractional bits (sub-pixel placement).
_SHIFT = 4
# Joints further out than this (pixels) are not drawn: cv2 takes int32 fixed-point coordinates, and a
# joint predicted far off the image (a person box outside it) would overflow them.
_MAX_DRAWN_COORD = 1e7


def joint_side(joint: int) -> str:
    """'right', 'left' or 'centre' for an MPII joint index (from `JOINT_NAMES`)."""
    return _side_of_name(JOINT_NAMES[joint])


def _side_of_name(name: str) -> str:
    return "right" if name.startswith("r_") else "left" if name.startswith("l_") else "centre"


def bone_side(bone: tuple[int, int]) -> str:
    """A bone's side: that of its child joint (e.g. r_hip→pelvis is a right bone)."""
    return joint_side(bone[0])


# ----------------------------------------------------------------------------------------------------
# Input checks


def to_uint8_image(image: Any) -> np.ndarray:
    """[H, W, 3] uint8 RGB copy of `image` (uint8, or float in [0, 1], clipped).

    Raises:
      ValueError: wrong shape, or a non-finite float image.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.copy()
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image has NaN or infinite values")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_joints(joints: Any, num_joints: int = NUM_JOINTS) -> np.ndarray:
    joints = np.asarray(joints, dtype=np.float64)
    if joints.shape != (num_joints, 2):
        raise ValueError(f"joints must be [{num_joints}, 2] image-pixel (x, y), got shape {joints.shape}")
    return joints


def _visible(joints: np.ndarray, mask: Any | None) -> np.ndarray:
    """[J] bool: drawn joints are unmasked, finite and within ±`_MAX_DRAWN_COORD` pixels."""
    visible = np.all(np.abs(joints) <= _MAX_DRAWN_COORD, axis=-1)  # False for NaN too
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (joints.shape[0],):
            raise ValueError(f"mask must be [{joints.shape[0]}] (1 = draw the joint), "
                             f"got shape {mask.shape}")
        visible &= mask.astype(bool)
    return visible


def line_thickness(height: int, width: int) -> int:
    """Bone line width in pixels: about 1/110 of the shorter side, at least 1."""
    return max(1, round(min(height, width) / 110))


# ----------------------------------------------------------------------------------------------------
# Skeletons and heatmaps


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return int(np.rint(point[0] * (1 << _SHIFT))), int(np.rint(point[1] * (1 << _SHIFT)))


def draw_skeleton(image: Any, joints: Any, mask: Any | None = None, *,
                  thickness: int | None = None) -> np.ndarray:
    """Draws the MPII skeleton on a copy of an image.

    Bones whose two joints are visible are drawn as anti-aliased lines coloured by side (`SIDE_COLOURS`:
    right red, left blue, centre green); each visible joint is a filled dot of its side's colour with a
    white rim. A joint is visible when its mask entry is non-zero and its coordinates are finite and
    within 10⁷ pixels of the origin (beyond that cv2's fixed-point coordinates overflow).

    Args:
      image: [H, W, 3] RGB, uint8 or float in [0, 1].
      joints: [16, 2] (x, y) image pixels, 0-based, integers at pixel centres; may lie outside the image.
      mask: [16] (bool or 0/1) joints to draw, or None for all.
      thickness: line width in pixels; default `line_thickness(H, W)`.

    Returns:
      uint8 [H, W, 3]; the input is not modified.
    """
    canvas = to_uint8_image(image)
    joints = _check_joints(joints)
    visible = _visible(joints, mask)
    height, width = canvas.shape[:2]
    thickness = line_thickness(height, width) if thickness is None else int(thickness)
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1 pixel, got {thickness}")
    # OpenCV draws in place on a contiguous array; colours are given in the array's channel order (RGB).
    canvas = np.ascontiguousarray(canvas)
    for child, parent in BONES:
        if visible[child] and visible[parent]:
            cv2.line(canvas, _fixed(joints[child]), _fixed(joints[parent]),
                     SIDE_COLOURS[bone_side((child, parent))], thickness, cv2.LINE_AA, _SHIFT)
    radius = thickness + 1
    for j in np.flatnonzero(visible):
        centre = _fixed(joints[j])
        cv2.circle(canvas, centre, (radius + 1) << _SHIFT, _OUTLINE, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(canvas, centre, radius << _SHIFT, SIDE_COLOURS[joint_side(j)], -1, cv2.LINE_AA,
                   _SHIFT)
    return canvas


def overlay_heatmap(image: Any, heatmap: Any, *, cmap: str = "inferno", alpha: float = 0.85,
                    dim: float = 0.55) -> np.ndarray:
    """One heatmap upsampled over an image.

    The map covers the whole image (its outer edges are the image's, the DSNT convention), is
    resized bilinearly with pixel centres aligned, scaled to [0, 1] by its maximum, coloured with
    `cmap` and blended with opacity `alpha`·√value over a dimmed grey copy of the image, so that the
    map stands out and the image still shows where the map is ~0.

    Args:
      image: [H, W, 3] RGB, uint8 or float in [0, 1].
      heatmap: [h, w] non-negative map (e.g. softmax probabilities); any scale.
      cmap: a matplotlib colormap name.
      alpha: opacity at the map's maximum, in [0, 1].
      dim: brightness of the grey background image, in [0, 1] (1: the image in grey, unchanged).

    Returns:
      uint8 [H, W, 3].
    """
    if not 0.0 <= dim <= 1.0:
        raise ValueError(f"dim must be in [0, 1], got {dim}")
    rgb = to_uint8_image(image).astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    canvas = np.repeat(grey[..., None] * dim, 3, axis=-1)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or min(heatmap.shape) < 1:
        raise ValueError(f"heatmap must be [h, w], got shape {heatmap.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = canvas.shape[:2]
    # Raw logits (HM outputs) may be negative: only the positive part is shown.
    heat = np.nan_to_num(np.maximum(heatmap, 0.0), nan=0.0, posinf=0.0)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    colours = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3].astype(np.float32) * 255.0
    # sqrt lifts the faint tails of a peaked probability map into view.
    weight = alpha * np.sqrt(np.clip(heat, 0.0, 1.0))[..., None]
    return np.round(canvas * (1.0 - weight) + colours * weight).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1, or built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def grid_layout(num_tiles: int, tile_height: int, tile_width: int, cols: int = 4, gap: int = 2
                ) -> dict[str, int]:
    """Geometry of `heatmap_grid`: rows, cols, title height and the output's height and width.

    Output height = rows·(title + tile_height) + (rows − 1)·gap and
    width = cols·tile_width + (cols − 1)·gap, with rows = ⌈num_tiles/cols⌉ and
    title = max(12, tile_width // 9) pixels.
    """
    if num_tiles < 1 or cols < 1 or tile_height < 1 or tile_width < 1 or gap < 0:
        raise ValueError(f"bad grid: {num_tiles} tiles of {tile_height}×{tile_width} px, {cols} columns, "
                         f"gap {gap}")
    cols = min(cols, num_tiles)
    rows = math.ceil(num_tiles / cols)
    title = max(12, tile_width // 9)
    return {"rows": rows, "cols": cols, "title": title,
            "height": rows * (title + tile_height) + (rows - 1) * gap,
            "width": cols * tile_width + (cols - 1) * gap}


def heatmap_grid(image: Any, heatmaps: Any, joints: Any | None = None, *,
                 names: Sequence[str] = JOINT_NAMES, cols: int = 4, tile_size: int | None = None,
                 cmap: str = "inferno", alpha: float = 0.85, dim: float = 0.55, gap: int = 2
                 ) -> np.ndarray:
    """A grid with one tile per joint: the image with that joint's heatmap over it (paper Fig. 2c, 5).

    Tiles run row by row in joint order; each has the joint's name in a dark strip above it and, when
    `joints` is given, the predicted location marked by a ring in the joint's side colour. Sizes
    follow `grid_layout`.

    Args:
      image: [H, W, 3] RGB, uint8 or float in [0, 1] (the network input the heatmaps belong to).
      heatmaps: [J, h, w] maps covering the whole image (e.g. a model's 'heatmaps' output for it).
      joints: [J, 2] (x, y) image pixels (0-based, integer = pixel centre) of the predictions, or None.
      names: J tile titles.
      cols: tiles per row.
      tile_size: side of each tile's longer image edge in pixels (default: the image's own size).
      cmap, alpha, dim: see `overlay_heatmap`.
      gap: white pixels between tiles.

    Returns:
      uint8 [grid height, grid width, 3].
    """
    base = to_uint8_image(image)
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be [J, h, w], got shape {heatmaps.shape}")
    num = heatmaps.shape[0]
    if len(names) != num:
        raise ValueError(f"got {num} heatmaps but {len(names)} names")
    if joints is not None:
        joints = _check_joints(joints, num)
    height, width = base.shape[:2]
    scale = 1.0 if tile_size is None else tile_size / max(height, width)
    if scale != 1.0:
        th, tw = max(1, round(height * scale)), max(1, round(width * scale))
        base = cv2.resize(base, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    th, tw = base.shape[:2]
    layout = grid_layout(num, th, tw, cols, gap)
    out = Image.new("RGB", (layout["width"], layout["height"]), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    font = _font(max(8, layout["title"] - 4))
    thick = line_thickness(th, tw)
    for j in range(num):
        r, c = divmod(j, layout["cols"])
        x0, y0 = c * (tw + gap), r * (layout["title"] + th + gap)
        tile = overlay_heatmap(base, heatmaps[j], cmap=cmap, alpha=alpha, dim=dim)
        if joints is not None and np.all(np.isfinite(joints[j])):
            # Pixel-centre coordinates scale about the image's outer edge: (p + 0.5)·s − 0.5.
            # A ring, not a dot, so that the heatmap's peak under it stays visible.
            point = _fixed((joints[j] + 0.5) * np.array([tw / width, th / height]) - 0.5)
            radius = (3 * thick + 3) << _SHIFT
            cv2.circle(tile, point, radius, _OUTLINE, thick + 2, cv2.LINE_AA, _SHIFT)
            cv2.circle(tile, point, radius, SIDE_COLOURS[_side_of_name(names[j])], thick,
                       cv2.LINE_AA, _SHIFT)
        out.paste(Image.fromarray(tile), (x0, y0 + layout["title"]))
        draw.rectangle((x0, y0, x0 + tw - 1, y0 + layout["title"] - 1), fill=(30, 30, 30))
        draw.text((x0 + tw // 2, y0 + layout["title"] // 2), str(names[j]), fill=(255, 255, 255),
                  font=font, anchor="mm")
    return np.asarray(out)


def save_png(path: str | os.PathLike, image: Any) -> str:
    """Writes an [H, W, 3] RGB image (uint8, or float in [0, 1]) as a PNG; creates parent folders.

    Returns:
      The path written, as a string.
    """
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"save_png writes PNG files; give a path ending in .png, got {path!r}")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(to_uint8_image(image)).save(path, format="PNG")
    return path
