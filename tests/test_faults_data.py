"""Fault injection on the dataset builds: interrupted builds (Ctrl-C, SIGKILL) and damaged record files.

The interrupt tests run ``python -m data.prepare synthetic`` as a subprocess in its own session, with enough
examples (400, the builder's threshold) that it renders in worker processes, and find those processes in /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mpii_fake
import pytest
import tensorflow_datasets as tfds

from data import build_guard, pipeline
from data.mpii import builder as mpii_builder
from data.synthetic_pose import builder as syn_builder

ROOT = Path(__file__).resolve().parents[1]
# The smallest build that uses worker processes; a 48 px canvas keeps it quick.
NUM_TRAIN, NUM_VAL, CANVAS = 400, 5, 48
CONFIG_NAME = f"n{NUM_TRAIN}_v{NUM_VAL}_s0_c{CANVAS}"

needs_workers = pytest.mark.skipif(not Path("/proc/self/stat").exists() or (os.cpu_count() or 1) < 2,
                                   reason="needs Linux /proc and at least 2 CPUs (worker processes)")


def _prepare_cmd(data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "data.prepare", "synthetic", "--num-train", str(NUM_TRAIN), "--num-val",
            str(NUM_VAL), "--canvas-size", str(CANVAS), "--data-dir", str(data_dir)]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[1], []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # an exited orphan may stay a zombie under a non-reaping init


def _start_build_and_wait_for_workers(data_dir: Path, log: Path) -> tuple[subprocess.Popen, list[int]]:
    """Starts the build (output to ``log``); returns once its workers render and tfds's incomplete folder exists.

    Output goes to a file, not a pipe: workers that outlive the parent would hold a pipe open forever.
    """
    # A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and Python keeps
    # an ignored SIGINT. A handler here becomes the default disposition in the exec'd child: the build gets the
    # SIGINT a terminal user's command has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(_prepare_cmd(data_dir), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        kids = _descendants(proc.pid)
        workers = [k for k in kids if b"spawn_main" in _cmdline(k)]
        if len(workers) >= 2 and list((data_dir / "synthetic_pose" / CONFIG_NAME).glob("incomplete.*")):
            time.sleep(0.5)  # let them take work
            return proc, _descendants(proc.pid)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no worker processes seen: {log.read_text()}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@needs_workers
def test_ctrl_c_stops_the_build_with_one_line_and_no_leftovers(tmp_path):
    proc, kids = _start_build_and_wait_for_workers(tmp_path / "data", tmp_path / "log")
    try:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
        proc.wait(timeout=30)
        left = _wait_gone(kids, 10)
    finally:
        _kill_all(kids)
    err = (tmp_path / "log").read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "synthetic build interrupted; nothing was kept" in err
    assert not left, "worker processes outlived the interrupted build"
    assert not list((tmp_path / "data").glob("synthetic_pose/*/incomplete.*"))


@needs_workers
def test_killed_build_leaves_no_workers_and_the_next_run_cleans_up_and_builds(tmp_path):
    data_dir = tmp_path / "data"
    proc, kids = _start_build_and_wait_for_workers(data_dir, tmp_path / "log")
    try:
        proc.kill()  # SIGKILL: no cleanup in the parent at all
        proc.wait(timeout=30)
        left = _wait_gone(kids, 10)
    finally:
        _kill_all(kids)
    assert not left, "worker processes outlived their killed parent"
    stale = list((data_dir / "synthetic_pose" / CONFIG_NAME).glob("incomplete.*"))
    assert stale, "the kill should have left tfds's unfinished folder behind"

    rerun = subprocess.run(_prepare_cmd(data_dir), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"removed 1 unfinished folder(s) of an interrupted build of synthetic_pose/{CONFIG_NAME}" in rerun.stderr
    assert not any(p.exists() for p in stale)
    assert [line.split()[:2] for line in rerun.stdout.splitlines() if line.strip().startswith("train ")] == [
        ["train", str(NUM_TRAIN)]]
    source = tfds.data_source(f"synthetic_pose/{CONFIG_NAME}", data_dir=str(data_dir), split="train")
    assert len(source) == NUM_TRAIN and source[NUM_TRAIN - 1]["image"].shape == (CANVAS, CANVAS, 3)


def test_first_use_build_removes_stale_incomplete_folders(tmp_path):
    # train/loop/data.py builds the synthetic dataset on first use (SyntheticPose(...).download_and_prepare()).
    stale = tmp_path / "synthetic_pose" / "n12_v3_s0_c48" / "incomplete.OLD123_1.0.0"
    stale.mkdir(parents=True)
    (stale / "synthetic_pose-train.array_record-00000-of-00001").write_bytes(b"half a shard")
    builder = syn_builder.SyntheticPose(config=syn_builder.synthetic_config(12, 3, canvas_size=48),
                                        data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert not stale.exists()
    assert len(builder.as_data_source()["train"]) == 12


def _truncate_first_shard(builder, split: str) -> Path:
    path = Path(os.fspath(builder.info.splits[split].filepaths[0]))
    os.truncate(path, path.stat().st_size // 2)
    return path


def test_truncated_synthetic_record_file_names_the_file_and_the_fix(tmp_path):
    from train.loop import config as config_lib
    from train.loop import data as train_data

    syn_builder.SyntheticPose(config=syn_builder.synthetic_config(12, 3, canvas_size=48),
                              data_dir=str(tmp_path)).download_and_prepare()
    builder = syn_builder.SyntheticPose(config=syn_builder.synthetic_config(12, 3, canvas_size=48),
                                        data_dir=str(tmp_path))
    path = _truncate_first_shard(builder, "train")
    fix = f"python -m data.prepare synthetic --data-dir {tmp_path} --num-train 12 --num-val 3 --canvas-size 48"
    # Opening it the way training and evaluation do (train/loop/data.py) fails at once, before any read.
    cfg = config_lib.Config(dataset="synthetic", data_dir=str(tmp_path), synthetic_train=12, synthetic_val=3,
                            synthetic_canvas=48)
    with pytest.raises(ValueError) as err:
        train_data.open_datasets(cfg, log=lambda _: None)
    assert isinstance(err.value, build_guard.DamagedDatasetError)
    message = str(err.value)
    assert str(path) in message and "truncated" in message and fix in message
    assert f"Delete the folder {builder.data_path} " in message
    # tfds.data_source reads a custom config through tfds's own read-only builder: the input pipeline checks it.
    source = tfds.data_source("synthetic_pose/n12_v3_s0_c48", data_dir=str(tmp_path), split="validation")
    with pytest.raises(build_guard.DamagedDatasetError) as err:
        pipeline.make_eval_loader(source, global_batch_size=2, out_size=32)
    assert str(path) in str(err.value) and fix in str(err.value)


def test_truncated_mpii_record_file_names_the_file_and_the_fix(tmp_path):
    mpii_fake.write_fake_release(tmp_path / "manual")
    config = mpii_builder.mpii_config(48, mpii_fake.DEFAULT_VALIDATION)
    mpii_builder.MpiiHumanPose(config=config, data_dir=str(tmp_path / "data"), num_threads=1).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    builder = mpii_builder.MpiiHumanPose(config=config, data_dir=str(tmp_path / "data"))
    path = _truncate_first_shard(builder, "validation")
    with pytest.raises(build_guard.DamagedDatasetError) as err:
        builder.as_data_source(split="validation")
    message = str(err.value)
    assert str(path) in message and str(builder.data_path) in message
    assert (f"python -m data.prepare mpii --manual-dir <folder holding the MPII release files> "
            f"--data-dir {tmp_path / 'data'} --canvas-size 48") in message


def test_record_count_mismatch_is_reported(tmp_path):
    # A shard swapped for a complete file of another size (e.g. copied from another build) is caught too.
    syn_builder.SyntheticPose(config=syn_builder.synthetic_config(12, 3, canvas_size=48),
                              data_dir=str(tmp_path)).download_and_prepare()
    builder = syn_builder.SyntheticPose(config=syn_builder.synthetic_config(12, 3, canvas_size=48),
                                        data_dir=str(tmp_path))
    train = Path(os.fspath(builder.info.splits["train"].filepaths[0]))
    val = Path(os.fspath(builder.info.splits["validation"].filepaths[0]))
    train.write_bytes(val.read_bytes())
    with pytest.raises(build_guard.DamagedDatasetError, match="3 records, the metadata says 12"):
        builder.as_data_source()
