"""Tests of the MPII release parser on the real validation annorects and on a fake release in the real format."""

from __future__ import annotations

import io

import mpii_fake
import numpy as np
import pytest
import scipy.io

from data.mpii import release


@pytest.fixture(scope="module")
def real():
    """The 2958 real annorects of detections.mat (MATLAB-written), and the derived validation files."""
    h5py = pytest.importorskip("h5py")
    needed = [mpii_fake.MPII_VAL / n for n in ("detections.mat", "detections_our_format.mat", "valid.h5")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"real MPII validation files absent: {missing}")
    det = scipy.io.loadmat(needed[0])
    gt = scipy.io.loadmat(needed[1])
    with h5py.File(needed[2], "r") as f:
        valid = {k: f[k][()] for k in ("index", "person", "part", "visible", "center", "scale", "normalize")}
    persons = []
    for entry in det["annolist"].ravel():
        parsed = release.parse_annorect(entry["annorect"])
        assert len(parsed) == 1  # each entry holds exactly the validation person's annorect
        persons.append(parsed[0])
    return det, gt, valid, persons


def test_real_file_exercises_the_quirks(real):
    det = real[0]
    kinds, orders = set(), set()
    for entry in det["annolist"].ravel():
        points = entry["annorect"][0, 0]["annopoints"][0, 0]["point"]
        orders.add(points.dtype.names)
        for p in points.ravel():
            v = p["is_visible"]
            kinds.add("empty" if v.size == 0 else v.dtype.kind)
            kinds.update(p[f].dtype.name for f in ("x", "y"))
    assert {"empty", "U", "u"} <= kinds  # empty, char and logical is_visible
    assert {"uint8", "uint16", "int16", "float64"} <= kinds  # storage classes of coordinates
    assert ("x", "y", "id", "is_visible") in orders and ("id", "x", "y", "is_visible") in orders


def test_real_annorects_match_valid_h5(real):
    det, _, valid, persons = real
    assert len(persons) == 2958
    np.testing.assert_array_equal(det["RELEASE_img_index"].ravel() - 1, valid["index"])
    np.testing.assert_array_equal(det["RELEASE_person_index"].ravel() - 1, valid["person"])
    joints = np.stack([p.joints for p in persons])
    annotated = np.stack([p.annotated for p in persons])
    assert annotated.sum() == 44240
    # valid.h5 `part` = truncated release coordinates, (0, 0) where not annotated.
    np.testing.assert_array_equal(np.trunc(joints), valid["part"])
    assert np.all(joints[~annotated] == 0)
    # valid.h5 `visible` = is_visible (empty counts as visible), 0 where not annotated.
    np.testing.assert_array_equal(np.stack([p.visible for p in persons]), valid["visible"] > 0)
    # valid.h5 centre / scale are the adjusted ones: (cx, cy + 15 s), 1.25 s.
    center = np.stack([p.center for p in persons])
    scale = np.array([p.scale for p in persons])
    np.testing.assert_allclose(np.c_[center[:, 0], center[:, 1] + 15 * scale], valid["center"], atol=1e-9)
    np.testing.assert_allclose(1.25 * scale, valid["scale"], rtol=1e-12)
    boxes = np.stack([p.head_box for p in persons])
    np.testing.assert_allclose(0.6 * np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]),
                               valid["normalize"], rtol=1e-12)


def test_real_annorects_match_float_ground_truth(real):
    _, gt, _, persons = real
    joints = np.stack([p.joints for p in persons])
    annotated = np.stack([p.annotated for p in persons])
    pos = np.transpose(gt["pos_gt_src"], (2, 0, 1))
    np.testing.assert_array_equal(gt["jnt_missing"].T == 1, ~annotated)
    err = np.abs(pos - joints).max(-1)
    bad = annotated & (err > 1e-3)
    # The bearpaw copy zeroes one coordinate of 13 annotated joints (docs/paper-recipe.md §11, evaluation files);
    # every other joint agrees.
    assert bad.sum() == 13
    assert np.all((pos[bad] == 0).any(-1))
    assert err[annotated & ~bad].max() < 1e-3
    boxes = np.transpose(gt["headboxes_src"], (2, 0, 1)).reshape(-1, 4)
    np.testing.assert_allclose(np.stack([p.head_box for p in persons]), boxes, atol=1e-3)


@pytest.fixture(scope="module")
def fake():
    images = mpii_fake.default_images()
    return images, release.load_release(io.BytesIO(mpii_fake.release_mat_bytes(images)))


def test_fake_release_has_the_release_layout(fake):
    images, _ = fake
    data = mpii_fake.release_mat_bytes(images)
    assert scipy.io.whosmat(io.BytesIO(data)) == [("RELEASE", (1, 1), "struct")]
    rel = scipy.io.loadmat(io.BytesIO(data))["RELEASE"]
    assert rel.dtype.names == ("annolist", "img_train", "version", "single_person", "act", "video_list")
    assert rel[0, 0]["annolist"].dtype.names == ("image", "annorect", "frame_sec", "vididx")


