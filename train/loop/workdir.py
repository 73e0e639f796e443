"""The run directory (`--workdir`): its layout, its config, an exclusive lock, atomic small files.

`RunDir` names every file of a run (config.json, checkpoints/, metrics.jsonl, tensorboard/, .lock; and
`CORRUPT_DIR`, which `train.loop.checkpoint.Checkpointer` places beside whatever checkpoint directory it is
given) and reads and writes its `Config`; nothing else spells those names.

A workdir belongs to one training process at a time. `RunLock` holds an exclusive `flock` on
`WORKDIR/.lock` for the life of the run; the kernel releases it when the process dies however it dies
(SIGKILL included), so a lock left by a killed run is never mistaken for a live one. The file also holds
the holder's PID, host and start time, to name it when a second process is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator

from train.loop.config import Config

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints-corrupt"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"


class WorkdirError(RuntimeError):
    """A problem with the run directory that the user can fix; the CLI prints it as one line."""


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The files of one training run under `path` (see the module docstring)."""

    path: str

    @property
    def config_file(self) -> str:
        """The run's resolved `Config`, written once the run has started (it describes the checkpoints)."""
        return os.path.join(self.path, CONFIG_FILE)

    @property
    def checkpoints(self) -> str:
        """orbax checkpoints, one folder per step (`train.loop.checkpoint.Checkpointer`)."""
        return os.path.join(self.path, CHECKPOINTS_DIR)

    @property
    def metrics_file(self) -> str:
        """JSON lines, one record per log or validation (`train.loop.metrics.MetricsWriter`)."""
        return os.path.join(self.path, METRICS_FILE)

    @property
    def tensorboard(self) -> str:
        return os.path.join(self.path, TENSORBOARD_DIR)

    @property
    def lock_file(self) -> str:
        return os.path.join(self.path, LOCK_FILE)

    def has_config(self) -> bool:
        return os.path.exists(self.config_file)

    def read_config(self) -> Config:
        """The run's `Config`.

        Raises:
          FileNotFoundError: not a training run directory (no config.json), saying how to make one.
        """
        if not self.has_config():
            raise FileNotFoundError(f"{self.path} is not a training run directory: {self.config_file} is missing "
                                    f"(train one with `python -m train.main --workdir {self.path} ...`)")
        with open(self.config_file, encoding="utf-8") as f:
            return Config.from_json(f.read())

    def write_config(self, cfg: Config) -> None:
        write_atomic(self.config_file, cfg.to_json())


def _describe(err: OSError) -> str:
    return err.strerror or str(err)


def check_writable(directory: str, what: str) -> None:
    """Creates `directory` if needed and proves a file can be written in it.

    Raises:
      WorkdirError: naming `what` (e.g. '--workdir'), the path and the reason, for a path that is a file,
        cannot be created, or refuses writes (permissions, read-only or full file system).
    """
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise WorkdirError(f"{what} {directory} is a file, not a directory; pass a directory path")
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise WorkdirError(f"{what} {directory} is not writable ({_describe(err)}); fix its permissions or "
                           f"free space, or choose another directory") from None


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RunLock:
    """An exclusive lock on a workdir (see the module docstring). Use as a context manager."""

    def __init__(self, workdir: str):
        self.path = RunDir(workdir).lock_file
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises WorkdirError naming the process that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirError(
                f"{os.path.dirname(self.path)} is in use by another training process ({holder}); wait for it "
                f"to finish or stop it (SIGTERM saves a checkpoint), or pass another --workdir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"PID {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "its PID is unknown"


@contextlib.contextmanager
def locked(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """Checks that `workdir` is a writable directory and holds its lock (when `enabled`) inside the block."""
    check_writable(workdir, "--workdir")
    if not enabled:
        yield
        return
    with RunLock(workdir):
        yield


def one_line(err: BaseException, limit: int = 320) -> str:
    """`err` as one line of at most about `limit` characters, for a one-line error message."""
    text = " ".join(str(err).split())
    if len(text) > limit:  # the start says what failed, the end why (e.g. "No space left on device")
        text = f"{text[:limit // 3]} … {text[-2 * limit // 3:]}"
    return f"{type(err).__name__}: {text}"

