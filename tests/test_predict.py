"""train.inference (Python API) and `python -m train.predict` on a tiny checkpoint written in the real layout."""

from __future__ import annotations

import json

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from data import augment
from data.joints import FLIP_PERMUTATION
from train import predict as predict_cli
from train.inference import Box, PoseEstimator
from train.loop import config as config_lib
from train.loop.checkpoint import Checkpointer, CheckpointError
from train.loop.state import create_train_state, torch_rmsprop
from train.loop.workdir import RunDir

TINY = dict(backbone="resnet18", res=28, input_size=32, output="dsnt", reg="js", dataset="synthetic",
            model_overrides=json.dumps({"widths": [8, 8, 8, 8], "stem_width": 8, "upsample": 8}))
# `upsample` as in the synthetic-cpu preset: checkpoints of that head restore and predict on 8×8 maps.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A run directory as train.main leaves it: config.json and one orbax checkpoint."""
    root = tmp_path_factory.mktemp("run")
    cfg = config_lib.resolve({**TINY, "workdir": str(root)})
    RunDir(str(root)).write_config(cfg)
    model = cfg.model.build()
    state = create_train_state(model, 0, cfg.model.input_size, torch_rmsprop(1e-3))
    # Make the head non-trivial so that every joint gets its own, off-centre heatmap.
    params = jax.tree_util.tree_map(lambda x: x, state.params)
    rng = np.random.default_rng(0)
    params["hm_conv"]["kernel"] = rng.normal(size=params["hm_conv"]["kernel"].shape).astype(np.float32)
    state = state.replace(params=params)
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt = Checkpointer(root / "checkpoints", async_save=False)
    ckpt.save(7, state, {"epoch": 1, "step": 7, "best_pckh": 12.5, "best_step": 7}, data_iter)
    ckpt.close()
    return root, cfg, model, {"params": state.params, "batch_stats": state.batch_stats}


def _image(h=60, w=90):
    return np.random.default_rng(1).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_whole_image_box_frames_the_longer_side():
    box = Box.whole_image(60, 90)
    np.testing.assert_allclose(box.scale * 250, 90)
    # The crop's normalised corners land on the image's outer corners along the longer side.
    sample_affine = _affine_for(config_lib.resolve(TINY), _image(), box)
    corners = augment.normalized_to_image_points(np.array([[-1.0, -1.0], [1.0, 1.0]]), sample_affine) - 1
    np.testing.assert_allclose(corners[:, 0], [-0.5, 89.5], atol=1e-6)
    np.testing.assert_allclose(corners.mean(axis=0), [44.5, 29.5], atol=1e-6)


def _affine_for(cfg, image, box):
    # Preprocessing needs only the config, not a model.
    est = PoseEstimator.__new__(PoseEstimator)
    est.config, est.mean_rgb = cfg, None
    return est.preprocess(image, box)["normalized_to_image"]


def test_predictions_equal_the_model_on_the_same_crop(workdir):
    root, cfg, model, variables = workdir
    estimator = PoseEstimator.from_checkpoint(root)
    images = [_image(), _image(80, 50)]
    boxes = [None, Box((20.0, 35.0), 0.2)]
    preds = estimator.predict(images, boxes)
    assert len(preds) == 2
    for image, box, pred in zip(images, boxes, preds):
        sample = estimator.preprocess(image, box)
        out = model.apply(variables, sample["image"][None], train=False)
        np.testing.assert_allclose(pred.coords, out["coords"][0], atol=1e-5)
        expected = augment.normalized_to_image_points(np.asarray(out["coords"][0]), sample["normalized_to_image"]) - 1
        np.testing.assert_allclose(pred.joints, expected, atol=1e-3)
        assert pred.heatmaps.shape == (16, 8, 8)
        assert np.all(np.isfinite(pred.spread)) and np.all(pred.spread > 0)
    # Distinct joints, not a constant answer.
    assert np.ptp(preds[0].joints[:, 0]) > 0.1


