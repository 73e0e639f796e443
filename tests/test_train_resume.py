"""Kill/resume: a run killed (SIGKILL), restarted, stopped (SIGTERM) and restarted again ends exactly like a run
that never stopped: the same parameters, the same kept checkpoints and best step, the same metrics.jsonl; and a
finished run extended with more epochs keeps its best checkpoint. Real `python -m train.main` subprocesses
(tests/tiny_run.py)."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import tiny_run
from tiny_run import STEPS_PER_EPOCH

EPOCHS = 10
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
KEEP = ["--keep-checkpoints=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, env_and_data) -> Path:
    env, data_dir = env_and_data
    workdir = tmp_path_factory.mktemp("reference")
    tiny_run.run(tiny_run.command(workdir, data_dir, epochs=EPOCHS, extra=KEEP), env)
    return workdir


def _resumed_step(stdout: str) -> int:
    match = re.search(r"resuming from step (\d+)", stdout)
    assert match, stdout[-2000:]
    return int(match.group(1))


def _assert_same_run(expected: Path, actual: Path) -> None:
    assert tiny_run.complete_steps(actual) == tiny_run.complete_steps(expected)
    state_e, meta_e = tiny_run.read_checkpoint(expected)
    state_a, meta_a = tiny_run.read_checkpoint(actual)
    assert meta_a["step"] == TOTAL_STEPS
    assert (meta_a["best_step"], meta_a["best_pckh"]) == (meta_e["best_step"], meta_e["best_pckh"])
    tiny_run.assert_same_state(state_e, state_a)
    # metrics.jsonl: no step logged twice (records after the resumed checkpoint are dropped on restart) and the
    # same validation history; train lines may differ in where their averaging windows end (a stop flushes).
    records = tiny_run.metric_records(actual)
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys))
    assert [r for r in records if r["split"] == "val"] == [
        r for r in tiny_run.metric_records(expected) if r["split"] == "val"]


def test_sigkill_and_sigterm_then_restart_match_an_uninterrupted_run(tmp_path: Path, env_and_data,
                                                                       reference: Path) -> None:
    env, data_dir = env_and_data
    cmd = tiny_run.command(tmp_path, data_dir, epochs=EPOCHS, extra=KEEP)
    # 1. SIGKILL once the first checkpoint is complete: nothing after it survives.
    killed = tiny_run.start_and_kill_when(cmd, env, lambda: bool(tiny_run.complete_steps(tmp_path)),
                                          sig=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    # 2. Restart; SIGTERM once it has written a newer checkpoint: it saves the current step and exits 0.
    first = max(tiny_run.complete_steps(tmp_path))
    stopped = tiny_run.start_and_kill_when(cmd, env, lambda: max(tiny_run.complete_steps(tmp_path)) > first,
                                           sig=signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    resumed = _resumed_step(stopped.stdout)
    assert 0 < resumed < TOTAL_STEPS  # the restart continued from the middle of the run
    match = re.search(r"SIGTERM: saved step (\d+)", stopped.stdout)
    assert match, stopped.stdout[-2000:]
    saved = int(match.group(1))
    assert resumed < saved < TOTAL_STEPS
    # 3. Restart again: it resumes exactly where SIGTERM saved and ends like the uninterrupted run.
    stdout = tiny_run.run(cmd, env).stdout
    assert _resumed_step(stdout) == saved
    _assert_same_run(reference, tmp_path)


def test_an_extended_run_keeps_its_best_checkpoint(tmp_path: Path, env_and_data) -> None:
    # issue #11.2: a finished run continued with more epochs resumed from its last checkpoint, and its first save
    # deleted the best one (orbax's best-metric bookkeeping did not survive the restart).
    env, data_dir = env_and_data
    tiny_run.run(tiny_run.command(tmp_path, data_dir, epochs=5, extra=KEEP), env)
    _, meta = tiny_run.read_checkpoint(tmp_path)
    best = meta["best_step"]
    assert tiny_run.complete_steps(tmp_path) == sorted({best, 5 * STEPS_PER_EPOCH})
    tiny_run.run(tiny_run.command(tmp_path, data_dir, epochs=6, extra=KEEP), env)
    _, meta = tiny_run.read_checkpoint(tmp_path)
    assert tiny_run.complete_steps(tmp_path) == sorted({meta["best_step"], 6 * STEPS_PER_EPOCH})
    assert meta["best_step"] in (best, 6 * STEPS_PER_EPOCH)
