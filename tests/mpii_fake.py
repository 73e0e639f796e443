"""Writes a small fake MPII release in the real formats, for tests.

The .mat follows the release layout (``RELEASE`` 1x1 struct: annolist, img_train, version, single_person, act,
video_list) with the storage quirks of the real file: numbers in MATLAB's compact class (uint8 / uint16 / int16 /
float64), ``[]`` as 0x0 double, logical / empty / char ``is_visible``, a point array without ``is_visible``, both
point field orders, ``annorect = []``, a person whose annopoints/scale/objpos are ``[]``, extra char fields
(part_occ*, head_r*, torso_r*), and the real values of 015601864.jpg person 0.

Images are small JPEGs: a uniform dark background with one bright square dot centred on one joint (``dot``), so
that tests can find the joint in a rendered canvas. Images with ``size=None`` get no file (missing images).

``write_fake_release`` writes that small release (its validation persons must be injected: ``DEFAULT_VALIDATION``);
``write_complete_release`` writes a release-sized annolist that the shipped validation list fits, so that
``python -m data.prepare mpii --manual-dir DIR`` builds it with default flags (a few images only).
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import scipy.io

MAT_NAME = "mpii_human_pose_v1_u12_1.mat"
# The real MPII validation files (annotations and published predictions, no images) in ../shared beside the
# checkout, for tests that check against real data; skipped where a checkout has none.
MPII_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mpii-val"
needs_mpii_val = pytest.mark.skipif(not MPII_VAL.is_dir(), reason=f"real MPII validation files not found at {MPII_VAL}")
ZIP_NAME = "mpii_human_pose_v1_u12_2.zip"
ZIP_MEMBER = "mpii_human_pose_v1_u12_2/" + MAT_NAME
TAR_NAME = "mpii_human_pose_v1.tar.gz"
BACKGROUND = 50
DOT_HALF = 2  # the dot is a (2 * DOT_HALF + 1)-pixel square

Vis = Any  # True/False (logical), None (empty []), '0'/'1' (char)


@dataclasses.dataclass
class FakePerson:
    objpos: tuple[int, int] | None
    scale: float | None
    head: tuple[int, int, int, int] | None = None
    points: list[tuple[int, float, float, Vis]] | None = None  # (id, x, y, is_visible) in stored order
    id_first: bool = False  # point field order (id, x, y, is_visible) instead of (x, y, id, is_visible)
    no_is_visible: bool = False  # the whole point array lacks the is_visible field

    def joints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Expected (joints float64 [16, 2], annotated bool [16], visible bool [16])."""
        joints, ann, vis = np.zeros((16, 2)), np.zeros(16, bool), np.zeros(16, bool)
        for jid, x, y, v in self.points or []:
            joints[jid] = (x, y)
            ann[jid] = True
            vis[jid] = True if (self.no_is_visible or v is None) else bool(int(v))
        return joints, ann, vis


@dataclasses.dataclass
class FakeImage:
    name: str
    train: bool
    persons: list[FakePerson] | None  # None: annorect = []
    size: tuple[int, int] | None = (160, 120)  # (width, height); None: no image file
    extras: bool = False  # add part_occ*/head_r*/torso_r* char fields to the annorect
    dot: tuple[int, int] | None = None  # (person, joint id) whose position carries the bright dot
    single_person: tuple[int, ...] = ()  # 1-based, as in the release


def _real_person() -> FakePerson:
    # 015601864.jpg person 0 (docs/records.md §8), points in stored order.
    ids = [6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]
    xyv = [(610, 187, 0), (647, 176, 1), (637.0201, 189.8183, None), (695.9799, 108.1817, None),
           (620, 394, 1), (616, 269, 1), (573, 185, 1), (647, 188, 0), (661, 221, 1), (656, 231, 1),
           (606, 217, 1), (553, 161, 1), (601, 167, 1), (692, 185, 1), (693, 240, 1), (688, 313, 1)]
    points = [(j, x, y, None if v is None else bool(v)) for j, (x, y, v) in zip(ids, xyv)]
    return FakePerson(objpos=(594, 257), scale=3.021046176409755, head=(627, 100, 706, 198), points=points)


