"""Tests of the embedded synthetic pose dataset (data/synthetic_pose)."""

from __future__ import annotations

import numpy as np
import pytest

from data import pckh, records
from data.joints import BONES, NUM_JOINTS
from data.synthetic_pose import appearance, builder, painter, render
from data.synthetic_pose import skeleton as sk


def _neutral_angles(**changes) -> dict:
    """Standing straight, arms hanging a little away from the body, head level."""
    angles = {
        "spine": (0.0, 0.0, 0.0), "legs": [(0.0, 5.0, 0.0), (0.0, 5.0, 0.0)],
        "arms": [(0.0, 12.0, 0.0), (0.0, 12.0, 0.0)], "arm_twist": (0.0, 0.0), "leg_twist": (0.0, 0.0),
        "neck": (0.0, 0.0), "head": (0.0, 0.0, 0.0), "foot_yaw": (0.0, 0.0),
    }
    angles.update(changes)
    return angles


def _draw_alone(yaw: float, unit: float = 24.0, look_changes: dict | None = None, **angle_changes):
    """Draws one (neutral) person on a grey 360x240 image; returns (layers, body, origin, part labels)."""
    rng = np.random.default_rng(7)
    angles = _neutral_angles(**angle_changes)
    body = sk.pose_body(sk.sample_proportions(rng), angles, sk.camera_rotation(yaw, 0.0, 0.0))
    look = appearance.sample_appearance(rng)
    look.update(look_changes or {})
    layers = painter.Layers(np.full((360, 240, 3), 128, np.uint8), np.zeros((360, 240), np.uint8))
    origin = np.array([120.0, 190.0])
    parts = painter.draw_person(layers, body, look, origin, unit)
    return layers, body, origin, parts


# --- determinism -------------------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_examples():
    a, b = render.render_example(3, 11), render.render_example(3, 11)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key
    assert a["image"].tobytes() == b["image"].tobytes()


def test_other_seed_or_index_gives_other_examples():
    base = render.render_example(3, 11)["image"]
    for other in (render.render_example(4, 11)["image"], render.render_example(3, 12)["image"]):
        assert other.shape != base.shape or not np.array_equal(other, base)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="non-negative"):
        render.render_example(-1, 0)
    with pytest.raises(ValueError, match="min_size"):
        render.render_example(0, 0, min_size=300, max_size=200)
    with pytest.raises(ValueError, match="multiple of 6"):
        builder.synthetic_config(canvas_size=100)
    with pytest.raises(ValueError, match="at least 1"):
        builder.synthetic_config(num_train=0)


# --- kinematics --------------------------------------------------------------------------------------------


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1, 1))))


def test_bone_lengths_and_joint_angles_are_human():
    rng = np.random.default_rng(0)
    means = {(sk.R_ANK, sk.R_KNE): 1.65, (sk.R_KNE, sk.R_HIP): 1.75, (sk.R_WRI, sk.R_ELB): 1.0,
             (sk.R_ELB, sk.R_SHO): 1.2, (sk.THORAX, sk.PELVIS): 2.0, (sk.NECK, sk.THORAX): 0.42}
    for _ in range(200):
        body, _ = sk.sample_body(rng)
        j = body.joints
        assert np.linalg.norm(j[sk.HEAD_TOP] - j[sk.NECK]) == pytest.approx(1.0)  # the body unit
        for (a, b), mean in means.items():
            assert 0.89 * mean <= np.linalg.norm(j[a] - j[b]) <= 1.11 * mean
        # MPII: the pelvis is the middle of the hips, the thorax the middle of the shoulders.
        np.testing.assert_allclose(j[sk.PELVIS], 0.5 * (j[sk.R_HIP] + j[sk.L_HIP]), atol=1e-12)
        np.testing.assert_allclose(j[sk.THORAX], 0.5 * (j[sk.R_SHO] + j[sk.L_SHO]), atol=1e-12)
        for hip, knee, ankle in ((sk.R_HIP, sk.R_KNE, sk.R_ANK), (sk.L_HIP, sk.L_KNE, sk.L_ANK)):
            assert _angle(j[knee] - j[hip], j[ankle] - j[knee]) <= 150.5  # knee flexion
        for sho, elb, wri in ((sk.R_SHO, sk.R_ELB, sk.R_WRI), (sk.L_SHO, sk.L_ELB, sk.L_WRI)):
            assert _angle(j[elb] - j[sho], j[wri] - j[elb]) <= 150.5  # elbow flexion
        assert _angle(j[sk.THORAX] - j[sk.PELVIS], j[sk.NECK] - j[sk.THORAX]) < 60


