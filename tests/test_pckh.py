"""Tests of the official MPII PCKh metric (data/pckh.py) and the evaluation-file loaders (data/eval_files.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st
from mpii_fake import MPII_VAL, needs_mpii_val

from data import eval_files, joints, pckh

R_ANKLE, PELVIS, THORAX, NECK, HEAD_TOP, R_WRIST = 0, 6, 7, 8, 9, 10


def _blank(n: int = 1, head_size: float = 10.0):
    """n persons, GT at (100, 200) for every joint, perfect predictions, nothing annotated."""
    gt = np.tile(np.array([100.0, 200.0]), (n, joints.NUM_JOINTS, 1))
    return gt.copy(), gt, np.zeros((n, joints.NUM_JOINTS), bool), np.full(n, head_size)


# ---------------------------------------------------------------------------------------------- metric


def test_thresholds_are_exact():
    assert pckh.THRESHOLDS.shape == (51,)
    assert pckh.THRESHOLDS[0] == 0.0
    assert pckh.THRESHOLDS[10] == 0.1
    assert pckh.THRESHOLDS[50] == 0.5
    np.testing.assert_allclose(np.diff(pckh.THRESHOLDS), 0.01, rtol=1e-12)


def test_distance_equal_to_threshold_is_correct():
    preds, gt, annotated, heads = _blank(head_size=10.0)
    annotated[0, R_WRIST] = True
    preds[0, R_WRIST] += (3.0, 4.0)  # 5 px = exactly 0.5 head sizes
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.joint_pck[50, R_WRIST] == 100.0  # d <= 0.5
    assert result.joint_pck[49, R_WRIST] == 0.0  # d > 0.49
    assert result.summary()["total"] == 100.0
    assert result.summary()["pckh@0.1"] == 0.0


def test_pckh_at_01_uses_threshold_010_not_011():
    preds, gt, annotated, heads = _blank(n=2, head_size=100.0)
    annotated[:, R_ANKLE] = True
    preds[0, R_ANKLE, 0] += 10.0  # d = 0.100: correct at 0.1
    preds[1, R_ANKLE, 0] += 10.5  # d = 0.105: correct only from 0.11 on
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.summary()["pckh@0.1"] == 50.0
    assert result.total_pck[11] == 100.0


def test_unannotated_joints_are_excluded():
    preds, gt, annotated, heads = _blank(n=2)
    annotated[0, R_ANKLE] = True
    preds[1, R_ANKLE] += 1000.0  # far off, but not annotated
    preds[0, NECK] = np.nan  # NaN, but not annotated
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.joint_count[R_ANKLE] == 1
    assert result.joint_count[NECK] == 0
    assert result.summary()["total"] == 100.0
    assert np.isnan(result.joint_pck[:, NECK]).all()
    dist = pckh.normalized_distances(preds, gt, annotated, heads)
    assert dist[0, R_ANKLE] == 0.0
    assert np.isnan(dist[1, R_ANKLE]) and np.isnan(dist[0, NECK])


def test_nan_prediction_counts_as_wrong():
    preds, gt, annotated, heads = _blank(n=2)
    annotated[:, R_ANKLE] = True
    preds[0, R_ANKLE, 1] = np.nan  # one NaN coordinate is enough
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.joint_count[R_ANKLE] == 2
    np.testing.assert_array_equal(result.joint_pck[:, R_ANKLE], 50.0)
    assert pckh.normalized_distances(preds, gt, annotated, heads)[0, R_ANKLE] == np.inf


def test_pelvis_and_thorax_are_never_scored():
    preds, gt, annotated, heads = _blank()
    annotated[:] = True
    preds[0, PELVIS] += 500.0
    preds[0, THORAX] += 500.0
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.summary()["total"] == 100.0
    assert result.joint_count[PELVIS] == result.joint_count[THORAX] == 0
    assert result.joint_count.sum() == 14
    assert np.isnan(result.joint_pck[:, [PELVIS, THORAX]]).all()


def test_only_pelvis_annotated_is_an_error():
    preds, gt, annotated, heads = _blank()
    annotated[0, PELVIS] = True
    with pytest.raises(ValueError, match="no annotated joint"):
        pckh.compute_pckh(preds, gt, annotated, heads)


def test_total_is_pooled_not_the_mean_of_joints():
    # Person 0: all 14 scored joints correct. Person 1: only the r ankle, wrong.
    preds, gt, annotated, heads = _blank(n=2)
    annotated[0, list(joints.PCKH_JOINTS)] = True
    annotated[1, R_ANKLE] = True
    preds[1, R_ANKLE] += 100.0
    summary = pckh.compute_pckh(preds, gt, annotated, heads).summary()
    pooled = 100.0 * 14 / 15
    mean_of_joints = (50.0 + 13 * 100.0) / 14
    assert summary["total"] == pytest.approx(pooled, abs=1e-12)
    assert abs(summary["total"] - mean_of_joints) > 3.0
    assert summary["ankle"] == pytest.approx((50.0 + 100.0) / 2)  # mean of r and l ankle
    assert summary["ubody"] == 100.0


def test_groups_and_ubody():
    preds, gt, annotated, heads = _blank(n=4)
    annotated[:, [NECK, HEAD_TOP]] = True
    annotated[:, list(joints.UBODY_JOINTS)] = True
    annotated[0, 15] = False  # l wrist annotated 3 times, r wrist 4 times
    preds[0, HEAD_TOP] += 100.0  # head top 75 %, neck 100 %
    preds[:2, R_WRIST] += 100.0  # r wrist 50 %, l wrist 100 %
    summary = pckh.compute_pckh(preds, gt, annotated, heads).summary()
    assert summary["head"] == pytest.approx((100.0 + 75.0) / 2)
    assert summary["wrist"] == pytest.approx((50.0 + 100.0) / 2)
    assert summary["ubody"] == pytest.approx(100.0 * (23 - 2) / 23)  # 6 * 4 - 1 joints, 2 wrong
    assert summary["total"] == pytest.approx(100.0 * (31 - 3) / 31)
    assert np.isnan(summary["knee"])  # never annotated
    assert set(summary) == set(pckh.SUMMARY_KEYS)


def test_auc_by_hand():
    # One joint at exactly 0.25 head sizes: Total is 0 below threshold index 25 and 100 from there.
    # Rescaled step 0.02: one ramp (0 + 100) / 2 · 0.02 = 1, then 25 steps of 100 · 0.02 = 2 → 51.
    preds, gt, annotated, heads = _blank(head_size=20.0)
    annotated[0, R_ANKLE] = True
    preds[0, R_ANKLE] += (3.0, 4.0)
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    assert result.total_pck[24] == 0.0 and result.total_pck[25] == 100.0
    assert result.summary()["auc"] == pytest.approx(51.0, abs=1e-9)


def test_area_under_curve():
    assert pckh.area_under_curve(np.array([0.0, 0.5]), np.array([100.0, 100.0])) == pytest.approx(100.0)
    assert pckh.area_under_curve(np.array([0.0, 0.25, 0.5]), np.array([0.0, 40.0, 40.0])) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        pckh.area_under_curve(np.array([0.0]), np.array([1.0]))


def test_scale_invariance():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 500, (5, 16, 2))
    preds = gt + rng.normal(0, 20, gt.shape)
    annotated = rng.random((5, 16)) < 0.8
    heads = rng.uniform(20, 60, 5)
    a = pckh.compute_pckh(preds, gt, annotated, heads)
    b = pckh.compute_pckh(preds * 4.0, gt * 4.0, annotated, heads * 4.0)
    np.testing.assert_array_equal(a.total_pck, b.total_pck)


def _reference_curve(preds, gt, annotated, heads, joint_ids):
    """A literal per-threshold, per-joint loop of the toolkit's computePCK (pooled over joint_ids)."""
    curve = []
    for thr in [k / 100 for k in range(51)]:
        hits = total = 0
        for n in range(len(heads)):
            for j in joint_ids:
                if not annotated[n, j]:
                    continue
                total += 1
                p = preds[n, j]
                if np.isnan(p).any():
                    continue
                d = float(np.sqrt(((p - gt[n, j]) ** 2).sum())) / heads[n]
                hits += d <= thr
        curve.append(100.0 * hits / total)
    return np.array(curve)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4))
