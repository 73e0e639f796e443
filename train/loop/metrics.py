"""Run logging: a tqdm progress bar, a JSON-lines metrics file and TensorBoard scalars (tensorboardX).

Only the first host writes files (`enabled=False` elsewhere). Records look like
{"step": 1200, "epoch": 3, "split": "train", "loss": 0.41, "lr": 0.00025, "images_per_s": 180.2} and
{"step": 1200, "epoch": 3, "split": "val", "total": 71.3, "head": ..., "auc": ...} (with the flip test, "val"
holds the flip-test scores and "val_no_flip" the plain ones); TensorBoard gets the same numbers under
"<split>/<key>".
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import tqdm

from train.loop.workdir import RunDir, WorkdirError, one_line, write_atomic


def _clean(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class MetricsWriter:
    """Appends metric records to WORKDIR/metrics.jsonl and WORKDIR/tensorboard/ (first host only).

    A run that resumes from the checkpoint of step `resume_step` first drops the records of later steps,
    which the interrupted process wrote after that checkpoint and the resumed run writes again, so the
    file ends the same as an uninterrupted run's (TensorBoard is told the same through `purge_step`).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
        self._enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            run_dir = RunDir(workdir)
            path = run_dir.metrics_file
            _drop_records_after(path, resume_step)
            self._jsonl = open(path, "a", encoding="utf-8")
            from tensorboardX import SummaryWriter  # only the first host writes TensorBoard logs

            self._tb = SummaryWriter(run_dir.tensorboard, purge_step=resume_step + 1)

    def write(self, split: str, step: int, epoch: int, values: Mapping[str, Any]) -> None:
        """Logs scalar `values` of `split` ('train' or 'val') at `step`."""
        if not self._enabled:
            return
        record = {"step": int(step), "epoch": int(epoch), "split": split, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in values.items()})
        try:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
            for key, value in values.items():
                if _clean(value) is not None:
                    self._tb.add_scalar(f"{split}/{key}", float(value), int(step))
            self._tb.flush()
        except OSError as err:  # a full disk may hit the logs before the next checkpoint
            raise WorkdirError(f"could not write the metrics log {self._jsonl.name} ({one_line(err)}); the "
                               f"checkpoints are untouched: free space or fix permissions, then rerun the same "
                               f"command to resume") from None

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tb.close()


def _drop_records_after(path: str, step: int) -> None:
    """Rewrites the JSON-lines file `path` (atomically) without records of steps after `step`."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        except (ValueError, KeyError, TypeError):
            pass  # a line cut short by a kill mid-write
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))


class Progress:
    """A tqdm bar over the run's steps showing loss, learning rate and training images/s."""

    def __init__(self, total_steps: int, initial_step: int, *, enabled: bool = True):
        self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                              disable=not enabled, mininterval=1.0, smoothing=0.1)
        self._last_time = time.perf_counter()
        self._last_images = 0

    def images_per_second(self, images: int) -> float:
        """Images/s since the previous call, given the images processed since then."""
        now = time.perf_counter()
        rate = images / max(now - self._last_time, 1e-9)
        self._last_time = now
        return rate

    def restart_clock(self) -> None:
        """Excludes the time spent since the last call (evaluation, checkpointing) from images/s."""
        self._last_time = time.perf_counter()

    def update(self, steps: int, **postfix: float) -> None:
        self._bar.update(steps)
        if postfix:
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def write(self, text: str) -> None:
        """Prints above the bar (nothing on hosts other than the first: tqdm.write ignores `disable`)."""
        if not self._bar.disable:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


def read_val_records(workdir: str) -> list[dict[str, Any]]:
    """The 'val' records of workdir/metrics.jsonl in file order ([] if there is no file).

    A torn last line (a run killed while writing) is ignored; any other unreadable line raises ValueError.
    """
    path = RunDir(workdir).metrics_file
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {i + 1}, is not JSON: {line[:80]!r}; fix or delete the line") from None
        if record.get("split") == "val":
            out.append(record)
    return out
