"""Real `python -m train.main` subprocesses on a tiny synthetic problem, for the tests that walk what users do
(resume, faults, the whole journey).

A tiny ResNet (the test-only --model-overrides flag), 32-px inputs and a 32-person synthetic tfds dataset
built once per test module; the runs share a persistent compilation cache, so after the first one a run
starts in a few seconds. The two simulated CPU devices of conftest.py are inherited through XLA_FLAGS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import data.synthetic_pose
from train.loop.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_VAL, BATCH = 32, 8, 8
STEPS_PER_EPOCH = NUM_TRAIN // BATCH
TINY = {"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1]}


def build_data(root: Path) -> tuple[dict[str, str], Path]:
    """Builds the tiny dataset under `root` and returns (subprocess environment, data dir)."""
    data_dir = root / "tfds"
    data.synthetic_pose.build(str(data_dir), num_train=NUM_TRAIN, num_val=NUM_VAL, canvas_size=48, num_workers=1)
    return environment(root), data_dir


def environment(root: Path) -> dict[str, str]:
    """os.environ plus a persistent compilation cache under `root` and the repository on PYTHONPATH."""
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1")  # what a killed process printed is not lost in its buffer
    return env


def command(workdir: Path, data_dir: Path, *, epochs: int, extra: Sequence[str] = ()) -> list[str]:
    """The train.main command line of a tiny run (validation every epoch, lr ×0.1 after epoch 5)."""
    return [sys.executable, "-m", "train.main", "--dataset=synthetic", f"--data-dir={data_dir}",
            f"--synthetic-train={NUM_TRAIN}", f"--synthetic-val={NUM_VAL}", "--synthetic-canvas=48",
            "--backbone=resnet18", "--res=28", "--input-size=32", f"--batch-size={BATCH}",
            f"--epochs={epochs}", "--lr-milestones=5", "--eval-every=1", "--lr=1e-3",
            f"--model-overrides={json.dumps(TINY)}", f"--workdir={workdir}", *extra]


def run(cmd: Sequence[str], env: dict[str, str], *, expect: int | None = 0,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `cmd` from the repository root; checks its exit status unless `expect` is None."""
    done = subprocess.run(list(cmd), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if expect is not None:
        assert done.returncode == expect, (f"exit {done.returncode}, expected {expect}\n"
                                           + done.stdout[-3000:] + done.stderr[-3000:])
    return done


def error_lines(stderr: str) -> list[str]:
    """stderr without tqdm bars, absl warnings and blank lines: what a user reads as the error."""
    lines = [line.split("\r")[-1].strip() for line in stderr.splitlines()]
    return [line for line in lines if line and not line.startswith(("WARNING:absl", "I0000", "W0000"))
            and "%|" not in line]


def complete_steps(workdir: Path) -> list[int]:
    """The complete checkpoints' steps (orbax renames a checkpoint to its bare step once complete)."""
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def start_and_kill_when(cmd: Sequence[str], env: dict[str, str], ready, *, sig: int,
                        timeout: float = 240) -> subprocess.CompletedProcess:
    """Starts `cmd`, sends `sig` as soon as `ready()` is true, and waits for the process to end."""
    proc = subprocess.Popen(list(cmd), env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the run ended before the moment to interrupt it"
            assert time.monotonic() < deadline, "the moment to interrupt the run never came"
            time.sleep(0.01)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def read_checkpoint(workdir: Path, step: int | None = None) -> tuple[dict, dict]:
    """(state dict, meta) of checkpoint `step` (default: latest) of a run."""
    ckpt = Checkpointer(workdir / "checkpoints", read_only=True)
    try:
        return ckpt.restore_raw(step)
    finally:
        ckpt.close()


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'a/b/c': array} of a nested dict."""
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def assert_same_state(expected: dict, actual: dict, atol: float = 1e-6) -> None:
    flat_e, flat_a = flatten(expected), flatten(actual)
    assert flat_e.keys() == flat_a.keys()
    for key in flat_e:
        np.testing.assert_allclose(flat_a[key], flat_e[key], rtol=0, atol=atol, err_msg=key)


def metric_records(workdir: Path) -> list[dict]:
    """metrics.jsonl without the fields that depend on timing."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in records]
