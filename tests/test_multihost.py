"""Several processes through `jax.distributed` on one machine (issue #15), started as a cluster starts them:
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, one simulated CPU device each, gloo collectives
(`python -m train.launch_local`). The result must be that of one process with the same global batch over the
same number of devices; only process 0 talks and writes; a killed process stops the other at once with one
line; checkpoints carry over between process counts. Each multi-process run needs 2 cores at most (one per
process) and takes well under a minute here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiny_run

from train.launch_local import free_port, process_environment
from train.loop import config as config_lib
from train.loop import data as data_lib

EPOCHS = 2
STEPS = EPOCHS * tiny_run.STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, env_and_data) -> Path:
    """The reference: one process, two simulated devices (conftest's XLA_FLAGS), the same global batch."""
    env, data_dir = env_and_data
    workdir = tmp_path_factory.mktemp("single")
    tiny_run.run(tiny_run.command(workdir, data_dir, epochs=EPOCHS), env)
    return workdir


def _launch(workdir: Path, data_dir: Path, env: dict[str, str], *, epochs: int = EPOCHS,
            expect: int | None = 0) -> subprocess.CompletedProcess:
    train_args = tiny_run.command(workdir, data_dir, epochs=epochs)[3:]  # the flags after `-m train.main`
    cmd = [sys.executable, "-m", "train.launch_local", "--processes", "2", "--cpu-devices", "1", "--", *train_args]
    return tiny_run.run(cmd, env, expect=expect, timeout=400)


def _assert_same_run(expected: Path, actual: Path) -> None:
    state_e, meta_e = tiny_run.read_checkpoint(expected)
    state_a, meta_a = tiny_run.read_checkpoint(actual)
    assert meta_a["step"] == meta_e["step"] == STEPS
    # Float32 sums over the devices in another order: tolerance of a few ulps of the parameters' scale.
    tiny_run.assert_same_state(state_e, state_a, atol=1e-5)
    val_e = [r for r in tiny_run.metric_records(expected) if r["split"] == "val"]
    val_a = [r for r in tiny_run.metric_records(actual) if r["split"] == "val"]
    assert [r["step"] for r in val_a] == [r["step"] for r in val_e]
    for a, e in zip(val_a, val_e):
        assert a["total"] == pytest.approx(e["total"], abs=1e-6)


def test_two_processes_train_like_one_process_with_two_devices(tmp_path: Path, env_and_data, single) -> None:
    env, data_dir = env_and_data
    done = _launch(tmp_path, data_dir, env)
    _assert_same_run(single, tmp_path)
    # Only process 0 talks and writes: its output has the tables, process 1's none; one TensorBoard file,
    # metrics.jsonl lines written once.
    assert done.stdout.count("validation PCKh after epoch") == EPOCHS
    other = (tmp_path / "launch_logs" / "process_1.log").read_text()
    assert "validation PCKh" not in other and "done:" not in other and "Traceback" not in other
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    keys = [(r["split"], r["step"]) for r in tiny_run.metric_records(tmp_path)]
    assert len(keys) == len(set(keys))
    # Checkpoints are written once, in the layout one process reads: evaluate the best on one process.
    assert sorted(p.name for p in (tmp_path / "checkpoints" / str(STEPS) / "data_iter").glob("*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    scored = tiny_run.run([sys.executable, "-m", "train.evaluate", "--checkpoint", str(tmp_path), "--json",
                           str(tmp_path / "eval.json")], env)
    assert "Total" in scored.stdout


def test_a_killed_process_stops_the_other_and_the_relaunch_resumes(tmp_path: Path, env_and_data, single) -> None:
    env, data_dir = env_and_data
    train_cmd = [sys.executable, *tiny_run.command(tmp_path, data_dir, epochs=EPOCHS)[1:]]
    port = free_port()
    procs = [subprocess.Popen(train_cmd, cwd=tiny_run.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=process_environment(env, process_id=i, num_processes=2, port=port, cpu_devices=1))
             for i in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not tiny_run.complete_steps(tmp_path):
            assert all(p.poll() is None for p in procs), "a process ended before the first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        out, err = procs[0].communicate(timeout=90)
        stopped_after = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert stopped_after < 60
    lines = tiny_run.error_lines(err)
    assert procs[0].returncode == 1 and len(lines) == 1, err[-3000:]
    assert "another process of this 2-process run stopped" in lines[0]
    assert "Traceback" not in err
    # The relaunch resumes from the last complete checkpoint and ends like the uninterrupted run.
    resumed = _launch(tmp_path, data_dir, env)
    assert "resuming from step" in resumed.stdout
    _assert_same_run(single, tmp_path)


@pytest.mark.parametrize("first", ["one process", "two processes"])
def test_a_checkpoint_resumes_on_the_other_number_of_processes(tmp_path: Path, env_and_data, single,
                                                              first: str) -> None:
    env, data_dir = env_and_data
    if first == "one process":
        tiny_run.run(tiny_run.command(tmp_path, data_dir, epochs=1), env)
        resumed = _launch(tmp_path, data_dir, env).stdout
    else:
        _launch(tmp_path, data_dir, env, epochs=1)
        resumed = tiny_run.run(tiny_run.command(tmp_path, data_dir, epochs=EPOCHS), env).stdout
    assert f"resuming from step {tiny_run.STEPS_PER_EPOCH}" in resumed
    _assert_same_run(single, tmp_path)


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_host_shards_are_disjoint_and_cover_each_epoch_and_the_validation_once(env_and_data, hosts: int) -> None:
    _, data_dir = env_and_data
    cfg = config_lib.resolve(dict(dataset="synthetic", data_dir=str(data_dir), synthetic_train=tiny_run.NUM_TRAIN,
                                  synthetic_val=tiny_run.NUM_VAL, synthetic_canvas=48, input_size=32,
                                  batch_size=tiny_run.BATCH, augment=False))
    ds = data_lib.open_datasets(cfg, log=lambda _: None)
    steps = 2 * tiny_run.STEPS_PER_EPOCH
    per_host = [[next(it)["index"] for _ in range(steps)]
                for it in (iter(data_lib.train_loader(cfg, ds.train, shard_index=h, shard_count=hosts))
                           for h in range(hosts))]
    single_host = iter(data_lib.train_loader(cfg, ds.train))
    for step in range(steps):
        together = np.concatenate([per_host[h][step] for h in range(hosts)])
        np.testing.assert_array_equal(np.sort(together), np.sort(next(single_host)["index"]))
    for epoch in range(2):
        window = slice(epoch * tiny_run.STEPS_PER_EPOCH, (epoch + 1) * tiny_run.STEPS_PER_EPOCH)
        seen = np.concatenate([np.concatenate(per_host[h][window]) for h in range(hosts)])
        np.testing.assert_array_equal(np.sort(seen), np.arange(tiny_run.NUM_TRAIN))
    # Validation: 8 people in batches of 8 over the hosts; padding rows are marked invalid and never counted.
    valid = []
    for h in range(hosts):
        for batch in data_lib.eval_loader(cfg, ds.val, shard_index=h, shard_count=hosts):
            valid.append(np.asarray(batch["index"])[np.asarray(batch["valid"])])
    np.testing.assert_array_equal(np.sort(np.concatenate(valid)), np.arange(tiny_run.NUM_VAL))


def test_launch_local_environment() -> None:
    env = process_environment({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}, process_id=1,
                              num_processes=4, port=1234, cpu_devices=2)
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_PLATFORMS"]) == ("4", "1", "cpu")
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]
    assert "XLA_FLAGS" not in os.environ or os.environ["XLA_FLAGS"] != env["XLA_FLAGS"]