def _full_person(cx: float, cy: float, s: float, vis_of: dict[int, Vis] | None = None) -> FakePerson:
    """A 16-joint person around (cx, cy) with non-integer neck / head top (empty is_visible) as in the release."""
    rng = np.random.RandomState(int(cx * 7 + cy))
    points = []
    for j in range(16):
        x, y = int(round(cx + rng.uniform(-40, 40) * s)), int(round(cy + rng.uniform(-60, 60) * s))
        v: Vis = bool(rng.rand() > 0.2)
        if j in (8, 9):
            x, y, v = x + 0.3517, y - 0.6021, None
        points.append((j, x, y, (vis_of or {}).get(j, v)))
    order = [6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]
    points = [points[j] for j in order]
    return FakePerson(objpos=(int(cx), int(cy)), scale=s,
                      head=(int(cx) - 10, int(cy - 70 * s), int(cx) + 9, int(cy - 70 * s) + 21), points=points)


def default_images() -> list[FakeImage]:
    """The fake release's annolist (see the module docstring); annolist index = list position."""
    p_thorax = _full_person(80, 60, 0.35)
    p_thorax.points = [(j, 81, 57, v) if j == 7 else (j, x, y, v) for j, x, y, v in p_thorax.points]
    p12 = FakePerson(  # 12 joints, char is_visible, id-first order, a negative y (head top above the image)
        objpos=(40, 70), scale=0.3, head=(32, 5, 48, 25), id_first=True,
        points=[(0, 35, 110, "1"), (1, 36, 95, "1"), (2, 38, 80, "0"), (3, 44, 80, "1"), (6, 41, 80, "1"),
                (7, 41, 50, "1"), (8, 41.5, 30.25, "1"), (9, 40, -3, "0"), (12, 34, 50, "1"), (13, 48, 50, "0"),
                (10, 30, 75, "1"), (15, 52, 76, "1")])
    p14 = _full_person(60, 90, 0.5)
    p14.points = [p for p in p14.points if p[0] not in (4, 5)]
    p14.no_is_visible = True
    p_val = _full_person(90, 66, 0.4)
    p_val.points = [(j, 70, 90, v) if j == 0 else (j, x, y, v) for j, x, y, v in p_val.points]
    real1 = _full_person(900, 300, 2.5)
    return [
        FakeImage("000000001.jpg", True, [p_thorax, p12], dot=(0, 7), single_person=(1,)),
        FakeImage("000000002.jpg", False, [FakePerson((60, 60), 0.4), FakePerson(None, None)], dot=None),
        FakeImage("000000003.jpg", True, None, size=None),
        FakeImage("000000004.jpg", True, [FakePerson(None, None, None, None), p14, FakePerson((60, 100), 0.45)],
                  size=(120, 160), extras=True, dot=(1, 7)),
        FakeImage("015601864.jpg", True, [_real_person(), real1], size=None, single_person=(1, 2)),
        FakeImage("000000006.jpg", True, [p_val], dot=(0, 0)),
        FakeImage("000000007.jpg", False, [FakePerson((50, 50), 0.3)], size=None),
    ]


# With validation = DEFAULT_VALIDATION, the persons of each split (annolist index, annorect index) and those of
# them whose image file is missing.
DEFAULT_VALIDATION = ((0, 1), (5, 0))
EXPECTED_SPLITS = {
    "train": [(0, 0), (3, 1), (4, 0), (4, 1)],
    "validation": [(0, 1), (5, 0)],
    "test": [(1, 0), (6, 0)],
}
MISSING = {(4, 0), (4, 1), (6, 0)}


def _num(v: float) -> np.ndarray:
    """A MATLAB scalar in its compact storage class, as scipy.io.loadmat sees the real file."""
    if float(v) != int(v):
        return np.array([[float(v)]])
    v = int(v)
    if v < 0:
        return np.array([[v]], np.int16)
    return np.array([[v]], np.uint8 if v < 256 else np.uint16)


def _empty() -> np.ndarray:
    return np.zeros((0, 0))


def _structs(records: list[dict[str, Any]], shape: tuple[int, int] | None = None) -> np.ndarray:
    """A MATLAB struct array (all records share the field list of the first)."""
    names = list(records[0])
    arr = np.zeros(shape or (1, len(records)), dtype=[(n, object) for n in names])
    for k, rec in enumerate(records):
        for n in names:
            arr.flat[k][n] = rec[n]
    return arr


def _vis(v: Vis) -> np.ndarray:
    if v is None:
        return np.zeros((0, 0), np.uint8)
    if isinstance(v, str):
        return np.array([v])
    return np.array([[bool(v)]])


