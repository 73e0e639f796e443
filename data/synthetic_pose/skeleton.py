"""Procedural 3-D people: body proportions, plausible joint angles, and an orthographic camera.

Everything here is numpy only and works in *body units*: one unit is the person's head length L (upper neck to
head top). Proportions were calibrated on the real MPII validation annotations (bone lengths measured in units of
neck-to-head-top distance, upper percentiles so that foreshortening does not shrink them); e.g. the thorax is the
midpoint of the shoulders and the pelvis the midpoint of the hips, exactly as in MPII.

Frames:
* body frame: x = the person's left, y = up, z = the way the person faces; the pelvis is the origin.
* camera frame: x = image right, y = image down, z = away from the camera (orthographic projection drops z;
  a larger z is farther away).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.joints import NUM_JOINTS

# Joint ids (data.joints order).
R_ANK, R_KNE, R_HIP, L_HIP, L_KNE, L_ANK, PELVIS, THORAX, NECK, HEAD_TOP = range(10)
R_WRI, R_ELB, R_SHO, L_SHO, L_ELB, L_WRI = range(10, 16)

# Mean segment lengths in head lengths (MPII 75th-95th percentile 2-D bone lengths / neck-to-top distance).
_LENGTHS = {
    "shin": 1.65, "thigh": 1.75, "hip_width": 0.8, "shoulder_width": 1.4, "upper_arm": 1.2,
    "forearm": 1.0, "spine": 2.0, "neck": 0.42, "foot": 0.8, "hand": 0.5,
}
# Half thicknesses in head lengths (a drawn limb is a tapered capsule with these radii at its two ends).
_RADII = {
    "thigh": (0.3, 0.21), "shin": (0.22, 0.14), "upper_arm": (0.19, 0.15), "forearm": (0.16, 0.12),
    "neck": (0.16, 0.16), "foot": (0.11, 0.09), "hand": (0.15, 0.12),
}
# Head ellipsoid semi-axes (left, up, forward) in head lengths; its centre sits half a head above the neck.
HEAD_AXES = np.array([0.36, 0.5, 0.42])


@dataclasses.dataclass(frozen=True)
class Body:
    """A posed person in the camera frame, in body units (head lengths).

    Attributes:
        joints: float64 [16, 3] MPII joints (x, y, z) in the camera frame (pelvis-relative before translation).
        torso_axes: float64 [3, 3]; rows are the chest's left, up and forward unit vectors (camera frame).
        hip_axes: float64 [3, 3]; the same for the pelvis.
        head_axes: float64 [3, 3]; the same for the head.
        head_center: float64 [3] centre of the head ellipsoid.
        toes: float64 [2, 3] tip of the right and left foot.
        knuckles: float64 [2, 3] end of the right and left hand.
        radii: dict of part name -> (r0, r1) capsule radii in body units (already scaled per person).
        torso_half_depth: half of the chest's front-to-back thickness, body units.
        shoulder_half_width: half the distance between the shoulders, body units.
        hip_half_width: half the distance between the hips, body units.
    """

    joints: np.ndarray
    torso_axes: np.ndarray
    hip_axes: np.ndarray
    head_axes: np.ndarray
    head_center: np.ndarray
    toes: np.ndarray
    knuckles: np.ndarray
    radii: dict
    torso_half_depth: float
    shoulder_half_width: float
    hip_half_width: float


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 right-handed rotation by ``degrees`` about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    t = np.deg2rad(degrees)
    c, s = float(np.cos(t)), float(np.sin(t))
    if axis == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 1:
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _limb_dirs(flex: float, abduct: float, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Direction of a limb hanging from its root, and its 'front' (the way its distal joint bends to).

    Starts from straight down, swings forward by ``flex`` degrees (about the left axis), then outwards by
    ``abduct`` degrees (about the forward axis; ``side`` is +1 for a left limb, -1 for a right one).
    Returns (direction, front), unit [3] vectors in the parent frame.
    """
    r = rotation(2, side * abduct) @ rotation(0, -flex)
    return r @ np.array([0.0, -1.0, 0.0]), r @ np.array([0.0, 0.0, 1.0])


