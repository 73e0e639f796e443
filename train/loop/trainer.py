"""The training loop of `python -m train.main`: set up, then for each epoch train, maybe validate, save.

`train_and_evaluate` reads top to bottom; the pieces are the functions below it. Everything the loop
carries between them is one `Run`. A run resumes from the newest checkpoint that restores and ends with
the same parameters, kept checkpoints and best step as an uninterrupted run (tests/test_journey.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from data import pckh
from dsnt_jax.models import COMPUTE_DTYPES, load_torchvision_resnet
from train.loop import config as config_lib
from train.loop import data as data_lib
from train.loop import state as state_lib
from train.loop import steps as steps_lib
from train.loop import validation
from train.loop.checkpoint import Checkpointer
from train.loop.metrics import MetricsWriter, Progress
from train.loop.signals import StopRequest, peer_failure
from train.loop.workdir import RunDir

TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "resnet152": "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or parameters under --on-nonfinite=stop."""


@dataclasses.dataclass
class Run:
    """A training run in progress: its configuration, data, compiled steps, state and bookkeeping."""

    cfg: config_lib.Config
    datasets: data_lib.Datasets
    steps_per_epoch: int
    state: Any  # the replicated TrainState
    train_step: Callable[..., Any]
    eval_steps: dict[bool, Callable[..., Any]]  # by flip test
    train_iter: Any
    checkpointer: Checkpointer
    writer: MetricsWriter
    progress: Progress
    log: Callable[[str], None]
    meta: dict[str, Any]  # epoch, step, best_pckh, best_step, skipped_steps: saved with each checkpoint
    step: int
    pending: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)  # metrics not yet logged

    @property
    def total_steps(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def train_and_evaluate(cfg: config_lib.Config) -> int:
    """Runs (or resumes) the training described by `cfg`; returns the exit status."""
    run = set_up(cfg)
    stop = StopRequest(cfg.log_every)
    peer_failed = False
    try:
        for epoch in range(run.step // run.steps_per_epoch + 1, cfg.epochs + 1):
            stopped = train_epoch(run, epoch, stop)
            finished = run.step == epoch * run.steps_per_epoch  # not cut short by a stop request
            if finished and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                record_validation(run, validate(run, epoch))
            save(run, epoch)
            if stopped:
                run.checkpointer.wait()
                run.progress.write(f"{stop.received}: saved step {run.step} in {run.checkpointer.directory}; "
                                   f"rerun the same command to resume")
                return 0
    except jax.errors.JaxRuntimeError as err:
        if jax.process_count() == 1:
            raise
        # The step's collectives (gloo on CPU, NCCL on GPU) fail when a peer dies. Waiting for this host's
        # pending save would wait on that peer forever: the complete checkpoints are what a relaunch uses.
        peer_failed = True
        raise peer_failure(err) from err
    finally:
        stop.restore()
        close(run, wait_for_saves=not peer_failed)
    report_done(run)
    return 0


def set_up(cfg: config_lib.Config) -> Run:
    """Opens the data, builds the model and its steps, and restores the newest checkpoint (or starts fresh)."""
    devices = jax.devices()  # the same global list on every host; pmap maps over this host's among them
    is_main = jax.process_index() == 0
    log: Callable[[str], None] = print if is_main else (lambda *_: None)
    run_dir = RunDir(cfg.workdir)
    checkpointer = Checkpointer(run_dir.checkpoints, keep=cfg.keep_checkpoints)
    saved = run_dir.read_config() if checkpointer.all_steps() and run_dir.has_config() else None
    cfg = pin_num_workers(cfg, saved)
    if saved is not None:  # a config.json without checkpoints binds nothing: it is replaced once the run starts
        config_lib.check_resumable(saved, cfg)

    datasets = data_lib.open_datasets(cfg, log=log)
    spe = data_lib.steps_per_epoch(cfg, len(datasets.train))
    model = cfg.model.build(dtype=COMPUTE_DTYPES[cfg.precision], axis_name=steps_lib.AXIS)
    schedule = state_lib.epoch_schedule(cfg.lr, cfg.lr_milestones, cfg.lr_gamma, spe)
    state = state_lib.create_train_state(model, cfg.seed, cfg.model.input_size, state_lib.torch_rmsprop(schedule))
    log(describe(cfg, datasets, spe))

    train_iter = iter(data_lib.train_loader(cfg, datasets.train, shard_index=jax.process_index(),
                                            shard_count=jax.process_count()))
    meta: dict[str, Any] = {"epoch": 0, "step": 0, "best_pckh": None, "best_step": None, "skipped_steps": 0}
    restored = checkpointer.restore_newest(state, train_iter, log=log)
    if restored is not None:
        state, saved_meta = restored
        meta.update(saved_meta)
        log(f"resuming from step {meta['step']} (epoch {meta['epoch']}) in {checkpointer.directory}")
    elif cfg.pretrained:
        state = load_pretrained(cfg, state)
        log(f"loaded ImageNet weights from {cfg.pretrained}")
    step = int(state.step)
    if is_main:  # written only now that the run really starts (it describes the checkpoints)
        run_dir.write_config(cfg)

    train_step = steps_lib.make_train_step(output=cfg.model.output, reg=cfg.reg, sigma=cfg.sigma,
                                           reg_coeff=cfg.reg_coeff, hm_amplitude=cfg.hm_amplitude,
                                           learning_rate_fn=schedule, devices=devices)
    eval_steps = {flip: steps_lib.make_eval_step(model.apply, output=cfg.model.output,
                                                 activation=cfg.model.activation, flip_test=flip, devices=devices)
                  for flip in {False, cfg.flip_test}}
    return Run(cfg=cfg, datasets=datasets, steps_per_epoch=spe, state=steps_lib.replicate(state, devices),
               train_step=train_step, eval_steps=eval_steps, train_iter=train_iter, checkpointer=checkpointer,
               writer=MetricsWriter(cfg.workdir, enabled=is_main, resume_step=step),
               progress=Progress(cfg.epochs * spe, step, enabled=is_main), log=log, meta=meta, step=step)


def pin_num_workers(cfg: config_lib.Config, saved: config_lib.Config | None) -> config_lib.Config:
    """`cfg` with a number of loader processes: the one given, else the resumed run's (its data-iterator
    state depends on it), else this machine's default (`data.default_num_workers`)."""
    if cfg.num_workers is not None:
        return cfg
    n = saved.num_workers if saved is not None and saved.num_workers is not None else data_lib.default_num_workers()
    return dataclasses.replace(cfg, num_workers=n)


def describe(cfg: config_lib.Config, datasets: data_lib.Datasets, steps_per_epoch: int) -> str:
    """The run's first log line: network, input and heatmap sizes, data, schedule and devices."""
    hm = cfg.model.heatmap_size
    overrides = dict(cfg.model.overrides)
    return (f"{cfg.run_name()}: {cfg.model.input_size} px input, {hm}×{hm} heatmaps; {datasets.name}: "
            f"{len(datasets.train)} train / {len(datasets.val)} val; {steps_per_epoch} steps/epoch × {cfg.epochs} "
            f"epochs, batch {cfg.batch_size} over {jax.device_count()} device(s)"
            + (f"; model overrides {overrides}" if overrides else ""))


def load_pretrained(cfg: config_lib.Config, state: state_lib.TrainState) -> state_lib.TrainState:
    """The state with torchvision ImageNet weights in its trunk (--pretrained); the head keeps its init."""
    if not os.path.exists(cfg.pretrained):
        url = TORCHVISION_URLS.get(cfg.model.backbone, "")
        raise FileNotFoundError(
            f"--pretrained {cfg.pretrained} does not exist. ImageNet weights cannot be downloaded from "
            f"here; fetch torchvision's {cfg.model.backbone} state dict elsewhere ({url}) and pass its path.")
    variables, _ = load_torchvision_resnet(cfg.pretrained, {"params": state.params,
                                                            "batch_stats": state.batch_stats})
    return state_lib.replace_variables(state, variables)


def train_epoch(run: Run, epoch: int, stop: StopRequest) -> bool:
    """Trains to the end of `epoch` (1-based; from mid-epoch after a resume); True if a stop was requested
    (SIGTERM, Ctrl-C), which ends the epoch early unless it came with its last step."""
    end = epoch * run.steps_per_epoch
    n_local = jax.local_device_count()
    while run.step < end:
        batch = next(run.train_iter)
        run.state, metrics = run.train_step(run.state, steps_lib.shard(
            {k: np.asarray(batch[k]) for k in ("image", "coords", "mask")}, n_local))
        run.step += 1
        run.pending.append(metrics)
        run.progress.update(1)
        stopping = stop.requested(run.step)
        if len(run.pending) >= run.cfg.log_every or run.step == end or stopping:
            log_metrics(run)  # before any save: a non-finite step stops the run here
        if stopping:
            return True
    return False


def log_metrics(run: Run) -> None:
    """Writes the mean of the pending steps' metrics; handles steps whose update was not applied."""
    values = [{k: float(v[0]) for k, v in m.items()} for m in jax.device_get(run.pending)]
    run.pending.clear()
    first = run.step - len(values) + 1
    run.meta["skipped_steps"] = check_finite(values, first, run.cfg.on_nonfinite, run.meta["skipped_steps"],
                                             run.progress.write)
    applied = [v for v in values if not v["nonfinite"]] or values
    means = {k: float(np.mean([v[k] for v in applied])) for k in values[0] if k != "nonfinite"}
    means["skipped_steps"] = run.meta["skipped_steps"]
    means["images_per_s"] = run.progress.images_per_second(len(values) * run.cfg.batch_size)
    run.writer.write("train", run.step, run.step // run.steps_per_epoch, means)
    run.progress.update(0, loss=means["loss"], lr=means["lr"], img_s=means["images_per_s"])


def check_finite(values: list[dict[str, float]], first_step: int, policy: str, skipped: int,
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


def validate(run: Run, epoch: int) -> float:
    """Scores the validation split and prints the table; returns PCKh@0.5 total of the configured protocol
    (with the flip test under --flip-test), which picks the best checkpoint."""
    cfg, ds = run.cfg, run.datasets
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}

    def predict(flip: bool, base_pose: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        loader = data_lib.eval_loader(cfg, ds.val, shard_index=jax.process_index(), shard_count=jax.process_count())
        return validation.predict_split(run.eval_steps[flip], variables, loader, len(ds.val),
                                        jax.local_device_count(), base_pose)

    name = cfg.run_name()
    preds, base = predict(False, data_lib.mean_pose(ds.train_coords))
    rows = {name: validation.score(preds, ds.val_targets).summary()}
    if cfg.flip_test:
        # The plain row stays in the table (and in metrics as 'val_no_flip') to show what the flip adds.
        rows[f"{name} flip"] = validation.score(predict(True, None)[0], ds.val_targets).summary()
        run.writer.write("val_no_flip", run.step, epoch, rows[name])
    chosen = rows[f"{name} flip" if cfg.flip_test else name]
    run.writer.write("val", run.step, epoch, chosen)
    rows["mean pose (baseline)"] = validation.score(base, ds.val_targets).summary()
    run.progress.write(f"validation PCKh after epoch {epoch} (step {run.step}) on {ds.name}:\n"
                       + pckh.format_table(rows))
    run.progress.restart_clock()
    return chosen["total"]


def record_validation(run: Run, pckh_total: float) -> None:
    """Makes this step the best one if it beats the best so far (ties keep the earlier; NaN never wins)."""
    best = run.meta["best_pckh"]
    if np.isfinite(pckh_total) and (best is None or pckh_total > best):
        run.meta.update(best_pckh=pckh_total, best_step=run.step)


def save(run: Run, epoch: int) -> None:
    """Starts an asynchronous checkpoint of the state, meta and data-iterator position at this step."""
    run.meta.update(epoch=epoch, step=run.step)
    run.checkpointer.save(run.step, steps_lib.unreplicate(run.state), run.meta, run.train_iter)
    run.progress.restart_clock()


def close(run: Run, *, wait_for_saves: bool) -> None:
    """Stops the loader's workers and the logs; waits for the last save unless a peer process died."""
    if hasattr(run.train_iter, "close"):  # worker processes of num_workers > 0
        run.train_iter.close()
    run.progress.close()
    run.writer.close()
    if wait_for_saves:
        run.checkpointer.close()


def report_done(run: Run) -> None:
    best = run.meta["best_pckh"]
    where = f"checkpoints in {run.checkpointer.directory}"
    if best is not None:
        run.log(f"done: {run.total_steps} steps; best validation PCKh {best:.2f} at step {run.meta['best_step']}; "
                f"{where}")
    else:
        run.log(f"done: {run.total_steps} steps; {where}")