def _annorect(image: FakeImage) -> np.ndarray:
    if image.persons is None:
        return _empty()
    annotated = any(p.head is not None or p.points is not None for p in image.persons) or image.extras
    recs = []
    for person in image.persons:
        rec: dict[str, Any] = {}
        if annotated:
            for name, k in zip(("x1", "y1", "x2", "y2"), range(4)):
                rec[name] = _num(person.head[k]) if person.head else _empty()
            if person.points:
                pts = []
                for jid, x, y, v in person.points:
                    fields = ([("id", _num(jid)), ("x", _num(x)), ("y", _num(y))] if person.id_first
                              else [("x", _num(x)), ("y", _num(y)), ("id", _num(jid))])
                    if not person.no_is_visible:
                        fields.append(("is_visible", _vis(v)))
                    pts.append(dict(fields))
                rec["annopoints"] = _structs([{"point": _structs(pts)}], (1, 1))
            else:
                rec["annopoints"] = _empty()
            if image.extras:
                for k in range(1, 11):
                    rec[f"part_occ{k}"] = np.array(["1" if k % 3 else "0"]) if person.points else _empty()
                for part in ("head", "torso"):
                    for a in "123":
                        for b in "123":
                            rec[f"{part}_r{a}{b}"] = np.array(["0.98765"]) if person.points else _empty()
        rec["scale"] = np.array([[float(person.scale)]]) if person.scale is not None else _empty()
        rec["objpos"] = (_structs([{"x": _num(person.objpos[0]), "y": _num(person.objpos[1])}], (1, 1))
                         if person.objpos is not None else _empty())
        recs.append(rec)
    return _structs(recs)


def release_mat_bytes(images: list[FakeImage], *, lean: bool = False) -> bytes:
    """The .mat file (MAT v5, compressed) of a fake release.

    ``lean`` keeps only what the parser reads (annolist image/annorect, img_train): about 3x faster to write for a
    release-sized annolist (scipy writes every MATLAB element from Python).
    """
    annolist = _structs([
        {"image": _structs([{"name": im.name}], (1, 1)), "annorect": _annorect(im)} if lean else
        {"image": _structs([{"name": im.name}], (1, 1)),
         "annorect": _annorect(im),
         "frame_sec": _num(11) if k % 2 else _empty(),
         "vididx": _num(1660) if k % 2 else _empty()}
        for k, im in enumerate(images)])
    fields = {"annolist": annolist, "img_train": np.array([[float(im.train) for im in images]])}
    if not lean:
        fields.update(version="12", single_person=_single_person(images), act=_act(len(images)),
                      video_list=np.array([["aAOusnrSsHI", "j4XQ7ggEaWg"]], dtype=object))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"RELEASE": _structs([fields], (1, 1))}, do_compression=True, oned_as="row")
    return buf.getvalue()


def _single_person(images: list[FakeImage]) -> np.ndarray:
    single = np.empty((len(images), 1), dtype=object)
    for k, im in enumerate(images):
        single[k, 0] = np.array([[i] for i in im.single_person], np.uint8) if im.single_person else _empty()
    return single


def _act(n: int) -> np.ndarray:
    return _structs([{"cat_name": "sports" if k % 2 else _empty(), "act_name": "curling" if k % 2 else _empty(),
                      "act_id": _num(1) if k % 2 else _num(-1)} for k in range(n)], (n, 1))


def image_array(image: FakeImage) -> np.ndarray:
    """The RGB uint8 [H, W, 3] picture of a fake image: background plus a white dot at the ``dot`` joint."""
    assert image.size is not None
    w, h = image.size
    arr = np.full((h, w, 3), BACKGROUND, np.uint8)
    if image.dot is not None:
        x, y = dot_position(image)
        c, r = int(x) - 1, int(y) - 1  # image frame (1-based pixel centres) -> numpy indices
        arr[max(r - DOT_HALF, 0):r + DOT_HALF + 1, max(c - DOT_HALF, 0):c + DOT_HALF + 1] = 255
    return arr


def dot_position(image: FakeImage) -> tuple[float, float]:
    """Image-frame (x, y) of the dot's centre."""
    person, jid = image.dot
    for j, x, y, _ in image.persons[person].points:
        if j == jid:
            assert x == int(x) and y == int(y), "dots sit on integer joints"
            return float(x), float(y)
    raise KeyError(jid)


