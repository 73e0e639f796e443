"""Trains a pose model of the paper: `python -m train.main --backbone=resnet50 --res=28` (Table 4 run).

Run `python -m train.main --help` for the flags and presets (train/config.py). Everything of a run lives
in --workdir: config.json (the resolved configuration), checkpoints/ (orbax: last few epochs + the
best by validation PCKh, with the optimiser, PRNG and data-iterator state), metrics.jsonl and
tensorboard/. Restarting the same command resumes from the newest checkpoint that restores and ends with the
same parameters, kept checkpoints and best step as an uninterrupted run; SIGTERM or Ctrl-C save a checkpoint
and exit cleanly. One process at a time holds a workdir (train/workdir.py), config.json is written only once
the run has started, and a step whose loss or parameters are not finite is never applied (--on-nonfinite).
Every refusal is one line on stderr: exit status 2 for bad input or an unusable workdir, 1 for a non-finite
step.

Data parallelism: `jax.pmap` over every device of the run; with several hosts (the usual environment
variables of `jax.distributed.initialize`: JAX_COORDINATOR_ADDRESS, SLURM, Open MPI) each host reads
its own shard of every global batch.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data import pckh
from dsnt_jax.models import create_model, load_torchvision_resnet
from train import config as config_lib
from train import data as data_lib
from train import state as state_lib
from train import steps as steps_lib
from train import validation
from train import workdir as workdir_lib
from train.checkpoint import Checkpointer
from train.metrics import MetricsWriter, Progress
from train.workdir import WorkdirError

PROG = "python -m train.main"
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize` when a multi-process launch is detected from the environment."""
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        kwargs: dict[str, Any] = {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"]}
        if "JAX_NUM_PROCESSES" in env:
            kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in env:
            kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    elif any(int(env.get(k, "1") or 1) > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")):
        jax.distributed.initialize()  # JAX's cluster detection reads SLURM / Open MPI variables


def _check_workdir_config(cfg: config_lib.Config, has_checkpoints: bool) -> None:
    """Refuses to continue checkpoints written under a different configuration.

    A config.json without checkpoints is from a run that never saved one (e.g. it stopped on a missing
    dataset): it binds nothing and is replaced once this run starts.
    """
    path = os.path.join(cfg.workdir, config_lib.CONFIG_FILE)
    if not (has_checkpoints and os.path.exists(path)):
        return
    with open(path, encoding="utf-8") as f:
        saved = config_lib.Config.from_json(f.read())
    config_lib.check_resumable(saved, cfg)


def _load_pretrained(cfg: config_lib.Config, state: state_lib.TrainState) -> state_lib.TrainState:
    if not os.path.exists(cfg.pretrained):
        url = TORCHVISION_URLS.get(cfg.backbone, "")
        raise FileNotFoundError(
            f"--pretrained {cfg.pretrained} does not exist. ImageNet weights cannot be downloaded from "
            f"here; fetch torchvision's {cfg.backbone} state dict elsewhere ({url}) and pass its path.")
    variables, _ = load_torchvision_resnet(cfg.pretrained, {"params": state.params,
                                                            "batch_stats": state.batch_stats})
    return state_lib.replace_variables(state, variables)


class _Stop:
    """SIGTERM or Ctrl-C (SIGINT) → finish the current step, save a checkpoint and exit.

    A second Ctrl-C interrupts at once (the last complete checkpoint stays). With several hosts the signal
    reaches them at different steps, so they agree (all-gather of the flags) every `sync_every` steps and
    stop together; a single host stops after the current step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, sync_every: int) -> None:
        self.received: str | None = None
        self._sync_every = sync_every if jax.process_count() > 1 else 1
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}

    def _handler(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def requested(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every host)."""
        if jax.process_count() == 1:
            return self.received is not None
        if step % self._sync_every:
            return False
        from jax.experimental import multihost_utils

        flag = np.int32(self.received is not None)
        return bool(np.any(multihost_utils.process_allgather(flag)))

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class PeerFailure(RuntimeError):
    """Another process of a multi-host run stopped, so a collective operation of this one failed."""


def _peer_failure(err: Exception) -> PeerFailure:
    text = " ".join(str(err).split())
    return PeerFailure(f"process {jax.process_index()}: another process of this {jax.process_count()}-process run "
                       f"stopped ({text[:160]}); rerun the same command on every host to resume from the last "
                       f"complete checkpoint")


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameters under --on-nonfinite=stop."""


def _check_finite(values: list[dict[str, float]], first_step: int, policy: str, skipped: int,
                  log: Callable[[str], None]) -> int:
    """Handles the steps of `values` (step `first_step` onwards) whose update was not applied.

    Returns the run's count of skipped steps; raises NonFiniteError at the first one under policy 'stop'.
    """
    bad = [first_step + i for i, v in enumerate(values) if v["nonfinite"] > 0]
    if not bad:
        return skipped
    loss = values[bad[0] - first_step]["loss"]
    if policy == "stop":
        what = (f"the update made the parameters non-finite (loss {loss:.4g})" if math.isfinite(loss)
                else f"the loss is {loss}")
        raise NonFiniteError(
            f"step {bad[0]}: {what}; stopped without saving, so the checkpoints on disk are untouched. Lower "
            f"--lr, check the data, or pass --on-nonfinite=skip to drop such steps")
    skipped += len(bad)
    log(f"steps {', '.join(map(str, bad))}: non-finite loss or parameters, update skipped ({skipped} so far)")
    return skipped


def _run_name(cfg: config_lib.Config) -> str:
    res = f"@{cfg.res}" if cfg.is_resnet else ""
    reg = "" if cfg.reg == "none" else f"+{cfg.reg}"
    # A run whose network departs from the named backbone (--model-overrides) must not pass for it.
    custom = "" if not cfg.overrides_dict() else " (custom)"
    return f"{cfg.backbone}{res}{custom} {cfg.output}{reg}"


def train(cfg: config_lib.Config) -> int:
    """Runs (or resumes) the training described by `cfg`; returns the exit status."""
    n_global = jax.device_count()
    if cfg.batch_size % n_global:
        raise ValueError(f"--batch-size={cfg.batch_size} does not divide over the {n_global} devices; "
                         f"use a multiple of {n_global}")
    # One training process per workdir: the lock is held by the first host for the whole run.
    with workdir_lib.locked(cfg.workdir, enabled=jax.process_index() == 0):
        return _train(cfg)


def _train(cfg: config_lib.Config) -> int:
    # pmap takes the same (global) device list on every host; each maps over its own devices among them.
    devices = jax.devices()
    n_local, n_global, is_main = jax.local_device_count(), jax.device_count(), jax.process_index() == 0
    log = print if is_main else (lambda *_: None)
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    _check_workdir_config(cfg, bool(ckpt.all_steps()))

    ds = data_lib.open_datasets(cfg, log=log)
    spe = data_lib.steps_per_epoch(cfg, len(ds.train))
    total_steps = cfg.epochs * spe
    dtype = jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32
    model = create_model(cfg.backbone, res=cfg.res, output=cfg.output, activation=cfg.activation,
                         dtype=dtype, axis_name=steps_lib.AXIS, **cfg.overrides_dict())
    schedule = state_lib.epoch_schedule(cfg.lr, cfg.lr_milestones, cfg.lr_gamma, spe)
    state = state_lib.create_train_state(model, cfg.seed, cfg.input_size,
                                         state_lib.torch_rmsprop(schedule))
    hm = cfg.heatmap_size
    log(f"{_run_name(cfg)}: {cfg.input_size} px input, {hm}×{hm} heatmaps; {ds.name}: "
        f"{len(ds.train)} train / {len(ds.val)} val; {spe} steps/epoch × {cfg.epochs} epochs, batch "
        f"{cfg.batch_size} over {n_global} device(s)"
        + (f"; model overrides {cfg.model_overrides}" if cfg.overrides_dict() else ""))

    train_iter = iter(data_lib.train_loader(cfg, ds.train, shard_index=jax.process_index(),
                                            shard_count=jax.process_count()))
    meta: dict[str, Any] = {"epoch": 0, "step": 0, "best_pckh": None, "best_step": None, "skipped_steps": 0}
    restored = ckpt.restore_newest(state, train_iter, log=log)
    if restored is not None:
        state, saved_meta = restored
        meta.update(saved_meta)
        log(f"resuming from step {meta['step']} (epoch {meta['epoch']}) in {ckpt.directory}")
    elif cfg.pretrained:
        state = _load_pretrained(cfg, state)
        log(f"loaded ImageNet weights from {cfg.pretrained}")
    step = int(state.step)
    if is_main:  # written only now that the run really starts (it describes the checkpoints)
        workdir_lib.write_atomic(os.path.join(cfg.workdir, config_lib.CONFIG_FILE), cfg.to_json())

    train_step = steps_lib.make_train_step(output=cfg.output, reg=cfg.reg, sigma=cfg.sigma,
                                           reg_coeff=cfg.reg_coeff, hm_amplitude=cfg.hm_amplitude,
                                           learning_rate_fn=schedule, devices=devices)
    eval_steps = {flip: steps_lib.make_eval_step(model.apply, output=cfg.output, activation=cfg.activation,
                                                 flip_test=flip, devices=devices)
                  for flip in {False, cfg.flip_test}}
    rstate = steps_lib.replicate(state, devices)
    writer = MetricsWriter(cfg.workdir, enabled=is_main, resume_step=step)
    progress = Progress(total_steps, step, enabled=is_main)
    stop = _Stop(cfg.log_every)
    pending: list[dict[str, jax.Array]] = []
    baseline = data_lib.mean_pose(ds.train_coords)

    def validate(epoch: int) -> float:
        """Scores the validation split; returns PCKh@0.5 total (with the flip test under --flip-test)."""
        variables = {"params": rstate.params, "batch_stats": rstate.batch_stats}

        def predict(flip: bool, base_pose: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
            loader = data_lib.eval_loader(cfg, ds.val, shard_index=jax.process_index(),
                                          shard_count=jax.process_count())
            return validation.predict_split(eval_steps[flip], variables, loader, len(ds.val), n_local, base_pose)

        name = _run_name(cfg)
        preds, base = predict(False, baseline)
        rows = {name: validation.score(preds, ds.val_targets).summary()}
        if cfg.flip_test:
            # The plain row stays in the table (and in metrics as 'val_no_flip') to show what the flip adds;
            # 'val' holds the configured protocol, which picks the best checkpoint.
            rows[f"{name} flip"] = validation.score(predict(True, None)[0], ds.val_targets).summary()
            writer.write("val_no_flip", step, epoch, rows[name])
        chosen = rows[f"{name} flip" if cfg.flip_test else name]
        writer.write("val", step, epoch, chosen)
        rows["mean pose (baseline)"] = validation.score(base, ds.val_targets).summary()
        progress.write(f"validation PCKh after epoch {epoch} (step {step}) on {ds.name}:\n"
                       + pckh.format_table(rows))
        progress.restart_clock()
        return chosen["total"]

    def log_pending() -> None:
        values = [{k: float(v[0]) for k, v in m.items()} for m in jax.device_get(pending)]
        meta["skipped_steps"] = _check_finite(values, step - len(values) + 1, cfg.on_nonfinite,
                                              meta["skipped_steps"], progress.write)
        applied = [v for v in values if not v["nonfinite"]] or values
        means = {k: float(np.mean([v[k] for v in applied])) for k in values[0] if k != "nonfinite"}
        means["skipped_steps"] = meta["skipped_steps"]
        means["images_per_s"] = progress.images_per_second(len(values) * cfg.batch_size)
        writer.write("train", step, step // spe, means)
        progress.update(0, loss=means["loss"], lr=means["lr"], img_s=means["images_per_s"])
        pending.clear()

    peer_failed = False
    try:
        while step < total_steps:
            batch = next(train_iter)
            rstate, metrics = train_step(rstate, steps_lib.shard(
                {k: np.asarray(batch[k]) for k in ("image", "coords", "mask")}, n_local))
            del batch
            step += 1
            pending.append(metrics)
            progress.update(1)
            stopping = stop.requested(step)
            epoch_end = step % spe == 0 or step == total_steps
            if len(pending) >= cfg.log_every or epoch_end or stopping:
                log_pending()  # before any save: a non-finite step stops the run here
            if not (epoch_end or stopping):
                continue
            epoch = -(-step // spe)
            if epoch_end and (epoch % cfg.eval_every == 0 or step == total_steps):
                pckh_total = validate(epoch)
                # Ties keep the earlier checkpoint; NaN never becomes the best.
                if np.isfinite(pckh_total) and (meta["best_pckh"] is None or pckh_total > meta["best_pckh"]):
                    meta.update(best_pckh=pckh_total, best_step=step)
            meta.update(epoch=epoch, step=step)
            ckpt.save(step, steps_lib.unreplicate(rstate), meta, train_iter)
            progress.restart_clock()
            if stopping:
                ckpt.wait()
                progress.write(f"{stop.received}: saved step {step} in {ckpt.directory}; rerun the same "
                               f"command to resume")
                return 0
    except jax.errors.JaxRuntimeError as err:
        if jax.process_count() == 1:
            raise
        # The step's collectives (gloo on CPU, NCCL on GPU) fail when a peer dies. Waiting for this host's
        # pending save would wait on that peer forever: the complete checkpoints are what a relaunch uses.
        peer_failed = True
        raise _peer_failure(err) from err
    finally:
        stop.restore()
        if hasattr(train_iter, "close"):  # worker processes of num_workers > 0
            train_iter.close()
        progress.close()
        writer.close()
        if not peer_failed:
            ckpt.close()
    if meta["best_pckh"] is not None:
        log(f"done: {total_steps} steps; best validation PCKh {meta['best_pckh']:.2f} at step "
            f"{meta['best_step']}; checkpoints in {ckpt.directory}")
    else:
        log(f"done: {total_steps} steps; checkpoints in {ckpt.directory}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parses flags (bad combinations exit with status 2) and trains."""
    cfg = config_lib.parse_args(argv)
    maybe_initialize_distributed()
    start = time.time()
    try:
        status = train(cfg)
    except (ValueError, FileNotFoundError, WorkdirError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except PeerFailure as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        # Skip JAX's exit-time shutdown barrier, which would wait for the dead peer's heartbeat to time out and
        # then abort with a C++ stack trace.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last complete checkpoint is kept: rerun the same command to resume",
              file=sys.stderr)
        return 130
    if jax.process_index() == 0:
        print(f"wall time {time.time() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
