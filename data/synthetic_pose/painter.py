"""Draws a posed ``skeleton.Body`` as an articulated person, back to front, with a part-label map.

Limbs are tapered capsules with a dark outline and a highlight (so overlapping limbs stay separable); the torso is
the hull of a chest slab plus the waist of the trousers; the head is a shaded ellipsoid whose face (eyes, mouth,
nose) is on its front and hair on its top and back, so the way a person faces (hence which side is their left) can
be seen, as in real photos. The far side of the body is drawn darker. Drawing is painter's-algorithm by depth;
every drawn pixel of a person also gets a label (which part is seen there) used for the joints' visibility.

Drawing coordinates are 0-based pixel centres (numpy pixel [r, c] is (c, r)); OpenCV draws with 4 fractional bits.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from data.synthetic_pose import appearance as looks
from data.synthetic_pose import skeleton as sk

_SHIFT = 4
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_LIGHT_2D = np.array([-0.45, -0.9]) / np.hypot(0.45, 0.9)  # light comes from the upper left
_LIGHT_3D = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])  # ... and from the camera side
# The torso is a thick body while limbs hang at its sides: sort it as if it were this much farther back
# (body units), so that limbs at its sides are drawn over it and only limbs really behind it are hidden.
_TORSO_DEPTH_BIAS = 0.3

PART_NAMES: tuple[str, ...] = (
    "torso", "neck", "head",
    "r_thigh", "r_shin", "r_foot", "l_thigh", "l_shin", "l_foot",
    "r_upper_arm", "r_forearm", "r_hand", "l_upper_arm", "l_forearm", "l_hand",
)
# For each joint (data.joints order) the parts that contain it: a joint is hidden when a part not in this list
# was drawn over it after them. The torso is deliberately not a part of the hips and shoulders: when it is
# drawn over them (the far side of a person seen side-on) they are hidden. The pelvis is where the thighs meet.
JOINT_PARTS: tuple[tuple[str, ...], ...] = (
    ("r_shin", "r_foot"), ("r_thigh", "r_shin"), ("r_thigh",), ("l_thigh",), ("l_thigh", "l_shin"),
    ("l_shin", "l_foot"), ("torso", "r_thigh", "l_thigh"), ("torso", "neck"), ("neck", "head"), ("head",),
    ("r_forearm", "r_hand"), ("r_upper_arm", "r_forearm"), ("r_upper_arm",), ("l_upper_arm",),
    ("l_upper_arm", "l_forearm"), ("l_forearm", "l_hand"),
)


@dataclasses.dataclass
class Layers:
    """The image being drawn and its per-pixel part labels.

    Attributes:
        image: RGB uint8 [H, W, 3].
        label: uint8 [H, W]; 0 = background, else the label of the person part drawn last at that pixel.
    """

    image: np.ndarray
    label: np.ndarray


def _fix(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


def _fx(v: float) -> int:
    return int(round(v * _ONE))


def _color(c) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(round(v)))) for v in c)


def fill_capsule(img: np.ndarray, p0, p1, r0: float, r1: float, value, line_type: int) -> None:
    """Fills a tapered capsule (two discs joined by their side lines) in place; points (x, y), radii in px."""
    x0, y0, x1, y1 = float(p0[0]), float(p0[1]), float(p1[0]), float(p1[1])
    n = math.hypot(x1 - x0, y1 - y0)
    if n > 1e-3:
        px, py = (y0 - y1) / n, (x1 - x0) / n
        quad = np.array([[_fx(x0 + px * r0), _fx(y0 + py * r0)], [_fx(x1 + px * r1), _fx(y1 + py * r1)],
                         [_fx(x1 - px * r1), _fx(y1 - py * r1)], [_fx(x0 - px * r0), _fx(y0 - py * r0)]], np.int32)
        cv2.fillConvexPoly(img, quad, value, line_type, _SHIFT)
    cv2.circle(img, (_fx(x0), _fx(y0)), max(_fx(r0), 1), value, -1, line_type, _SHIFT)
    cv2.circle(img, (_fx(x1), _fx(y1)), max(_fx(r1), 1), value, -1, line_type, _SHIFT)


def draw_capsule(layers: Layers, p0, p1, r0: float, r1: float, color: np.ndarray, outline: float, label: int,
                 highlight: bool = True) -> None:
    """A shaded limb: outline, fill, highlight along the lit side; labels its pixels (outline included)."""
    fill_capsule(layers.image, p0, p1, r0 + outline, r1 + outline, _color(0.45 * color), _AA)
    fill_capsule(layers.image, p0, p1, r0, r1, _color(color), _AA)
    fill_capsule(layers.label, p0, p1, r0 + outline, r1 + outline, int(label), cv2.LINE_8)
    dx, dy = float(p1[0] - p0[0]), float(p1[1] - p0[1])
    n = math.hypot(dx, dy)
    r = 0.5 * (r0 + r1)
    if highlight and n > 1e-3 and r >= 2.5:
        px, py = -dy / n, dx / n
        k = (0.4 * r) * (1.0 if px * _LIGHT_2D[0] + py * _LIGHT_2D[1] >= 0 else -1.0)
        cv2.line(layers.image, (_fx(p0[0] + k * px), _fx(p0[1] + k * py)), (_fx(p1[0] + k * px), _fx(p1[1] + k * py)),
                 _color(1.15 * color + 25), max(1, int(0.3 * r)), _AA, _SHIFT)


def _draw_polygon(layers: Layers, points: np.ndarray, color: np.ndarray, outline: float, label: int) -> None:
    hull = cv2.convexHull(_fix(points))
    thick = max(1, int(round(2 * outline)))
    cv2.polylines(layers.image, [hull], True, _color(0.45 * color), thick, _AA, _SHIFT)
    cv2.fillConvexPoly(layers.image, hull, _color(color), _AA, _SHIFT)
    cv2.fillConvexPoly(layers.label, hull, int(label), cv2.LINE_8, _SHIFT)
    cv2.polylines(layers.label, [hull], True, int(label), thick, cv2.LINE_8, _SHIFT)


def _slab(center: np.ndarray, axes: np.ndarray, half_width: float, half_depth: float) -> np.ndarray:
    """The 4 corners [4, 3] of a horizontal cross-section of the trunk."""
    lat, fwd = axes[0], axes[2]
    return np.stack([center + sx * half_width * lat + sz * half_depth * fwd for sx in (-1, 1) for sz in (-1, 1)])


def _draw_torso(layers: Layers, body: sk.Body, look: dict, to_px, unit: float, shade: float, outline: float,
                label: int) -> None:
    j = body.joints
    up_c, up_h = body.torso_axes[1], body.hip_axes[1]
    hd = body.torso_half_depth
    top = _slab(j[sk.THORAX] + 0.1 * up_c, body.torso_axes, body.shoulder_half_width + 0.12, hd)
    waist_c = 0.5 * (j[sk.THORAX] + j[sk.PELVIS])
    waist = _slab(waist_c, body.torso_axes, 0.62, 0.9 * hd)
    bottom = _slab(j[sk.PELVIS] - 0.08 * up_h, body.hip_axes, body.hip_half_width + 0.22, 0.85 * hd)
    shirt = look["shirt"] * shade
    _draw_polygon(layers, to_px(np.concatenate([top, waist, bottom])), shirt, outline, label)
    belt = _slab(j[sk.PELVIS] + 0.35 * (j[sk.THORAX] - j[sk.PELVIS]), body.hip_axes, 0.6, 0.88 * hd)
    _draw_polygon(layers, to_px(np.concatenate([belt, bottom])), look["pants"] * shade, outline, label)

    # Front-only marks (neckline, placket): they tell the chest from the back.
    fwd = body.torso_axes[2]
    if fwd[2] < -0.15:
        lat = body.torso_axes[0]
        base = j[sk.THORAX] + 0.95 * hd * fwd
        if look["neckline"] != "high":
            depth = 0.5 if look["neckline"] == "v" else 0.22
            pts = [base + 0.25 * lat + 0.08 * up_c, base - 0.25 * lat + 0.08 * up_c, base - depth * up_c]
            if look["neckline"] == "round":
                pts += [base - 0.17 * lat - 0.16 * up_c, base + 0.17 * lat - 0.16 * up_c]
            cv2.fillConvexPoly(layers.image, cv2.convexHull(_fix(to_px(np.stack(pts)))), _color(look["skin"] * shade),
                               _AA, _SHIFT)
        if look["placket"]:
            p0 = to_px(base - 0.5 * up_c)
            p1 = to_px(j[sk.PELVIS] + 0.35 * (j[sk.THORAX] - j[sk.PELVIS]) + 0.9 * hd * body.hip_axes[2])
            cv2.line(layers.image, tuple(int(v) for v in _fix(p0[0])), tuple(int(v) for v in _fix(p1[0])),
                     _color(0.6 * shirt), max(1, int(0.05 * unit)), _AA, _SHIFT)


def _head_regions(u: np.ndarray, bald: bool) -> np.ndarray:
    """Region id per unit-sphere point u [..., 3] (left, up, forward): 0 hair, 1 skin, 2 eye, 3 mouth."""
    left, up, fwd = u[..., 0], u[..., 1], u[..., 2]
    skin = (fwd > 0.25) & (up < 0.42)
    skin |= (up < -0.5) & (fwd > -0.3)
    skin |= (np.abs(left) > 0.85) & (np.abs(up) < 0.3) & (np.abs(fwd) < 0.25)
    if bald:
        skin |= up < 0.75
    region = skin.astype(np.uint8)
    eye = ((np.abs(left) - 0.36) ** 2 + (up - 0.12) ** 2 + (fwd - 0.92) ** 2) < 0.13 ** 2
    mouth = (np.abs(left) < 0.22) & (np.abs(up + 0.48) < 0.06) & (fwd > 0.7)
    region[eye] = 2
    region[mouth] = 3
    return region


def _draw_head(layers: Layers, center: np.ndarray, m: np.ndarray, look: dict, shade: float, outline: float,
               label: int) -> None:
    """Rasterises the head ellipsoid {center + m u : |u| <= 1} pixel by pixel (center [3] and m [3, 3] in px)."""
    h, w = layers.label.shape
    ext = np.sqrt((m[:2] ** 2).sum(1)) + outline + 1
    c0, c1 = max(int(np.floor(center[0] - ext[0])), 0), min(int(np.ceil(center[0] + ext[0])) + 1, w)
    r0, r1 = max(int(np.floor(center[1] - ext[1])), 0), min(int(np.ceil(center[1] + ext[1])) + 1, h)
    # Silhouette outline first, the shaded surface inside it after.
    s = m[:2] @ m[:2].T
    evals, evecs = np.linalg.eigh(s)
    axes = np.sqrt(np.maximum(evals, 1e-6))
    angle = float(np.degrees(np.arctan2(evecs[1, 1], evecs[0, 1])))
    dark = _color(0.45 * look["hair"] + 10)
    ell_axes = (int(round((axes[1] + 0.5 * outline) * _ONE)), int(round((axes[0] + 0.5 * outline) * _ONE)))
    ctr = tuple(int(v) for v in _fix(center[:2]))
    thick = max(1, int(round(outline)) + 1)
    cv2.ellipse(layers.image, ctr, ell_axes, angle, 0, 360, dark, thick, _AA, _SHIFT)
    cv2.ellipse(layers.label, ctr, ell_axes, angle, 0, 360, int(label), thick, cv2.LINE_8, _SHIFT)
    if c1 <= c0 or r1 <= r0:
        return
    minv = np.linalg.inv(m)
    dx = np.arange(c0, c1, dtype=np.float64)[None, :] - center[0]
    dy = np.arange(r0, r1, dtype=np.float64)[:, None] - center[1]
    a = minv[:, 2]
    b = minv[:, 0, None, None] * dx + minv[:, 1, None, None] * dy  # [3, rows, cols]
    ab = np.tensordot(a, b, 1)
    disc = ab ** 2 - (a @ a) * ((b ** 2).sum(0) - 1.0)
    inside = disc >= 0
    dz = (-ab - np.sqrt(np.maximum(disc, 0.0))) / (a @ a)  # nearer of the two surface points
    u = np.moveaxis(b + a[:, None, None] * dz, 0, -1)  # [rows, cols, 3] on the unit sphere
    normal = u @ minv  # = (minv^T u)^T, the surface normal direction in camera space
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    light = 0.55 + 0.45 * np.clip(normal @ _LIGHT_3D, 0.0, 1.0)
    palette = np.stack([look["hair"], look["skin"], 0.25 * look["hair"] + 10, 0.6 * look["skin"] * [1, 0.6, 0.6]])
    color = palette[_head_regions(u, look["bald"])] * (shade * light)[..., None]
    win = layers.image[r0:r1, c0:c1]
    win[inside] = np.clip(np.round(color[inside]), 0, 255).astype(np.uint8)
    layers.label[r0:r1, c0:c1][inside] = label

    # The nose sticks out of the face: seen whenever its tip is not behind the head.
    tip, base = center + m @ [0.0, -0.08, 1.18], center + m @ [0.0, 0.18, 0.9]
    ti, tj = int(round(tip[1])) - r0, int(round(tip[0])) - c0
    hidden = 0 <= ti < inside.shape[0] and 0 <= tj < inside.shape[1] and inside[ti, tj] and (
        tip[2] > center[2] + dz[ti, tj])
    if not hidden:
        r = max(0.09 * np.sqrt(axes.max() * axes.min()), 1.0)
        nose = look["skin"] * shade * 0.85
        fill_capsule(layers.image, base[:2], tip[:2], r, 0.7 * r, _color(nose), _AA)
        fill_capsule(layers.label, base[:2], tip[:2], r, 0.7 * r, int(label), cv2.LINE_8)


def draw_person(layers: Layers, body: sk.Body, look: dict, origin: np.ndarray, unit: float,
                labels: int | None = None, light: float = 1.0) -> dict[str, int]:
    """Draws a person back to front and returns the label of each part.

    Args:
        layers: where to draw (in place).
        body: the posed person (body units, pelvis at the origin).
        look: ``appearance.sample_appearance`` output.
        origin: [2] drawing position of the pelvis (px).
        unit: pixels per body unit (the head length in pixels).
        labels: None to label parts 1, 2, ... in drawing order (a later part has a larger label), or one label
            for all parts (e.g. 0 for a person in the background).
        light: overall brightness of this person.

    Returns:
        {part name: label} for the parts in ``PART_NAMES``.
    """
    j = body.joints
    z_mid = j[sk.PELVIS, 2]
    outline = max(0.06 * unit, 0.8)

    def to_px(p: np.ndarray) -> np.ndarray:
        return origin + unit * np.atleast_2d(p)[:, :2]

    def shade(z: float) -> float:
        # The far side of the body is darker: a cue to which side faces the camera.
        return light * min(max(1.0 - 0.3 * float(z - z_mid), 0.55), 1.2)

    skin, shirt, pants = look["skin"], look["shirt"], look["pants"]
    limbs = {}
    for side, (hip, kne, ank), (sho, elb, wri), i in (
            ("r", (sk.R_HIP, sk.R_KNE, sk.R_ANK), (sk.R_SHO, sk.R_ELB, sk.R_WRI), 0),
            ("l", (sk.L_HIP, sk.L_KNE, sk.L_ANK), (sk.L_SHO, sk.L_ELB, sk.L_WRI), 1)):
        limbs[side + "_thigh"] = (j[hip], j[kne], "thigh", pants)
        limbs[side + "_shin"] = (j[kne], j[ank], "shin", skin if look["shorts"] else pants)
        limbs[side + "_foot"] = (j[ank], body.toes[i], "foot", look["shoes"])
        limbs[side + "_upper_arm"] = (j[sho], j[elb], "upper_arm", skin if look["sleeves"] == "none" else shirt)
        limbs[side + "_forearm"] = (j[elb], j[wri], "forearm", shirt if look["sleeves"] == "long" else skin)
        limbs[side + "_hand"] = (j[wri], body.knuckles[i], "hand", skin)
    limbs["neck"] = (j[sk.THORAX], j[sk.NECK], "neck", skin)

    depth = {name: 0.5 * (p0[2] + p1[2]) for name, (p0, p1, _, _) in limbs.items()}
    depth["torso"] = 0.5 * (j[sk.THORAX, 2] + j[sk.PELVIS, 2]) + _TORSO_DEPTH_BIAS
    depth["head"] = body.head_center[2]
    names = list(PART_NAMES)
    order = np.argsort([-depth[n] for n in names], kind="stable")  # far first
    part_labels = {}
    for rank, k in enumerate(order):
        name = names[k]
        label = rank + 1 if labels is None else labels
        part_labels[name] = label
        s = shade(depth[name] - (_TORSO_DEPTH_BIAS if name == "torso" else 0.0))
        if name == "torso":
            _draw_torso(layers, body, look, to_px, unit, s, outline, label)
        elif name == "head":
            m = unit * body.head_axes.T @ np.diag(sk.HEAD_AXES)
            center = np.concatenate([to_px(body.head_center)[0], [unit * body.head_center[2]]])
            _draw_head(layers, center, m, look, s, outline, label)
        else:
            p0, p1, kind, color = limbs[name]
            r0, r1 = body.radii[kind]
            draw_capsule(layers, to_px(p0)[0], to_px(p1)[0], unit * r0, unit * r1, color * s, outline, label)
    return part_labels


def person_window(body: sk.Body, origin: np.ndarray, unit: float, shape: tuple[int, int]) -> tuple[int, ...]:
    """(r0, r1, c0, c1): an image window that holds every pixel drawn for the person (clipped to ``shape``)."""
    pts = origin + unit * np.concatenate([body.joints, body.toes, body.knuckles, body.head_center[None]])[:, :2]
    lo = np.floor(pts.min(0) - unit).astype(int)  # one head length covers every radius and the head
    hi = np.ceil(pts.max(0) + unit).astype(int) + 1
    h, w = shape
    return max(lo[1], 0), min(hi[1], h), max(lo[0], 0), min(hi[0], w)


def apply_cloth_patterns(layers: Layers, look: dict, part_labels: dict[str, int], unit: float,
                         window: tuple[int, ...] | None = None) -> None:
    """Overlays the shirt/trouser patterns (second colour) on the pixels of the clothed parts, in place.

    Uses colour ratios so the shading drawn underneath is kept. Only parts drawn in the person's clothing
    colour are patterned (bare skin, shoes and the head are not). ``window`` (r0, r1, c0, c1), e.g.
    ``person_window``, limits the work to where the person is.
    """
    r0, r1, c0, c1 = window if window is not None else (0, layers.label.shape[0], 0, layers.label.shape[1])
    if r1 <= r0 or c1 <= c0:
        return
    label, image = layers.label[r0:r1, c0:c1], layers.image[r0:r1, c0:c1]
    cloth = {"torso": "shirt", "r_thigh": "pants", "l_thigh": "pants"}
    for side in "rl":
        if not look["shorts"]:
            cloth[side + "_shin"] = "pants"
        if look["sleeves"] != "none":
            cloth[side + "_upper_arm"] = "shirt"
        if look["sleeves"] == "long":
            cloth[side + "_forearm"] = "shirt"
    for garment in ("shirt", "pants"):
        kind, *_ = look[garment + "_pattern"]
        ids = [part_labels[p] for p, g in cloth.items() if g == garment]
        if kind == looks.PLAIN or not ids:
            continue
        sel = np.isin(label, ids)
        sel &= looks.cloth_pattern(look[garment + "_pattern"], label.shape, (r0, c0), unit)
        ratio = np.clip((look[garment + "2"] + 10) / (look[garment] + 10), 0.15, 5.0)
        image[sel] = np.clip(np.round(image[sel] * ratio), 0, 255).astype(np.uint8)
