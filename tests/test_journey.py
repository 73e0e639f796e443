"""The path a user reproducing the paper walks, with the README's commands and their defaults (issue #11):

    python -m data.prepare mpii --manual-dir DIR --data-dir D        (default canvas, 576 px)
    python -m train.main --dataset=mpii ... --workdir W              (SIGKILLed twice, once in a save; a damaged
                                                                       checkpoint; resumed)
    python -m train.evaluate --checkpoint W                          (the best checkpoint, by default)
    python -m train.predict --checkpoint W photo.jpg

on a fake MPII release in the real file formats (tests/mpii_fake.py). The interrupted run must end exactly like
an uninterrupted one: the same kept checkpoints, best step, validation history and final parameters. Only the
network is shrunk (tests/tiny_run.py's model at 32-px input), and the training flags say nothing else.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from pathlib import Path

import cv2
import mpii_fake
import numpy as np
import pytest
import tiny_run

NUM_TRAIN, NUM_VAL, BATCH, EPOCHS = 16, 4, 4, 6
TOTAL_STEPS = EPOCHS * NUM_TRAIN // BATCH


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("journey")
    mpii_fake.write_complete_release(root / "mpii", num_train=NUM_TRAIN, num_val=NUM_VAL)
    env = tiny_run.environment(root)
    data_dir = root / "tfds"
    tiny_run.run(["python", "-m", "data.prepare", "mpii", "--manual-dir", str(root / "mpii"),
                  "--data-dir", str(data_dir)], env)
    return env, data_dir


def _train_command(workdir: Path, data_dir: Path) -> list[str]:
    return ["python", "-m", "train.main", "--dataset=mpii", f"--data-dir={data_dir}", "--backbone=resnet18",
            "--res=28", "--input-size=32", f"--batch-size={BATCH}", f"--epochs={EPOCHS}", "--lr=1e-3",
            "--keep-checkpoints=1", f"--model-overrides={json.dumps(tiny_run.TINY)}", f"--workdir={workdir}"]


def _temporary_checkpoints(workdir: Path) -> set[str]:
    """The names of orbax's temporary folders of checkpoints being written (or cut short) in the run."""
    directory = workdir / "checkpoints"
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []
    return {name for name in names if re.fullmatch(r"\d+\.orbax-checkpoint-tmp.*", name)}


def _damage_newest(workdir: Path) -> int:
    step = max(tiny_run.complete_steps(workdir))
    shards = [p for p in (workdir / "checkpoints" / str(step) / "state").rglob("*") if p.parent.name == "d"]
    for shard in shards:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return step


def test_prepare_train_through_kills_evaluate_and_predict(tmp_path: Path, prepared) -> None:
    env, data_dir = prepared
    reference = tmp_path / "reference"
    tiny_run.run(_train_command(reference, data_dir), env)
    _, ref_meta = tiny_run.read_checkpoint(reference)
    assert ref_meta["step"] == TOTAL_STEPS

    workdir = tmp_path / "run"
    cmd = _train_command(workdir, data_dir)
    rng = random.Random(11)
    # 1. SIGKILL at a random moment (up to 0.3 s) after the first checkpoint is complete.
    kill_at: list[float] = []

    def after_first_checkpoint_and_a_random_delay() -> bool:
        if not kill_at and tiny_run.complete_steps(workdir):
            kill_at.append(time.monotonic() + rng.uniform(0.0, 0.3))
        return bool(kill_at) and time.monotonic() >= kill_at[0]

    killed = tiny_run.start_and_kill_when(cmd, env, after_first_checkpoint_and_a_random_delay, sig=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    # 2. SIGKILL while the next checkpoint is being written.
    done_before = max(tiny_run.complete_steps(workdir))
    assert done_before < TOTAL_STEPS
    # (A temporary folder left by the first kill does not count; the restart removes it.)
    stale = _temporary_checkpoints(workdir)
    killed = tiny_run.start_and_kill_when(cmd, env, lambda: bool(_temporary_checkpoints(workdir) - stale),
                                          sig=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert f"resuming from step {done_before}" in killed.stdout
    # 3. The newest complete checkpoint is damaged (a truncated file): the restart falls back to the one before.
    damaged = _damage_newest(workdir)
    finished = tiny_run.run(cmd, env)
    assert f"skipped checkpoint {damaged}: it does not restore" in finished.stdout
    assert (workdir / "checkpoints-corrupt" / str(damaged)).is_dir()

    # The interrupted run ends exactly like the uninterrupted one.
    assert tiny_run.complete_steps(workdir) == tiny_run.complete_steps(reference)
    state, meta = tiny_run.read_checkpoint(workdir)
    assert (meta["best_step"], meta["best_pckh"]) == (ref_meta["best_step"], ref_meta["best_pckh"])
    assert meta["best_step"] in tiny_run.complete_steps(workdir)
    tiny_run.assert_same_state(tiny_run.read_checkpoint(reference)[0], state)
    val = [r for r in tiny_run.metric_records(workdir) if r["split"] == "val"]
    assert val == [r for r in tiny_run.metric_records(reference) if r["split"] == "val"]
    assert [r["step"] for r in val] == list(range(TOTAL_STEPS // EPOCHS, TOTAL_STEPS + 1, TOTAL_STEPS // EPOCHS))

    # Evaluate the best checkpoint (the default): it scores what validation recorded for that step.
    tiny_run.run(["python", "-m", "train.evaluate", "--checkpoint", str(workdir), "--json",
                  str(tmp_path / "eval.json")], env)
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["num_persons"] == NUM_VAL
    assert scored["total"] == pytest.approx(meta["best_pckh"], abs=1e-6)

    # Predict joints on a photo with the best checkpoint.
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), np.full((120, 160, 3), 90, np.uint8))
    out = tmp_path / "pictures"
    predicted = tiny_run.run(["python", "-m", "train.predict", "--checkpoint", str(workdir), str(photo),
                              "--out", str(out)], env)
    record = json.loads(predicted.stdout.strip().splitlines()[0])
    joints = np.asarray(list(record["joints"].values()), float)
    assert joints.shape == (16, 2) and np.isfinite(joints).all()
    assert Path(record["pose_png"]).is_file() and Path(record["pose_png"]).parent == out