def test_right_and_left_follow_the_persons_own_sides():
    """As in MPII, 'right' is the person's right: on the image's left when they face the camera."""
    props = sk.sample_proportions(np.random.default_rng(1))
    front = sk.pose_body(props, _neutral_angles(), sk.camera_rotation(0, 0, 0)).joints
    back = sk.pose_body(props, _neutral_angles(), sk.camera_rotation(180, 0, 0)).joints
    for right, left in ((sk.R_SHO, sk.L_SHO), (sk.R_HIP, sk.L_HIP), (sk.R_WRI, sk.L_WRI), (sk.R_ANK, sk.L_ANK)):
        assert front[right, 0] < front[left, 0] and back[right, 0] > back[left, 0]
    assert front[sk.HEAD_TOP, 1] < front[sk.NECK, 1] < front[sk.PELVIS, 1] < front[sk.R_ANK, 1]  # y is down


# --- drawing and visibility --------------------------------------------------------------------------------


def test_the_face_shows_which_way_the_person_faces():
    look = {"skin": np.array([250.0, 205.0, 170.0]), "hair": np.array([25.0, 20.0, 20.0]), "bald": False}
    for yaw, facing_camera in ((0.0, True), (180.0, False)):
        layers, body, origin, _ = _draw_alone(yaw, look_changes=look)
        # Below the middle of the face: skin when seen from the front, hair from behind.
        c = origin + 24.0 * (body.head_center[:2] + 0.15 * (body.joints[sk.NECK, :2] - body.head_center[:2]))
        brightness = layers.image[int(round(c[1])), int(round(c[0]))].mean()
        assert (brightness > 120) == facing_camera, (yaw, brightness)


def test_a_person_seen_from_the_front_shows_every_joint():
    layers, body, origin, parts = _draw_alone(0.0)
    ann = render.annotate_person(layers.label, body, origin, 24.0, parts)
    assert ann["annotated"].all()
    assert ann["visible"].all()


def test_the_far_side_of_a_person_seen_side_on_is_hidden():
    # Yaw 90: the person faces image right and their left side is the far one. Arms held forwards, so that
    # the near hand does not cover the near hip.
    layers, body, origin, parts = _draw_alone(90.0, arms=[(90.0, 0.0, 0.0), (90.0, 0.0, 0.0)])
    assert body.joints[sk.L_SHO, 2] > body.joints[sk.R_SHO, 2]  # left is farther from the camera
    vis = render.annotate_person(layers.label, body, origin, 24.0, parts)["visible"]
    for near, far in ((sk.R_SHO, sk.L_SHO), (sk.R_HIP, sk.L_HIP), (sk.R_KNE, sk.L_KNE)):
        assert vis[near] and not vis[far], (near, far, vis)


def test_visibility_rule_on_a_hand_made_label_map():
    parts = {name: i + 1 for i, name in enumerate(painter.PART_NAMES)}  # later parts have larger labels
    label = np.zeros((10, 16), np.uint8)
    probes = np.zeros((NUM_JOINTS, 2))
    for j in range(NUM_JOINTS):
        probes[j] = (j, 5)  # joint j looks at pixel [5, j]
    label[5, sk.R_ELB] = parts["r_forearm"]  # its own part: seen
    label[5, sk.L_ELB] = 255  # something in front: hidden
    label[5, sk.R_SHO] = parts["l_hand"]  # a part drawn after the right upper arm (label 10): hidden
    label[5, sk.R_HIP] = parts["torso"]  # drawn before the right thigh (label 4): seen
    label[5, sk.L_HIP] = parts["l_hand"]  # drawn after the left thigh: hidden
    vis = render.joint_visibility(label, probes, parts)
    assert vis[sk.R_ELB] and not vis[sk.L_ELB] and not vis[sk.R_SHO] and vis[sk.R_HIP] and not vis[sk.L_HIP]
    assert vis[sk.PELVIS]  # background at its probe
    # A probe outside the image is reported visible (such joints are not annotated).
    probes[sk.PELVIS] = (-5, 5)
    assert render.joint_visibility(label, probes, parts)[sk.PELVIS]