def test_matches_a_literal_reference(seed, n):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(-50, 500, (n, 16, 2))
    heads = rng.uniform(5, 40, n)
    # Errors of a few head sizes at most, some snapped to exact threshold multiples.
    preds = gt + rng.normal(0, 1, gt.shape) * heads[:, None, None] * 0.3
    preds[:, ::3] = gt[:, ::3] + np.array([0.0, 1.0]) * heads[:, None, None] * rng.integers(0, 60, (n, 1, 1)) / 100
    preds[rng.random((n, 16)) < 0.1] = np.nan
    annotated = rng.random((n, 16)) < 0.7
    annotated[0, R_ANKLE] = True
    result = pckh.compute_pckh(preds, gt, annotated, heads)
    np.testing.assert_allclose(
        result.total_pck, _reference_curve(preds, gt, annotated, heads, joints.PCKH_JOINTS), atol=1e-9
    )
    if annotated[:, list(joints.UBODY_JOINTS)].any():
        np.testing.assert_allclose(
            result.ubody_pck, _reference_curve(preds, gt, annotated, heads, joints.UBODY_JOINTS), atol=1e-9
        )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p, g, a, h: (p[:, :14], g, a, h), "preds must have shape"),
        (lambda p, g, a, h: (p, g[:1], a, h), "gt must have the shape"),
        (lambda p, g, a, h: (p, g, a[:, :15], h), "annotated must have shape"),
        (lambda p, g, a, h: (p, g, a * 2, h), "boolean mask"),
        (lambda p, g, a, h: (p, g, a, h[:1]), "head_sizes must have shape"),
        (lambda p, g, a, h: (p, g, a, h * 0), "head sizes must be finite and > 0"),
        (lambda p, g, a, h: (p, np.where(a[..., None], np.nan, g), a, h), "ground truth is not finite"),
        (lambda p, g, a, h: (p[:0], g[:0], a[:0], h[:0]), "no persons"),
    ],
)
def test_bad_inputs_raise_one_clear_error(change, message):
    preds, gt, annotated, heads = _blank(n=2)
    annotated[:, R_ANKLE] = True
    with pytest.raises(ValueError, match=message):
        pckh.compute_pckh(*change(preds, gt, annotated.astype(int), heads))


