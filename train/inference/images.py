"""Reads image files as the uint8 RGB arrays the pose network expects (``train.predict``, notebooks).

    from train.inference.images import read_rgb
    image = read_rgb("photo.jpg")          # uint8 [H, W, 3] RGB, as a viewer displays the photo

Conversions (all silent ones are exact or the usual 8-bit reductions; anything ambiguous is an error):

* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): the array is the image as viewers display
  it, so predicted joints are in the displayed image's frame, not the sensor's.
* 16-bit images (Pillow modes ``I;16*``, and mode ``I`` with values in [0, 65535]): value / 257, rounded,
  so 0 → 0 and 65535 → 255 (the inverse of the usual 8 → 16-bit widening v · 257). 16-bit RGB(A) PNGs and
  TIFFs reach us already reduced by Pillow to their high byte, which is the same up to rounding.
* 32-bit float images (mode ``F``, e.g. a float TIFF): values in [0, 1] × 255, rounded; values up to
  `FLOAT_TOLERANCE` outside [0, 1] are clipped, a wider range or NaN/inf is an error naming the range found.
* Grayscale, palette, CMYK, ... become RGB; transparency is composited over black, the colour of the
  padding the crop adds outside the image. Of a multi-frame file (GIF, multi-page TIFF) the first frame.
* Images over `max_pixels` are refused from the file header, before anything is decoded.

Every problem is an `ImageError` (a ValueError) or FileNotFoundError whose message names the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps

# 150 megapixels: above any current camera's photos (108 MP phones), while an RGB copy stays < 0.5 GB.
DEFAULT_MAX_PIXELS = 150_000_000
# How far outside [0, 1] a float image may stray (rounding in whatever wrote it) before it is an error.
FLOAT_TOLERANCE = 0.01
_UINT16_MAX = 65535
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """An image file that cannot be used as it is; the message names the file and what to do."""


@contextlib.contextmanager
def _own_size_limit() -> Iterator[None]:
    """Turns off Pillow's decompression-bomb check while opening: `read_rgb` applies its own limit.

    Pillow only warns between its limit and twice that and raises above, with no way to pass a limit per
    call; the module-level setting is restored at once.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _open(path: str) -> Image.Image:
    if os.path.isdir(path):
        raise ImageError(f"{path} is a directory, not an image file")
    try:
        with _own_size_limit():
            return Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot read {path} as an image ({err}); Pillow cannot decode it (multi-channel "
                         "float TIFFs, for one): save it as an 8- or 16-bit PNG, JPEG or TIFF") from None


def _check_size(im: Image.Image, path: str, max_pixels: int) -> None:
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            f"{path} is {width}×{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g} megapixels (a guard against decompression bombs); to read it anyway, raise "
            f"the limit (--max-megapixels {math.ceil(width * height / 1e6)}); it needs about "
            f"{3 * width * height / 1e9:.1f} GB as RGB")


def _uint16_to_uint8(values: np.ndarray, path: str, mode: str) -> np.ndarray:
    """[H, W] integers in [0, 65535] → uint8 by /257 (65535 → 255), rounded."""
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > _UINT16_MAX:
        raise ImageError(f"{path}: integer image (Pillow mode {mode}) with values in [{lo}, {hi}]; expected "
                         f"16-bit values in [0, {_UINT16_MAX}]: save it as an 8- or 16-bit image")
    # (v + 128) // 257 is round(v / 257) in integers.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """Float image values in [0, 1] (± `FLOAT_TOLERANCE`, clipped) → uint8 by ×255, rounded.

    Raises:
      ImageError: NaN/inf values, or values further outside [0, 1]; the message names `what` and the range.
    """
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)):
        raise ImageError(f"{what}: float image with NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < -FLOAT_TOLERANCE or hi > 1.0 + FLOAT_TOLERANCE:
        raise ImageError(f"{what}: float image with values in [{lo:g}, {hi:g}]; expected [0, 1] (0 = black, "
                         "1 = white): rescale it to [0, 1] or save it as an 8- or 16-bit image")
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _over_black(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 4] → [H, W, 3], composited over black (rgb · alpha / 255, rounded)."""
    rgb, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _to_rgb(im: Image.Image, path: str) -> np.ndarray:
    """A decoded Pillow image of any mode → uint8 [H, W, 3] RGB (see the module docstring)."""
    if im.mode in _MODES_16BIT or im.mode == "I":
        gray = _uint16_to_uint8(np.asarray(im), path, im.mode)
    elif im.mode == "F":
        gray = float_to_uint8(np.asarray(im), path)
    elif im.has_transparency_data:
        return _over_black(np.asarray(im.convert("RGBA")))
    else:
        return np.asarray(im.convert("RGB"))
    return np.repeat(gray[..., None], 3, axis=-1)


def read_rgb(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Reads an image file as the network's input type, oriented as displayed (see the module docstring).

    Args:
      path: any format Pillow decodes (JPEG, PNG, TIFF, BMP, WebP, GIF, ...).
      max_pixels: refuse images with more pixels than this (checked before decoding).

    Returns:
      uint8 [H, W, 3] RGB, H × W as displayed (after the EXIF orientation).

    Raises:
      FileNotFoundError: no such file.
      ImageError: unreadable, too large, or of a value range that cannot be mapped to 8 bits.
    """
    path = os.fspath(path)
    with _open(path) as im:
        _check_size(im, path, max_pixels)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
        except (OSError, SyntaxError, ValueError, EOFError) as err:  # truncated or corrupt image data
            raise ImageError(f"cannot decode {path} ({err}); is the file complete?") from None
        try:
            return _to_rgb(im, path)
        except ValueError as err:
            if isinstance(err, ImageError):
                raise
            raise ImageError(f"cannot convert {path} (Pillow mode {im.mode}) to RGB: {err}") from None


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """An in-memory RGB image [H, W, 3] → uint8: uint8 as is, uint16 / 257, float [0, 1] × 255.

    Raises:
      ValueError: another shape or dtype, or a float image outside [0, 1] (see `float_to_uint8`).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return float_to_uint8(image, "image")
    raise ValueError(f"expected a uint8, uint16 or float [0, 1] RGB image, got dtype {image.dtype}")
