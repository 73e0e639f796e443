"""Fault tests of the inference commands (issue #11, item 6): `python -m train.predict` on awkward image files
and person boxes, `python -m train.evaluate --predictions` on broken prediction files.

Each CLI fault must end in one line `python -m <prog>: error: ...` (exit status 2) or, for a box that misses
the image, one warning line; never a traceback, never a silently wrong answer.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_predict import workdir  # noqa: F401 (the tiny trained run directory fixture)

from train import evaluate, inference
from train import predict as predict_cli
from train.inference import images, visualize

ERROR = "python -m train.predict: error: "


def _photo(h: int = 60, w: int = 90, seed: int = 1) -> np.ndarray:
    """A smooth uint8 RGB picture (smooth, so that 8-bit rounding of the other encodings moves no joint)."""
    y, x = np.mgrid[0:h, 0:w]
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    return np.stack([127.5 + 120 * np.sin(x / 9 + y / 13 + p) for p in phase], -1).round().astype(np.uint8)


def _predict(capsys, root, *args: str) -> tuple[int, list[dict], str]:
    """Runs the predict CLI; returns (status, JSON records, stderr)."""
    status = predict_cli.main(["--checkpoint", str(root), *args])
    captured = capsys.readouterr()
    return status, [json.loads(line) for line in captured.out.splitlines()], captured.err


def _one_error_line(err: str, prefix: str = ERROR) -> str:
    lines = [line for line in err.splitlines() if "WARNING:absl" not in line]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------------
# train.predict: output names


def test_same_stem_inputs_get_distinct_pictures_named_in_the_json(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    sizes = {"a/img.png": (60, 90), "b/img.png": (80, 50), "img.jpg": (40, 70), "IMG.png": (50, 50)}
    for name, (h, w) in sizes.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(_photo(h, w)).save(tmp_path / name)
    out = tmp_path / "out"
    status, records, err = _predict(capsys, root, *(str(tmp_path / n) for n in sizes), "--heatmaps",
                                    "--out", str(out))
    assert status == 0
    poses = [Path(r["pose_png"]) for r in records]
    assert [p.name for p in poses] == ["img_pose.png", "img-2_pose.png", "img-3_pose.png", "IMG-4_pose.png"]
    assert len({r["heatmaps_png"] for r in records}) == 4
    for record, (h, w) in zip(records, sizes.values()):
        # Each picture is its own image's skeleton, not overwritten by a namesake.
        assert np.asarray(Image.open(record["pose_png"])).shape == (h, w, 3)
        assert Path(record["heatmaps_png"]).is_file()
    assert "wrote 8 picture(s)" in err and "img-3_heatmaps.png" in err


def test_output_stems_never_take_another_inputs_own_name():
    assert predict_cli.output_stems(["x/a.jpg", "a.png", "a-2.jpg", "b.jpg"]) == ["a", "a-3", "a-2", "b"]


# ----------------------------------------------------------------------------------------------------
# train.predict: pixel formats and orientation


def test_16bit_float_and_exif_rotated_inputs_match_their_8bit_rgb_equivalent(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    photo = _photo()
    gray = photo[..., 1]
    Image.fromarray(photo).save(tmp_path / "ref.png")
    Image.fromarray(np.repeat(gray[..., None], 3, -1)).save(tmp_path / "gray_ref.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # mode I;16
    Image.fromarray(gray.astype(np.float32) / 255).save(tmp_path / "grayf.tif")  # mode F
    # Stored rotated, with EXIF orientation 6 (rotate 90° clockwise to display): displays as `photo`.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(photo, 1).copy()).save(tmp_path / "exif.png", exif=exif.tobytes())
    names = ["ref.png", "gray_ref.png", "gray16.png", "grayf.tif", "exif.png"]
    status, records, _ = _predict(capsys, root, *(str(tmp_path / n) for n in names), "--out", str(tmp_path))
    assert status == 0
    joints = {Path(r["image"]).name: np.array(list(r["joints"].values())) for r in records}
    np.testing.assert_allclose(joints["gray16.png"], joints["gray_ref.png"], atol=0.02)
    np.testing.assert_allclose(joints["grayf.tif"], joints["gray_ref.png"], atol=0.02)
    np.testing.assert_allclose(joints["exif.png"], joints["ref.png"], atol=0.02)


def test_read_rgb_conversions(tmp_path):
    # 16-bit: /257 rounded, not clipped at 255.
    Image.fromarray(np.array([[0, 257, 32768, 65535]], np.uint16)).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "g16.png")[0, :, 0], [0, 1, 128, 255])
    # Float: ×255 with clipping of small excursions.
    Image.fromarray(np.array([[-0.005, 0.5, 1.005]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "f.tif")[0, :, 1], [0, 128, 255])
    # Transparency (RGBA, LA, palette) is composited over black; the result is always RGB.
    Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0]]], np.uint8)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "a.png")[0], [[200, 100, 50], [0, 0, 0]])
    Image.fromarray(np.array([[[90, 255], [90, 51]]], np.uint8), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "la.png")[0], [[90] * 3, [18] * 3])
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 250, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(images.read_rgb(tmp_path / "p.png")[0], [[0, 0, 0], [250, 0, 0]])
    for name in ("g16.png", "f.tif", "a.png", "la.png", "p.png"):
        rgb = images.read_rgb(tmp_path / name)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[-1] == 3


@pytest.mark.parametrize("values, message", [
    (np.array([[0.0, 255.0]], np.float32), r"values in \[0, 255\]; expected \[0, 1\]"),
    (np.array([[0.0, np.nan]], np.float32), "NaN or infinite"),
    (np.array([[-7, 3]], np.int32), r"values in \[-7, 3\]; expected 16-bit"),
])
def test_read_rgb_refuses_value_ranges_it_cannot_map(tmp_path, values, message):
    Image.fromarray(values).save(tmp_path / "odd.tif")
    with pytest.raises(images.ImageError, match=message):
        images.read_rgb(tmp_path / "odd.tif")


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG file that declares width × height but holds no pixel data (opening reads only the header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def test_huge_and_broken_images_are_one_line_errors(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    _png_header_only(tmp_path / "huge.png", 20000, 20000)
    status, _, err = _predict(capsys, root, str(tmp_path / "huge.png"))
    line = _one_error_line(err)
    assert status == 2 and "huge.png is 20000×20000" in line and "limit of 150 megapixels" in line
    assert "--max-megapixels 400" in line
    Image.fromarray(_photo()).save(tmp_path / "small.png")
    status, _, err = _predict(capsys, root, str(tmp_path / "small.png"), "--max-megapixels", "0.001")
    assert status == 2 and "90×60 = 0.0 megapixels, over the limit of 0.001" in _one_error_line(err)
    (tmp_path / "cut.png").write_bytes((tmp_path / "small.png").read_bytes()[:200])
    status, _, err = _predict(capsys, root, str(tmp_path / "cut.png"))
    assert status == 2 and "cut.png" in _one_error_line(err)


def test_missing_checkpoint_step_is_a_one_line_error(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    Image.fromarray(_photo()).save(tmp_path / "p.png")
    status, _, err = _predict(capsys, root, str(tmp_path / "p.png"), "--step", "3")
    assert status == 2 and "no checkpoint at step 3" in _one_error_line(err)


# ----------------------------------------------------------------------------------------------------
# train.predict: person boxes


def test_absurd_scale_and_centre_are_one_line_errors(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    path = tmp_path / "p.png"
    Image.fromarray(_photo()).save(path)
    status, _, err = _predict(capsys, root, str(path), "--center", "40,30", "--scale", "1e30")
    line = _one_error_line(err)
    assert status == 2 and "p.png" in line and "scale 1e+30" in line and "0.0036 <= scale <= 3.6" in line
    status, _, err = _predict(capsys, root, str(path), "--center", "1e30,30", "--scale", "0.3")
    assert status == 2 and "within ±9000" in _one_error_line(err)
    for scale in ("inf", "-1", "0"):
        with pytest.raises(SystemExit) as exit_info:
            predict_cli.main(["--checkpoint", str(root), str(path), "--center", "40,30", "--scale", scale])
        assert exit_info.value.code == 2
        assert "--scale must be a finite number > 0" in capsys.readouterr().err


def test_box_outside_the_image_warns_once_naming_image_and_box(workdir, tmp_path, capsys):  # noqa: F811
    root, *_ = workdir
    path = tmp_path / "p.png"
    Image.fromarray(_photo()).save(path)
    status, records, err = _predict(capsys, root, str(path), "--center", "5000,4000", "--scale", "0.3",
                                    "--out", str(tmp_path))
    assert status == 0 and len(records) == 1
    warnings = [line for line in err.splitlines() if "warning" in line and "absl" not in line]
    assert len(warnings) == 1
    assert "p.png (90×60)" in warnings[0] and "centre (5000, 4000), scale 0.3" in warnings[0]
    assert "overlaps the image by 0% (< 25%)" in warnings[0]
    # A box mostly inside the image is not warned about.
    _predict(capsys, root, str(path), "--center", "80,20", "--scale", "0.3", "--out", str(tmp_path))
    assert "warning" not in capsys.readouterr().err.replace("WARNING:absl", "")


def test_skeleton_of_joints_far_off_the_image_is_drawn_without_overflow():
    joints = np.full((16, 2), 1e30)
    joints[:8] = [10.0, 5.0]
    out = visualize.draw_skeleton(np.zeros((20, 30, 3), np.uint8), joints)
    assert out.shape == (20, 30, 3) and out.any()


def test_box_checks_in_the_python_api():
    box = inference.Box((45.0, 30.0), 0.3)
    assert inference.box_overlap(box, 60, 90) == pytest.approx(60 / 75)  # 75-px square, image 60 px tall
    assert inference.box_overlap(inference.Box((500.0, 30.0), 0.3), 60, 90) == 0.0
    assert inference.scale_range(60, 90) == pytest.approx((0.0036, 3.6))
    with pytest.raises(ValueError, match="scale 4 does not fit a 90×60 image"):
        inference.check_box(inference.Box((45.0, 30.0), 4.0), 60, 90)
    with pytest.raises(ValueError, match="too far"):
        inference.check_box(inference.Box((float("nan"), 30.0), 0.3), 60, 90)


# ----------------------------------------------------------------------------------------------------
# train.evaluate --predictions: broken files


def _gt(path: Path, n: int = 4) -> np.ndarray:
    gt = np.random.default_rng(0).uniform(50, 400, (n, 16, 2))
    boxes = np.stack([np.full((n, 2), 10.0), np.full((n, 2), 60.0)], axis=1)
    scipy.io.savemat(path, {"pos_gt_src": gt.transpose(1, 2, 0), "jnt_missing": np.zeros((16, n), np.uint8),
                            "headboxes_src": boxes.transpose(1, 2, 0)})
    return gt


def _h5(path: Path, value) -> None:
    with h5py.File(path, "w") as f:
        if isinstance(value, str) and value == "group":
            f.create_group("preds")
        else:
            f["preds"] = value


def _with_nan(gt: np.ndarray) -> np.ndarray:
    preds = gt.copy()
    preds[2, 5] = np.nan
    return preds


BROKEN_PREDICTIONS = {
    "empty.mat": (lambda p, gt: scipy.io.savemat(p, {}), r"found \[\] \(the file holds no variables\); expected "
                  r"'pos_pred_src' \[16, 2, N\]"),
    "other.mat": (lambda p, gt: scipy.io.savemat(p, {"foo": gt}), r"found \['foo'\]; expected 'pos_pred_src'"),
    "zero.mat": (lambda p, gt: p.write_bytes(b""), "not a readable MATLAB .mat file"),
    "cut.mat": (lambda p, gt: p.write_bytes(b"MATLAB 5.0 MAT-file" + b" " * 109 + b"\x01\x00\x00\x00"),
                "not a readable MATLAB .mat file"),
    "text.mat": (lambda p, gt: scipy.io.savemat(p, {"preds": np.array(["abc", "def"])}),
                 r"preds holds text .*expected a numeric array \[N, 16, 2\]"),
    "text_pos.mat": (lambda p, gt: scipy.io.savemat(p, {"pos_pred_src": np.array(["abc"])}),
                     r"pos_pred_src holds text .*expected a numeric array \[16, 2, N\]"),
    "cell.mat": (lambda p, gt: scipy.io.savemat(p, {"preds": np.array([[1, 2], [3]], dtype=object)}),
                 "preds holds text or nested arrays"),
    "nan.mat": (lambda p, gt: scipy.io.savemat(p, {"pos_pred_src": _with_nan(gt).transpose(1, 2, 0)}),
                "pos_pred_src has 1 NaN or infinite joint.*person 2 .*joint l_ankle"),
    "text.h5": (lambda p, gt: _h5(p, np.array([b"abc", b"def"])), "preds holds text"),
    "group.h5": (lambda p, gt: _h5(p, "group"), r"\['preds'\] must be datasets"),
    "record.h5": (lambda p, gt: _h5(p, np.zeros(4, [("x", "f4"), ("y", "f4")])), "preds holds records"),
    "shape.h5": (lambda p, gt: _h5(p, gt[:, :15]), r"must be \[N, 16, 2\] or \[2, 16, N\], got \(4, 15, 2\)"),
    "nan.h5": (lambda p, gt: _h5(p, _with_nan(gt)), "preds has 1 NaN or infinite joint"),
    "inf.h5": (lambda p, gt: _h5(p, np.where(gt > 300, np.inf, gt)), "NaN or infinite joint"),
    "none.h5": (lambda p, gt: _h5(p, np.zeros((0, 16, 2))), "preds holds no persons"),
    "corrupt.h5": (lambda p, gt: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"x" * 100), "not a readable HDF5 file"),
    "folder.h5": (lambda p, gt: p.mkdir(), "is a directory, not a file"),
    "missing.h5": (lambda p, gt: None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_PREDICTIONS))
def test_broken_prediction_file_is_one_line_error(tmp_path, capsys, name):
    gt = _gt(tmp_path / "gt.mat")
    write, expected = BROKEN_PREDICTIONS[name]
    write(tmp_path / name, gt)
    status = evaluate.main(["--predictions", str(tmp_path / name), "--annotations", str(tmp_path / "gt.mat")])
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "python -m train.evaluate: error: ")
    assert status == 2 and captured.out == ""
    assert str(tmp_path / name) in line
    assert re.search(expected, line), line