def test_flip_test_is_mirror_consistent(workdir):
    root, *_ = workdir
    flip = PoseEstimator.from_checkpoint(root, flip_test=True)
    image = _image()
    a = flip.predict([image])[0].joints
    b = flip.predict([image[:, ::-1].copy()])[0].joints
    # Mirroring the input mirrors the answer (x → W−1−x) with left/right joints swapped.
    mirrored = b[list(FLIP_PERMUTATION)].copy()
    mirrored[:, 0] = image.shape[1] - 1 - mirrored[:, 0]
    np.testing.assert_allclose(a, mirrored, atol=1e-3)


def test_bad_inputs(workdir, tmp_path):
    root, *_ = workdir
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        PoseEstimator.from_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at step 3"):
        PoseEstimator.from_checkpoint(root, step=3)
    estimator = PoseEstimator.from_checkpoint(root, step="latest")
    with pytest.raises(ValueError, match="RGB image"):
        estimator.predict([np.zeros((10, 10))])
    with pytest.raises(ValueError, match="2 images but 1 boxes"):
        estimator.predict([_image(), _image()], [None])


def test_cli_prints_json_and_writes_pictures(workdir, tmp_path, capsys):
    root, *_ = workdir
    path = tmp_path / "person.png"
    Image.fromarray(_image()).save(path)
    out = tmp_path / "out"
    status = predict_cli.main(["--checkpoint", str(root), str(path), "--heatmaps", "--out", str(out),
                               "--center", "45,25", "--scale", "0.3"])
    assert status == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(record["joints"]) >= {"r_ankle", "head_top", "l_wrist"} and record["box"]["scale"] == 0.3
    pose = np.asarray(Image.open(out / "person_pose.png"))
    assert pose.shape == (60, 90, 3) and np.any(pose != _image())
    assert Image.open(out / "person_heatmaps.png").size[0] > 32
    assert predict_cli.main(["--checkpoint", str(root), str(tmp_path / "missing.png")]) == 2
    with pytest.raises(SystemExit):
        predict_cli.main(["--checkpoint", str(root), str(path), "--center", "1,2"])


def test_evaluate_checkpoint_on_its_validation_split(workdir, tmp_path):
    """`python -m train.evaluate --checkpoint`: predictions of the run's validation split, saved and scored."""
    import dataclasses

    import h5py

    from data.synthetic_pose import builder as syn_builder
    from train import evaluate

    root, cfg, model, variables = workdir
    data_dir = tmp_path / "tfds"
    small = dict(synthetic_train=6, synthetic_val=5, synthetic_canvas=48)
    run = tmp_path / "run"
    run.mkdir()
    RunDir(str(run)).write_config(dataclasses.replace(cfg, **small, workdir=str(run)))
    (run / "checkpoints").symlink_to(root / "checkpoints")
    out = tmp_path / "preds.h5"
    status = evaluate.main(["--checkpoint", str(run), "--data-dir", str(data_dir), "--save-predictions", str(out),
                            "--json", str(tmp_path / "r.json")])
    assert status == 0
    with h5py.File(out) as f:
        preds = f["preds"][...]
    assert preds.shape == (5, 16, 2) and np.all(np.isfinite(preds))
    # Each prediction is the model's output on that record's eval crop, mapped to the image frame.
    config = syn_builder.synthetic_config(6, 5, syn_builder.DEFAULT_SEED, 48)
    val = syn_builder.SyntheticPose(config=config, data_dir=str(data_dir)).as_data_source(split="validation")
    for i in (0, 4):
        sample = augment.preprocess_eval(val[i], cfg.model.input_size)
        coords = np.asarray(model.apply(variables, sample["image"][None], train=False)["coords"][0])
        np.testing.assert_allclose(preds[i], augment.normalized_to_image_points(coords, sample["normalized_to_image"]),
                                   atol=1e-3)
    summary = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= summary["total"] <= 100.0 and "pckh@0.1" in summary
