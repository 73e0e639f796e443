"""All orbax code of the project: training checkpoints under `WORKDIR/checkpoints`.

One `ocp.CheckpointManager` holds, per saved step, three items:

* `state`: the (unreplicated) TrainState as a state dict (step, params, batch_stats, opt_state, rng),
  `StandardSave`;
* `meta`: JSON, {'epoch', 'step', 'best_pckh', 'best_step', ...} (`JsonSave`);
* `data_iter`: the grain iterator position (`grain.checkpoint.CheckpointSave`), one file per host.

Which checkpoints are kept is decided here, not by orbax: the latest `keep` complete steps plus the best
step, the one named by `meta['best_step']` of the newest save. That record travels inside every
checkpoint, so it survives restarts; orbax's own metric bookkeeping did not (its per-step metrics were
empty after a restart, and the first save of a resumed run deleted the best checkpoint). Nothing is
deleted before a newer checkpoint is complete: a save starts by pruning among the checkpoints already
finished, and `close()` prunes once more after the last save, so a finished run — interrupted or not —
ends with exactly the latest `keep` steps and the best one.

Saves are asynchronous; orbax writes each into a temporary directory and renames it to its step number
once complete, so a save cut short (SIGKILL, power loss) is never mistaken for a checkpoint.
`restore_newest` falls back past checkpoints that do not restore (truncated files, missing items,
garbage JSON), moving each aside to `WORKDIR/checkpoints-corrupt/` and saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import serialization

from train.loop.workdir import CORRUPT_DIR, WorkdirError, check_writable, one_line


class CheckpointError(WorkdirError):
    """A checkpoint cannot be written, found or read; the message says which and what to do."""


class _DropOrbaxErrors(logging.Filter):
    """Drops orbax's error logs, and asyncio's reports of orbax write futures that failed after the save had
    already failed (a full disk): the failure reaches the caller as one CheckpointError line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        return not (record.name == "asyncio" and "orbax-checkpoint-tmp" in record.getMessage())


