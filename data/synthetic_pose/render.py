"""One synthetic MPII-like example: a cluttered image with one annotated person, and its MPII annotations.

``render_example(seed, index)`` is pure and deterministic: everything is drawn from a numpy Generator seeded
with (seed, index), and OpenCV only draws on uint8 images. (Geometry goes through float trigonometry and is
then rounded to 1/16 px, so two machines whose libm differ in the last bit could, in principle, differ in a
pixel; in practice the output depends only on the numpy/OpenCV versions.)

The annotations follow the MPII release conventions (docs/records.md §3 and §6):
joints in the 1-based image frame (numpy pixel [r, c] is centred at (c + 1, r + 1)); joints outside the image
are not annotated; ``visible`` is False where a nearer part of the body (or a foreground object) covers the
joint; the head box is axis-aligned around the head with MPII's proportions (head size 0.6 * diagonal = 0.75 *
head length, like MPII, where the neck-to-head-top distance is 1.33 head sizes); ``scale`` = head size / 25, the
relation that holds in the MPII annotations (so the 250 * scale box frames the person as in MPII); ``center``
(objpos) lies between pelvis and thorax, a quarter of the way up, with jitter, as MPII's rough positions do.
"""

from __future__ import annotations

import numpy as np

from data.joints import NUM_JOINTS
from data.synthetic_pose import appearance as looks
from data.synthetic_pose import painter
from data.synthetic_pose import skeleton as sk

# MPII: head_size / (200 * scale) = 0.125 exactly, i.e. scale = head_size / 25.
HEAD_SIZE_PER_SCALE = 25.0
# MPII head box: neck-to-top distance L, diagonal 1.25 L (head size 0.75 L): 0.75 L across, L along the head.
_HEAD_BOX_ACROSS, _HEAD_BOX_ALONG = 0.75, 1.0
_FOREGROUND = 255  # label of anything drawn in front of the annotated person

