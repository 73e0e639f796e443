"""Trains a pose model of the paper: `python -m train.main --backbone=resnet50 --res=28` (Table 4 run).

Run `python -m train.main --help` for the flags and presets (train/loop/config.py); the loop is
`train.loop.trainer.train_and_evaluate`. Everything of a run lives
in --workdir: config.json (the resolved configuration), checkpoints/ (orbax: last few epochs + the
best by validation PCKh, with the optimiser, PRNG and data-iterator state), metrics.jsonl and
tensorboard/. Restarting the same command resumes from the newest checkpoint that restores and ends with the
same parameters, kept checkpoints and best step as an uninterrupted run; SIGTERM or Ctrl-C save a checkpoint
and exit cleanly. One process at a time holds a workdir (train/loop/workdir.py), config.json is written only once
the run has started, and a step whose loss or parameters are not finite is never applied (--on-nonfinite).
Every refusal is one line on stderr: exit status 2 for bad input or an unusable workdir, 1 for a non-finite
step.

Data parallelism: `jax.pmap` over every device of the run; with several hosts (the usual environment
variables of `jax.distributed.initialize`: JAX_COORDINATOR_ADDRESS, SLURM, Open MPI) each host reads
its own shard of every global batch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax

from train.loop import config as config_lib
from train.loop import workdir as workdir_lib
from train.loop.signals import PeerFailure
from train.loop.trainer import NonFiniteError, train_and_evaluate
from train.loop.workdir import WorkdirError

PROG = "python -m train.main"


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


def train(cfg: config_lib.Config) -> int:
    """Runs (or resumes) the training described by `cfg` in its workdir; returns the exit status."""
    n_global = jax.device_count()
    if cfg.batch_size % n_global:
        raise ValueError(f"--batch-size={cfg.batch_size} does not divide over the {n_global} devices; "
                         f"use a multiple of {n_global}")
    # One training process per workdir: the lock is held by the first host for the whole run.
    with workdir_lib.locked(cfg.workdir, enabled=jax.process_index() == 0):
        return train_and_evaluate(cfg)


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
