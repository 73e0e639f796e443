"""Tests for data/augment.py: geometry, masks, inverse transform, colour, antialiasing, parameter sampling."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from data import augment as aug
from data.joints import FLIP_PERMUTATION, MPII_MEAN_RGB, NUM_JOINTS

CANVAS = 192  # Box 128 px, margins 32 px.
BOX = 2 * CANVAS / 3
# A non-trivial canvas -> image map (scale and offset), as the builders store it.
CANVAS_TO_IMAGE = np.array([[2.5, 0.0, 310.0], [0.0, 2.5, -40.0]], np.float32)


def canvas_to_image_points(p: np.ndarray) -> np.ndarray:
    return p @ CANVAS_TO_IMAGE[:, :2].T.astype(np.float64) + CANVAS_TO_IMAGE[:, 2]


def make_record(canvas: np.ndarray, joints_canvas: np.ndarray, annotated=None) -> dict:
    annotated = np.ones(NUM_JOINTS, bool) if annotated is None else np.asarray(annotated, bool)
    return {
        "image": canvas,
        "joints": canvas_to_image_points(joints_canvas).astype(np.float32),
        "annotated": annotated,
        "canvas_to_image": CANVAS_TO_IMAGE,
    }


def blob_canvas(centre: np.ndarray, sigma: float = 3.0, amplitude: float = 150.0) -> np.ndarray:
    """A grey Gaussian dot centred at canvas pixel-centre coordinates ``centre`` (x, y) on black."""
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS]
    g = amplitude * np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2)


def centroid(image: np.ndarray) -> np.ndarray:
    """Intensity centroid (x, y) of an [S, S, 3] image in 0-based pixel-centre coordinates."""
    w = image.sum(axis=-1)
    ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def to_pixels(coords: np.ndarray, size: int) -> np.ndarray:
    return ((coords + 1.0) * size - 1.0) / 2.0


def random_params(rng: np.random.Generator) -> aug.AugmentParams:
    return aug.AugmentParams(
        scale=float(rng.uniform(0.7, 1.42)), rotation_deg=float(rng.uniform(-60, 60)),
        flip=bool(rng.uniform() < 0.5), colour=tuple(rng.uniform(0.6, 1.4, 3)))


def test_dot_at_joint_lands_at_its_coords():
    """The image warp and the joint transform are the same map: a dot drawn at a joint appears at its coords."""
    rng = np.random.default_rng(0)
    for trial in range(24):
        params = random_params(rng)
        out_size = (32, 64, 224)[trial % 3]
        joint = int(rng.integers(NUM_JOINTS))
        # A point that stays well inside the crop for every scale/rotation above.
        centre = CANVAS / 2 - 0.5 + rng.uniform(-0.3, 0.3, size=2) * BOX / 2
        joints = np.zeros((NUM_JOINTS, 2))
        joints[joint] = centre
        out = aug.augment(make_record(blob_canvas(centre), joints), params, out_size=out_size)
        slot = FLIP_PERMUTATION[joint] if params.flip else joint
        expected = to_pixels(out["coords"][slot].astype(np.float64), out_size)
        np.testing.assert_allclose(centroid(out["image"]), expected, atol=0.1,
                                   err_msg=f"{params}, out_size {out_size}")
        assert out["mask"][slot] == 1.0


def test_dot_from_jpeg_bytes():
    centre = np.array([70.0, 110.0])
    joints = np.zeros((NUM_JOINTS, 2))
    joints[3] = centre
    ok, jpeg = cv2.imencode(".jpg", blob_canvas(centre)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    params = aug.AugmentParams(scale=1.2, rotation_deg=25.0, flip=True)
    out = aug.augment(make_record(jpeg.tobytes(), joints), params, out_size=96)
    expected = to_pixels(out["coords"][FLIP_PERMUTATION[3]].astype(np.float64), 96)
    np.testing.assert_allclose(centroid(out["image"]), expected, atol=0.1)


def test_coords_follow_the_papers_formula():
    """o = R(r) F u / s with u the box-normalised joint, R = [[cos, sin], [-sin, cos]] (docs/paper-recipe.md §5)."""
    rng = np.random.default_rng(1)
    joints = rng.uniform(0, CANVAS - 1, size=(NUM_JOINTS, 2))
    u = (2 * (joints - CANVAS / 6) + 1) / BOX - 1  # docs/records.md §3: box = canvas px [C/6, 5C/6).
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    for _ in range(10):
        params = random_params(rng)
        r = math.radians(params.rotation_deg)
        rot = np.array([[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]])
        flip = np.diag([-1.0 if params.flip else 1.0, 1.0])
        expected = u @ (rot @ flip).T / params.scale
        if params.flip:
            expected = expected[list(FLIP_PERMUTATION)]
        out = aug.augment(make_record(canvas, joints), params, out_size=64)
        np.testing.assert_allclose(out["coords"], expected, atol=2e-6)


def test_identity_crop_edges_and_mask():
    """Without augmentation the person box is the crop: its outer edges are +-1; outside joints are masked."""
    edge_lo, edge_hi = CANVAS / 6 - 0.5, 5 * CANVAS / 6 - 0.5  # Box edges in pixel-centre coordinates.
    mid = CANVAS / 2 - 0.5  # The canvas (and box) centre.
    joints = np.full((NUM_JOINTS, 2), mid)
    joints[0] = [edge_lo, edge_lo]
    joints[1] = [edge_hi, mid]
    joints[2] = [edge_lo + 0.5, edge_hi - 0.5]  # Centres of the corner pixels: inside.
    joints[3] = [edge_lo - 0.5, mid]  # Outside on x only.
    joints[4] = [mid, edge_hi + 3]  # Outside on y only.
    annotated = np.ones(NUM_JOINTS, bool)
    annotated[5] = False
    out = aug.preprocess_eval(make_record(np.zeros((CANVAS, CANVAS, 3), np.uint8), joints, annotated), 32)
    np.testing.assert_allclose(out["coords"][0], [-1, -1], atol=1e-6)
    np.testing.assert_allclose(out["coords"][1], [1, 0], atol=1e-6)
    np.testing.assert_allclose(out["coords"][2], [-1 + 1 / BOX, 1 - 1 / BOX], atol=1e-6)
    np.testing.assert_allclose(out["coords"][6], [0, 0], atol=1e-6)
    expected_mask = np.ones(NUM_JOINTS)
    expected_mask[[0, 1, 3, 4, 5]] = 0
    np.testing.assert_array_equal(out["mask"], expected_mask)


def test_mask_is_annotated_and_inside_after_augmentation():
    rng = np.random.default_rng(2)
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    seen_outside = seen_unannotated = 0
    for _ in range(20):
        joints = rng.uniform(0, CANVAS - 1, size=(NUM_JOINTS, 2))
        annotated = rng.uniform(size=NUM_JOINTS) < 0.7
        params = random_params(rng)
        out = aug.augment(make_record(canvas, joints, annotated), params, out_size=32)
        ann = annotated[list(FLIP_PERMUTATION)] if params.flip else annotated
        inside = np.all(np.abs(out["coords"]) < 1, axis=-1)
        np.testing.assert_array_equal(out["mask"], (ann & inside).astype(np.float32))
        seen_outside += int(np.sum(ann & ~inside))
        seen_unannotated += int(np.sum(~ann & inside))
    assert seen_outside > 0 and seen_unannotated > 0  # Both masking reasons occurred.


def test_flip_swaps_left_right_slots_and_mirrors_the_image():
    rng = np.random.default_rng(3)
    canvas = rng.integers(0, 256, size=(CANVAS, CANVAS, 3), dtype=np.uint8)
    joints = rng.uniform(40, 150, size=(NUM_JOINTS, 2))
    annotated = np.zeros(NUM_JOINTS, bool)
    annotated[[0, 1, 2, 10, 11, 12, 9]] = True  # Right side and head.
    record = make_record(canvas, joints, annotated)
    plain = aug.augment(record, aug.AugmentParams(scale=1.1), out_size=48)
    flipped = aug.augment(record, aug.AugmentParams(scale=1.1, flip=True), out_size=48)
    for j in range(NUM_JOINTS):
        k = FLIP_PERMUTATION[j]
        np.testing.assert_allclose(flipped["coords"][k], plain["coords"][j] * [-1, 1], atol=1e-6)
        assert flipped["mask"][k] == plain["mask"][j]
    assert flipped["mask"][[5, 4, 3, 15, 14, 13, 9]].all() and not flipped["mask"][[0, 1, 2, 10, 11, 12]].any()
    np.testing.assert_allclose(flipped["image"], plain["image"][:, ::-1], atol=2 / 255)
    # The test-time-augmentation helpers undo the flip.
    np.testing.assert_allclose(aug.unflip_coords(flipped["coords"]), plain["coords"], atol=1e-6)
    np.testing.assert_allclose(aug.flip_images(plain["image"][None])[0], flipped["image"], atol=2 / 255)


def soft_argmax(heatmaps: np.ndarray) -> np.ndarray:
    """Normalised (x, y) expectation of maps [..., J, H, W] in the DSNT convention."""
    h, w = heatmaps.shape[-2:]
    gx, gy = (2 * np.arange(w) + 1) / w - 1, (2 * np.arange(h) + 1) / h - 1
    p = heatmaps / heatmaps.sum(axis=(-2, -1), keepdims=True)
    return np.stack([(p.sum(-2) * gx).sum(-1), (p.sum(-1) * gy).sum(-1)], axis=-1)


def test_unflip_heatmaps_agrees_with_unflip_coords():
    maps = np.random.default_rng(4).uniform(size=(2, NUM_JOINTS, 5, 7))
    np.testing.assert_allclose(soft_argmax(aug.unflip_heatmaps(maps)), aug.unflip_coords(soft_argmax(maps)),
                               atol=1e-12)


@pytest.mark.parametrize("augmented", [False, True])
def test_normalized_to_image_round_trips_joints(augmented):
    rng = np.random.default_rng(5)
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    for _ in range(10):
        joints = rng.uniform(-50, CANVAS + 50, size=(NUM_JOINTS, 2))
        record = make_record(canvas, joints)
        params = random_params(rng) if augmented else aug.IDENTITY
        out = aug.augment(record, params, out_size=64)
        coords = out["coords"]
        if params.flip:
            coords = coords[list(FLIP_PERMUTATION)]  # Back to the record's joint order.
        back = aug.normalized_to_image_points(coords, out["normalized_to_image"])
        np.testing.assert_allclose(back, record["joints"], atol=1e-3)


def test_normalized_to_image_batched():
    rng = np.random.default_rng(6)
    coords = rng.uniform(-1, 1, size=(3, NUM_JOINTS, 2))
    affines = rng.normal(size=(3, 2, 3))
    got = aug.normalized_to_image_points(coords, affines)
    for b in range(3):
        np.testing.assert_allclose(got[b], coords[b] @ affines[b, :, :2].T + affines[b, :, 2], atol=1e-12)


def test_colour_gain_and_clipping():
    canvas = np.full((CANVAS, CANVAS, 3), 200, np.uint8)
    params = aug.AugmentParams(scale=0.8, colour=(0.6, 1.0, 1.4))  # Zoom in: the crop is all canvas.
    out = aug.augment(make_record(canvas, np.zeros((NUM_JOINTS, 2))), params, out_size=40)
    np.testing.assert_allclose(out["image"][..., 0], 0.6 * 200 / 255, atol=1e-5)
    np.testing.assert_allclose(out["image"][..., 1], 200 / 255, atol=1e-5)
    np.testing.assert_allclose(out["image"][..., 2], 1.0, atol=1e-6)  # 1.4 * 200/255 > 1: clipped.
    assert out["image"].dtype == np.float32 and out["image"].shape == (40, 40, 3)


def test_hourglass_mean_subtraction():
    rng = np.random.default_rng(7)
    record = make_record(rng.integers(0, 256, size=(CANVAS, CANVAS, 3), dtype=np.uint8),
                         rng.uniform(0, CANVAS, size=(NUM_JOINTS, 2)))
    params = random_params(rng)
    mean = aug.input_mean_rgb(is_resnet=False)
    assert mean == MPII_MEAN_RGB and aug.input_mean_rgb(is_resnet=True) is None
    plain = aug.augment(record, params, out_size=256)
    centred = aug.augment(record, params, out_size=256, mean_rgb=mean)
    np.testing.assert_allclose(centred["image"], plain["image"] - np.float32(MPII_MEAN_RGB), atol=1e-7)
    np.testing.assert_array_equal(centred["coords"], plain["coords"])
    assert plain["image"].min() >= 0 and plain["image"].max() <= 1


def test_downsampling_is_antialiased():
    """A 1-px checkerboard averages to grey; point sampling at ~1/3 resolution would alias to strong patterns."""
    board = ((np.indices((CANVAS, CANVAS)).sum(0) % 2) * 255).astype(np.uint8)
    canvas = np.repeat(board[..., None], 3, axis=2)
    params = aug.AugmentParams(scale=0.75, rotation_deg=17.0)  # Crop 96 canvas px -> 32 px.
    out = aug.augment(make_record(canvas, np.zeros((NUM_JOINTS, 2))), params, out_size=32)
    assert abs(out["image"].mean() - 0.5) < 0.02
    assert out["image"].std() < 0.05


def test_eval_is_identity_augmentation_and_deterministic():
    rng = np.random.default_rng(8)
    record = make_record(rng.integers(0, 256, size=(CANVAS, CANVAS, 3), dtype=np.uint8),
                         rng.uniform(0, CANVAS, size=(NUM_JOINTS, 2)))
    a = aug.preprocess_eval(record, 56)
    b = aug.augment(record, aug.sample_augmentation(np.random.default_rng(0), "none"), out_size=56)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    params = aug.sample_augmentation(np.random.default_rng(123))
    assert params == aug.sample_augmentation(np.random.default_rng(123))
    x, y = aug.augment(record, params, out_size=56), aug.augment(record, params, out_size=56)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key])


def test_paper_code_parameter_distribution():
    rng = np.random.default_rng(9)
    draws = [aug.sample_augmentation(rng, "paper_code") for _ in range(4000)]
    scale = np.array([d.scale for d in draws])
    rot = np.array([d.rotation_deg for d in draws])
    colour = np.array([d.colour for d in draws])
    flip = np.array([d.flip for d in draws])
    assert scale.min() >= 2**-0.5 - 1e-12 and scale.max() <= 2**0.5 + 1e-12
    # P(|N(0, 0.25)| > 0.5) = 2 (1 - Phi(2)) = 0.0455: that mass sits exactly on the bounds.
    at_bounds = np.mean(np.isclose(np.abs(np.log2(scale)), 0.5))
    assert 0.03 < at_bounds < 0.062
    assert abs(np.std(np.log2(scale)) - 0.24) < 0.015  # A clipped N(0, 0.25).
    rotated = rot != 0
    assert 0.37 < rotated.mean() < 0.43
    assert np.abs(rot).max() <= 60
    assert 0.025 < np.mean(np.abs(rot[rotated]) == 60) < 0.07
    assert 0.47 < flip.mean() < 0.53
    assert colour.min() >= 0.6 and colour.max() < 1.4 and abs(colour.mean() - 1.0) < 0.01
    assert abs(np.corrcoef(colour[:, 0], colour[:, 1])[0, 1]) < 0.05  # Independent per channel.


def test_paper_text_parameter_distribution():
    rng = np.random.default_rng(10)
    draws = [aug.sample_augmentation(rng, "paper_text") for _ in range(3000)]
    scale = np.array([d.scale for d in draws])
    rot = np.array([d.rotation_deg for d in draws])
    assert 0.75 <= scale.min() < 0.76 and 1.24 < scale.max() <= 1.25
    assert np.all(rot != 0) and -30 <= rot.min() < -29 and 29 < rot.max() <= 30
    assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
    assert aug.sample_augmentation(rng, "none") == aug.IDENTITY


def test_bad_input_raises_one_clear_error():
    canvas = np.zeros((CANVAS, CANVAS, 3), np.uint8)
    record = make_record(canvas, np.zeros((NUM_JOINTS, 2)))
    with pytest.raises(ValueError, match="unknown augmentation variant"):
        aug.sample_augmentation(np.random.default_rng(0), "newell")
    with pytest.raises(ValueError, match="missing"):
        aug.augment({k: v for k, v in record.items() if k != "canvas_to_image"}, aug.IDENTITY, out_size=8)
    with pytest.raises(ValueError, match="square RGB uint8"):
        aug.augment({**record, "image": np.zeros((CANVAS, CANVAS + 1, 3), np.uint8)}, aug.IDENTITY, out_size=8)
    with pytest.raises(ValueError, match="could not be decoded"):
        aug.augment({**record, "image": b"not a jpeg"}, aug.IDENTITY, out_size=8)
    with pytest.raises(ValueError, match="joints"):
        aug.augment({**record, "joints": np.zeros((14, 2))}, aug.IDENTITY, out_size=8)
    with pytest.raises(ValueError, match="out_size"):
        aug.augment(record, aug.IDENTITY, out_size=0)
    with pytest.raises(ValueError, match="scale"):
        aug.augment(record, aug.AugmentParams(scale=0.0), out_size=8)