def test_fake_release_parses_to_what_was_written(fake):
    images, parsed = fake
    assert [im.name for im in parsed] == [im.name for im in images]
    assert [im.index for im in parsed] == list(range(len(images)))
    assert [im.is_train for im in parsed] == [im.train for im in images]
    for want, got in zip(images, parsed):
        assert got.single_person == tuple(i - 1 for i in want.single_person)
        assert len(got.persons) == len(want.persons or [])
        for k, (wp, gp) in enumerate(zip(want.persons or [], got.persons)):
            where = f"{want.name} person {k}"
            assert gp.index == k
            joints, annotated, visible = wp.joints()
            np.testing.assert_array_equal(gp.joints, joints, err_msg=where)
            np.testing.assert_array_equal(gp.annotated, annotated, err_msg=where)
            np.testing.assert_array_equal(gp.visible, visible, err_msg=where)
            assert gp.joints.dtype == np.float64
            assert (gp.center is None) == (wp.objpos is None), where
            if wp.objpos is not None:
                np.testing.assert_array_equal(gp.center, wp.objpos)
            assert gp.scale == wp.scale, where
            assert (gp.head_box is None) == (wp.head is None), where
            if wp.head is not None:
                np.testing.assert_array_equal(gp.head_box, wp.head)


def test_fake_release_real_values_of_015601864(fake):
    _, parsed = fake
    image = parsed[4]
    assert image.name == "015601864.jpg" and image.is_train and image.single_person == (0, 1)
    p = image.persons[0]
    np.testing.assert_array_equal(p.head_box, [627, 100, 706, 198])
    np.testing.assert_array_equal(p.center, [594, 257])
    assert p.scale == 3.021046176409755
    assert 0.6 * np.hypot(*(p.head_box[2:] - p.head_box[:2])) == pytest.approx(75.52615441, abs=1e-8)
    np.testing.assert_allclose(p.joints[8], [637.0201, 189.8183])
    np.testing.assert_allclose(p.joints[9], [695.9799, 108.1817])
    assert p.visible[8] and p.visible[9]  # empty is_visible
    assert not p.visible[6] and not p.visible[3] and p.visible.sum() == 14
    np.testing.assert_array_equal(p.joints[0], [620, 394])


def test_fake_release_quirks_parse(fake):
    _, parsed = fake
    p12 = parsed[0].persons[1]  # char is_visible, id-first, negative y stored as int16
    assert p12.annotated.sum() == 12 and p12.joints[9, 1] == -3.0
    assert not p12.visible[9] and not p12.visible[2] and p12.visible[0]
    no_vis = parsed[3].persons[1]  # point array without is_visible: all visible
    assert no_vis.annotated.sum() == 14 and np.array_equal(no_vis.visible, no_vis.annotated)
    empty = parsed[3].persons[0]  # annopoints, objpos, scale, head all []
    assert not empty.has_joints and not empty.has_box and empty.head_box is None
    assert parsed[2].persons == ()  # annorect = []
    assert not parsed[1].persons[1].has_box  # test person with objpos = []


def _release_with_point(**point):
    """A one-image release whose single person has one point with the given fields."""
    pts = mpii_fake._structs([point])
    rect = mpii_fake._structs([{"annopoints": mpii_fake._structs([{"point": pts}], (1, 1)),
                                "scale": np.array([[1.0]]),
                                "objpos": mpii_fake._structs([{"x": mpii_fake._num(5), "y": mpii_fake._num(5)}],
                                                             (1, 1))}])
    annolist = mpii_fake._structs([{"image": mpii_fake._structs([{"name": "x.jpg"}], (1, 1)), "annorect": rect}])
    return {"RELEASE": mpii_fake._structs([{"annolist": annolist, "img_train": np.array([[1.0]])}], (1, 1))}


def test_uint8_storage_is_cast_before_arithmetic():
    mat = _release_with_point(x=np.array([[200]], np.uint8), y=np.array([[-7]], np.int16),
                              id=np.array([[3]], np.uint8), is_visible=np.array(["0"]))
    buf = io.BytesIO()
    scipy.io.savemat(buf, mat)
    person = release.load_release(io.BytesIO(buf.getvalue()))[0].persons[0]
    assert person.joints[3].tolist() == [200.0, -7.0] and not person.visible[3]
    assert person.joints[3, 1] - person.joints[3, 0] == -207.0  # no uint8 wrap-around


def test_repeated_joint_id_keeps_the_last_point(caplog):
    points = [dict(x=mpii_fake._num(x), y=mpii_fake._num(1), id=mpii_fake._num(2)) for x in (10, 20)]
    mat = _release_with_point(x=None, y=None, id=None)
    rect = mat["RELEASE"][0, 0]["annolist"][0, 0]["annorect"]
    rect[0, 0]["annopoints"][0, 0]["point"] = mpii_fake._structs(points)
    person = release.parse_release(mat)[0].persons[0]
    assert person.joints[2].tolist() == [20.0, 1.0] and person.annotated.sum() == 1
    assert "appears twice" in caplog.text


@pytest.mark.parametrize("point, message", [
    (dict(x=np.array([[1]], np.uint8), y=np.array([[1]], np.uint8), id=np.array([[16]], np.uint8)), "outside"),
    (dict(x=np.array([[1]], np.uint8), y=np.zeros((0, 0)), id=np.array([[2]], np.uint8)), "lacks"),
    (dict(x=np.array([[1]], np.uint8), y=np.array([[1]], np.uint8), id=np.array([[2]], np.uint8),
          is_visible=np.array(["maybe"])), "is_visible"),
])
def test_malformed_points_name_the_entry(point, message):
    with pytest.raises(ValueError, match=rf"annolist\(1\).*{message}"):
        release.parse_release(_release_with_point(**point))


def test_not_a_release_file(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(path, {"foo": np.zeros(3)})
    with pytest.raises(ValueError, match="no RELEASE variable"):
        release.load_release(path)
    path.write_bytes(b"garbage, not a mat file")
    with pytest.raises(ValueError, match="could not read"):
        release.load_release(path)
