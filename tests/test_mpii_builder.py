"""End-to-end tests of the mpii_human_pose tfds builder, the splits and the prepare CLI, on a fake release."""

from __future__ import annotations

import hashlib
import io
import logging
import subprocess
import sys
import types
from pathlib import Path

import mpii_fake
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import prepare, records
from data.mpii import builder as mpii_builder
from data.mpii import manual, split
from data.mpii.release import load_release

CANVAS = 96


def _build(manual_dir: Path, data_dir: Path, validation=mpii_fake.DEFAULT_VALIDATION) -> mpii_builder.MpiiHumanPose:
    builder = mpii_builder.MpiiHumanPose(config=mpii_builder.mpii_config(CANVAS, validation), data_dir=data_dir,
                                         num_threads=2)
    # No file_format: the builder defaults to array_record (tfrecord would need TensorFlow).
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _read_all(builder) -> dict[str, dict[tuple[int, int], dict]]:
    sources = builder.as_data_source()
    return {name: {(r["annolist_index"], r["person_index"]): r for r in ds} for name, ds in sources.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpii")
    images = mpii_fake.write_fake_release(root / "manual")
    builder = _build(root / "manual", root / "data")
    return images, builder, _read_all(builder)


def test_split_counts_and_missing_images_counted(built):
    _, builder, data = built
    for name, refs in mpii_fake.EXPECTED_SPLITS.items():
        present = sorted(r for r in refs if r not in mpii_fake.MISSING)
        assert sorted(data[name]) == present, name
        assert builder.info.splits[name].num_examples == len(present)
    # 015601864.jpg (2 training persons) and 000000007.jpg (1 test person) have no file.
    assert builder.skipped["train"] == {"missing images": 1, "persons skipped": 2}
    assert builder.skipped["test"] == {"missing images": 1, "persons skipped": 1}
    assert not builder.skipped["validation"]
    assert sorted(p.name for p in Path(builder.data_dir).glob("*.array_record-*")) == [
        f"mpii_human_pose-{name}.array_record-00000-of-00001" for name in ("test", "train", "validation")]


def test_records_hold_the_annotations(built):
    images, _, data = built
    for name, recs in data.items():
        for (i, p), rec in recs.items():
            image, person = images[i], images[i].persons[p]
            joints, annotated, visible = person.joints()
            np.testing.assert_array_equal(rec["joints"], joints.astype(np.float32))
            np.testing.assert_array_equal(rec["annotated"], annotated)
            np.testing.assert_array_equal(rec["visible"], visible)
            assert rec["image_name"].decode() == image.name
            np.testing.assert_array_equal(rec["image_size"], image.size)
            assert rec["image"].shape == (CANVAS, CANVAS, 3) and rec["image"].dtype == np.uint8
            np.testing.assert_array_equal(rec["center"], person.objpos)
            assert rec["scale"] == pytest.approx(person.scale, rel=1e-6)
            np.testing.assert_allclose(rec["canvas_to_image"],
                                       records.canvas_transform(person.objpos, person.scale, CANVAS), rtol=1e-6)
            if name == "test":
                assert not rec["annotated"].any() and not rec["head_box"].any() and rec["head_size"] == 0
            else:
                np.testing.assert_array_equal(rec["head_box"], person.head)
                x1, y1, x2, y2 = person.head
                assert rec["head_size"] == pytest.approx(0.6 * np.hypot(x2 - x1, y2 - y1), rel=1e-6)


def test_canvas_to_image_finds_the_dot(built):
    images, _, data = built
    checked = 0
    for recs in data.values():
        for (i, _), rec in recs.items():
            if images[i].dot is None:
                continue
            where = records.image_to_canvas(mpii_fake.dot_position(images[i]), rec["canvas_to_image"])
            if not np.all((where > 5) & (where < CANVAS - 6)):
                continue
            grey = rec["image"].astype(np.float64).mean(-1)
            weight = np.clip(grey - (mpii_fake.BACKGROUND + 40), 0, None)
            v, u = np.mgrid[:CANVAS, :CANVAS]
            found = np.array([(weight * u).sum(), (weight * v).sum()]) / weight.sum()
            np.testing.assert_allclose(found, where, atol=0.5)
            # Far from the dot the canvas shows the background (or black outside the image): no stray bright pixels.
            assert grey[np.hypot(u - where[0], v - where[1]) > 6].max() < mpii_fake.BACKGROUND + 30
            checked += 1
    assert checked >= 4  # both dots, seen by several persons' canvases


def test_data_source_by_name(built):
    _, builder, data = built
    ds = tfds.data_source(f"mpii_human_pose/{builder.builder_config.name}", data_dir=builder.data_dir_root)
    assert len(ds["validation"]) == len(data["validation"])


def test_zip_and_tarball_inputs_give_the_same_records(built, tmp_path):
    _, _, data = built
    mpii_fake.write_fake_release(tmp_path / "manual", zip_mat=True, tar_images=True)
    assert not (tmp_path / "manual" / mpii_fake.MAT_NAME).exists()
    assert not (tmp_path / "manual" / "images").exists()
    files = manual.find_manual_files(tmp_path / "manual")
    assert files.annotations.name == mpii_fake.ZIP_NAME and files.images_in_tarball
    builder = _build(tmp_path / "manual", tmp_path / "data")
    again = _read_all(builder)
    assert builder.skipped["train"] == {"missing images": 1, "persons skipped": 2}
    for name in data:
        assert sorted(again[name]) == sorted(data[name])
        for key, rec in again[name].items():
            for field, value in rec.items():
                np.testing.assert_array_equal(value, data[name][key][field], err_msg=f"{name} {key} {field}")


def test_split_larger_than_the_shuffle_buffer_builds_without_tensorflow(built, tmp_path, monkeypatch):
    # A real MPII split exceeds tfds's 1 GB in-memory shuffle buffer; a 0-byte buffer takes the same path here.
    from tensorflow_datasets.core import shuffle

    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 0)
    _, _, data = built
    mpii_fake.write_fake_release(tmp_path / "manual")
    again = _read_all(_build(tmp_path / "manual", tmp_path / "data"))
    for name in data:
        assert sorted(again[name]) == sorted(data[name])
        for key, rec in again[name].items():
            np.testing.assert_array_equal(rec["image"], data[name][key]["image"])
            np.testing.assert_array_equal(rec["joints"], data[name][key]["joints"])


