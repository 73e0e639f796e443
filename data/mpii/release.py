"""Parser of the MPII Human Pose release annotations (``mpii_human_pose_v1_u12_1.mat``).

The file is read with ``scipy.io.loadmat`` in its default mode (``struct_as_record=True, squeeze_me=False``), so
every struct level is a 2-D array and every leaf a 2-D array in MATLAB's *storage* class (uint8, uint16, int16 or
float64), an empty ``[]`` or a char array. Every value is therefore flattened and cast to float64 before any
arithmetic (uint8 ``x2 - x1`` would wrap around), fields are looked up by name (field sets and orders vary between
images and between point arrays), and empty values mean "absent":

* ``annorect`` may be ``[]``; a person's ``annopoints``, ``objpos`` and ``scale`` may be ``[]``;
* ``point`` holds only the annotated joints, keyed by ``id`` (0..15), in either field order (a repeated id is
  logged and the last point kept, as the reference converters do);
* ``is_visible`` may be logical, ``[]`` (counted visible), char ``'0'``/``'1'``, or absent from the whole point array
  (counted visible).

Coordinates stay in the release's 1-based image frame, untouched (no truncation).

Public API::

    load_release(source) -> list[ImageAnnotation]     # path or binary file object of the .mat
    parse_release(mat) -> list[ImageAnnotation]       # the dict returned by scipy.io.loadmat
    parse_annorect(annorect) -> tuple[Person, ...]    # one image's annorect value
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, BinaryIO

import numpy as np
import scipy.io
import scipy.io.matlab

from data.joints import NUM_JOINTS

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class Person:
    """One ``annorect`` entry.

    Attributes:
      index: 0-based position in the image's annorect.
      center: raw objpos (x, y), float64 [2], or None when objpos is empty/absent.
      scale: raw MPII scale (person height / 200 px), or None when empty/absent.
      head_box: (x1, y1, x2, y2) float64 [4], or None when the head rectangle is absent.
      joints: float64 [16, 2] (x, y) in the 1-based image frame; 0 for joints not annotated.
      annotated: bool [16], joint present in ``annopoints.point``.
      visible: bool [16], ``is_visible`` (empty or absent counts as visible); False where not annotated.
    """

    index: int
    center: np.ndarray | None
    scale: float | None
    head_box: np.ndarray | None
    joints: np.ndarray
    annotated: np.ndarray
    visible: np.ndarray

    @property
    def has_joints(self) -> bool:
        return bool(self.annotated.any())

    @property
    def has_box(self) -> bool:
        """Whether objpos and scale are both present (the person can be cropped)."""
        return self.center is not None and self.scale is not None and self.scale > 0


@dataclasses.dataclass(frozen=True, eq=False)
class ImageAnnotation:
    """One ``annolist`` entry with its ``img_train`` flag.

    Attributes:
      index: 0-based annolist index.
      name: image file name, e.g. '015601864.jpg'.
      is_train: img_train == 1.
      persons: the parsed annorect (empty when annorect is ``[]``).
      single_person: 0-based indices of the image's ``single_person`` entry (may be empty).
    """

    index: int
    name: str
    is_train: bool
    persons: tuple[Person, ...]
    single_person: tuple[int, ...] = ()


def load_release(source: str | os.PathLike[str] | BinaryIO) -> list[ImageAnnotation]:
    """Reads and parses the release .mat.

    Args:
      source: path of ``mpii_human_pose_v1_u12_1.mat`` or a binary file object holding it.

    Returns:
      One ImageAnnotation per annolist entry, in annolist order.
    """
    try:
        mat = scipy.io.loadmat(source)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, IndexError, NotImplementedError, OSError) as e:
        raise ValueError(f"could not read {source!r} as a MATLAB v5 .mat file ({e})") from e
    return parse_release(mat)


def parse_release(mat: dict[str, Any]) -> list[ImageAnnotation]:
    """Parses the ``RELEASE`` variable of a loaded release .mat (``scipy.io.loadmat`` default mode)."""
    if "RELEASE" not in mat:
        names = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"no RELEASE variable in the .mat (variables: {names}); is it the MPII release file?")
    release = _record(mat["RELEASE"])
    if release is None or not {"annolist", "img_train"} <= set(release.dtype.names):
        raise ValueError("RELEASE must be a struct with fields annolist and img_train")
    annolist = _records(release["annolist"])
    img_train = _floats(release["img_train"])
    if img_train.size != len(annolist):
        raise ValueError(f"RELEASE.img_train has {img_train.size} entries but annolist has {len(annolist)}")
    single = _cells(_field(release, "single_person"))
    images = []
    for i, entry in enumerate(annolist):
        try:
            name = _image_name(_field(entry, "image"))
            persons = parse_annorect(_field(entry, "annorect"))
        except ValueError as e:
            raise ValueError(f"RELEASE.annolist({i + 1}): {e}") from e
        sp = single[i] if i < len(single) else np.zeros(0)
        images.append(ImageAnnotation(
            index=i, name=name, is_train=bool(img_train[i] == 1), persons=persons,
            single_person=tuple(int(v) - 1 for v in _floats(sp))))
    return images


def parse_annorect(annorect: Any) -> tuple[Person, ...]:
    """Parses one image's ``annorect`` (a 1xR struct array, or ``[]``) into persons, in annorect order."""
    return tuple(_parse_person(k, rec) for k, rec in enumerate(_records(annorect)))