_ORBAX_ERRORS_FILTER = _DropOrbaxErrors()


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

        Raises:
          CheckpointError: `directory` is missing (read_only) or cannot be written (otherwise).
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self._keep = keep
        self._read_only = read_only
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"no checkpoint directory {self.directory}")
        if not read_only:
            # Probing first turns a read-only or full disk into one line now, instead of orbax's retries
            # and a traceback minutes later.
            check_writable(self.directory, "checkpoint directory")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
        for logger in ("absl", "asyncio"):  # adding the same filter twice is a no-op
            logging.getLogger(logger).addFilter(_ORBAX_ERRORS_FILTER)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # The best step named by the newest complete checkpoint and by the save in flight; pruning keeps both.
        self._best_on_disk: int | None = None
        self._best_pending: int | None = None
        self._saving: int | None = None  # the step of the last save started

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], data_iter: Any) -> None:
        """Starts saving checkpoint `step` (asynchronously unless disabled).

        Args:
          step: the optimiser step (number of updates applied).
          state: the unreplicated TrainState (host or device arrays).
          meta: JSON-serialisable run metadata; `meta['best_step']` (int or None) names the checkpoint
            with the best validation PCKh so far, which pruning keeps.
          data_iter: the training grain DatasetIterator (its position is saved).

        Raises:
          CheckpointError: the write failed (disk full, permissions); the checkpoints already on disk are
            untouched.
        """
        state_dict = serialization.to_state_dict(jax.device_get(state))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state_dict), meta=ocp.args.JsonSave(meta),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter))
        with self._write_errors():
            self._manager.wait_until_finished()  # the previous save is complete before anything is pruned
            # Until this save completes, the newest checkpoint on disk names the previous best: keep both.
            on_disk = self._best_pending
            self._best_on_disk, self._best_pending = on_disk, meta.get("best_step")
            self._prune()
            self._saving = step
            try:
                self._check_free_space(step)
                self._manager.save(step, args=args, force=True)
            except BaseException:
                # Refused or failed at once: nothing names the new best, and close() must not prune the old one.
                self._best_pending = on_disk
                raise

    def _check_free_space(self, step: int) -> None:
        """Refuses a save that cannot fit: free space below the size of the newest checkpoint on disk.

        A write that fails part-way costs nothing on disk, but orbax then closes its event loop under the
        writes still in flight, whose threads print tracebacks past Python's hooks; refusing first gives the
        one-line error alone. Single-process runs only: hosts could see different free space, and one
        refusing while the others enter orbax's save would leave those waiting at its barrier.
        """
        latest = self.latest_step()
        if latest is None or jax.process_count() > 1:
            return
        needed = _directory_bytes(os.path.join(self.directory, str(latest)))
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory} (No space left on device: it needs "
                f"about {_size(needed)}, the size of checkpoint {latest}, and {_size(free)} is free); the complete "
                f"checkpoints there are untouched: free space, then rerun the same command to resume")

    def _prune(self) -> None:
        steps = self.all_steps()
        keep = set(steps[-self._keep:]) | {int(s) for s in (self._best_on_disk, self._best_pending)
                                            if s is not None}
        for step in steps:
            if step not in keep:
                self._manager.delete(step)

    @contextlib.contextmanager
    def _write_errors(self) -> Iterator[None]:
        try:
            yield
        except (KeyboardInterrupt, CheckpointError):
            raise
        except Exception as err:  # orbax and tensorstore raise many types for a failed write
            raise CheckpointError(
                f"could not write checkpoint {self._saving} to {self.directory} ({one_line(err)}); the "
                f"complete checkpoints there are untouched: free space or fix permissions, then rerun the same "
                f"command to resume") from err

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
        iterator_files = self._iterator_files(step)
        own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if data_iter is not None and own in iterator_files:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if data_iter is not None and own not in iterator_files:
            self._restore_iterator_of_other_hosts(step, iterator_files, data_iter)
        state = serialization.from_state_dict(state_template, restored["state"])
        meta = dict(restored["meta"])
        self._best_on_disk = self._best_pending = meta.get("best_step")
        return state, meta

    def _iterator_files(self, step: int) -> list[str]:
        folder = os.path.join(self.directory, str(step), "data_iter")
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []

    def _restore_iterator_of_other_hosts(self, step: int, files: list[str], data_iter: Any) -> None:
        """Moves `data_iter` to where a run with another number of processes saved its iterators.

        Each host's iterator counts the batches it has taken (grain's {'next_index': k}); host h of n takes
        stream positions h, h + n, ... of each global batch (data.pipeline), so after k steps every host of
        any run is at k, and one host's state serves a run of any size. Worker iterators
        (--num-workers > 0) record per-worker positions and do not translate.
        """
        folder = os.path.join(self.directory, str(step), "data_iter")
        states = {}
        for name in files:
            if name.startswith("process_") and name.endswith(".json"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    states[name] = json.load(f)
        if not states:
            raise CheckpointError(f"checkpoint {step} in {self.directory} has no data-iterator state")
        distinct = {json.dumps(v, sort_keys=True) for v in states.values()}
        if len(distinct) != 1 or set(next(iter(states.values()))) != {"next_index"}:
            raise CheckpointError(
                f"checkpoint {step} was written by {len(states)} process(es) with data-loader states that do not "
                f"carry over to {jax.process_count()} process(es) ({', '.join(sorted(states))}); resume with "
                f"the original number of processes, or use --num-workers=0 in both runs")
        data_iter.set_state(next(iter(states.values())))

    def restore_newest(self, state_template: Any, data_iter: Any | None = None,
                       log: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest checkpoint that restores; None when there is none at all.

        Checkpoints newer than that one that fail to restore are moved to WORKDIR/checkpoints-corrupt/ (not
        deleted: they may be wanted for a post-mortem), each with a line through `log` naming the reason.

        Raises:
          CheckpointError: checkpoints exist but none restores (nothing is moved then).
        """
        failures: list[tuple[int, str]] = []
        for step in reversed(self.all_steps()):
            try:
                result = self.restore(step, state_template, data_iter)
            except Exception as err:  # orbax, tensorstore and grain raise many types for damaged files
                failures.append((step, one_line(err)))
                continue
            for bad, reason in failures:
                moved = self._move_aside(bad)
                log(f"skipped checkpoint {bad}: it does not restore ({reason}); moved to {moved}")
            return result
        if failures:
            details = "; ".join(f"step {s}: {r}" for s, r in failures)
            raise CheckpointError(f"no checkpoint in {self.directory} restores ({details}); nothing was moved. "
                                  f"If the configuration changed, use the original flags; else move the "
                                  f"directory away to start over")
        return None

    def _move_aside(self, step: int) -> str:
        target_root = os.path.join(os.path.dirname(self.directory), CORRUPT_DIR)
        target = os.path.join(target_root, str(step))
        suffix = 1
        while os.path.exists(target):
            target = os.path.join(target_root, f"{step}.{suffix}")
            suffix += 1
        if jax.process_index() == 0:
            os.makedirs(target_root, exist_ok=True)
            os.replace(os.path.join(self.directory, str(step)), target)
        self._manager.reload()
        return target

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint `step`."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def resolve_step(self, which: str | int) -> int:
        """The step that 'best', 'latest' or a step number (int or digits) names in this directory.

        'best' is the checkpoint with the highest validation PCKh, as recorded by the newest checkpoint whose
        metadata reads; it never silently falls back to another one.

        Raises:
          CheckpointError: no checkpoint, no validation recorded yet, the best step or the given one missing.
          ValueError: `which` is none of the above.
        """
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no complete checkpoint in {self.directory}")
        if which == "latest":
            return steps[-1]
        if which == "best":
            return self._best_of(steps)
        if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
            if int(which) not in steps:
                raise CheckpointError(f"no checkpoint at step {which} in {self.directory}; available: {steps}")
            return int(which)
        raise ValueError(f"step must be 'best', 'latest' or a step number, got {which!r}")

    def _best_of(self, steps: list[int]) -> int:
        reasons = []
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
                break
            except Exception as err:  # a damaged newest checkpoint: an older one knows the best too
                reasons.append(f"step {step}: {one_line(err)}")
        else:
            raise CheckpointError(f"no checkpoint metadata in {self.directory} reads ({'; '.join(reasons)})")
        best = meta.get("best_step")
        if best is None:
            raise CheckpointError(f"the run in {os.path.dirname(self.directory)} has not been validated yet, so it "
                                  f"has no best checkpoint; pass --step latest (step {steps[-1]}) or a step number")
        if int(best) not in steps:
            raise CheckpointError(
                f"the best checkpoint (step {best}, validation PCKh {meta.get('best_pckh')}) is missing from "
                f"{self.directory}; available: {steps}. Pass --step latest or a step number")
        return int(best)

    def restore_raw(self, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state dict (nested dicts of numpy arrays) and metadata of `step` (default: latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        return dict(restored["state"]), dict(restored["meta"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        with self._write_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, prunes (see the module docstring) and releases the manager."""
        try:
            if not self._read_only:
                with self._write_errors():
                    self._manager.wait_until_finished()
                    self._best_on_disk = self._best_pending
                    self._prune()
        finally:
            self._manager.close()


def _directory_bytes(path: str) -> int:
    """Bytes the files under `path` occupy on disk, in whole blocks (0 if it is gone)."""
    return sum(os.stat(os.path.join(root, name)).st_blocks * 512
               for root, _, names in os.walk(path) for name in names)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