def test_unreadable_image_is_counted_not_fatal(tmp_path, caplog):
    mpii_fake.write_fake_release(tmp_path / "manual")
    (tmp_path / "manual" / "images" / "000000006.jpg").write_bytes(b"\xff\xd8 truncated")
    with caplog.at_level(logging.WARNING, logger="data.mpii.builder"):
        builder = _build(tmp_path / "manual", tmp_path / "data")
    assert builder.skipped["validation"] == {"unreadable images": 1, "persons skipped": 1}
    assert builder.info.splits["validation"].num_examples == 1
    assert "000000006.jpg" in caplog.text


def test_missing_files_error_names_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        manual.find_manual_files(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as err:
        manual.find_manual_files(tmp_path)
    message = str(err.value)
    for name in (mpii_fake.MAT_NAME, mpii_fake.ZIP_NAME, mpii_fake.TAR_NAME, "images/", manual.HOMEPAGE,
                 manual.TAR_MD5, "12 GiB"):
        assert name in message
    (tmp_path / mpii_fake.MAT_NAME).write_bytes(mpii_fake.release_mat_bytes(mpii_fake.default_images()))
    with pytest.raises(FileNotFoundError) as err:
        manual.find_manual_files(tmp_path)
    assert "missing images:" in str(err.value) and "missing annotations:" not in str(err.value)
    # The builder raises the same error through tfds.
    with pytest.raises(FileNotFoundError, match="missing images:"):
        _build(tmp_path, tmp_path / "data")


def test_shipped_validation_list():
    pairs = split.load_validation_persons()
    assert len(pairs) == 2958 and pairs == tuple(sorted(pairs))
    assert pairs[:10] == ((6, 0), (17, 0), (27, 0), (29, 0), (30, 0), (35, 0), (80, 0), (81, 0), (86, 1), (89, 3))
    text = split.persons_text(pairs)
    assert hashlib.sha256(text.encode()).hexdigest() == split.VALIDATION_SHA256
    with pytest.raises(ValueError, match="corrupt"):
        split.parse_validation_text(text.replace("6,0\n", "6,1\n", 1))
    if (mpii_fake.MPII_VAL / "valid.h5").is_file():
        h5py = pytest.importorskip("h5py")
        with h5py.File(mpii_fake.MPII_VAL / "valid.h5", "r") as f:
            assert pairs == tuple(zip(f["index"][()].astype(int).tolist(), f["person"][()].astype(int).tolist()))


def test_split_persons_rejects_a_validation_list_that_does_not_fit():
    images = load_release(io.BytesIO(mpii_fake.release_mat_bytes(mpii_fake.default_images())))
    result = split.split_persons(images, mpii_fake.DEFAULT_VALIDATION)
    assert {k: [(i.index, p.index) for i, p in v] for k, v in result.persons.items()} == mpii_fake.EXPECTED_SPLITS
    assert result.skipped == {"train: no objpos/scale": 1, "train: no joints": 1, "test: no objpos/scale": 1}
    with pytest.raises(ValueError, match="not in this release"):
        split.split_persons(images, [(0, 5)])
    with pytest.raises(ValueError, match="not an annotated training person"):
        split.split_persons(images, [(1, 0)])  # a test-image person


def test_mpii_config_names():
    assert mpii_builder.mpii_config().name == "canvas576"
    assert mpii_builder.mpii_config(384, split.load_validation_persons()).name == "canvas384"
    assert mpii_builder.mpii_config(96, [(0, 1)]).name.startswith("canvas96_val")
    with pytest.raises(ValueError, match="multiple of 6"):
        mpii_builder.mpii_config(100)


def test_cli_mpii(tmp_path, capsys, monkeypatch):
    rc = prepare.main(["mpii", "--manual-dir", str(tmp_path / "absent")])
    assert rc == 2 and mpii_fake.TAR_NAME in capsys.readouterr().err
    mpii_fake.write_fake_release(tmp_path / "manual")
    args = ["mpii", "--manual-dir", str(tmp_path / "manual"), "--data-dir", str(tmp_path / "data"),
            "--canvas-size", str(CANVAS)]
    # The fake release does not hold the real validation persons: one clear error, no traceback.
    assert prepare.main(args) == 2
    assert "not an annotated training person" in capsys.readouterr().err
    monkeypatch.setattr(split, "load_validation_persons", lambda: mpii_fake.DEFAULT_VALIDATION)
    assert prepare.main(args) == 0
    out = capsys.readouterr().out
    assert "train" in out and "missing images" in out and str(tmp_path / "data") in out
    counts = {line.split()[0]: int(line.split()[1]) for line in out.splitlines()
              if line.strip().split()[:1] in (["train"], ["validation"], ["test"])}
    assert counts == {"train": 2, "validation": 2, "test": 1}


def test_cli_synthetic_calls_build(tmp_path, capsys, monkeypatch):
    calls = []

    def build(data_dir, *, num_train, num_val, seed, canvas_size):
        calls.append((data_dir, num_train, num_val, seed, canvas_size))
        split_info = {"train": types.SimpleNamespace(num_examples=num_train or 100),
                      "validation": types.SimpleNamespace(num_examples=num_val or 10)}
        return types.SimpleNamespace(name="synthetic_pose", builder_config=None, version="1.0.0",
                                     info=types.SimpleNamespace(splits=split_info), data_dir=f"{data_dir}/sp")

    module = types.ModuleType("data.synthetic_pose")
    module.build = build
    monkeypatch.setitem(sys.modules, "data.synthetic_pose", module)
    monkeypatch.setattr(sys.modules["data"], "synthetic_pose", module, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert prepare.main(["synthetic", "--num-train", "7", "--num-val", "3", "--seed", "5"]) == 0
    assert prepare.main(["synthetic", "--data-dir", str(tmp_path / "d"), "--canvas-size", "192"]) == 0
    assert calls == [(str(tmp_path / "env"), 7, 3, 5, None), (str(tmp_path / "d"), None, None, 0, 192)]
    out = capsys.readouterr().out
    assert "train" in out and f"{tmp_path / 'env'}/sp" in out


def test_default_config_object_is_the_registered_config(tmp_path):
    # tfds refuses a config object named like a registered one; the builder must open the registered config.
    by_object = mpii_builder.MpiiHumanPose(config=mpii_builder.mpii_config(), data_dir=str(tmp_path))
    by_default = mpii_builder.MpiiHumanPose(data_dir=str(tmp_path))
    assert by_object.builder_config is by_default.builder_config
    assert by_object.data_path == by_default.data_path == tmp_path / "mpii_human_pose" / "canvas576" / "1.0.0"


def test_readme_command_builds_with_default_flags_and_reads_back(tmp_path):
    # README: `python -m data.prepare mpii --manual-dir ~/mpii [--data-dir ~/tensorflow_datasets]`, default canvas.
    release = mpii_fake.write_complete_release(tmp_path / "mpii", num_train=3, num_val=2, num_test=1)
    data_dir = tmp_path / "tensorflow_datasets"
    cmd = [sys.executable, "-m", "data.prepare", "mpii", "--manual-dir", str(release.manual_dir),
           "--data-dir", str(data_dir)]
    done = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"written to {data_dir / 'mpii_human_pose' / 'canvas576' / '1.0.0'}" in done.stdout

    # Read back the way training and evaluation open MPII (train/loop/data.py), and by name through tfds.
    from train.loop import config as config_lib
    from train.loop import data as train_data

    opened = train_data.open_datasets(config_lib.Config(dataset="mpii", data_dir=str(data_dir)), log=lambda _: None)
    assert opened.name == "mpii_human_pose/canvas576"
    assert (len(opened.train), len(opened.val)) == (release.expected["train"], release.expected["validation"])
    assert opened.val[0]["image"].shape == (576, 576, 3)
    sources = tfds.data_source("mpii_human_pose", data_dir=str(data_dir))
    assert {name: len(ds) for name, ds in sources.items()} == release.expected
