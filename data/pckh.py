"""The official MPII PCKh metric (MPII evaluation toolkit, ``evaluatePCKh.m``), in pure numpy.

Protocol, exactly as the toolkit computes it:

* 14 joints are scored (``joints.PCKH_JOINTS``); pelvis and thorax never are.
* d = ‖pred − gt‖₂ / head_size, where head_size = 0.6 · diagonal of the annotated head box.
* A joint is correct iff d <= threshold (note ``<=``: some third-party evaluators use ``<``).
* Joints that are not annotated are excluded (numerator and denominator); ``is_visible`` plays no part,
  so occluded and out-of-image joints count.
* A NaN prediction is always wrong (the toolkit replaces NaN predictions by inf).
* Thresholds 0:0.01:0.5 (51 values). Per-joint PCK, UBody (wrists, elbows, shoulders pooled) and
  Total (all 14 joints pooled, i.e. weighted by how many of each joint are annotated).
* Table groups: Head = mean(upper neck, head top); Shoulder … Ankle = mean of the right and left joints.
* PCKh@0.5 is the last threshold, PCKh@0.1 the threshold 0.10 (not 0.11, a bug of some ports).
* AUC = area under the Total curve with thresholds rescaled to [0, 1] (trapezoid rule), in percent.

All PCK values are percentages. Coordinates may be in any frame as long as predictions, ground truth and
head sizes share it; MPII files use the release's 1-based image pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from data import joints

# Built from integers so that 0.1 and 0.5 are the exact doubles 0.1 and 0.5.
THRESHOLDS: np.ndarray = np.arange(51) / 100.0
THRESHOLDS.setflags(write=False)
_INDEX_AT_01 = 10  # THRESHOLDS[10] == 0.1
_INDEX_AT_05 = 50  # THRESHOLDS[50] == 0.5

# Columns of the paper's Table 4 (summary key, printed header), then the extra columns we print.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("head", "Head"),
    ("shoulder", "Shoul."),
    ("elbow", "Elbow"),
    ("wrist", "Wrist"),
    ("hip", "Hip"),
    ("knee", "Knee"),
    ("ankle", "Ankle"),
    ("total", "Total"),
    ("pckh@0.1", "PCKh@0.1"),
    ("auc", "AUC"),
)

# Keys of `PCKhResult.summary()`, all in percent.
SUMMARY_KEYS: tuple[str, ...] = (
    "head", "shoulder", "elbow", "wrist", "hip", "knee", "ankle", "total", "ubody", "pckh@0.1", "auc",
)


@dataclasses.dataclass(frozen=True)
class PCKhResult:
    """PCKh curves over `THRESHOLDS` (T = 51), all in percent.

    Attributes:
      thresholds: float64 [T], 0.00, 0.01, …, 0.50.
      joint_pck: float64 [T, 16], PCK of each joint (MPII joint order); NaN for the unscored pelvis and
        thorax and for joints with no annotated instance.
      joint_count: int64 [16], annotated instances of each joint that were scored (0 for pelvis, thorax).
      ubody_pck: float64 [T], wrists, elbows and shoulders pooled.
      total_pck: float64 [T], all 14 scored joints pooled.
      num_persons: N, the number of persons evaluated.
    """

    thresholds: np.ndarray
    joint_pck: np.ndarray
    joint_count: np.ndarray
    ubody_pck: np.ndarray
    total_pck: np.ndarray
    num_persons: int

    def group_pck(self, group: str) -> np.ndarray:
        """Curve [T] of a table group (``joints.PCKH_GROUPS`` key): the mean of its joints' PCKs."""
        if group not in joints.PCKH_GROUPS:
            raise ValueError(f"unknown PCKh group {group!r}; expected one of {sorted(joints.PCKH_GROUPS)}")
        return self.joint_pck[:, list(joints.PCKH_GROUPS[group])].mean(axis=1)

    @property
    def auc(self) -> float:
        """Area under the Total curve, thresholds rescaled to [0, 1], in percent."""
        return area_under_curve(self.thresholds, self.total_pck)

    def summary(self) -> dict[str, float]:
        """Table values at threshold 0.5 plus PCKh@0.1 (Total) and AUC; keys `SUMMARY_KEYS`, percent.

        A group whose joints were never annotated is NaN.
        """
        out = {group: float(self.group_pck(group)[_INDEX_AT_05]) for group in joints.PCKH_GROUPS}
        out["total"] = float(self.total_pck[_INDEX_AT_05])
        out["ubody"] = float(self.ubody_pck[_INDEX_AT_05])
        out["pckh@0.1"] = float(self.total_pck[_INDEX_AT_01])
        out["auc"] = self.auc
        return {key: out[key] for key in SUMMARY_KEYS}

    def per_joint(self, threshold_index: int = _INDEX_AT_05) -> dict[str, float]:
        """PCK of each of the 14 scored joints at ``THRESHOLDS[threshold_index]`` (default 0.5), by name."""
        return {
            joints.JOINT_NAMES[j]: float(self.joint_pck[threshold_index, j]) for j in joints.PCKH_JOINTS
        }

    def to_json_dict(self) -> dict:
        """`summary()` plus ``per_joint`` (PCKh@0.5 by joint name), ``joint_count`` and ``num_persons``.

        NaN (an undefined group) becomes None, so the result is strict JSON.
        """

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else value

        out: dict = {key: clean(value) for key, value in self.summary().items()}
        out["per_joint"] = {name: clean(value) for name, value in self.per_joint().items()}
        out["joint_count"] = {joints.JOINT_NAMES[j]: int(self.joint_count[j]) for j in joints.PCKH_JOINTS}
        out["num_persons"] = self.num_persons
        return out


