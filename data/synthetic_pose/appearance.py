"""Looks of the synthetic scenes: clothing/skin/hair colours, cloth patterns, cluttered backgrounds, noise.

numpy + OpenCV only. All randomness comes from the ``np.random.Generator`` passed in; OpenCV is only used on
uint8 images (its fixed-point paths), so the same generator state gives the same pixels.
"""

from __future__ import annotations

import colorsys
import functools

import cv2
import numpy as np

# Skin tones (RGB), light to dark.
_SKIN = np.array([
    [255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 94],
    [161, 102, 70], [112, 72, 50], [80, 52, 38],
], np.float64)
_HAIR = np.array([
    [20, 15, 12], [45, 30, 20], [90, 60, 35], [150, 110, 60], [205, 175, 115], [135, 135, 135], [150, 60, 30],
], np.float64)

# Cloth pattern kinds (see ``cloth_pattern``).
PLAIN, STRIPES, CHECKS, BLOTCHES = range(4)


def random_color(rng: np.random.Generator, sat: tuple[float, float] = (0.15, 0.9),
                 val: tuple[float, float] = (0.2, 0.95)) -> np.ndarray:
    """An RGB colour (float64 [3] in 0..255) with uniform hue and the given saturation/value ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b]) * 255.0


def skin_color(rng: np.random.Generator) -> np.ndarray:
    """A skin tone (RGB float64 [3], 0..255)."""
    return np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.uniform(-12, 12, 3), 0, 255)


def sample_appearance(rng: np.random.Generator) -> dict:
    """Colours and clothing of one person.

    Returns:
        dict with RGB float64 [3] colours ``skin``, ``hair``, ``shirt``, ``shirt2``, ``pants``, ``pants2``,
        ``shoes``; cloth styles ``sleeves`` ('long' | 'short' | 'none'), ``shorts`` (bool), ``neckline``
        ('v' | 'round' | 'high'), ``placket`` (bool), ``bald`` (bool); pattern kinds and parameters
        ``shirt_pattern``, ``pants_pattern`` (see ``cloth_pattern``).
    """
    skin = skin_color(rng)
    hair = _HAIR[rng.integers(len(_HAIR))] + rng.uniform(-10, 10, 3)
    return {
        "skin": skin,
        "hair": np.clip(hair, 0, 255),
        "shirt": random_color(rng),
        "shirt2": random_color(rng),
        "pants": random_color(rng, val=(0.1, 0.8)),
        "pants2": random_color(rng, val=(0.1, 0.8)),
        "shoes": random_color(rng, sat=(0.0, 0.6), val=(0.05, 0.5)),
        "sleeves": ("long", "short", "none")[rng.choice(3, p=[0.45, 0.4, 0.15])],
        "shorts": bool(rng.random() < 0.25),
        "neckline": ("v", "round", "high")[rng.choice(3, p=[0.45, 0.35, 0.2])],
        "placket": bool(rng.random() < 0.5),
        "bald": bool(rng.random() < 0.08),
        "shirt_pattern": _pattern_params(rng, [0.45, 0.3, 0.15, 0.1]),
        "pants_pattern": _pattern_params(rng, [0.75, 0.1, 0.05, 0.1]),
    }


def _pattern_params(rng: np.random.Generator, p: list[float]) -> tuple:
    kind = int(rng.choice(4, p=p))
    return kind, rng.uniform(0, np.pi), rng.uniform(0.06, 0.25), int(rng.integers(1 << 30))


def cloth_pattern(params: tuple, shape: tuple[int, int], origin: tuple[int, int], unit: float) -> np.ndarray:
    """A two-tone pattern mask over an image window: True where the second colour shows.

    Args:
        params: (kind, angle in radians, period in body units, seed) from ``sample_appearance``.
        shape: (rows, cols) of the window; origin: its (row, col) in the image.
        unit: pixels per body unit (the pattern scales with the person).

    Returns:
        bool [rows, cols].
    """
    kind, angle, period, seed = params
    rows, cols = shape
    if kind == PLAIN or rows == 0 or cols == 0:
        return np.zeros(shape, bool)
    step = max(period * unit, 2.0)
    y = np.arange(origin[0], origin[0] + rows, dtype=np.float64)[:, None]
    x = np.arange(origin[1], origin[1] + cols, dtype=np.float64)[None, :]
    if kind == STRIPES:
        return (np.floor((x * np.cos(angle) + y * np.sin(angle)) / step) % 3) == 0
    if kind == CHECKS:
        return ((np.floor(x / step) + np.floor(y / step)) % 2) == 0
    # Blotches: a coarse random field (fixed by the pattern's seed), thresholded.
    grid = np.random.default_rng(seed).integers(0, 256, (rows // int(step) + 2, cols // int(step) + 2), np.uint8)
    field = cv2.resize(grid, (grid.shape[1] * int(step), grid.shape[0] * int(step)), interpolation=cv2.INTER_LINEAR)
    return field[:rows, :cols] > 150


_NOISE_LEVELS = 5  # noise amplitudes 0, 2, 4, 6, 8 grey levels


@functools.lru_cache(maxsize=_NOISE_LEVELS)
def _noise_tiles(level: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed 512x512x3 uniform integer noise of amplitude 2 * level, split into (positive, negative) uint8 parts."""
    amp = 2 * level
    tile = np.random.default_rng(20180123 + level).integers(-amp, amp + 1, (512, 512, 3), dtype=np.int16)
    pos, neg = np.maximum(tile, 0).astype(np.uint8), np.maximum(-tile, 0).astype(np.uint8)
    pos.setflags(write=False)
    neg.setflags(write=False)
    return pos, neg