def test_annotated_joints_lie_on_the_drawn_person():
    for index in range(25):
        ex = render.render_example(5, index, clutter=False, return_labels=True)
        labels, image = ex["labels"], ex["image"]
        h, w = labels.shape
        unit = float(ex["head_size"]) / 0.75
        probes = ex["joints"] - 1.0
        down = probes[sk.NECK] - probes[sk.HEAD_TOP]
        probes[sk.HEAD_TOP] += 0.15 * unit * down / max(np.hypot(*down), 1e-6)
        for j in np.nonzero(ex["annotated"])[0]:
            c, r = int(np.clip(np.round(probes[j, 0]), 0, w - 1)), int(np.clip(np.round(probes[j, 1]), 0, h - 1))
            assert labels[r, c] in ex["part_labels"].values(), (index, j)
            assert np.abs(image[r, c].astype(int) - 128).max() > 3, (index, j)  # not the empty grey


# --- annotations -------------------------------------------------------------------------------------------


def test_annotations_follow_the_mpii_conventions():
    fractions_inside_canvas = []
    for index in range(30):
        ex = render.render_example(2, index)
        h, w = ex["image"].shape[:2]
        assert ex["image"].dtype == np.uint8 and render.DEFAULT_MIN_SIZE <= min(h, w) <= max(h, w) <= 400
        assert tuple(ex["image_size"]) == (w, h)
        ann, vis, joints = ex["annotated"], ex["visible"], ex["joints"]
        assert joints.dtype == np.float32 and joints.shape == (NUM_JOINTS, 2)
        assert not (vis & ~ann).any()
        assert (joints[~ann] == 0).all()
        inside = joints[ann]
        assert ((inside >= 0.5) & (inside <= np.array([w, h]) + 0.5)).all()  # 1-based frame
        x1, y1, x2, y2 = ex["head_box"]
        assert ex["head_size"] == pytest.approx(0.6 * np.hypot(x2 - x1, y2 - y1), rel=1e-5)
        assert ex["scale"] == pytest.approx(ex["head_size"] / 25.0, rel=1e-6)
        if ann[sk.NECK] and ann[sk.HEAD_TOP]:
            mid = 0.5 * (joints[sk.NECK] + joints[sk.HEAD_TOP])
            assert x1 < mid[0] < x2 and y1 < mid[1] < y2
            # MPII: upper neck to head top is at most 4/3 head sizes (foreshortening only shortens it).
            assert np.linalg.norm(joints[sk.HEAD_TOP] - joints[sk.NECK]) <= 1.334 * ex["head_size"]
        assert 0 < ex["center"][0] <= w + 1 and 0 < ex["center"][1] <= h + 1
        a = records.canvas_transform(ex["center"], float(ex["scale"]), 96)
        c = records.image_to_canvas(joints[ann], a)
        fractions_inside_canvas.append(np.mean((c >= 0) & (c <= 95)))
    # The 250 * scale box plus margins frames the person, as it does MPII people.
    assert np.mean(fractions_inside_canvas) > 0.97


def test_bones_in_the_image_have_plausible_lengths():
    ratios = []
    for index in range(40):
        ex = render.render_example(9, index, clutter=False)
        j, ann, unit = ex["joints"], ex["annotated"], float(ex["head_size"]) / 0.75
        ratios += [np.linalg.norm(j[a] - j[b]) / unit for a, b in BONES if ann[a] and ann[b]]
    ratios = np.array(ratios)
    assert ratios.max() < 2.2  # the longest bone (thigh) is 1.75 +- 10 % head lengths
    assert np.median(ratios) > 0.6


# --- difficulty --------------------------------------------------------------------------------------------


def test_predicting_the_mean_pose_scores_below_30_percent_pckh():
    canvas = 192
    box = canvas / 3.0  # half the person box in canvas pixels: normalised coordinates are +-1 at its edges
    centre = canvas / 2.0 - 0.5

    def normalised(index: int) -> tuple[np.ndarray, dict]:
        ex = render.render_example(0, index)
        a = records.canvas_transform(ex["center"], float(ex["scale"]), canvas)
        return (records.image_to_canvas(ex["joints"], a) - centre) / box, ex

    train = [normalised(i) for i in range(300)]
    u = np.stack([t[0] for t in train])
    ann = np.stack([t[1]["annotated"] for t in train])
    mean_pose = np.stack([u[ann[:, j], j].mean(0) for j in range(NUM_JOINTS)])

    preds, gt, mask, heads = [], [], [], []
    for i in range(200):
        ex = render.render_example(0, builder.VALIDATION_OFFSET + i)
        a = records.canvas_transform(ex["center"], float(ex["scale"]), canvas)
        preds.append(records.canvas_to_image_points(mean_pose * box + centre, a))
        gt.append(ex["joints"])
        mask.append(ex["annotated"])
        heads.append(ex["head_size"])
    total = pckh.compute_pckh(np.stack(preds), np.stack(gt), np.stack(mask), np.array(heads)).summary()["total"]
    assert 3.0 < total < 30.0, total  # hard, yet the mean pose is no random guess


