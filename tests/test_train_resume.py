"""Kill/resume: a run killed (SIGKILL), restarted, stopped (SIGTERM) and restarted again ends with the
parameters of a run that never stopped. Each run is a real `python -m train.main` subprocess (2 simulated CPU
devices, inherited from conftest) on a tiny synthetic tfds dataset built in tmp_path, with a tiny ResNet
(the test-only --model-overrides flag); a shared persistent compilation cache keeps the restarts quick."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import data.synthetic_pose
from train.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, BATCH, EPOCHS = 32, 8, 10
TOTAL_STEPS = EPOCHS * NUM_TRAIN // BATCH
TINY = {"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1]}


@pytest.fixture(scope="module")
def env_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "tfds"
    data.synthetic_pose.build(str(data_dir), num_train=NUM_TRAIN, num_val=8, canvas_size=48, num_workers=1)
    env = dict(os.environ)
    # A shared persistent compilation cache: the later runs load the executables the first one compiled.
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=str(REPO))
    return env, data_dir


def _command(workdir: Path, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "train.main", "--dataset=synthetic", f"--data-dir={data_dir}",
            f"--synthetic-train={NUM_TRAIN}", "--synthetic-val=8", "--synthetic-canvas=48",
            "--backbone=resnet18", "--res=28", "--input-size=32", f"--batch-size={BATCH}",
            f"--epochs={EPOCHS}", "--lr-milestones=5", "--eval-every=5", "--lr=1e-3",
            f"--model-overrides={json.dumps(TINY)}", f"--workdir={workdir}"]


def _run(workdir: Path, env_and_data: tuple[dict[str, str], Path]) -> str:
    env, data_dir = env_and_data
    done = subprocess.run(_command(workdir, data_dir), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _final_state(workdir: Path) -> dict:
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        assert ckpt.latest_step() == TOTAL_STEPS
        state, meta = ckpt.restore_raw()
    finally:
        ckpt.close()
    assert meta["step"] == TOTAL_STEPS
    return state


def _interrupt_after_checkpoint(workdir: Path, env_and_data: tuple[dict[str, str], Path], sig: int,
                                after_step: int = 0) -> subprocess.CompletedProcess:
    """Starts a run, sends `sig` once a complete checkpoint later than `after_step` exists, waits for it."""
    env, data_dir = env_and_data
    proc = subprocess.Popen(_command(workdir, data_dir), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt_dir = workdir / "checkpoints"
    deadline = time.monotonic() + 240

    def newest() -> int:
        # orbax renames a checkpoint to its bare step number only once it is complete.
        steps = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()] if ckpt_dir.is_dir() else []
        return max(steps, default=0)

    try:
        while newest() <= after_step:
            assert proc.poll() is None, "the run ended before writing a new checkpoint"
            assert time.monotonic() < deadline, "no new checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, env_and_data) -> dict:
    workdir = tmp_path_factory.mktemp("reference")
    _run(workdir, env_and_data)
    return _final_state(workdir)


def _assert_same_state(a: dict, b: dict) -> None:
    flat_a = dict(_flatten(a))
    flat_b = dict(_flatten(b))
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_allclose(flat_b[key], flat_a[key], rtol=0, atol=1e-6, err_msg=key)


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield f"{prefix}{key}", np.asarray(value)


def _resumed_step(stdout: str) -> int:
    match = re.search(r"resuming from step (\d+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1))


def test_sigkill_and_sigterm_then_restart_match_an_uninterrupted_run(tmp_path: Path, env_and_data,
                                                                       reference) -> None:
    # 1. SIGKILL once the first checkpoint is complete: nothing after it survives.
    killed = _interrupt_after_checkpoint(tmp_path, env_and_data, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    # 2. Restart; SIGTERM once it has written a newer checkpoint: it saves the current step and exits 0.
    first = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    stopped = _interrupt_after_checkpoint(tmp_path, env_and_data, signal.SIGTERM, after_step=first)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    resumed = _resumed_step(stopped.stdout)
    assert 0 < resumed < TOTAL_STEPS  # the restart continued from the middle of the run
    match = re.search(r"SIGTERM: saved step (\d+)", stopped.stdout)
    assert match, stopped.stdout[-2000:]
    saved = int(match.group(1))
    assert resumed < saved < TOTAL_STEPS
    # 3. Restart again: it resumes exactly where SIGTERM saved and ends like the uninterrupted run.
    stdout = _run(tmp_path, env_and_data)
    assert _resumed_step(stdout) == saved
    _assert_same_state(reference, _final_state(tmp_path))


def test_checkpointer_keeps_the_latest_and_the_best(tmp_path: Path) -> None:
    import grain

    ckpt = Checkpointer(tmp_path / "ckpt", keep=2, async_save=False)
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    pckh_by_step = {2: 80.0, 4: 50.0, 6: 60.0}
    for step in range(1, 7):
        value = next(it)
        ckpt.save(step, {"w": np.full((3,), step, np.float32)}, {"step": step, "last": int(value)}, it,
                  pckh_by_step.get(step))
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]  # the best (step 2) and the latest two
    fresh = iter(grain.MapDataset.range(100).to_iter_dataset())
    state, meta = ckpt.restore(2, {"w": np.zeros((3,), np.float32)}, fresh)
    np.testing.assert_array_equal(state["w"], np.full((3,), 2, np.float32))
    assert meta == {"step": 2, "last": 1}
    assert next(fresh) == 2  # the data iterator continues right after the saved position
    ckpt.close()
