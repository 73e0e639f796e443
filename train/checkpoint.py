"""All orbax code of the project: training checkpoints under `WORKDIR/checkpoints`.

One `ocp.CheckpointManager` holds, per saved step, three items:

* `state`: the (unreplicated) TrainState as a state dict (step, params, batch_stats, opt_state, rng),
  `StandardSave`;
* `meta`: JSON, {'epoch', 'step', 'best_pckh', 'best_step', ...} (`JsonSave`);
* `data_iter`: the grain iterator position (`grain.checkpoint.CheckpointSave`), one file per host.

Preservation: the latest `keep` steps plus the step with the highest validation PCKh (Total @0.5,
passed as the `metrics` of the save that follows an evaluation). Saves are asynchronous; call `wait()`
(or `close()`) before the process exits. A step whose save did not finish (e.g. SIGKILL) stays a
temporary directory that orbax ignores, so a restart resumes from the last complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = "pckh_total"


def _best_metric(metrics: dict[str, Any]) -> float:
    value = metrics.get(BEST_METRIC)
    return -1.0 if value is None or not np.isfinite(value) else float(value)


class Checkpointer:
    """Saves and restores training checkpoints in one directory (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        """Opens (creating unless `read_only`) the checkpoint directory.

        Args:
          directory: e.g. WORKDIR/checkpoints.
          keep: how many of the latest checkpoints to keep (the best one is kept in addition).
          async_save: write in a background thread (the training loop continues meanwhile).
          read_only: open existing checkpoints for reading only (evaluation, tests).
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(get_metric_fn=_best_metric, reverse=False, n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], data_iter: Any,
             pckh_total: float | None = None) -> None:
        """Starts saving checkpoint `step` (asynchronously unless disabled).

        Args:
          step: the optimiser step (number of updates applied).
          state: the unreplicated TrainState (host or device arrays).
          meta: JSON-serialisable run metadata (epoch, best PCKh, ...).
          data_iter: the training grain DatasetIterator (its position is saved).
          pckh_total: validation PCKh Total @0.5 of this state, if it was just evaluated (for
            keeping the best checkpoint).
        """
        state_dict = serialization.to_state_dict(jax.device_get(state))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state_dict), meta=ocp.args.JsonSave(meta),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter))
        metrics = None if pckh_total is None else {BEST_METRIC: float(pckh_total)}
        self._manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, state_template: Any, data_iter: Any | None = None
                ) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint `step` into the structure of `state_template`.

        Args:
          step: a step listed by `all_steps()`.
          state_template: an unreplicated TrainState of the same model and optimiser (its values are
            ignored; shapes and dtypes are checked by orbax).
          data_iter: if given, a grain DatasetIterator of the same pipeline, moved to the saved position.

        Returns:
          (state, meta): a TrainState of host numpy arrays and the JSON metadata.
        """
        template = serialization.to_state_dict(jax.device_get(state_template))
        items = dict(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        state = serialization.from_state_dict(state_template, restored["state"])
        return state, dict(restored["meta"])

    def restore_raw(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state dict (nested dicts of numpy arrays) and metadata of `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        return dict(restored["state"]), dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