def _parse_person(k: int, rec: np.void) -> Person:
    objpos = _record(_field(rec, "objpos"))
    center = None
    if objpos is not None:
        x, y = _scalar(_field(objpos, "x")), _scalar(_field(objpos, "y"))
        if x is not None and y is not None:
            center = np.array([x, y])
    box = [_scalar(_field(rec, f)) for f in ("x1", "y1", "x2", "y2")]
    head_box = None if any(v is None for v in box) else np.array(box)

    joints = np.zeros((NUM_JOINTS, 2))
    annotated = np.zeros(NUM_JOINTS, bool)
    visible = np.zeros(NUM_JOINTS, bool)
    annopoints = _record(_field(rec, "annopoints"))
    points = _records(_field(annopoints, "point")) if annopoints is not None else []
    for point in points:
        jid, x, y = (_scalar(_field(point, f)) for f in ("id", "x", "y"))
        if jid is None or x is None or y is None:
            raise ValueError(f"annorect({k + 1}): a point lacks id, x or y")
        if jid != int(jid) or not 0 <= jid < NUM_JOINTS:
            raise ValueError(f"annorect({k + 1}): point id {jid} outside 0..{NUM_JOINTS - 1}")
        j = int(jid)
        if annotated[j]:
            # The reference converters (pose-hg-train, microsoft's JSON) index by id, so the last point wins.
            log.warning("annorect(%d): joint id %d appears twice; keeping the last point", k + 1, j)
        joints[j] = (x, y)
        annotated[j] = True
        visible[j] = _is_visible(_field(point, "is_visible"))
    return Person(index=k, center=center, scale=_scalar(_field(rec, "scale")), head_box=head_box,
                  joints=joints, annotated=annotated, visible=visible)


def _is_visible(value: Any) -> bool:
    """MPII is_visible: logical/number, char '0'/'1', or empty/absent (= visible)."""
    if value is None or np.size(value) == 0:
        return True
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        text = "".join(str(c) for c in arr.ravel()).strip()
        if not text:
            return True
        try:
            return float(text) != 0
        except ValueError:
            raise ValueError(f"is_visible {text!r} is neither '0' nor '1'") from None
    return bool(arr.ravel()[0] != 0)


def _field(rec: Any, name: str) -> Any:
    """The value of a field of one struct record, or None when the record or the field is absent."""
    if rec is None or rec.dtype.names is None or name not in rec.dtype.names:
        return None
    return rec[name]


def _records(value: Any) -> list[np.void]:
    """The elements of a struct array in MATLAB (column-major) order; [] for an empty or non-struct value."""
    if value is None:
        return []
    if isinstance(value, np.void):
        return [value]
    arr = np.asarray(value)
    if arr.dtype.names is None or arr.size == 0:
        return []
    return list(arr.ravel(order="F"))


def _record(value: Any) -> np.void | None:
    """The single element of a 1x1 struct, or None when the value is empty or not a struct."""
    recs = _records(value)
    if len(recs) > 1:
        raise ValueError(f"expected a 1x1 struct, got {len(recs)} elements")
    return recs[0] if recs else None


def _floats(value: Any) -> np.ndarray:
    """All elements of a numeric (or char-number) MATLAB value, flattened column-major, as float64."""
    if value is None:
        return np.zeros(0)
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros(0)
    if arr.dtype.kind in "US":
        text = "".join(str(c) for c in arr.ravel()).strip()
        return np.array([float(text)]) if text else np.zeros(0)
    if arr.dtype.kind == "O":
        return np.concatenate([_floats(v) for v in arr.ravel(order="F")] or [np.zeros(0)])
    return arr.ravel(order="F").astype(np.float64)


def _scalar(value: Any) -> float | None:
    """A MATLAB scalar as float, or None when empty/absent."""
    vals = _floats(value)
    if vals.size == 0:
        return None
    if vals.size > 1:
        raise ValueError(f"expected a scalar, got {vals.size} values")
    return float(vals[0])


def _cells(value: Any) -> list[Any]:
    """The elements of a cell array (object ndarray) in column-major order."""
    if value is None:
        return []
    arr = np.asarray(value)
    if arr.dtype.kind != "O":
        return [arr]
    return list(arr.ravel(order="F"))


def _image_name(image: Any) -> str:
    rec = _record(image)
    name = _field(rec, "name") if rec is not None else None
    if name is None or np.size(name) == 0:
        raise ValueError("image.name is missing")
    return "".join(str(c) for c in np.asarray(name).ravel()).strip()