def test_head_size_of_person_without_joints_is_ignored():
    preds, gt, annotated, heads = _blank(n=2)
    annotated[0, R_ANKLE] = True
    heads[1] = 0.0  # e.g. a dummy row; it has no annotated joint
    assert pckh.compute_pckh(preds, gt, annotated, heads).summary()["total"] == 100.0


def test_format_table():
    preds, gt, annotated, heads = _blank()
    annotated[0, list(joints.PCKH_JOINTS)] = True
    preds[0, R_ANKLE] += 100.0
    summary = pckh.compute_pckh(preds, gt, annotated, heads).summary()
    text = pckh.format_table({"mine": summary})
    header, row = text.splitlines()
    assert header.split() == ["Method", "Head", "Shoul.", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total",
                              "PCKh@0.1", "AUC"]
    assert row.split() == ["mine", "100.0", "100.0", "100.0", "100.0", "100.0", "100.0", "50.0", "92.9",
                           "92.9", "92.9"]
    with pytest.raises(ValueError, match="lacks"):
        pckh.format_table({"bad": {"head": 1.0}})


def test_to_json_dict_is_strict_json():
    preds, gt, annotated, heads = _blank()
    annotated[0, R_ANKLE] = True
    out = pckh.compute_pckh(preds, gt, annotated, heads).to_json_dict()
    assert out["head"] is None  # no head joint annotated
    assert out["per_joint"]["r_ankle"] == 100.0 and out["per_joint"]["l_ankle"] is None
    assert out["joint_count"]["r_ankle"] == 1 and out["num_persons"] == 1
    assert "pelvis" not in out["per_joint"]


# --------------------------------------------------------------------------------------------- loaders


def _fake_problem(n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(10, 400, (n, 16, 2))
    annotated = rng.random((n, 16)) < 0.8
    gt[~annotated] = 0.0
    boxes = np.stack([rng.uniform(0, 100, (n, 2)), rng.uniform(150, 250, (n, 2))], axis=1)  # [N, 2, 2]
    return gt, annotated, boxes


def test_load_annotations_mat(tmp_path):
    gt, annotated, boxes = _fake_problem()
    path = tmp_path / "gt_valid.mat"
    names = np.empty((1, 16), dtype=object)
    names[0, :] = [name if name != "thrx" else "thor" for name in joints.SHORT_NAMES]
    scipy.io.savemat(
        path,
        {
            "pos_gt_src": gt.transpose(1, 2, 0),
            "jnt_missing": (~annotated).T.astype(np.uint8),
            "headboxes_src": boxes.transpose(1, 2, 0),
            "dataset_joints": names,
        },
    )
    ann = eval_files.load_annotations(path)
    np.testing.assert_array_equal(ann.joints, gt)
    np.testing.assert_array_equal(ann.annotated, annotated)
    np.testing.assert_allclose(ann.head_sizes, 0.6 * np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=-1))
    assert ann.num_persons == 3