DEFAULT_MIN_SIZE = 256
DEFAULT_MAX_SIZE = 400


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of example ``index`` of a dataset with ``seed`` (both non-negative integers)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative integers, got seed={seed}, index={index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def _draw_extra_person(rng: np.random.Generator, layers: painter.Layers, center: np.ndarray, unit: float,
                       label: int) -> None:
    """A second, unannotated person beside the main one (partly visible), labelled ``label`` everywhere."""
    body, _ = sk.sample_body(rng)
    look = looks.sample_appearance(rng)
    side = 1.0 if rng.random() < 0.5 else -1.0
    offset = np.array([side * rng.uniform(3.0, 6.0), rng.uniform(-2.0, 2.0)]) * unit
    scratch = painter.Layers(layers.image, np.zeros_like(layers.label))
    u = unit * rng.uniform(0.75, 1.3)
    origin = center + offset
    parts = painter.draw_person(scratch, body, look, origin, u, light=rng.uniform(0.7, 1.1))
    painter.apply_cloth_patterns(scratch, look, parts, u, painter.person_window(body, origin, u, scratch.label.shape))
    layers.label[scratch.label > 0] = label


def _draw_loose_limbs(rng: np.random.Generator, layers: painter.Layers, unit: float, count: int) -> None:
    """Body-part-like distractors in the background: capsules in skin and cloth colours."""
    h, w = layers.label.shape
    scratch = painter.Layers(layers.image, np.zeros_like(layers.label))  # they stay background (label 0)
    for _ in range(count):
        p0 = rng.uniform([0, 0], [w, h])
        length = unit * rng.uniform(0.8, 2.0)
        angle = rng.uniform(0, 2 * np.pi)
        p1 = p0 + length * np.array([np.cos(angle), np.sin(angle)])
        r = unit * rng.uniform(0.1, 0.25)
        color = looks.skin_color(rng) if rng.random() < 0.5 else looks.random_color(rng)
        painter.draw_capsule(scratch, p0, p1, r, 0.8 * r, color, max(0.06 * unit, 0.8), 1)


def joint_visibility(label: np.ndarray, probes: np.ndarray, part_labels: dict[str, int]) -> np.ndarray:
    """Whether each joint is seen, from the part-label map of its person.

    A joint is hidden when the label at its probe point belongs to a part that does not contain the joint
    (``painter.JOINT_PARTS``) and was drawn after the joint's own parts (a larger label: nearer, or an
    object in front). Probes outside the image count as visible (they are not annotated anyway).

    Args:
        label: uint8 [H, W] label map (``painter.draw_person`` with ranked labels, 255 for things in front).
        probes: [16, 2] (x, y) drawing coordinates (0-based pixel centres) where each joint is looked at.
        part_labels: the person's {part name: label}.

    Returns:
        bool [16].
    """
    h, w = label.shape
    visible = np.ones(NUM_JOINTS, bool)
    for j in range(NUM_JOINTS):
        c, r = int(np.round(probes[j, 0])), int(np.round(probes[j, 1]))
        if not (0 <= r < h and 0 <= c < w):
            continue
        seen = int(label[r, c])
        own = [part_labels[p] for p in painter.JOINT_PARTS[j]]
        visible[j] = seen == 0 or seen in own or seen < min(own)
    return visible


def annotate_person(label: np.ndarray, body: sk.Body, origin: np.ndarray, unit: float,
                    part_labels: dict[str, int], dropped: np.ndarray | None = None) -> dict:
    """MPII annotations of a drawn person.

    Args:
        label: uint8 [H, W] label map after everything was drawn (see ``joint_visibility``).
        body: the person; origin: [2] drawing position of its pelvis; unit: pixels per body unit.
        part_labels: the person's {part name: label} from ``painter.draw_person``.
        dropped: optional bool [16], joints left unannotated on purpose (as MPII annotators sometimes do).

    Returns:
        dict: ``joints`` float32 [16, 2] 1-based image frame (0 where not annotated), ``annotated`` and
        ``visible`` bool [16], ``head_box`` float32 [4], ``head_size`` and ``scale`` float32.
    """
    h, w = label.shape
    joints_px = origin + unit * body.joints[:, :2]  # 0-based drawing coordinates
    x, y = joints_px[:, 0], joints_px[:, 1]
    annotated = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    if dropped is not None:
        annotated &= ~dropped
    # The head top lies on the outline of the head: look at a point just inside it.
    probes = joints_px.copy()
    down = joints_px[sk.NECK] - joints_px[sk.HEAD_TOP]
    probes[sk.HEAD_TOP] += 0.15 * unit * down / max(float(np.hypot(*down)), 1e-6)
    visible = joint_visibility(label, probes, part_labels) & annotated
    box = head_box(joints_px[sk.NECK] + 1.0, joints_px[sk.HEAD_TOP] + 1.0, unit)
    size = 0.6 * np.hypot(box[2] - box[0], box[3] - box[1])
    return {
        "joints": np.where(annotated[:, None], joints_px + 1.0, 0.0).astype(np.float32),
        "annotated": annotated,
        "visible": visible,
        "head_box": box.astype(np.float32),
        "head_size": np.float32(size),
        "scale": np.float32(size / HEAD_SIZE_PER_SCALE),
    }


def head_box(neck: np.ndarray, top: np.ndarray, head_length: float) -> np.ndarray:
    """MPII-like head box (x1, y1, x2, y2) [4] centred between the neck and head top (any frame).

    The box is 0.75 * head_length across the head and head_length along it; it stands upright unless the head
    lies closer to horizontal, so its diagonal (and hence the head size) is always 1.25 * head_length.
    """
    d = np.abs(top - neck)
    along_x = d[0] > d[1]
    half_w = 0.5 * head_length * (_HEAD_BOX_ALONG if along_x else _HEAD_BOX_ACROSS)
    half_h = 0.5 * head_length * (_HEAD_BOX_ACROSS if along_x else _HEAD_BOX_ALONG)
    c = 0.5 * (neck + top)
    return np.array([c[0] - half_w, c[1] - half_h, c[0] + half_w, c[1] + half_h])


def render_example(seed: int, index: int, *, min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE,
                   clutter: bool = True, return_labels: bool = False) -> dict:
    """Renders example ``index`` of the synthetic dataset with ``seed``.

    Args:
        seed, index: non-negative integers; the same pair always gives the same example.
        min_size, max_size: range of the image width and height (each drawn independently), pixels.
        clutter: False draws the person alone on a plain grey background, with no distractors, occluders or
            noise (a clean variant, for tests and debugging).
        return_labels: also return the part-label map (``labels`` uint8 [H, W]: 0 background, 1..15 the
            annotated person's parts in drawing order, 255 anything in front of them) and ``part_labels``.

    Returns:
        dict with ``image`` RGB uint8 [H, W, 3]; ``joints`` float32 [16, 2] (x, y), 1-based image frame, 0 where
        not annotated; ``annotated`` bool [16]; ``visible`` bool [16] (False where not annotated);
        ``head_box`` float32 [4] (x1, y1, x2, y2); ``head_size`` float32; ``center`` float32 [2] (objpos);
        ``scale`` float32 (MPII scale); ``image_size`` int32 [2] (width, height); ``image_name`` str.
    """
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    rng = example_rng(seed, index)
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    unit = min(w, h) * rng.uniform(0.06, 0.115)  # head length in pixels
    body, _ = sk.sample_body(rng)
    look = looks.sample_appearance(rng)
    j3 = body.joints

    # objpos: a quarter of the way from pelvis to thorax, jittered; placed in the middle part of the image.
    rel = j3[sk.PELVIS, :2] + 0.27 * (j3[sk.THORAX, :2] - j3[sk.PELVIS, :2]) + rng.normal(0, 0.3, 2)
    objpos = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    origin = objpos - unit * rel

    if clutter:
        image = looks.render_background(rng, h, w, unit)
    else:
        image = np.full((h, w, 3), 128, np.uint8)
    layers = painter.Layers(image, np.zeros((h, w), np.uint8))
    extra = clutter and rng.random() < 0.25
    extra_in_front = extra and rng.random() < 0.4
    if clutter:
        _draw_loose_limbs(rng, layers, unit, int(rng.integers(0, 3)))
    if extra and not extra_in_front:
        _draw_extra_person(rng, layers, objpos, unit, 0)
    parts = painter.draw_person(layers, body, look, origin, unit, light=rng.uniform(0.8, 1.15) if clutter else 1.0)
    painter.apply_cloth_patterns(layers, look, parts, unit, painter.person_window(body, origin, unit, (h, w)))
    if extra_in_front:
        _draw_extra_person(rng, layers, objpos, unit, _FOREGROUND)
    if clutter and rng.random() < 0.2:
        # An object in front of the person (MPII people are often partly hidden by things).
        near = origin + unit * j3[rng.integers(NUM_JOINTS), :2] + rng.normal(0, unit, 2)
        looks.draw_clutter_shape(rng, layers.image, looks.random_color(rng), unit * rng.uniform(0.5, 1.5), near,
                                 mask=layers.label, mask_value=_FOREGROUND)
    if clutter:
        layers.image = looks.add_noise(rng, layers.image)

    ann = annotate_person(layers.label, body, origin, unit, parts, rng.random(NUM_JOINTS) < 0.01)
    out = {
        "image": layers.image,
        **ann,
        "center": (objpos + 1.0).astype(np.float32),
        "image_size": np.array([w, h], np.int32),
        "image_name": f"synthetic_{seed}_{index:08d}.png",
    }
    if return_labels:
        out["labels"] = layers.label
        out["part_labels"] = parts
    return out