def write_fake_release(manual_dir: Path, images: list[FakeImage] | None = None, *,
                       zip_mat: bool = False, tar_images: bool = False, lean: bool = False) -> list[FakeImage]:
    """Writes the release .mat (or its zip) and the JPEGs (``images/`` or the tarball) into ``manual_dir``.

    ``lean``: see ``release_mat_bytes``.

    Returns:
      The FakeImage list written (annolist order).
    """
    images = default_images() if images is None else images
    manual_dir.mkdir(parents=True, exist_ok=True)
    mat = release_mat_bytes(images, lean=lean)
    if zip_mat:
        with zipfile.ZipFile(manual_dir / ZIP_NAME, "w") as zf:
            zf.writestr("mpii_human_pose_v1_u12_2/README.md", "fake")
            zf.writestr(ZIP_MEMBER, mat)
    else:
        (manual_dir / MAT_NAME).write_bytes(mat)
    jpegs = {}
    for im in images:
        if im.size is not None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_array(im), cv2.COLOR_RGB2BGR),
                                   [int(cv2.IMWRITE_JPEG_QUALITY), 98])
            assert ok
            jpegs[im.name] = buf.tobytes()
    if tar_images:
        with tarfile.open(manual_dir / TAR_NAME, "w:gz") as tf:
            for name, data in jpegs.items():
                info = tarfile.TarInfo("./images/" + name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        (manual_dir / "images").mkdir(exist_ok=True)
        for name, data in jpegs.items():
            (manual_dir / "images" / name).write_bytes(data)
    return images


# A complete release: the annolist length of the real one, so that the shipped Tompson validation list fits it and
# `python -m data.prepare mpii --manual-dir DIR` builds it with default flags.
RELEASE_ANNOLIST_LENGTH = 24987


@dataclasses.dataclass(frozen=True)
class FakeRelease:
    """What ``write_complete_release`` wrote.

    Attributes:
      manual_dir: the folder to pass as ``--manual-dir``.
      images: the annolist (FakeImage per entry, annolist order; most entries have no person and no file).
      expected: examples per split after a build ({"train": n, "validation": n, "test": n}): the persons whose
        image file exists (every other validation person is counted as a missing image).
    """

    manual_dir: Path
    images: list[FakeImage]
    expected: dict[str, int]


def write_complete_release(manual_dir: Path, *, num_train: int = 4, num_val: int = 2, num_test: int = 1,
                           zip_mat: bool = True, tar_images: bool = True) -> FakeRelease:
    """Writes a fake release that the default build accepts (the shipped 2958-person validation list fits it).

    Only ``num_train + num_val + num_test`` images get a file (160 x 120 JPEGs, one person each, a bright dot on
    the thorax): ``num_train`` training persons, ``num_val`` validation persons (the first validation images
    holding a single validation person) and ``num_test`` test persons. The other 2958 - num_val validation persons
    exist in the annotations (one joint each) but their images are missing, so the build skips and counts them.

    Args:
      manual_dir: created if needed.
      num_train, num_val, num_test: persons per split with an image file (num_val <= 1000).
      zip_mat, tar_images: write the zip and the tarball as downloaded (True) or the extracted .mat / images/.

    Returns:
      FakeRelease (``expected`` = {"train": num_train, "validation": num_val, "test": num_test}).
    """
    from data.mpii import split  # the shipped list, read the way the builder reads it

    by_image: dict[int, list[int]] = {}
    for i, p in split.load_validation_persons():
        by_image.setdefault(i, []).append(p)
    images = [FakeImage(f"{i:09d}.jpg", False, None, size=None) for i in range(RELEASE_ANNOLIST_LENGTH)]
    with_file = [i for i, persons in by_image.items() if persons == [0]][:num_val]
    for i, persons in by_image.items():
        images[i] = FakeImage(images[i].name, True, [_stub_val_person(p) if p in persons else FakePerson(None, None)
                                                      for p in range(max(persons) + 1)], size=None)
    for i in with_file:
        images[i] = FakeImage(images[i].name, True, [_full_person(80, 60, 0.4)], dot=(0, 7))
    free = iter(i for i in range(RELEASE_ANNOLIST_LENGTH) if i not in by_image)
    for k in range(num_train):
        i = next(free)
        images[i] = FakeImage(images[i].name, True, [_full_person(70 + 3 * k, 62, 0.35 + 0.02 * k)], dot=(0, 7))
    for _ in range(num_test):
        i = next(free)
        images[i] = FakeImage(images[i].name, False, [FakePerson((80, 60), 0.4)])
    write_fake_release(manual_dir, images, zip_mat=zip_mat, tar_images=tar_images, lean=True)
    return FakeRelease(manual_dir, images, {"train": num_train, "validation": num_val, "test": num_test})


def _stub_val_person(p: int) -> FakePerson:
    """A validation person whose image is missing: objpos, scale, head box and a single joint (a small .mat)."""
    return FakePerson((100 + p, 100), 1.0, head=(90, 40, 110, 60), points=[(7, 100 + p, 80, True)])
