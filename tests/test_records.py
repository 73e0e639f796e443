"""Tests of data/records.py: person box, canvas affine, canvas rendering, JPEG helpers, tfds features."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data import records


def test_person_box_matches_torchdata_reference():
    # anibali/torchdata tests: centre (684, 309), scale 4.9284805 -> box (67.939938, -233.132855, 1300.060062,
    # 998.987269); dsnt-pose2d val person 0: objpos (966, 340), scale 4.718488 -> (376.189, -179.034, ...).
    np.testing.assert_allclose(records.person_box((684, 309), 4.9284805),
                               [67.939938, -233.132855, 1300.060062, 998.987269], atol=1e-5)
    np.testing.assert_allclose(records.person_box((966, 340), 4.718488),
                               [376.189, -179.034, 1555.811, 1000.588], atol=1e-3)


@pytest.mark.parametrize("canvas_size", [96, 576])
def test_canvas_transform_places_box_on_pixel_boundaries(canvas_size):
    c = canvas_size
    center, scale = (594.0, 257.0), 3.021046176409755
    a = records.canvas_transform(center, scale, c)
    x1, y1, x2, y2 = records.person_box(center, scale)
    # Box edges fall on the canvas pixel edges C/6 - 0.5 and 5C/6 - 0.5 (pixel centres are integers).
    np.testing.assert_allclose(records.image_to_canvas([[x1, y1], [x2, y2]], a),
                               [[c / 6 - 0.5] * 2, [5 * c / 6 - 0.5] * 2], atol=1e-9)
    # The canvas edges are 1.5 box sides apart, the box centre is the canvas centre.
    np.testing.assert_allclose(records.canvas_to_image_points([[-0.5, -0.5], [c - 0.5, c - 0.5]], a),
                               [[x1 - (x2 - x1) / 4, y1 - (y2 - y1) / 4], [x2 + (x2 - x1) / 4, y2 + (y2 - y1) / 4]],
                               atol=1e-9)
    np.testing.assert_allclose(records.image_to_canvas([594.0, 257.0 + 15 * scale], a), [(c - 1) / 2] * 2,
                               atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(cx=st.floats(-500, 2000), cy=st.floats(-500, 2000), s=st.floats(0.05, 20), c=st.sampled_from([48, 96, 576]),
       u=st.floats(-100, 700), v=st.floats(-100, 700))
def test_image_to_canvas_inverts_canvas_to_image(cx, cy, s, c, u, v):
    a = records.canvas_transform((cx, cy), s, c)
    back = records.image_to_canvas(records.canvas_to_image_points([u, v], a), a)
    np.testing.assert_allclose(back, [u, v], atol=1e-6 * max(1.0, abs(u), abs(v)))


@pytest.mark.parametrize("bad", [dict(center=(1.0,), scale=1.0), dict(center=(1.0, 2.0), scale=0.0),
                                 dict(center=(np.nan, 2.0), scale=1.0), dict(center=(1.0, 2.0), scale=-2.0)])
def test_canvas_transform_rejects_bad_objpos_or_scale(bad):
    with pytest.raises(ValueError):
        records.canvas_transform(bad["center"], bad["scale"], 96)


def _blob_image(height, width, x, y, sigma):
    """Gaussian blob centred at image-frame (x, y); returns (uint8 RGB image, exact centroid of the quantised image)."""
    rows, cols = np.mgrid[:height, :width]
    g = np.round(220 * np.exp(-((cols + 1 - x) ** 2 + (rows + 1 - y) ** 2) / (2 * sigma ** 2)))
    centroid = np.array([(g * (cols + 1)).sum(), (g * (rows + 1)).sum()]) / g.sum()
    return np.repeat(g[..., None], 3, -1).astype(np.uint8), centroid


@pytest.mark.parametrize("scale", [0.15, 0.3, 0.6, 1.0, 1.5])  # 0.59 .. 5.9 image pixels per canvas pixel
def test_render_canvas_maps_image_points_exactly(scale):
    rng = np.random.RandomState(int(scale * 100))
    c = 96
    for _ in range(3):
        a = records.canvas_transform((200 + rng.uniform(-10, 10), 150 + rng.uniform(-10, 10)), scale, c)
        k = a[0, 0]
        x, y = records.canvas_to_image_points(rng.uniform(30, 66, 2), a)
        image, centroid = _blob_image(300, 400, x, y, max(2.0, 1.5 * k))
        canvas = records.render_canvas(image, a, c)
        assert canvas.shape == (c, c, 3) and canvas.dtype == np.uint8
        w = canvas[..., 0].astype(np.float64)
        v, u = np.mgrid[:c, :c]
        found = records.canvas_to_image_points([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()], a)
        # In canvas pixels; a half-pixel convention error would show as >= 0.085 (0.5 image px at k = 5.9).
        np.testing.assert_array_less(np.abs(found - centroid) / k, 0.04)


def test_render_canvas_fills_outside_black_and_keeps_inside():
    image = np.full((100, 120, 3), 200, np.uint8)
    for scale in (0.5, 1.6):  # upsampling and the block-averaging path
        # objpos at the image's top-left corner: the canvas's top-left quadrant lies outside the image.
        a = records.canvas_transform((1.0, 1.0 - 15 * scale), scale, 96)
        canvas = records.render_canvas(image, a, 96)
        inside = records.image_to_canvas([[1, 1], [120, 100]], a)  # first and last pixel centres
        u0, v0 = np.floor(inside[0]).astype(int) - 1
        assert np.all(canvas[:v0, :] == 0) and np.all(canvas[:, :u0] == 0)
        u1, v1 = np.minimum(np.ceil(inside[1]).astype(int) + 2, 95)
        assert np.all(canvas[v0 + 3:v1 - 3, u0 + 3:u1 - 3] == 200)


def test_render_canvas_antialiases_when_shrinking():
    checker = ((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, -1)
    a = records.canvas_transform((200, 185), 1.0, 96)  # 3.9 image pixels per canvas pixel
    canvas = records.render_canvas(image, a, 96)[20:76, 20:76, 0].astype(float)
    # Area averaging turns a 1-pixel checkerboard into flat grey; plain bilinear sampling would alias.
    assert abs(canvas.mean() - 127.5) < 1.5 and canvas.std() < 1.5


def test_render_canvas_canvas_fully_outside_image_is_black():
    image = np.full((50, 50, 3), 255, np.uint8)
    a = records.canvas_transform((1000, 1000), 0.2, 48)
    assert not records.render_canvas(image, a, 48).any()


def test_render_canvas_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB uint8"):
        records.render_canvas(np.zeros((10, 10), np.uint8), np.eye(2, 3), 12)


def test_jpeg_round_trip():
    rows, cols = np.mgrid[:48, :64]
    image = np.stack([cols * 4, rows * 5, 128 + 60 * np.sin(cols / 5.0)], -1).astype(np.uint8)
    data = records.encode_jpeg(image)
    assert data[:2] == b"\xff\xd8"
    back = records.decode_image(data)
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image).mean() < 2
    # Channel order survives (RGB in, RGB out).
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    assert records.decode_image(records.encode_jpeg(red))[..., 0].min() > 240
    assert records.decode_image(image) is image
    with pytest.raises(ValueError):
        records.decode_image(b"not an image")


def _record(canvas_size=96, **overrides):
    joints = np.arange(32, dtype=np.float64).reshape(16, 2) + 0.5
    annotated = np.ones(16, bool)
    annotated[[4, 5]] = False
    kwargs = dict(
        canvas=np.full((canvas_size, canvas_size, 3), 90, np.uint8), joints=joints, annotated=annotated,
        visible=np.ones(16, bool), head_box=(627, 100, 706, 198), center=(594, 257), scale=3.021046176409755,
        canvas_to_image=records.canvas_transform((594, 257), 3.021046176409755, canvas_size),
        image_size=(1280, 720), image_name="015601864.jpg", annolist_index=4, person_index=0)
    kwargs.update(overrides)
    return records.make_record(**kwargs)


def test_make_record_fields():
    rec = _record()
    # 015601864.jpg person 0: head size 0.6 * ||(79, 98)|| (docs/records.md §8).
    assert rec["head_size"] == pytest.approx(75.52615441, abs=1e-5)
    assert rec["joints"].dtype == np.float32 and rec["joints"].shape == (16, 2)
    assert np.all(rec["joints"][[4, 5]] == 0) and rec["joints"][0, 0] == 0.5
    assert not rec["visible"][[4, 5]].any() and rec["visible"].sum() == 14
    assert rec["image_size"].dtype == np.int32 and list(rec["image_size"]) == [1280, 720]
    assert isinstance(rec["image"], bytes)
    assert rec["canvas_to_image"].dtype == np.float32 and rec["canvas_to_image"].shape == (2, 3)


@pytest.mark.parametrize("override", [dict(joints=np.zeros((15, 2))), dict(annotated=np.ones(17, bool)),
                                      dict(head_box=(1, 2, 3)), dict(scale=float("nan")),
                                      dict(joints=np.full((16, 2), np.inf))])
def test_make_record_rejects_bad_input(override):
    with pytest.raises(ValueError):
        _record(**override)


def test_features_round_trip_without_tensorflow():
    feats = records.features(96)
    rec = _record()
    # Encoding pre-encoded JPEG bytes and decoding with NumPy is the path builders and data sources use.
    decoded = feats.deserialize_example_np(feats.serialize_example(feats.encode_example(rec)))
    assert decoded["image"].shape == (96, 96, 3) and decoded["image"].dtype == np.uint8
    assert np.abs(decoded["image"].astype(int) - 90).max() <= 2
    for key in ("joints", "annotated", "visible", "head_box", "center", "canvas_to_image", "image_size"):
        np.testing.assert_array_equal(decoded[key], rec[key])
        assert decoded[key].dtype == rec[key].dtype
    assert decoded["image_name"] == b"015601864.jpg"
    assert decoded["head_size"] == pytest.approx(float(rec["head_size"]))
    assert decoded["annolist_index"] == 4 and decoded["person_index"] == 0


def test_features_rejects_canvas_not_multiple_of_6():
    with pytest.raises(ValueError, match="multiple of 6"):
        records.features(100)
