"""Per-person record schema shared by every dataset in ``data/`` (MPII and synthetic), and the canvas crop.

The schema is documented feature by feature in docs/records.md.

Public API::

    features(canvas_size: int) -> tfds.features.FeaturesDict
    canvas_transform(center, scale, canvas_size: int) -> np.ndarray            # float64 [2, 3] canvas_to_image
    person_box(center, scale) -> np.ndarray                                  # float64 [4] (x1, y1, x2, y2)
    render_canvas(image, canvas_to_image, canvas_size: int) -> np.ndarray    # uint8 [C, C, 3]
    image_to_canvas(points, canvas_to_image) -> np.ndarray                   # [..., 2] image frame -> canvas
    canvas_to_image_points(points, canvas_to_image) -> np.ndarray            # [..., 2] canvas -> image frame
    encode_jpeg(image, quality: int = JPEG_QUALITY) -> bytes                 # RGB uint8 [H, W, 3] -> JPEG
    decode_image(value) -> np.ndarray                                        # JPEG bytes or array -> uint8 [H, W, 3]
    head_size(head_box) -> float                                             # 0.6 * ||(x2 - x1, y2 - y1)||
    make_record(*, canvas, joints, annotated, visible, head_box, center, scale, canvas_to_image,
                image_size, image_name, annolist_index, person_index) -> dict
    tfds_shuffle_without_tensorflow() -> ContextManager   # wrap download_and_prepare of any split > 1 GB

Coordinate frames (docs/records.md §3 and docs/conventions.md §4):
* image frame: MPII's 1-based frame; the centre of numpy pixel [row r, col c] is (x, y) = (c + 1, r + 1).
* canvas frame: 0-based pixel centres; the centre of canvas pixel [row r, col c] is (u, v) = (c, r).
* ``canvas_to_image`` is the affine A [2, 3] with [x, y]^T = A [u, v, 1]^T.

Canvas: the person box (centre (cx, cy + 15 s), side S = 250 s, from the raw MPII objpos (cx, cy) and scale s)
plus a margin S / 4 on every side, i.e. side 1.5 S, resampled to ``canvas_size`` pixels. The box covers canvas
pixels [C/6, 5C/6) on both axes. Pixels outside the source image are black.

Storage decision (measured with tensorflow-datasets 4.9.10 and no TensorFlow installed): the ``image`` feature is
``tfds.features.Image(shape=(C, C, 3), encoding_format='jpeg')`` and the builders hand it **pre-encoded JPEG
bytes** (``encode_jpeg``, OpenCV, quality 95). Given bytes, tfds stores them untouched and never calls TensorFlow
(only NumPy input goes through ``tf.image.encode_*``), so ``download_and_prepare(file_format='array_record')``
works without TF. Reading with ``tfds.data_source(...)`` / ``builder.as_data_source()`` returns the image
**decoded**, RGB uint8 [C, C, 3] (tfds decodes with OpenCV, or PIL). Other features as read back by a data source:
arrays are NumPy arrays of the dtypes in ``features``; scalar features (``head_size``, ``scale``, ``annolist_index``,
``person_index``) come back as Python ``float``/``int``; ``image_name`` comes back as ``bytes`` (UTF-8).

One more TensorFlow dependency hides in tfds 4.9.10's writer: a split whose serialized examples exceed 1 GB
(``tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE``; MPII's train split is larger) is shuffled through
temporary bucket files opened with ``tf.io.gfile``, which fails without TensorFlow. Builders therefore run
``download_and_prepare`` inside ``tfds_shuffle_without_tensorflow()``, which gives that module a local-file
stand-in for ``tf.io.gfile`` while it is active (and does nothing when TensorFlow is installed).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import math
import os
import types
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from data.joints import NUM_JOINTS

JPEG_QUALITY = 95
# Person box side in pixels per unit of MPII scale (1.25 * 200 px) and its vertical shift per unit scale.
BOX_SIDE_PER_SCALE = 250.0
BOX_DY_PER_SCALE = 15.0
# Canvas side / box side: a margin of a quarter box side on each side.
CANVAS_PER_BOX = 1.5


def features(canvas_size: int) -> tfds.features.FeaturesDict:
    """The tfds features of one person record (names and dtypes fixed by the record schema).

    Args:
      canvas_size: C, the side of the stored canvas in pixels.

    Returns:
      A FeaturesDict whose ``image`` takes JPEG bytes (see the module docstring) and decodes to uint8 [C, C, 3].
    """
    if canvas_size <= 0 or canvas_size % 6:
        # C/6 must be whole so that the person box sits on pixel boundaries of the canvas.
        raise ValueError(f"canvas_size must be a positive multiple of 6, got {canvas_size}")
    t = tfds.features.Tensor
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(
            shape=(canvas_size, canvas_size, 3), encoding_format="jpeg", doc="canvas crop, RGB uint8 [C, C, 3]"),
        "joints": t(shape=(NUM_JOINTS, 2), dtype=np.float32,
                    doc="(x, y) in the 1-based image frame; 0 where not annotated"),
        "annotated": t(shape=(NUM_JOINTS,), dtype=np.bool_, doc="joint present in the annotation"),
        "visible": t(shape=(NUM_JOINTS,), dtype=np.bool_, doc="MPII is_visible (empty counts as visible)"),
        "head_box": t(shape=(4,), dtype=np.float32, doc="(x1, y1, x2, y2), image frame"),
        "head_size": t(shape=(), dtype=np.float32, doc="0.6 * ||(x2 - x1, y2 - y1)||"),
        "center": t(shape=(2,), dtype=np.float32, doc="raw MPII objpos (x, y)"),
        "scale": t(shape=(), dtype=np.float32, doc="raw MPII scale (person height / 200 px)"),
        "canvas_to_image": t(shape=(2, 3), dtype=np.float32,
                             doc="affine A: [x, y] = A [u, v, 1], (u, v) 0-based canvas pixel centres"),
        "image_size": t(shape=(2,), dtype=np.int32, doc="(width, height) of the original image"),
        "image_name": tfds.features.Text(doc="file name of the original image"),
        "annolist_index": t(shape=(), dtype=np.int32, doc="0-based annolist index"),
        "person_index": t(shape=(), dtype=np.int32, doc="0-based annorect index"),
    })


def person_box(center: Any, scale: float) -> np.ndarray:
    """The square person box in the image frame.

    Args:
      center: raw MPII objpos (cx, cy), image frame.
      scale: raw MPII scale s.

    Returns:
      float64 [4] (x1, y1, x2, y2): centre (cx, cy + 15 s), side 250 s (continuous coordinates).
    """
    cx, cy, s = _center_scale(center, scale)
    half = 0.5 * BOX_SIDE_PER_SCALE * s
    by = cy + BOX_DY_PER_SCALE * s
    return np.array([cx - half, by - half, cx + half, by + half])


def canvas_transform(center: Any, scale: float, canvas_size: int) -> np.ndarray:
    """The canvas-to-image affine of a person.

    Args:
      center: raw MPII objpos (cx, cy), image frame.
      scale: raw MPII scale s (> 0).
      canvas_size: C, canvas side in pixels.

    Returns:
      float64 [2, 3] A with [x, y]^T = A [u, v, 1]^T: the canvas edge u = -0.5 maps to the left edge of the
      person box minus the margin, u = C - 0.5 to its right edge plus the margin (same for v, y).
    """
    if canvas_size <= 0:
        raise ValueError(f"canvas_size must be positive, got {canvas_size}")
    x1, y1, x2, _ = person_box(center, scale)
    side = x2 - x1
    k = CANVAS_PER_BOX * side / canvas_size  # image-frame units per canvas pixel
    left = x1 - 0.25 * side
    top = y1 - 0.25 * side
    return np.array([[k, 0.0, left + 0.5 * k], [0.0, k, top + 0.5 * k]])


def canvas_to_image_points(points: Any, canvas_to_image: Any) -> np.ndarray:
    """Maps canvas points (u, v) [..., 2] to the image frame [..., 2] (float64)."""
    a = np.asarray(canvas_to_image, np.float64)
    p = np.asarray(points, np.float64)
    return p @ a[:, :2].T + a[:, 2]


def image_to_canvas(points: Any, canvas_to_image: Any) -> np.ndarray:
    """Maps image-frame points (x, y) [..., 2] into the canvas frame [..., 2] (float64); inverse of the above."""
    a = np.asarray(canvas_to_image, np.float64)
    p = np.asarray(points, np.float64)
    return (p - a[:, 2]) @ np.linalg.inv(a[:, :2]).T


def render_canvas(image: np.ndarray, canvas_to_image: Any, canvas_size: int) -> np.ndarray:
    """Resamples the canvas from an image so that canvas pixel centre (u, v) shows image point A [u, v, 1].

    When the canvas shrinks the image (more than one image pixel per canvas pixel), the needed part of the image
    is first area-averaged (OpenCV INTER_AREA, exact pixel areas) to about the canvas resolution and the affine
    adjusted to the exact per-axis factor used, then warped bilinearly (cv2.warpAffine): antialiased without
    moving anything. OpenCV's bilinear warp quantises source positions to 1/32 pixel. Pixels outside the image
    are black.

    Args:
      image: RGB uint8 [H, W, 3] (numpy pixel [r, c] centred at image-frame point (c + 1, r + 1)).
      canvas_to_image: [2, 3] affine from ``canvas_transform`` (any invertible affine is accepted).
      canvas_size: C.

    Returns:
      uint8 [C, C, 3].
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    a = np.asarray(canvas_to_image, np.float64)
    if a.shape != (2, 3):
        raise ValueError(f"canvas_to_image must be [2, 3], got {a.shape}")
    # Source coordinates in OpenCV's convention (0-based pixel centres) = image frame - 1.
    m = a.copy()
    m[:, 2] -= 1.0
    height, width = image.shape[:2]

    # Only the part of the image the canvas sees is needed; cropping first keeps the cost per person small.
    edge = np.array([-0.5, canvas_size - 0.5])
    corners = np.array([[u, v, 1.0] for u in edge for v in edge]) @ m.T
    shrink = min(np.linalg.norm(m[:, 0]), np.linalg.norm(m[:, 1]))  # image pixels per canvas pixel
    pad = int(math.ceil(shrink)) + 2
    x0 = max(int(math.floor(corners[:, 0].min())) - pad, 0)
    y0 = max(int(math.floor(corners[:, 1].min())) - pad, 0)
    x1 = min(int(math.ceil(corners[:, 0].max())) + pad, width)
    y1 = min(int(math.ceil(corners[:, 1].max())) + pad, height)
    if x1 <= x0 or y1 <= y0:
        return np.zeros((canvas_size, canvas_size, 3), np.uint8)
    src = image[y0:y1, x0:x1]
    m[:, 2] -= (x0, y0)

    if shrink > 1.0:
        h, w = src.shape[:2]
        small_w, small_h = max(1, round(w / shrink)), max(1, round(h / shrink))
        src = cv2.resize(src, (small_w, small_h), interpolation=cv2.INTER_AREA)
        # INTER_AREA's pixel j covers old pixel edges [j f, (j + 1) f): old centre coordinate (j + 0.5) f - 0.5.
        f = np.array([w / small_w, h / small_h])
        m = np.concatenate([m[:, :2] / f[:, None], ((m[:, 2] + 0.5) / f - 0.5)[:, None]], axis=1)
    return cv2.warpAffine(
        np.ascontiguousarray(src), m, (canvas_size, canvas_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Encodes an RGB uint8 [H, W, 3] image as JPEG bytes (OpenCV, no TensorFlow)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3], got {image.dtype} {image.shape}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                                  [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(value: Any) -> np.ndarray:
    """Returns an RGB uint8 [H, W, 3] image from encoded bytes (JPEG/PNG) or an already decoded array."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        arr = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
        if arr is None:
            raise ValueError(f"could not decode {len(value)} bytes as an image")
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    arr = np.asarray(value)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected image bytes or RGB uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    return arr


def head_size(head_box: Any) -> float:
    """MPII head size 0.6 * ||(x2 - x1, y2 - y1)|| of a head box (x1, y1, x2, y2), computed in float64."""
    x1, y1, x2, y2 = np.asarray(head_box, np.float64).reshape(4)
    return 0.6 * math.hypot(x2 - x1, y2 - y1)


def make_record(
    *,
    canvas: np.ndarray | bytes,
    joints: Any,
    annotated: Any,
    visible: Any,
    head_box: Any,
    center: Any,
    scale: float,
    canvas_to_image: Any,
    image_size: tuple[int, int],
    image_name: str,
    annolist_index: int,
    person_index: int,
) -> dict[str, Any]:
    """Builds one example in the record schema, ready for ``features(C).encode_example``.

    Args:
      canvas: the canvas, RGB uint8 [C, C, 3] (JPEG-encoded here) or JPEG bytes.
      joints: [16, 2] (x, y) image frame; entries of unannotated joints are stored as 0.
      annotated: bool [16].
      visible: bool [16]; forced False where not annotated.
      head_box: [4] (x1, y1, x2, y2) image frame.
      center: raw objpos (x, y); scale: raw MPII scale.
      canvas_to_image: [2, 3] affine (``canvas_transform``).
      image_size: (width, height) of the original image.
      image_name: original file name; annolist_index, person_index: 0-based release indices.

    Returns:
      dict with the schema's keys; numeric values as NumPy arrays of the schema's dtypes, ``image`` as bytes.
    """
    annotated = _shaped(annotated, (NUM_JOINTS,), np.bool_, "annotated")
    joints = _shaped(joints, (NUM_JOINTS, 2), np.float32, "joints")
    visible = _shaped(visible, (NUM_JOINTS,), np.bool_, "visible") & annotated
    head_box = _shaped(head_box, (4,), np.float32, "head_box")
    if not np.all(np.isfinite(joints[annotated])) or not np.all(np.isfinite(head_box)):
        raise ValueError(f"{image_name} person {person_index}: non-finite joints or head box")
    joints = np.where(annotated[:, None], joints, np.float32(0))
    image = canvas if isinstance(canvas, bytes) else encode_jpeg(canvas)
    cx, cy, s = _center_scale(center, scale)
    return {
        "image": image,
        "joints": joints,
        "annotated": annotated,
        "visible": visible,
        "head_box": head_box,
        "head_size": np.float32(head_size(head_box)),
        "center": np.array([cx, cy], np.float32),
        "scale": np.float32(s),
        "canvas_to_image": _shaped(canvas_to_image, (2, 3), np.float32, "canvas_to_image"),
        "image_size": _shaped(image_size, (2,), np.int32, "image_size"),
        "image_name": str(image_name),
        "annolist_index": np.int32(annolist_index),
        "person_index": np.int32(person_index),
    }


def _center_scale(center: Any, scale: float) -> tuple[float, float, float]:
    c = np.asarray(center, np.float64).reshape(-1)
    s = float(np.asarray(scale, np.float64).reshape(-1)[0]) if np.size(scale) == 1 else math.nan
    if c.shape != (2,) or not np.all(np.isfinite(c)):
        raise ValueError(f"center must be a finite (x, y) pair, got {center!r}")
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(c[0]), float(c[1]), s


def _shaped(value: Any, shape: tuple[int, ...], dtype: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr.astype(dtype)


@contextlib.contextmanager
def tfds_shuffle_without_tensorflow() -> Iterator[None]:
    """Lets tfds spill the shuffle buffer of a large split (> 1 GB) to local files without TensorFlow.

    tfds 4.9.10's ``core/shuffle.py`` opens its temporary bucket files with ``tf.io.gfile``; while this context is
    active, and only when TensorFlow is not installed, that module's ``tf`` is a stand-in backed by ``open``
    (local paths only). Use it around ``builder.download_and_prepare(...)``.
    """
    from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top

    if importlib.util.find_spec("tensorflow") is not None or not hasattr(shuffle, "tf"):
        yield
        return
    saved = shuffle.tf
    shuffle.tf = _LOCAL_TF
    try:
        yield
    finally:
        shuffle.tf = saved


class _NeverRaised(Exception):
    """Stands in for tf.errors.ResourceExhaustedError, which local files never raise."""


def _open_local(path: Any, mode: str = "r") -> Any:
    try:
        return open(path, mode)
    except OSError as e:
        # The shuffler keeps 1000 bucket files open; raise the soft limit once, as tfds does with TensorFlow.
        if e.errno != errno.EMFILE:
            raise
        import resource  # pylint: disable=g-import-not-at-top

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
        return open(path, mode)


_LOCAL_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(gfile=types.SimpleNamespace(
        GFile=_open_local, exists=os.path.exists, remove=os.remove,
        makedirs=lambda path: os.makedirs(path, exist_ok=True))),
    errors=types.SimpleNamespace(ResourceExhaustedError=_NeverRaised),
)