# --- tfds builder ------------------------------------------------------------------------------------------


def _read_split(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _equal_records(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    import data.synthetic_pose

    data_dir = tmp_path_factory.mktemp("tfds")
    b = data.synthetic_pose.build(str(data_dir), num_train=16, num_val=8, seed=1, canvas_size=96, num_workers=1)
    return data_dir, b


def test_tiny_build_reads_back_with_the_full_schema(tiny_build):
    import tensorflow_datasets as tfds

    data_dir, b = tiny_build
    assert b.builder_config.name == "n16_v8_s1_c96"
    sources = tfds.data_source(f"synthetic_pose/{b.builder_config.name}", data_dir=str(data_dir))
    train, val = _read_split(sources["train"]), _read_split(sources["validation"])
    assert len(train) == 16 and len(val) == 8
    expected = set(records.features(96).keys())
    for rec in train + val:
        assert set(rec) == expected
        assert rec["image"].shape == (96, 96, 3) and rec["image"].dtype == np.uint8
        assert rec["joints"].shape == (16, 2) and rec["joints"].dtype == np.float32
        assert rec["annotated"].dtype == bool and rec["visible"].dtype == bool
        assert rec["canvas_to_image"].shape == (2, 3) and rec["image_size"].dtype == np.int32
        assert rec["person_index"] == 0 and rec["head_size"] > 0 and rec["scale"] > 0
    train_ids = sorted(r["annolist_index"] for r in train)
    val_ids = sorted(r["annolist_index"] for r in val)
    assert train_ids == list(range(16))
    assert val_ids == list(range(builder.VALIDATION_OFFSET, builder.VALIDATION_OFFSET + 8))
    assert not {r["image_name"] for r in train} & {r["image_name"] for r in val}


def test_stored_records_are_the_rendered_examples(tiny_build):
    _, b = tiny_build
    stored = {r["annolist_index"]: r for r in _read_split(b.as_data_source()["train"])}
    _, made = builder.make_example(1, 5, 96)
    rec = stored[5]
    assert rec["image_name"].decode() == made["image_name"]
    np.testing.assert_array_equal(rec["image"], records.decode_image(made["image"]))
    for key in ("joints", "annotated", "visible", "head_box", "center", "canvas_to_image", "image_size"):
        np.testing.assert_array_equal(rec[key], made[key], err_msg=key)
    # The canvas shows the person where the joints say: the canvas centre is near the hips/torso.
    c = records.image_to_canvas(rec["joints"][rec["annotated"]], rec["canvas_to_image"])
    assert np.all((c > -48) & (c < 96 + 48))


def test_parallel_build_equals_the_sequential_one(tiny_build, tmp_path, monkeypatch):
    import data.synthetic_pose

    _, sequential = tiny_build
    monkeypatch.setattr(builder, "_MIN_PARALLEL", 1)
    monkeypatch.setattr(builder, "_CHUNK", 4)
    parallel = data.synthetic_pose.build(str(tmp_path), num_train=16, num_val=8, seed=1, canvas_size=96,
                                         num_workers=2)
    for split in ("train", "validation"):
        a = sorted(_read_split(sequential.as_data_source()[split]), key=lambda r: r["annolist_index"])
        b = sorted(_read_split(parallel.as_data_source()[split]), key=lambda r: r["annolist_index"])
        assert len(a) == len(b) and all(_equal_records(x, y) for x, y in zip(a, b, strict=True))


def test_configs_are_named_after_their_sizes():
    assert builder.synthetic_config().name == "n6000_v500_s0_c192"
    assert builder.synthetic_config(10, 5, 3, 48).name == "n10_v5_s3_c48"
    assert builder.SyntheticPose.BUILDER_CONFIGS[0].name == builder.synthetic_config().name
