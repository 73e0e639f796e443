"""MPII 16-joint layout: the one source of truth for joint names, flips, skeleton and PCKh groups.

Joint order is the MPII release's ``point.id`` order (0 r ankle … 15 l wrist). Every dataset in
``data/`` (MPII and the synthetic one) uses this layout, so crops, augmentation and PCKh are shared.
"""

from __future__ import annotations

import numpy as np

NUM_JOINTS = 16

JOINT_NAMES: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
)

# Short names as in the MPII evaluation toolkit (`dataset_joints` of gt_valid.mat).
SHORT_NAMES: tuple[str, ...] = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thrx",
    "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri",
)

# After a horizontal flip, the value of joint j belongs in slot FLIP_PERMUTATION[j].
FLIP_PERMUTATION: tuple[int, ...] = (5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10)

# Kinematic tree; the pelvis (6) is the root and is its own parent.
PARENTS: tuple[int, ...] = (1, 2, 6, 6, 3, 4, 6, 6, 7, 8, 11, 12, 8, 8, 13, 14)

# The 15 bones (child, parent) drawn as the skeleton.
BONES: tuple[tuple[int, int], ...] = tuple((j, p) for j, p in enumerate(PARENTS) if j != p)

# Official MPII PCKh: joints scored (pelvis and thorax never are), and the table's groups.
PCKH_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 8, 9)
PCKH_GROUPS: dict[str, tuple[int, ...]] = {
    "head": (8, 9),
    "shoulder": (12, 13),
    "elbow": (11, 14),
    "wrist": (10, 15),
    "hip": (2, 3),
    "knee": (1, 4),
    "ankle": (0, 5),
}
UBODY_JOINTS: tuple[int, ...] = (10, 11, 12, 13, 14, 15)

# Per-channel RGB mean of MPII images in [0, 1] (subtracted from hourglass inputs, as the paper's code).
MPII_MEAN_RGB: tuple[float, float, float] = (0.4404, 0.4440, 0.4327)


def flip_joints_slots(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Reorders a per-joint array after a horizontal flip (left and right joints swap slots).

    Args:
      values: any array with the 16 joints along ``axis``.
      axis: the joint axis.

    Returns:
      An array of the same shape whose slot ``FLIP_PERMUTATION[j]`` holds the old value of joint ``j``.
    """
    values = np.asarray(values)
    if values.shape[axis] != NUM_JOINTS:
        raise ValueError(f"expected {NUM_JOINTS} joints along axis {axis}, got shape {values.shape}")
    # FLIP_PERMUTATION is an involution, so gathering with it equals scattering with it.
    return np.take(values, FLIP_PERMUTATION, axis=axis)