def test_load_annotations_mat_errors(tmp_path):
    gt, annotated, boxes = _fake_problem()
    path = tmp_path / "gt.mat"
    scipy.io.savemat(path, {"pos_gt_src": gt.transpose(1, 2, 0), "headboxes_src": boxes.transpose(1, 2, 0)})
    with pytest.raises(ValueError, match=r"missing variable\(s\) \['jnt_missing'\]; found \['headboxes_src'"):
        eval_files.load_annotations(path)
    scipy.io.savemat(
        path,
        {
            "pos_gt_src": gt.transpose(1, 2, 0),
            "jnt_missing": (~annotated).T[:, :2].astype(np.uint8),
            "headboxes_src": boxes.transpose(1, 2, 0),
        },
    )
    with pytest.raises(ValueError, match="jnt_missing must be"):
        eval_files.load_annotations(path)
    with pytest.raises(FileNotFoundError):
        eval_files.load_annotations(tmp_path / "absent.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(ValueError, match="junk.mat"):
        eval_files.load_annotations(tmp_path / "junk.mat")
    with pytest.raises(ValueError, match="unknown annotation file type"):
        eval_files.load_annotations(tmp_path / "gt.json")


def test_load_annotations_h5_mask(tmp_path):
    part = np.tile(np.array([50.0, 60.0]), (3, 16, 1))
    part[0, 3] = (0.0, 0.0)  # not annotated
    part[0, 4] = (0.0, 17.0)  # annotated on the left edge: x·y == 0 but it is a joint
    part[1, 5] = (-3.0, 12.0)  # annotated outside the image
    part[2] = -1.0  # person without joints (annot.h5 convention)
    path = tmp_path / "valid.h5"
    with h5py.File(path, "w") as f:
        f["part"] = part
        f["normalize"] = np.array([10.0, 20.0, 1.0])
        f["visible"] = np.zeros((3, 16))
    ann = eval_files.load_annotations(path)
    expected = np.ones((3, 16), bool)
    expected[0, 3] = False
    expected[2] = False
    np.testing.assert_array_equal(ann.annotated, expected)
    np.testing.assert_array_equal(ann.head_sizes, [10.0, 20.0, 1.0])
    np.testing.assert_array_equal(ann.joints, part)


def test_load_annotations_h5_errors(tmp_path):
    path = tmp_path / "valid.h5"
    with h5py.File(path, "w") as f:
        f["part"] = np.zeros((2, 16, 2))
        f["scale"] = np.ones(2)
    with pytest.raises(ValueError, match=r"missing dataset\(s\) \['normalize'\]; found \['part', 'scale'\]"):
        eval_files.load_annotations(path)
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        eval_files.load_annotations(tmp_path / "junk.h5")


def test_load_predictions_layouts(tmp_path):
    preds = np.random.default_rng(1).uniform(0, 500, (3, 16, 2))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["preds"] = preds
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["preds"] = preds.transpose(2, 1, 0).astype(np.float32)
    scipy.io.savemat(tmp_path / "c.mat", {"pos_pred_src": preds.transpose(1, 2, 0)})
    scipy.io.savemat(tmp_path / "d.mat", {"preds": preds})
    np.testing.assert_array_equal(eval_files.load_predictions(tmp_path / "a.h5"), preds)
    np.testing.assert_allclose(eval_files.load_predictions(tmp_path / "b.h5"), preds, rtol=1e-6)
    np.testing.assert_array_equal(eval_files.load_predictions(tmp_path / "c.mat"), preds)
    np.testing.assert_array_equal(eval_files.load_predictions(tmp_path / "d.mat"), preds)
    assert eval_files.load_predictions(tmp_path / "a.h5").dtype == np.float64


def test_load_predictions_errors(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["joints"] = np.zeros((3, 16, 2))
    with pytest.raises(ValueError, match=r"missing dataset\(s\) \['preds'\]; found \['joints'\]"):
        eval_files.load_predictions(tmp_path / "p.h5")
    with h5py.File(tmp_path / "q.h5", "w") as f:
        f["preds"] = np.zeros((3, 14, 2))
    with pytest.raises(ValueError, match=r"\[N, 16, 2\] or \[2, 16, N\], got \(3, 14, 2\)"):
        eval_files.load_predictions(tmp_path / "q.h5")
    scipy.io.savemat(tmp_path / "r.mat", {"pos_gt_src": np.zeros((16, 2, 3))})
    with pytest.raises(ValueError, match=r"no 'pos_pred_src' or 'preds' variable; found \['pos_gt_src'\]"):
        eval_files.load_predictions(tmp_path / "r.mat")
    with pytest.raises(ValueError, match="unknown prediction file type"):
        eval_files.load_predictions(tmp_path / "r.npy")


# ---------------------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def real_annotations():
    if not MPII_VAL.is_dir():
        pytest.skip(f"real MPII validation files not found at {MPII_VAL}")
    return {
        "mat": eval_files.load_annotations(MPII_VAL / "detections_our_format.mat"),
        "h5": eval_files.load_annotations(MPII_VAL / "valid.h5"),
    }


def _score(preds, ann):
    return pckh.compute_pckh(preds, ann.joints, ann.annotated, ann.head_sizes).summary()


@needs_mpii_val
def test_real_annotation_files_agree(real_annotations):
    mat, h5 = real_annotations["mat"], real_annotations["h5"]
    assert mat.num_persons == h5.num_persons == 2958
    # Both masks give the release's 44240 annotated joints (docs/paper-recipe.md §11, evaluation files).
    assert mat.annotated.sum() == 44240
    np.testing.assert_array_equal(mat.annotated, h5.annotated)
    np.testing.assert_allclose(mat.head_sizes, h5.head_sizes, atol=1e-3)
    # valid.h5 holds the truncated coordinates of the same joints, except where bearpaw's copy zeroed a
    # coordinate of 13 annotated joints (docs/paper-recipe.md §11).
    far = (np.abs(mat.joints - h5.joints).max(axis=-1) >= 1.0 + 1e-3) & mat.annotated
    assert far.sum() == 13
    assert (mat.joints[far] == 0).any(axis=-1).all()


@needs_mpii_val
@pytest.mark.parametrize("which", ["mat", "h5"])
def test_real_newell_and_tompson(real_annotations, which):
    ann = real_annotations[which]
    newell = _score(eval_files.load_predictions(MPII_VAL / "newell.h5"), ann)
    tompson = _score(eval_files.load_predictions(MPII_VAL / "tompson.h5"), ann)
    # Ranges that a wrong protocol (mask, head size, pooling, threshold test, joint order) would miss.
    assert 88.0 <= newell["total"] <= 92.0
    assert 80.0 <= tompson["total"] <= 86.0
    for summary in (newell, tompson):
        assert summary["pckh@0.1"] < summary["total"] - 40.0
        assert summary["pckh@0.1"] < summary["auc"] < summary["total"]
        assert summary["head"] > 95.0 and summary["ankle"] < summary["hip"]
    # Tompson et al.'s own numbers (test set, paper Table 4: wrist 77.8, ankle 64.8) are close.
    assert tompson["wrist"] == pytest.approx(77.8, abs=2.5)
    assert tompson["ankle"] == pytest.approx(64.8, abs=2.5)


@needs_mpii_val
@pytest.mark.parametrize("name", ["newell.h5", "tompson.h5"])
def test_real_scores_agree_between_annotation_files(real_annotations, name):
    preds = eval_files.load_predictions(MPII_VAL / name)
    a, b = _score(preds, real_annotations["mat"]), _score(preds, real_annotations["h5"])
    # Truncated integer GT (valid.h5) moves scores by a few hundredths at most.
    for key in pckh.SUMMARY_KEYS:
        assert a[key] == pytest.approx(b[key], abs=0.5), key
    assert a["total"] == pytest.approx(b["total"], abs=0.05)


@needs_mpii_val
def test_real_tompson_h5_equals_pos_pred_src(real_annotations):
    from_h5 = eval_files.load_predictions(MPII_VAL / "tompson.h5")
    from_mat = eval_files.load_predictions(MPII_VAL / "detections_our_format.mat")
    assert np.abs(from_h5 - from_mat).max() < 1e-3  # the h5 copy is float32
    for ann in real_annotations.values():
        a, b = _score(from_h5, ann), _score(from_mat, ann)
        for key in pckh.SUMMARY_KEYS:
            assert a[key] == pytest.approx(b[key], abs=0.01), key
