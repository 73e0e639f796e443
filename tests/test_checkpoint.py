"""train.loop.checkpoint: which checkpoints are kept (across restarts), what 'best' resolves to, and falling back past
damaged checkpoints. Direct Checkpointer calls on a tiny state; no training."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import grain
import numpy as np
import pytest

from train.loop.checkpoint import Checkpointer, CheckpointError
from train.loop.workdir import CORRUPT_DIR, WorkdirError

TEMPLATE = {"w": np.zeros((3,), np.float32)}


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _save_run(directory: Path, pckh_by_step: dict[int, float], steps: range, *, keep: int,
              meta: dict | None = None) -> dict:
    """Saves `steps` as the training loop does (best = first of the highest PCKh); returns the last meta."""
    ckpt = Checkpointer(directory, keep=keep, async_save=False)
    it = _iterator()
    meta = dict(meta or {"best_pckh": None, "best_step": None})
    for step in steps:
        next(it)
        value = pckh_by_step.get(step)
        if value is not None and (meta["best_pckh"] is None or value > meta["best_pckh"]):
            meta.update(best_pckh=value, best_step=step)
        ckpt.save(step, {"w": np.full((3,), step, np.float32)}, {**meta, "step": step}, it)
    ckpt.close()
    return meta


def _steps(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_keeps_the_latest_and_the_best_and_restores_the_iterator(tmp_path: Path) -> None:
    _save_run(tmp_path / "ckpt", {2: 80.0, 4: 50.0, 6: 60.0}, range(1, 7), keep=2)
    assert _steps(tmp_path / "ckpt") == [2, 5, 6]
    ckpt = Checkpointer(tmp_path / "ckpt", read_only=True)
    fresh = _iterator()
    state, meta = ckpt.restore(2, TEMPLATE, fresh)
    np.testing.assert_array_equal(state["w"], np.full((3,), 2, np.float32))
    assert meta["best_step"] == 2 and meta["step"] == 2
    assert next(fresh) == 2  # the data iterator continues right after the saved position
    ckpt.close()


def test_the_best_survives_a_restart_and_an_extended_run(tmp_path: Path) -> None:
    # issue #11.2: keep=1, best at step 2; the run is restarted (a new Checkpointer, as a new process has) and
    # extended: the first save after the restart must not delete the best. orbax's own metric bookkeeping did.
    uninterrupted = tmp_path / "a"
    _save_run(uninterrupted, {2: 80.0, 5: 10.0, 6: 20.0}, range(1, 7), keep=1)
    resumed = tmp_path / "b"
    meta = _save_run(resumed, {2: 80.0, 5: 10.0}, range(1, 6), keep=1)
    assert _steps(resumed) == [2, 5]
    ckpt = Checkpointer(resumed, keep=1, async_save=False)
    _, restored = ckpt.restore(5, TEMPLATE)
    assert restored["best_step"] == 2
    ckpt.close()
    _save_run(resumed, {6: 20.0}, range(6, 7), keep=1, meta={k: meta[k] for k in ("best_pckh", "best_step")})
    assert _steps(resumed) == _steps(uninterrupted) == [2, 6]


def test_a_new_best_does_not_delete_the_old_one_before_it_is_written(tmp_path: Path) -> None:
    # While the save of a new best is in flight, the newest complete checkpoint still names the old best:
    # pruning at that moment must keep both (a kill then leaves a consistent directory).
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep=1, async_save=False)
    it = _iterator()
    metas = {1: 1, 2: 1, 3: 3}
    for step, best in metas.items():
        ckpt.save(step, {"w": np.zeros(3, np.float32)}, {"best_step": best, "best_pckh": float(best)}, it)
        if step == 2:
            assert _steps(directory) == [1, 2]
    # Step 3 (a new best) was saved synchronously; steps 1 (the old best) and 2 (the latest) stayed until now.
    assert _steps(directory) == [1, 2, 3]
    ckpt.close()
    assert _steps(directory) == [3]


def test_best_resolves_to_the_recorded_best_or_fails_clearly(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    _save_run(directory, {2: 70.0, 4: 70.0}, range(1, 5), keep=3)  # a tie: the earlier one is the best
    ckpt = Checkpointer(directory, read_only=True)
    assert ckpt.resolve_step("best") == 2
    assert ckpt.resolve_step("latest") == 4
    assert ckpt.resolve_step("3") == 3
    with pytest.raises(CheckpointError, match="no checkpoint at step 9"):
        ckpt.resolve_step(9)
    with pytest.raises(ValueError, match="'best', 'latest' or a step number"):
        ckpt.resolve_step("newest")
    ckpt.close()
    shutil.rmtree(directory / "2")  # the best is gone: never silently the latest instead (issue #11.3)
    ckpt = Checkpointer(directory, read_only=True)
    with pytest.raises(CheckpointError, match=r"best checkpoint \(step 2, validation PCKh 70.0\) is missing"):
        ckpt.resolve_step("best")
    ckpt.close()


def test_best_of_a_run_never_validated_fails_clearly(tmp_path: Path) -> None:
    _save_run(tmp_path / "ckpt", {}, range(1, 3), keep=3)
    ckpt = Checkpointer(tmp_path / "ckpt", read_only=True)
    with pytest.raises(CheckpointError, match="has not been validated yet.*--step latest"):
        ckpt.resolve_step("best")
    ckpt.close()


def _truncate_a_shard(step_dir: Path) -> None:
    shards = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert shards
    for shard in shards:
        shard.write_bytes(shard.read_bytes()[: max(1, shard.stat().st_size // 3)])


def _remove_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "state")


def _garble_iterator(step_dir: Path) -> None:
    for path in (step_dir / "data_iter").glob("*.json"):
        path.write_text("{not json")


def _garble_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text("\x00\x01 garbage")


@pytest.mark.parametrize("damage", [_truncate_a_shard, _remove_state, _garble_iterator, _garble_meta])
def test_restore_falls_back_past_a_damaged_checkpoint(tmp_path: Path, damage) -> None:
    directory = tmp_path / "checkpoints"
    _save_run(directory, {}, range(1, 4), keep=3)
    damage(directory / "3")
    ckpt = Checkpointer(directory, keep=3, async_save=False)
    lines: list[str] = []
    it = _iterator()
    state, meta = ckpt.restore_newest(TEMPLATE, it, log=lines.append)
    assert meta["step"] == 2 and float(state["w"][0]) == 2.0
    assert next(it) == 2  # the iterator of the checkpoint that restored
    assert len(lines) == 1 and lines[0].startswith("skipped checkpoint 3: it does not restore (")
    # Moved aside, not deleted; the directory now ends at the good checkpoint, so step 3 can be saved again.
    assert (tmp_path / CORRUPT_DIR / "3").is_dir()
    assert ckpt.all_steps() == [1, 2]
    ckpt.save(3, {"w": np.full((3,), 30, np.float32)}, {"step": 3, "best_step": None}, it)
    ckpt.close()
    assert _steps(directory) == [1, 2, 3]


def test_restore_moves_nothing_when_no_checkpoint_restores(tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    _save_run(directory, {}, range(1, 3), keep=3)
    ckpt = Checkpointer(directory, keep=3, async_save=False)
    wrong_template = {"w": np.zeros((3,), np.float32), "extra": np.zeros((2,), np.float32)}
    with pytest.raises(CheckpointError, match="no checkpoint in .* restores .*step 2: .*step 1: .*nothing was moved"):
        ckpt.restore_newest(wrong_template, _iterator(), log=print)
    ckpt.close()
    assert _steps(directory) == [1, 2] and not (tmp_path / CORRUPT_DIR).exists()


def test_no_checkpoint_restores_to_none(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path / "checkpoints", async_save=False)
    assert ckpt.restore_newest(TEMPLATE, _iterator()) is None
    ckpt.close()


def test_an_unwritable_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a directory"):
        Checkpointer(blocker)
    with pytest.raises(WorkdirError, match="not writable"):
        Checkpointer(blocker / "checkpoints")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        Checkpointer(tmp_path / "missing", read_only=True)


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Less free space than the newest checkpoint takes: one CheckpointError, nothing written or deleted.
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep=1, async_save=False)
    it = _iterator()
    ckpt.save(1, TEMPLATE, {"best_pckh": None, "best_step": None}, it)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    with pytest.raises(CheckpointError, match=r"could not write checkpoint 2 .*No space left on device: it needs "
                                              r"about \d+ KiB, the size of checkpoint 1, and 4 KiB is free"):
        ckpt.save(2, TEMPLATE, {"best_pckh": None, "best_step": None}, it)
    monkeypatch.setattr(shutil, "disk_usage", real)
    ckpt.close()
    assert _steps(directory) == [1] and not [p for p in directory.iterdir() if "tmp" in p.name]


def test_a_refused_save_naming_a_new_best_does_not_cost_the_old_best(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer closes the Checkpointer after a failed save; its pruning must still keep the best on disk.
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, keep=1, async_save=False)
    it = _iterator()
    for step in (1, 2):
        ckpt.save(step, TEMPLATE, {"best_pckh": 50.0, "best_step": 1}, it)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=4096))
    with pytest.raises(CheckpointError, match="could not write checkpoint 3"):
        ckpt.save(3, TEMPLATE, {"best_pckh": 60.0, "best_step": 3}, it)
    monkeypatch.setattr(shutil, "disk_usage", real)
    ckpt.close()
    assert _steps(directory) == [1, 2]


def test_metrics_of_steps_after_the_resumed_checkpoint_are_dropped(tmp_path: Path) -> None:
    from train.loop.metrics import MetricsWriter
    from train.loop.workdir import METRICS_FILE

    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n" for s in (10, 20, 30))
                    + '{"step": 40, "spl')  # the last line was cut short by a kill
    MetricsWriter(str(tmp_path), resume_step=20).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(f".{METRICS_FILE}")]  # no temporary left


def test_a_full_disk_under_the_metrics_log_is_one_workdir_error(tmp_path: Path) -> None:
    # It was an OSError traceback and exit status 1 when the disk filled up at a log line rather than at a save.
    from train.loop.metrics import MetricsWriter
    from train.loop.workdir import WorkdirError

    writer = MetricsWriter(str(tmp_path))
    writer.write("train", 1, 0, {"loss": 1.0})
    writer._jsonl.close()
    writer._jsonl = open("/dev/full", "w", encoding="utf-8")  # every write fails with ENOSPC
    with pytest.raises(WorkdirError, match=r"could not write the metrics log .*No space left on device.*rerun"):
        writer.write("train", 2, 0, {"loss": 0.5})
    writer._jsonl = open(os.devnull, "w", encoding="utf-8")
    writer.close()
