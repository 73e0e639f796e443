"""Kill/resume: a run killed (SIGKILL, or SIGTERM) and restarted ends with the parameters of a run that never
stopped. Each run is a real `python -m train.main` subprocess (2 simulated CPU devices, inherited from
conftest) on a tiny synthetic tfds dataset built in tmp_path, with a tiny ResNet (--model-overrides)."""

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


def _interrupt_after_first_checkpoint(workdir: Path, env_and_data: tuple[dict[str, str], Path],
                                      sig: int) -> subprocess.CompletedProcess:
    env, data_dir = env_and_data
    proc = subprocess.Popen(_command(workdir, data_dir), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ckpt_dir = workdir / "checkpoints"
    deadline = time.monotonic() + 240
    try:
        # orbax renames a checkpoint to its bare step number only once it is complete.
        while not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
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


def test_sigkill_then_restart_matches_uninterrupted_run(tmp_path: Path, env_and_data, reference) -> None:
    killed = _interrupt_after_first_checkpoint(tmp_path, env_and_data, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    stdout = _run(tmp_path, env_and_data)
    # The restart really continued from a checkpoint in the middle of the run.
    assert 0 < _resumed_step(stdout) < TOTAL_STEPS
    _assert_same_state(reference, _final_state(tmp_path))


def test_sigterm_saves_then_restart_matches_uninterrupted_run(tmp_path: Path, env_and_data, reference) -> None:
    stopped = _interrupt_after_first_checkpoint(tmp_path, env_and_data, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    match = re.search(r"SIGTERM: saved step (\d+)", stopped.stdout)
    assert match, stopped.stdout[-2000:]
    saved = int(match.group(1))
    assert 0 < saved < TOTAL_STEPS
    stdout = _run(tmp_path, env_and_data)
    assert _resumed_step(stdout) == saved
    _assert_same_state(reference, _final_state(tmp_path))
