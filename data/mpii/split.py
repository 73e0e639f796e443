"""MPII person splits: the fixed Tompson validation set, the paper's training set and the test persons.

* ``validation``: the 2958 persons of Tompson et al. (2015), as (annolist index, annorect index) pairs, 0-based,
  shipped in ``validation_persons.txt`` (from pose-hg-train ``valid.h5``) and checked by SHA-256 on load.
* ``train``: every other person of an img_train = 1 image with objpos, scale and at least one annotated joint
  (25925 on the release file).
* ``test``: every person of an img_train = 0 image with objpos and scale (no joints).

Public API::

    load_validation_persons() -> tuple[tuple[int, int], ...]
    parse_validation_text(text) -> tuple[tuple[int, int], ...]
    persons_text(pairs) -> str
    split_persons(images, validation) -> SplitResult
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
from collections.abc import Iterable, Sequence

from data.mpii.release import ImageAnnotation, Person

VALIDATION_FILE = "validation_persons.txt"
VALIDATION_SHA256 = "bff7278f464eecce948785a6f1fccd77d351e47bdcb0ead1ae944ff5704ba03e"
NUM_VALIDATION = 2958
SPLITS = ("train", "validation", "test")

PersonRef = tuple[ImageAnnotation, Person]


@dataclasses.dataclass(frozen=True)
class SplitResult:
    """Persons per split, in (annolist index, annorect index) order, plus what was left out and why.

    Attributes:
      persons: split name -> list of (image, person).
      skipped: reason -> number of persons of the release in no split.
    """

    persons: dict[str, list[PersonRef]]
    skipped: dict[str, int]


def persons_text(pairs: Iterable[tuple[int, int]]) -> str:
    """The canonical text of a person list: one "%d,%d\\n" row per (annolist index, annorect index)."""
    return "".join(f"{int(i)},{int(p)}\n" for i, p in pairs)


def load_validation_persons() -> tuple[tuple[int, int], ...]:
    """The shipped 2958 validation (annolist index, annorect index) pairs, 0-based, verified by SHA-256."""
    text = importlib.resources.files("data.mpii").joinpath(VALIDATION_FILE).read_text(encoding="ascii")
    return parse_validation_text(text)


def parse_validation_text(text: str) -> tuple[tuple[int, int], ...]:
    """Parses the validation list text; ValueError unless its SHA-256 is the Tompson set's."""
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    if digest != VALIDATION_SHA256:
        raise ValueError(
            f"data/mpii/{VALIDATION_FILE} is corrupt: SHA-256 {digest}, expected {VALIDATION_SHA256}. "
            "Restore it from the repository.")
    return tuple((int(i), int(p)) for i, p in (line.split(",") for line in text.splitlines()))


def split_persons(images: Sequence[ImageAnnotation],
                  validation: Iterable[tuple[int, int]]) -> SplitResult:
    """Assigns the release's persons to train / validation / test.

    Args:
      images: the parsed release (``load_release``), in annolist order.
      validation: (annolist index, annorect index) pairs, 0-based, of the validation persons.

    Returns:
      SplitResult. Raises ValueError when a validation pair does not name a training person with objpos,
      scale and joints (i.e. the release file does not match the validation list).
    """
    val_pairs = sorted({(int(i), int(p)) for i, p in validation})
    out: dict[str, list[PersonRef]] = {name: [] for name in SPLITS}
    for i, p in val_pairs:
        if not 0 <= i < len(images) or not 0 <= p < len(images[i].persons):
            raise ValueError(
                f"validation person (annolist {i}, annorect {p}) is not in this release "
                f"({len(images)} annolist entries); is it mpii_human_pose_v1_u12_1.mat?")
        image, person = images[i], images[i].persons[p]
        if not (image.is_train and person.has_box and person.has_joints):
            raise ValueError(
                f"validation person (annolist {i}, annorect {p}, {image.name}) is not an annotated training "
                "person of this release; is it mpii_human_pose_v1_u12_1.mat?")
        out["validation"].append((image, person))

    val_set = set(val_pairs)
    skipped = {"train: no objpos/scale": 0, "train: no joints": 0, "test: no objpos/scale": 0}
    for image in images:
        for person in image.persons:
            if image.is_train:
                if (image.index, person.index) in val_set:
                    continue
                if not person.has_box:
                    skipped["train: no objpos/scale"] += 1
                elif not person.has_joints:
                    skipped["train: no joints"] += 1
                else:
                    out["train"].append((image, person))
            elif person.has_box:
                out["test"].append((image, person))
            else:
                skipped["test: no objpos/scale"] += 1
    return SplitResult(persons=out, skipped=skipped)
