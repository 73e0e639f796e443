"""Loaders of the MPII evaluation files: ground-truth annotations and published predictions.

Every array returned is in the image frame of the MPII release (1-based pixels, as MATLAB and the
official toolkit use them), MPII joint order (``data.joints``), float64.

Annotation files:

* ``.mat`` in the toolkit layout (``gt_valid.mat`` of microsoft/HRNet, ``mpii_gt_val.mat`` of mmpose,
  ``detections_our_format.mat`` of bearpaw): ``pos_gt_src`` [16, 2, N], ``jnt_missing`` [16, N]
  (1 = not annotated), ``headboxes_src`` [2, 2, N] ((x1, y1), (x2, y2)). Untruncated coordinates; bearpaw's
  copy has one coordinate zeroed in 13 annotated joints, which costs those joints but is what it holds.
* ``.h5`` in the pose-hg-train layout (``annot/valid.h5``): ``part`` [N, 16, 2], ``normalize`` [N]
  (the head size). Its coordinates are truncated to integers and a not-annotated joint is stored as
  (0, 0), so a joint is taken as annotated iff ``part != (0, 0)``: on the real validation file this
  gives exactly the 44240 joints of the release, whereas ``x·y != 0`` would drop the 13 annotated joints
  with a coordinate truncated to 0 (on the left or top image edge) and ``x > 1 and y > 1`` 54 joints.
  A row of all (−1, −1) (person without joints, as in ``annot.h5``) counts as not annotated. On the
  validation set, truncation moves PCKh@0.5 by hundredths of a point and PCKh@0.1 by up to ~0.4.

Prediction files:

* ``.h5`` with dataset ``preds``, [N, 16, 2] (e.g. Newell's ``newell.h5``) or [2, 16, N] (e.g.
  ``tompson.h5``, written from MATLAB); the layout is told from the shape (a [2, 16, 2] array is read
  as [N, 16, 2]).
* ``.mat`` with ``pos_pred_src`` [16, 2, N] (toolkit layout) or ``preds`` (as for ``.h5``).

Predictions must be real numbers (integer or float arrays; not text, cells, structs, booleans or
complex) and finite: a NaN or infinite coordinate is an error naming the person and joint, since the
toolkit would silently count it as a miss. Every problem with a file (missing, corrupt, wrong variables,
types or shapes) is a FileNotFoundError or ValueError whose message names the file and what was expected.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io

from data import joints

# Head size = SC_BIAS · head-box diagonal (the toolkit's util_get_head_size.m).
HEAD_SIZE_FACTOR = 0.6


@dataclasses.dataclass(frozen=True)
class Annotations:
    """Ground truth for PCKh.

    Attributes:
      joints: float64 [N, 16, 2], (x, y) image frame; meaningless where not annotated.
      annotated: bool [N, 16].
      head_sizes: float64 [N], 0.6 · head-box diagonal.
    """

    joints: np.ndarray
    annotated: np.ndarray
    head_sizes: np.ndarray

    @property
    def num_persons(self) -> int:
        return int(self.joints.shape[0])


def _check_exists(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    _check_exists(path)
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as err:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path}: MATLAB v7.3 files are not supported; save it with '-v7' ({err})") from None
    except MemoryError:
        raise
    except Exception as err:  # a damaged file makes scipy raise MatReadError, IndexError, OSError, zlib.error...
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(err).__name__}: {err}); "
                         "is it complete?") from None
    return {key: value for key, value in contents.items() if not key.startswith("__")}


def _read_h5(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    _check_exists(path)
    try:
        with h5py.File(path, "r") as f:
            found = sorted(f.keys())
            missing = [key for key in keys if key not in f]
            if missing:
                raise ValueError(f"{path}: missing dataset(s) {missing}; found {found}")
            groups = [key for key in keys if not isinstance(f[key], h5py.Dataset)]
            if groups:
                raise ValueError(f"{path}: {groups} must be datasets (arrays), found HDF5 groups")
            return {key: np.asarray(f[key][()]) for key in keys}
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None


def _numbers(value: Any, path: Path, name: str, expected: str) -> np.ndarray:
    """`value` as float64 if it is an integer or float array; else ValueError naming what it holds.

    Args:
      expected: the layout wanted, for the message (e.g. '[N, 16, 2]').
    """
    value = np.asarray(value)
    kind = value.dtype.kind
    if kind in "iuf":
        return value.astype(np.float64)
    held = {"U": "text", "S": "text", "O": "text or nested arrays (a MATLAB cell)", "V": "records (a compound type "
            "or MATLAB struct)", "b": "booleans", "c": "complex numbers"}.get(kind, f"dtype {value.dtype}")
    raise ValueError(f"{path}: {name} holds {held} (dtype {value.dtype}, shape {value.shape}); expected a "
                     f"numeric array {expected}")


def _check_finite(preds: np.ndarray, path: Path, name: str) -> np.ndarray:
    """`preds` [N, 16, 2] unchanged if every coordinate is finite and N > 0; else ValueError."""
    if preds.shape[0] == 0:
        raise ValueError(f"{path}: {name} holds no persons (shape {preds.shape})")
    bad = ~np.isfinite(preds).all(axis=-1)
    if bad.any():
        person, joint = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{path}: {name} has {int(bad.sum())} NaN or infinite joint(s), the first at person "
                         f"{person} (0-based), joint {joints.JOINT_NAMES[joint]}; every joint of every person "
                         "needs finite (x, y) (the toolkit would count such joints as misses)")
    return preds


def _require(contents: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in contents]
    if missing:
        raise ValueError(f"{path}: missing variable(s) {missing}; found {sorted(contents)}")


def _check_joint_names(contents: dict[str, np.ndarray], path: Path) -> None:
    if "dataset_joints" not in contents:
        return
    names = [str(np.squeeze(cell)) for cell in np.ravel(contents["dataset_joints"])]
    # The toolkit files spell thorax 'thor'.
    names = ["thrx" if name == "thor" else name for name in names]
    if names != list(joints.SHORT_NAMES):
        raise ValueError(f"{path}: dataset_joints {names} is not the MPII order {list(joints.SHORT_NAMES)}")


def load_annotations_mat(path: str | Path) -> Annotations:
    """Ground truth from a toolkit-layout ``.mat`` (``gt_valid.mat``, ``detections_our_format.mat``).

    Args:
      path: file with ``pos_gt_src`` [16, 2, N], ``jnt_missing`` [16, N], ``headboxes_src`` [2, 2, N].

    Returns:
      `Annotations` with N persons; annotated = (jnt_missing == 0).
    """
    path = Path(path)
    contents = _read_mat(path)
    _require(contents, ("pos_gt_src", "jnt_missing", "headboxes_src"), path)
    _check_joint_names(contents, path)
    gt = _numbers(contents["pos_gt_src"], path, "pos_gt_src", "[16, 2, N]")
    missing = _numbers(contents["jnt_missing"], path, "jnt_missing", "[16, N] of 0/1")
    boxes = _numbers(contents["headboxes_src"], path, "headboxes_src", "[2, 2, N]")
    if gt.ndim != 3 or gt.shape[:2] != (joints.NUM_JOINTS, 2):
        raise ValueError(f"{path}: pos_gt_src must be [16, 2, N], got {gt.shape}")
    n = gt.shape[2]
    if missing.shape != (joints.NUM_JOINTS, n):
        raise ValueError(f"{path}: jnt_missing must be [16, N] = {(joints.NUM_JOINTS, n)}, got {missing.shape}")
    if boxes.shape != (2, 2, n):
        raise ValueError(f"{path}: headboxes_src must be [2, 2, N] = {(2, 2, n)}, got {boxes.shape}")
    if not np.isin(missing, (0, 1)).all():
        raise ValueError(f"{path}: jnt_missing must hold 0/1 values")
    head_sizes = HEAD_SIZE_FACTOR * np.linalg.norm(boxes[1] - boxes[0], axis=0)
    return Annotations(
        joints=gt.transpose(2, 0, 1).copy(),
        annotated=(missing == 0).T.copy(),
        head_sizes=head_sizes,
    )


def load_annotations_h5(path: str | Path) -> Annotations:
    """Ground truth from a pose-hg-train ``annot/valid.h5``-layout file.

    Args:
      path: file with datasets ``part`` [N, 16, 2] (not annotated = (0, 0)) and ``normalize`` [N].

    Returns:
      `Annotations` with N persons; annotated = (part != (0, 0)), rows of all (−1, −1) excluded.
    """
    path = Path(path)
    contents = _read_h5(path, ("part", "normalize"))
    part = _numbers(contents["part"], path, "part", "[N, 16, 2]")
    head_sizes = _numbers(contents["normalize"], path, "normalize", "[N]")
    if part.ndim != 3 or part.shape[1:] != (joints.NUM_JOINTS, 2):
        raise ValueError(f"{path}: part must be [N, 16, 2], got {part.shape}")
    if head_sizes.shape != part.shape[:1]:
        raise ValueError(f"{path}: normalize must be [N] = {part.shape[:1]}, got {head_sizes.shape}")
    annotated = np.any(part != 0, axis=-1)
    no_joints = np.all(part == -1, axis=(1, 2))
    annotated[no_joints] = False
    return Annotations(joints=part, annotated=annotated, head_sizes=head_sizes)


def load_annotations(path: str | Path) -> Annotations:
    """Ground truth from ``.mat`` (toolkit layout) or ``.h5`` (``valid.h5`` layout), by file suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return load_annotations_mat(path)
    if suffix in (".h5", ".hdf5"):
        return load_annotations_h5(path)
    raise ValueError(f"{path}: unknown annotation file type {suffix!r}; expected .mat or .h5")


