"""train.inference.visualize: skeleton drawing, heatmap grids, PNG output and line plots."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from data.joints import BONES, JOINT_NAMES
from train.experiments import plots
from train.inference import visualize as V

GREY = 100


def _grey(height: int = 90, width: int = 120) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def _joints_with(points: dict[int, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """[16, 2] joints (far off-image unless given) and a mask that keeps only the given ones."""
    joints = np.full((16, 2), -1000.0)
    mask = np.zeros(16, bool)
    for j, xy in points.items():
        joints[j], mask[j] = xy, True
    return joints, mask


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=-1)


# ----------------------------------------------------------------------------------------------------
# draw_skeleton


def test_bone_line_is_drawn_in_its_side_colour_and_nothing_else_changes():
    image = _grey()
    # r_ankle (0) → r_knee (1) is a right-side bone; a horizontal line along row 45.
    assert (0, 1) in BONES
    joints, mask = _joints_with({0: (20.0, 45.0), 1: (100.0, 45.0)})
    out = V.draw_skeleton(image, joints, mask, thickness=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, _grey())  # input untouched
    # Middle of the bone, away from the joint dots: exactly the right-side colour.
    np.testing.assert_array_equal(out[45, 40:80], np.tile(V.SIDE_COLOURS["right"], (40, 1)))
    changed = _changed(out, image)
    # Only a band around the bone (dots of radius 4 + rim, anti-aliasing) may change.
    assert not changed[:38].any() and not changed[53:].any()
    assert not changed[:, :13].any() and not changed[:, 108:].any()


def test_left_and_centre_bones_get_their_own_colours():
    joints, mask = _joints_with({3: (20.0, 20.0), 4: (100.0, 20.0),   # l_hip ← l_knee: left
                                 7: (60.0, 40.0), 8: (60.0, 80.0)})    # upper_neck → thorax: centre
    out = V.draw_skeleton(_grey(), joints, mask, thickness=3)
    np.testing.assert_array_equal(out[20, 50], V.SIDE_COLOURS["left"])
    np.testing.assert_array_equal(out[60, 60], V.SIDE_COLOURS["centre"])
    assert len({tuple(c) for c in V.SIDE_COLOURS.values()}) == 3


def test_masked_joint_hides_its_bones_and_dot():
    joints, mask = _joints_with({0: (20.0, 45.0), 1: (100.0, 45.0)})
    mask[1] = False
    out = V.draw_skeleton(_grey(), joints, mask, thickness=3)
    assert not _changed(out[:, 30:], _grey()[:, 30:]).any()  # no line, no knee dot
    assert _changed(out[40:51, 14:27], _grey()[40:51, 14:27]).any()  # the ankle dot is there


def test_non_finite_joints_are_skipped_and_float_images_accepted():
    joints, _ = _joints_with({0: (20.0, 45.0), 1: (100.0, 45.0)})
    joints[1] = np.nan
    image = np.full((90, 120, 3), GREY / 255.0, np.float32)
    out = V.draw_skeleton(image, joints, None)
    assert out.dtype == np.uint8
    assert not _changed(out[:, 30:], _grey()[:, 30:]).any()


def test_thickness_scales_with_image_size():
    assert V.line_thickness(64, 64) == 1
    assert V.line_thickness(224, 300) == 2
    assert V.line_thickness(1000, 1200) == 9


@pytest.mark.parametrize("image, joints, mask, match", [
    (np.zeros((10, 10)), np.zeros((16, 2)), None, "image must be"),
    (np.zeros((10, 10, 3)), np.zeros((15, 2)), None, "joints must be"),
    (np.zeros((10, 10, 3)), np.zeros((16, 2)), np.ones(3), "mask must be"),
    (np.zeros((10, 10, 3), np.int32), np.zeros((16, 2)), None, "uint8 or float"),
])
def test_bad_inputs_raise_one_clear_error(image, joints, mask, match):
    with pytest.raises(ValueError, match=match):
        V.draw_skeleton(image, joints, mask)


# ----------------------------------------------------------------------------------------------------
# heatmap_grid


def _one_hot_maps(n: int = 16, size: int = 5) -> np.ndarray:
    maps = np.zeros((n, size, size), np.float32)
    for j in range(n):
        maps[j, j % size, (2 * j) % size] = 1.0
    return maps


def test_heatmap_grid_layout_and_tiles():
    height, width, gap = 40, 50, 2
    image = np.full((height, width, 3), 200, np.uint8)
    maps = _one_hot_maps()
    grid = V.heatmap_grid(image, maps, None, gap=gap)
    title = 12  # max(12, 50 // 9)
    assert grid.shape == (4 * (title + height) + 3 * gap, 4 * width + 3 * gap, 3)
    assert grid.dtype == np.uint8
    for j in range(16):
        r, c = divmod(j, 4)
        x0, y0 = c * (width + gap), r * (title + height + gap)
        strip = grid[y0:y0 + title, x0:x0 + width]
        tile = grid[y0 + title:y0 + title + height, x0:x0 + width].astype(int)
        assert (strip == 30).mean() > 0.5  # dark title strip (the name is drawn on it)
        assert (strip > 200).any()  # white text
        # The tile is brightest around its map's hot cell (5×5 map over a 40×50 image).
        hot_row, hot_col = np.unravel_index(np.argmax(maps[j]), maps[j].shape)
        brightness = tile.sum(-1)
        y, x = np.unravel_index(np.argmax(brightness), brightness.shape)
        assert hot_row * height / 5 <= y < (hot_row + 1) * height / 5
        assert hot_col * width / 5 <= x < (hot_col + 1) * width / 5
        # Far from the hot cell the image shows through, dimmed to grey.
        far = (height - 1 - y, width - 1 - x)
        assert tile[far].max() - tile[far].min() <= 2 and tile[far][0] < 200
    # Gaps between tiles stay white.
    assert np.all(grid[:, width:width + gap] == 255)


def test_heatmap_grid_marks_predictions_and_resizes_tiles():
    image = np.full((40, 40, 3), 120, np.uint8)
    maps = np.zeros((16, 4, 4), np.float32)  # nothing to overlay: only the markers change pixels
    joints = np.tile([[20.0, 20.0]], (16, 1))
    plain = V.heatmap_grid(image, maps, None, tile_size=80)
    marked = V.heatmap_grid(image, maps, joints, tile_size=80)
    assert plain.shape == marked.shape == (4 * (12 + 80) + 6, 4 * 80 + 6, 3)
    title = 12
    r_tile = marked[title:title + 80, 0:80]  # joint 0, r_ankle: right side, red ring
    diff = _changed(r_tile, plain[title:title + 80, 0:80])
    ys, xs = np.nonzero(diff)
    assert diff.any() and abs(ys.mean() - 40.5) < 2 and abs(xs.mean() - 40.5) < 2
    assert not diff[40, 40]  # a ring: the centre stays visible
    rgb = r_tile.astype(int)
    assert np.any((rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 60))  # red-ish
    l_tile = marked[3 * (title + 80 + 2) + title:, 3 * 82:].astype(int)  # joint 15, l_wrist: blue
    assert np.any((l_tile[..., 2] > l_tile[..., 0] + 60) & (l_tile[..., 2] > l_tile[..., 1] + 30))


def test_heatmap_grid_errors():
    image = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="heatmaps must be"):
        V.heatmap_grid(image, np.zeros((16, 4)))
    with pytest.raises(ValueError, match="names"):
        V.heatmap_grid(image, np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="joints must be"):
        V.heatmap_grid(image, np.zeros((3, 4, 4)), np.zeros((16, 2)), names=JOINT_NAMES[:3])


# ----------------------------------------------------------------------------------------------------
# PNG files and plots


def test_save_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    path = V.save_png(tmp_path / "sub" / "a.png", image)
    with Image.open(path) as png:
        assert png.format == "PNG"
        np.testing.assert_array_equal(np.asarray(png.convert("RGB")), image)
    with pytest.raises(ValueError, match=".png"):
        V.save_png(tmp_path / "a.jpg", image)


def _read_png(path) -> np.ndarray:
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB"))


def test_plot_curves_from_csv_with_a_missing_run(tmp_path):
    csv_path = tmp_path / "depth.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["res", "resnet18", "resnet101"])
        writer.writerows([[56, 86.0, ""], [14, 84.0, 86.0], [28, 85.5, 87.0]])
    out = plots.plot_curves(csv_path, "res", ["resnet18", "resnet101"], tmp_path / "p.png",
                        title="PCKh vs resolution", ylabel="PCKh (%)", log_x=True)
    pixels = _read_png(out)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    # Two series → at least two distinct saturated line colours besides black/white/grey.
    saturated = pixels[(pixels.max(-1).astype(int) - pixels.min(-1)) > 80]
    assert len({tuple(p // 32) for p in saturated}) >= 2


def test_plot_curves_from_records_and_errors(tmp_path):
    records = [{"epoch": e, "pckh": 50 + e} for e in range(5)]
    assert _read_png(plots.plot_curves(records, "epoch", "pckh", tmp_path / "c.png")).size > 0
    with pytest.raises(ValueError, match="not in the data"):
        plots.plot_curves(records, "epoch", "loss", tmp_path / "d.png")
    with pytest.raises(ValueError, match="positive x"):
        plots.plot_curves(records, "epoch", "pckh", tmp_path / "e.png", log_x=True)
    with pytest.raises(FileNotFoundError):
        plots.plot_curves(tmp_path / "absent.csv", "a", "b", tmp_path / "f.png")


def test_plot_curves_draws_error_bars_where_a_spread_is_given(tmp_path):
    records = [{"x": x, "y": 50.0 + x, "y ±": 8.0 if x == 2 else None} for x in (1, 2, 4)]
    plain = _read_png(plots.plot_curves(records, "x", "y", tmp_path / "plain.png"))
    bars = _read_png(plots.plot_curves(records, "x", "y", tmp_path / "bars.png", errors=["y ±"]))
    assert plain.shape == bars.shape and np.any(plain != bars)
    # The bar is a vertical run of the line's colour: some pixel column holds far more of it than any column
    # of the plain line does.
    def tallest_column(img):
        return int((img[..., 2].astype(int) - img[..., 0] > 80).sum(axis=0).max())
    assert tallest_column(bars) > 3 * tallest_column(plain)
    with pytest.raises(ValueError, match="1 y columns but 2 error columns"):
        plots.plot_curves(records, "x", "y", tmp_path / "e.png", errors=["y ±", None])
    with pytest.raises(ValueError, match="not in the data"):
        plots.plot_curves(records, "x", "y", tmp_path / "e.png", errors=["spread"])


def test_plot_curves_draws_a_reference_dashed_in_its_partners_colour(tmp_path):
    records = [{"x": x, "y": 20.0 + 5 * x, "limit": 90.0} for x in (1, 2, 4)]
    out = _read_png(plots.plot_curves(records, "x", ["y", "limit"], tmp_path / "r.png", dashed={"limit": "y"}))
    red, green, blue = (out[..., i].astype(int) for i in range(3))
    # Matplotlib's first colour (blue) only: the reference did not take the second one (orange).
    assert not np.any((red > 200) & (green > 100) & (green < 160) & (blue < 60))
    plain = _read_png(plots.plot_curves(records, "x", ["y", "limit"], tmp_path / "p.png"))
    assert np.any((plain[..., 0] > 200) & (plain[..., 2] < 60))
    with pytest.raises(ValueError, match="after the column whose colour"):
        plots.plot_curves(records, "x", ["limit", "y"], tmp_path / "e.png", dashed={"limit": "y"})


def test_plot_pckh_curve(tmp_path):
    t = np.linspace(0, 0.5, 51)
    out = plots.plot_pckh_curve(t, {"a": 100 * t / 0.5, "b": 100 * np.sqrt(t / 0.5)}, tmp_path / "pck.png")
    assert _read_png(out).ndim == 3
    with pytest.raises(ValueError, match="shape"):
        plots.plot_pckh_curve(t, np.zeros(50), tmp_path / "x.png")