def _bend(
    direction: np.ndarray, front: np.ndarray, degrees: float, twist: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Bends a joint: rotates ``direction`` by ``degrees`` towards ``front``.

    ``front`` (a unit vector orthogonal to ``direction``) is first turned by ``twist`` degrees about
    ``direction``. Returns the new (direction, front) pair, the front rotated along with the direction.
    """
    if twist:
        t = np.deg2rad(twist)
        d, f = direction, front
        cross = np.array([d[1] * f[2] - d[2] * f[1], d[2] * f[0] - d[0] * f[2], d[0] * f[1] - d[1] * f[0]])
        front = front * np.cos(t) + cross * np.sin(t)
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    return direction * c + front * s, front * c - direction * s


def sample_proportions(rng: np.random.Generator) -> dict:
    """Per-person segment lengths and radii (body units): the means above times a per-person jitter."""
    build = rng.uniform(0.85, 1.2)  # slim ... stocky, scales all thicknesses together
    lengths = {k: v * rng.uniform(0.9, 1.1) for k, v in _LENGTHS.items()}
    # Left and right limbs share lengths, as in a real person.
    radii = {k: (a * build * rng.uniform(0.9, 1.1), b * build * rng.uniform(0.9, 1.1)) for k, (a, b) in _RADII.items()}
    return {"lengths": lengths, "radii": radii, "half_depth": 0.36 * build * rng.uniform(0.9, 1.15)}


def sample_angles(rng: np.random.Generator) -> dict:
    """Joint angles (degrees) of one plausible pose: standing, walking/running, sitting/crouching or athletic."""
    u = rng.uniform
    mode = rng.choice(4, p=[0.3, 0.3, 0.2, 0.2])  # stand, walk, sit, wild
    a: dict = {}
    if mode == 0:
        legs = [(u(-10, 20), u(-5, 15), u(0, 20)) for _ in range(2)]
        a["spine"] = (rng.normal(3, 6), rng.normal(0, 5), rng.normal(0, 8))
    elif mode == 1:
        stride = u(10, 45)
        fwd, back = (stride, u(-5, 10), u(0, 45)), (-u(0.4, 0.9) * stride, u(-5, 10), u(10, 110))
        legs = [fwd, back] if rng.random() < 0.5 else [back, fwd]
        a["spine"] = (rng.normal(8, 8), rng.normal(0, 5), rng.normal(0, 10))
    elif mode == 2:
        legs = [(u(55, 115), u(0, 35), u(50, 140)) for _ in range(2)]
        a["spine"] = (rng.normal(10, 12), rng.normal(0, 6), rng.normal(0, 10))
    else:
        legs = [(u(-40, 130), u(-10, 70), u(0, 150)) for _ in range(2)]
        a["spine"] = (u(-20, 70), rng.normal(0, 15), rng.normal(0, 25))
    a["legs"] = legs  # (flex, abduct, knee) for right then left
    arms = []
    for side in range(2):
        kind = rng.choice(4, p=[0.4, 0.2, 0.2, 0.2])  # down, raised, sideways, anything
        if mode == 1 and kind == 0:
            # Arms swing against the legs when walking.
            swing = -legs[side][0] * u(0.5, 1.2)
            arms.append((swing, u(3, 20), u(10, 90)))
        elif kind == 0:
            arms.append((u(-25, 40), u(5, 35), u(0, 70)))
        elif kind == 1:
            arms.append((u(30, 180), u(0, 100), u(0, 120)))
        elif kind == 2:
            arms.append((u(-20, 40), u(40, 120), u(0, 140)))
        else:
            arms.append((u(-50, 180), u(0, 170), u(0, 150)))
    a["arms"] = arms  # (flex, abduct, elbow) for right then left
    a["arm_twist"] = (u(-90, 30), u(-90, 30))
    a["leg_twist"] = (u(-20, 20), u(-20, 20))
    a["neck"] = (rng.normal(5, 8), rng.normal(0, 6))
    a["head"] = (u(-30, 35), rng.normal(0, 10), float(np.clip(rng.normal(0, 25), -60, 60)))  # nod, tilt, yaw
    a["foot_yaw"] = (rng.normal(0, 15), rng.normal(0, 15))
    return a


def sample_view(rng: np.random.Generator) -> tuple[float, float, float]:
    """Camera view angles (yaw, pitch, roll) in degrees.

    Yaw 0 = facing the camera; most people face the camera more or less, as in MPII, but every yaw occurs.
    Roll is the in-image rotation: mostly upright, sometimes strongly tilted or upside down.
    """
    r = rng.random()
    if r < 0.55:
        yaw = rng.normal(0, 35)
    elif r < 0.85:
        yaw = rng.uniform(-120, 120)
    else:
        yaw = rng.uniform(-180, 180)
    pitch = float(np.clip(rng.normal(0, 12), -35, 35))
    r = rng.random()
    if r < 0.85:
        roll = rng.normal(0, 10)
    elif r < 0.97:
        roll = rng.normal(0, 35)
    else:
        roll = rng.uniform(-180, 180)
    return float(yaw), pitch, float(roll)


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation from the body frame to the camera frame.

    The body first turns by ``yaw`` about its up axis, is then seen from the front (left -> image right,
    up -> image up, forward -> towards the camera), tilted by ``pitch`` about the image x axis and rolled by
    ``roll`` in the image plane.
    """
    front_view = np.diag([1.0, -1.0, -1.0])
    return rotation(2, roll) @ rotation(0, pitch) @ front_view @ rotation(1, yaw)


def pose_body(props: dict, angles: dict, rot: np.ndarray) -> Body:
    """Forward kinematics: joint positions of a posed person, rotated into the camera frame.

    Args:
        props: ``sample_proportions`` output.
        angles: ``sample_angles`` output.
        rot: [3, 3] body-to-camera rotation (``camera_rotation``).

    Returns:
        A ``Body`` whose pelvis is at the origin of the camera frame.
    """
    ln = props["lengths"]
    j = np.zeros((NUM_JOINTS, 3))
    lean, side_lean, twist = angles["spine"]
    spine = rotation(2, side_lean) @ rotation(0, lean)
    chest = spine @ rotation(1, twist)  # columns: chest left, up, forward (body frame)
    hips = rotation(1, -0.3 * twist)  # the pelvis turns a little against the chest

    half_hip = 0.5 * ln["hip_width"]
    j[R_HIP], j[L_HIP] = hips @ [-half_hip, 0, 0], hips @ [half_hip, 0, 0]
    j[PELVIS] = 0.5 * (j[R_HIP] + j[L_HIP])
    j[THORAX] = spine @ [0, ln["spine"], 0]
    half_sho = 0.5 * ln["shoulder_width"]
    j[R_SHO], j[L_SHO] = j[THORAX] - half_sho * chest[:, 0], j[THORAX] + half_sho * chest[:, 0]
    neck_flex, neck_side = angles["neck"]
    neck = chest @ rotation(2, neck_side) @ rotation(0, neck_flex)
    j[NECK] = j[THORAX] + ln["neck"] * neck[:, 1]
    nod, tilt, head_yaw = angles["head"]
    head = neck @ rotation(1, head_yaw) @ rotation(2, tilt) @ rotation(0, nod)
    j[HEAD_TOP] = j[NECK] + head[:, 1]
    head_center = j[NECK] + 0.5 * head[:, 1] + 0.05 * head[:, 2]

    toes, knuckles = np.zeros((2, 3)), np.zeros((2, 3))
    for i, (hip, knee, ankle, sign) in enumerate([(R_HIP, R_KNE, R_ANK, -1.0), (L_HIP, L_KNE, L_ANK, 1.0)]):
        flex, abduct, knee_flex = angles["legs"][i]
        d, front = _limb_dirs(flex, abduct, sign)
        d, front = hips @ d, hips @ front
        j[knee] = j[hip] + ln["thigh"] * d
        shin, shin_front = _bend(d, front, -knee_flex, angles["leg_twist"][i])
        j[ankle] = j[knee] + ln["shin"] * shin
        # The foot points to the front of the shin, a little downwards, turned in or out by foot_yaw.
        _, foot = _bend(shin, shin_front, 0.0, angles["foot_yaw"][i])
        foot = foot + 0.35 * shin
        toes[i] = j[ankle] + ln["foot"] * foot / np.linalg.norm(foot)

    for i, (sho, elb, wri, sign) in enumerate([(R_SHO, R_ELB, R_WRI, -1.0), (L_SHO, L_ELB, L_WRI, 1.0)]):
        flex, abduct, elbow = angles["arms"][i]
        d, front = _limb_dirs(flex, abduct, sign)
        d, front = chest @ d, chest @ front
        j[elb] = j[sho] + ln["upper_arm"] * d
        fore, _ = _bend(d, front, elbow, sign * angles["arm_twist"][i])
        j[wri] = j[elb] + ln["forearm"] * fore
        knuckles[i] = j[wri] + ln["hand"] * fore

    return Body(
        joints=j @ rot.T,
        torso_axes=(rot @ chest).T,
        hip_axes=(rot @ hips).T,
        head_axes=(rot @ head).T,
        head_center=rot @ head_center,
        toes=toes @ rot.T,
        knuckles=knuckles @ rot.T,
        radii=props["radii"],
        torso_half_depth=props["half_depth"],
        shoulder_half_width=half_sho,
        hip_half_width=half_hip,
    )


def sample_body(rng: np.random.Generator) -> tuple[Body, tuple[float, float, float]]:
    """A random person in a random view: (Body, (yaw, pitch, roll))."""
    props = sample_proportions(rng)
    angles = sample_angles(rng)
    view = sample_view(rng)
    return pose_body(props, angles, camera_rotation(*view)), view