def _orient_preds(preds: Any, path: Path, name: str) -> np.ndarray:
    """'preds' [N, 16, 2] or [2, 16, N] → float64 [N, 16, 2]."""
    preds = _numbers(preds, path, name, "[N, 16, 2] or [2, 16, N]")
    if preds.ndim == 3 and preds.shape[1] == joints.NUM_JOINTS:
        if preds.shape[2] == 2:
            return preds
        if preds.shape[0] == 2:
            return preds.transpose(2, 1, 0).copy()
    raise ValueError(f"{path}: {name} must be [N, 16, 2] or [2, 16, N], got {preds.shape}")


def _load_mat_predictions(path: Path) -> np.ndarray:
    contents = _read_mat(path)
    if "pos_pred_src" in contents:
        preds = _numbers(contents["pos_pred_src"], path, "pos_pred_src", "[16, 2, N]")
        if preds.ndim != 3 or preds.shape[:2] != (joints.NUM_JOINTS, 2):
            raise ValueError(f"{path}: pos_pred_src must be [16, 2, N], got {preds.shape}")
        return _check_finite(preds.transpose(2, 0, 1).copy(), path, "pos_pred_src")
    if "preds" in contents:
        return _check_finite(_orient_preds(contents["preds"], path, "preds"), path, "preds")
    empty = "" if contents else " (the file holds no variables)"
    raise ValueError(f"{path}: no 'pos_pred_src' or 'preds' variable; found {sorted(contents)}{empty}; expected "
                     "'pos_pred_src' [16, 2, N] or 'preds' [N, 16, 2] / [2, 16, N]")


def load_predictions(path: str | Path) -> np.ndarray:
    """Predicted joints from ``.h5`` (dataset ``preds``) or ``.mat`` (``pos_pred_src`` or ``preds``).

    Args:
      path: prediction file; see the module docstring for the layouts.

    Returns:
      float64 [N, 16, 2], (x, y) in the 1-based image frame, as stored; N > 0, all finite.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unreadable file, or one without the variables, types, shapes or finite values above.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return _check_finite(_orient_preds(_read_h5(path, ("preds",))["preds"], path, "preds"), path, "preds")
    if suffix == ".mat":
        return _load_mat_predictions(path)
    raise ValueError(f"{path}: unknown prediction file type {suffix!r}; expected .h5 or .mat")