def _validate(
    preds: np.ndarray, gt: np.ndarray, annotated: np.ndarray, head_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    preds = np.asarray(preds, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    annotated = np.asarray(annotated)
    head_sizes = np.asarray(head_sizes, dtype=np.float64)
    expected = (joints.NUM_JOINTS, 2)
    if preds.ndim != 3 or preds.shape[1:] != expected:
        raise ValueError(f"preds must have shape [N, 16, 2] (x, y per MPII joint), got {preds.shape}")
    n = preds.shape[0]
    if gt.shape != preds.shape:
        raise ValueError(f"gt must have the shape of preds {preds.shape} ([N, 16, 2]), got {gt.shape}")
    if annotated.shape != (n, joints.NUM_JOINTS):
        raise ValueError(f"annotated must have shape [N, 16] = {(n, joints.NUM_JOINTS)}, got {annotated.shape}")
    if annotated.dtype != np.bool_:
        if not np.isin(annotated, (0, 1)).all():
            raise ValueError("annotated must be a boolean mask (or 0/1 values), got other values")
        annotated = annotated.astype(bool)
    if head_sizes.shape != (n,):
        raise ValueError(f"head_sizes must have shape [N] = {(n,)}, got {head_sizes.shape}")
    if n == 0:
        raise ValueError("no persons to evaluate (N = 0)")
    return preds, gt, annotated, head_sizes


def normalized_distances(
    preds: np.ndarray, gt: np.ndarray, annotated: np.ndarray, head_sizes: np.ndarray
) -> np.ndarray:
    """Head-normalized distances of the official protocol.

    Args:
      preds: float [N, 16, 2] predicted (x, y); NaN allowed (counts as wrong).
      gt: float [N, 16, 2] ground truth (x, y), same frame; ignored where not annotated.
      annotated: bool [N, 16], True where the joint is in the annotation.
      head_sizes: float [N], 0.6 · head-box diagonal, same units as the coordinates.

    Returns:
      float64 [N, 16]: ‖pred − gt‖₂ / head_size; inf where the prediction is NaN or inf; NaN where the
      joint is not annotated or is not scored (pelvis, thorax).

    Raises:
      ValueError: on bad shapes, or a non-finite ground truth or non-positive head size where scored.
    """
    preds, gt, annotated, head_sizes = _validate(preds, gt, annotated, head_sizes)
    scored = np.zeros(joints.NUM_JOINTS, dtype=bool)
    scored[list(joints.PCKH_JOINTS)] = True
    mask = annotated & scored
    bad_gt = mask & ~np.isfinite(gt).all(axis=-1)
    if bad_gt.any():
        n, j = np.argwhere(bad_gt)[0]
        raise ValueError(
            f"ground truth is not finite for {int(bad_gt.sum())} annotated joints "
            f"(first: person {n}, joint {joints.JOINT_NAMES[j]}); mark them as not annotated instead"
        )
    needs_head = mask.any(axis=1)
    bad_head = needs_head & ~(np.isfinite(head_sizes) & (head_sizes > 0))
    if bad_head.any():
        n = int(np.argmax(bad_head))
        raise ValueError(
            f"head sizes must be finite and > 0 for persons with annotated joints; "
            f"{int(bad_head.sum())} are not (first: person {n}, head size {head_sizes[n]})"
        )
    # Persons without any scored joint may carry a dummy head size; keep them from making inf/NaN noise.
    safe_heads = np.where(needs_head, head_sizes, 1.0)
    dist = np.linalg.norm(preds - gt, axis=-1) / safe_heads[:, None]
    # The toolkit sets NaN predictions to inf: never correct, still counted.
    dist = np.where(np.isnan(dist), np.inf, dist)
    return np.where(mask, dist, np.nan)


def _pooled_pck(hits: np.ndarray, counts: np.ndarray, columns: tuple[int, ...]) -> np.ndarray:
    total = counts[list(columns)].sum()
    if total == 0:
        return np.full(hits.shape[0], np.nan)
    return 100.0 * hits[:, list(columns)].sum(axis=1) / total


def compute_pckh(
    preds: np.ndarray, gt: np.ndarray, annotated: np.ndarray, head_sizes: np.ndarray
) -> PCKhResult:
    """Official MPII PCKh curves.

    Args:
      preds: float [N, 16, 2] predicted (x, y), MPII joint order; NaN counts as wrong.
      gt: float [N, 16, 2] ground truth (x, y) in the same frame.
      annotated: bool [N, 16], True where the joint is annotated (not where it is visible).
      head_sizes: float [N], 0.6 · head-box diagonal.

    Returns:
      A `PCKhResult`; `PCKhResult.summary()` gives the table values.

    Raises:
      ValueError: on bad shapes or values, or when no scored joint is annotated at all.
    """
    dist = normalized_distances(preds, gt, annotated, head_sizes)
    mask = ~np.isnan(dist)
    counts = mask.sum(axis=0)
    if counts.sum() == 0:
        raise ValueError("no annotated joint among the 14 scored ones: nothing to evaluate")
    # NaN (excluded) compares False, inf (NaN prediction) too: excluded ones are also out of `counts`.
    hits = (dist[None, :, :] <= THRESHOLDS[:, None, None]).sum(axis=1)  # [T, 16]
    joint_pck = np.where(counts > 0, 100.0 * hits / np.maximum(counts, 1), np.nan)
    return PCKhResult(
        thresholds=THRESHOLDS.copy(),
        joint_pck=joint_pck,
        joint_count=counts.astype(np.int64),
        ubody_pck=_pooled_pck(hits, counts, joints.UBODY_JOINTS),
        total_pck=_pooled_pck(hits, counts, joints.PCKH_JOINTS),
        num_persons=int(dist.shape[0]),
    )


def area_under_curve(thresholds: np.ndarray, curve: np.ndarray) -> float:
    """Trapezoid-rule area under ``curve`` [T] with ``thresholds`` [T] rescaled to [0, 1].

    With ``curve`` in percent the area is in percent (a curve at 100 everywhere gives 100).
    """
    x = np.asarray(thresholds, dtype=np.float64)
    y = np.asarray(curve, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two 1-D arrays of equal length >= 2, got {x.shape} and {y.shape}")
    span = x[-1] - x[0]
    if not span > 0:
        raise ValueError("thresholds must increase")
    x = (x - x[0]) / span
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The paper's Table 4 columns plus PCKh@0.1 and AUC, one line per model.

    Args:
      rows: model name -> `PCKhResult.summary()` (percent values).

    Returns:
      A printable multi-line string (values with one decimal, ``-`` for NaN or None).
    """
    keys = [key for key, _ in TABLE_COLUMNS]
    for name, summary in rows.items():
        missing = [key for key in keys if key not in summary]
        if missing:
            raise ValueError(f"row {name!r} lacks {missing}; pass PCKhResult.summary() dicts")
    name_width = max([len("Method")] + [len(name) for name in rows])
    widths = [max(len(header), 5) for _, header in TABLE_COLUMNS]

    def cell(value: float | None, width: int) -> str:
        text = "-" if value is None or math.isnan(value) else f"{value:.1f}"
        return text.rjust(width)

    lines = ["  ".join(["Method".ljust(name_width)] + [h.rjust(w) for (_, h), w in zip(TABLE_COLUMNS, widths)])]
    for name, summary in rows.items():
        lines.append("  ".join([name.ljust(name_width)] + [cell(summary[k], w) for k, w in zip(keys, widths)]))
    return "\n".join(lines)
