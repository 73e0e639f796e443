"""How a training process stops: on request (SIGTERM, Ctrl-C), or when a peer process of its run dies."""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from train.loop.workdir import one_line


class StopRequest:
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
        flag = np.int32(self.received is not None)
        return bool(np.any(multihost_utils.process_allgather(flag)))

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class PeerFailure(RuntimeError):
    """Another process of a multi-host run stopped, so a collective operation of this one failed."""


def peer_failure(err: Exception) -> PeerFailure:
    """The one-line error for a collective that failed because a peer process died."""
    return PeerFailure(f"process {jax.process_index()}: another process of this {jax.process_count()}-process run "
                       f"stopped ({one_line(err, 160)}); rerun the same command on every host to resume from the last "
                       f"complete checkpoint")