def add_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Adds sensor-like noise: a random window of a fixed noise tile of random amplitude (0-8 grey levels).

    Saturating uint8 arithmetic (exact), so the result does not depend on the machine.
    """
    h, w = image.shape[:2]
    level = int(rng.integers(_NOISE_LEVELS))
    r0, c0 = int(rng.integers(max(512 - h, 0) + 1)), int(rng.integers(max(512 - w, 0) + 1))
    if level == 0:
        return image
    pos, neg = _noise_tiles(level)
    if h > 512 or w > 512:
        reps = (-(-h // 512), -(-w // 512), 1)
        pos, neg = np.tile(pos, reps), np.tile(neg, reps)
    p = np.ascontiguousarray(pos[r0:r0 + h, c0:c0 + w])
    n = np.ascontiguousarray(neg[r0:r0 + h, c0:c0 + w])
    return cv2.subtract(cv2.add(image, p), n)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int, top: int = 256) -> np.ndarray:
    """A smooth random uint8 field [h, w, channels] in [0, top) (``cells`` x ``cells`` grid, bilinear upsampling)."""
    grid = rng.integers(0, top, (cells, cells, channels), dtype=np.uint8)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR_EXACT)  # bit-exact fixed point
    return field.reshape(h, w, channels)


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def _color(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(round(v)))) for v in c)


def draw_clutter_shape(rng: np.random.Generator, image: np.ndarray, color: np.ndarray, size: float,
                       center: np.ndarray | None = None, mask: np.ndarray | None = None, mask_value: int = 255) -> None:
    """Draws one random shape (rectangle, ellipse, polygon, thick line or ring) of about ``size`` px in place.

    Args:
        rng: the generator; image: RGB uint8 [H, W, 3], drawn on; color: RGB [3]; size: pixels.
        center: (x, y) px of the shape, or None for anywhere in and around the image.
        mask: optional uint8 [H, W] on which the same shape is drawn with ``mask_value`` (no antialiasing).
    """
    h, w = image.shape[:2]
    c = np.array([rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h]) if center is None else center
    targets = [(image, _color(color), cv2.LINE_AA)]
    if mask is not None:
        targets.append((mask, int(mask_value), cv2.LINE_8))
    kind = rng.integers(5)
    if kind == 0:
        d = rng.uniform(0.2, 1.0, 2) * size
        angle = rng.uniform(0, np.pi) if rng.random() < 0.5 else 0.0
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = np.round((c + (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * d) @ rot.T) * 16).astype(np.int32)
        for img, col, line in targets:
            cv2.fillConvexPoly(img, corners, col, line, 4)
    elif kind == 1:
        axes = (int(rng.uniform(0.1, 0.6) * size * 16), int(rng.uniform(0.1, 0.6) * size * 16))
        angle = float(rng.uniform(0, 180))
        for img, col, line in targets:
            cv2.ellipse(img, _pt(c), axes, angle, 0, 360, col, -1, line, 4)
    elif kind == 2:
        n = int(rng.integers(3, 7))
        pts = c + rng.uniform(-0.6, 0.6, (n, 2)) * size
        hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
        for img, col, line in targets:
            cv2.fillConvexPoly(img, hull, col, line, 4)
    elif kind == 3:
        d = rng.uniform(-1, 1, 2) * size * 1.5
        thick = int(rng.integers(1, max(2, int(size / 6))))
        for img, col, line in targets:
            cv2.line(img, _pt(c - d), _pt(c + d), col, thick, line, 4)
    else:
        thick = int(rng.integers(1, max(2, int(size / 8))))
        for img, col, line in targets:
            cv2.ellipse(img, _pt(c), (int(0.4 * size * 16),) * 2, 0, 0, 360, col, thick, line, 4)


def render_background(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    """A cluttered textured background, RGB uint8 [h, w, 3].

    Layers: a smooth colour gradient, an optional floor of another colour below a horizon, a multiplicative
    grain, 10-40 random shapes in random colours, and a light blur.

    Args:
        rng: the generator; h, w: image size; unit: pixels per body unit (sets the size of the clutter).
    """
    image = _smooth_field(rng, h, w, int(rng.integers(2, 4)), 3)
    if rng.random() < 0.5:
        horizon = int(rng.uniform(0.3, 0.9) * h)
        image[horizon:] = _smooth_field(rng, h - horizon, w, 2, 3)
    # Darkening grain at a random scale (fine sand ... coarse blotches).
    grain = _smooth_field(rng, h, w, int(rng.integers(4, 48)), 1, int(rng.integers(30, 110)))
    image = cv2.subtract(image, cv2.merge([grain, grain, grain]))
    for _ in range(int(rng.integers(10, 40))):
        size = unit * rng.uniform(0.3, 4.0)
        draw_clutter_shape(rng, image, random_color(rng, sat=(0.0, 0.9), val=(0.1, 1.0)), size)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (3, 3), 0)
    return image
