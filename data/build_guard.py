"""Safety around the tfds builders of ``data/``: registered configs, interrupted builds, damaged record files.

``GuardedBuilder`` is a mixin listed before ``tfds.core.GeneratorBasedBuilder`` in a builder's bases:

* **Configs.** tfds refuses a config *object* named like one of ``BUILDER_CONFIGS`` ("Cannot name a custom
  BuilderConfig the same as an available BuilderConfig"), so ``Builder(config=make_config())`` with the default
  values used to fail. The mixin passes the registered config's *name* instead: the default config object and
  ``Builder()`` open the same directory ``<data_dir>/<name>/<config>/<version>``.
* **Interrupted builds.** tfds writes into ``<config dir>/incomplete.XXXXXX_<version>/`` and renames it when
  done. On Ctrl-C (or a SIGTERM turned into an exception) tfds deletes that folder; after SIGKILL or an unhandled
  SIGTERM it stays, and tfds never removes it. ``download_and_prepare`` therefore holds an exclusive lock,
  ``fcntl.flock`` on ``<config dir>/.build.lock`` (the kernel releases it when its holder dies, however it dies).
  Whoever holds the lock is the only build of this config, so every ``incomplete.*`` folder there is stale: it
  is removed and logged. A second build of the same config started meanwhile waits, then reuses the dataset.
* **Damaged files.** ``as_data_source`` first opens every array_record file of the dataset (footer and index
  only) and compares its record count with the dataset metadata. A missing, truncated or corrupt file raises
  ``DamagedDatasetError`` (a ``ValueError``) naming the file, the folder to delete and the command that rebuilds
  it, instead of a bare ``RuntimeError`` on the first read.

Worker processes of a build stop with it: ``worker_process_init`` (the pool initializer) makes a spawned worker
ignore SIGINT (Ctrl-C reaches the whole process group; the parent alone decides to stop, so no traceback per
worker) and exit as soon as its parent dies, SIGKILL included; ``sigint_blocked`` wraps the calls that start
workers so that a Ctrl-C cannot reach one before its initializer runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_NAME = ".build.lock"
INCOMPLETE_PREFIX = "incomplete."  # tensorflow_datasets.core.constants.INCOMPLETE_PREFIX
# Modules whose import registers the tfds builders of data/ (they import this module, so not at the top).
_BUILDER_MODULES = {"mpii_human_pose": "data.mpii.builder", "synthetic_pose": "data.synthetic_pose.builder"}


class DamagedDatasetError(ValueError):
    """A built dataset's record files are missing, truncated or corrupt (the message says how to rebuild)."""


class GuardedBuilder:
    """Mixin for a ``tfds.core.GeneratorBasedBuilder`` (see the module docstring).

    Subclasses implement the classmethod ``rebuild_command_for(config_name, data_dir)``: the shell command that
    builds that config into that tfds data directory.
    """

    BUILDER_CONFIGS: list[Any]

    def __init__(self, **kwargs: Any):
        config = kwargs.get("config")
        registered = {c.name: c for c in self.BUILDER_CONFIGS}
        if config is not None and not isinstance(config, str) and config.name in registered:
            # Config names encode every field (canvas576, n6000_v500_s0_c192), so an equal name is the same config.
            kwargs["config"] = config.name  # tfds accepts a registered config by name only
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self._files_checked = False

    @classmethod
    def rebuild_command_for(cls, config_name: str, data_dir: str) -> str:
        """The ``python -m data.prepare ...`` command that builds config ``config_name`` into ``data_dir``."""
        raise NotImplementedError

    def rebuild_command(self) -> str:
        """The ``python -m data.prepare ...`` command that builds this config in this data directory."""
        builder: Any = self
        return self.rebuild_command_for(builder.builder_config.name, os.fspath(builder.data_dir_root))

    def download_and_prepare(self, **kwargs: Any) -> None:
        """tfds's ``download_and_prepare`` under the build lock, after removing stale ``incomplete.*`` folders."""
        builder: Any = self
        if builder.is_prepared():  # tfds reuses it: no lock needed (the folder may even be read-only)
            super().download_and_prepare(**kwargs)  # type: ignore[misc]
            return
        existed = builder.data_path.exists()
        config_dir = Path(builder.data_path).parent
        with build_lock(config_dir) as locked:
            # Only the lock proves that no other process is still writing into those folders.
            removed = remove_incomplete_dirs(config_dir) if locked else []
            if removed:
                log.warning("removed %d unfinished folder(s) of an interrupted build of %s/%s: %s", len(removed),
                            builder.name, builder.builder_config.name, ", ".join(removed))
            if not existed and builder.is_prepared():
                # Built by another process while this one waited for the lock: read its metadata.
                builder.info.read_from_directory(builder.data_dir)
                return
            super().download_and_prepare(**kwargs)  # type: ignore[misc]

    def as_data_source(self, *args: Any, **kwargs: Any) -> Any:
        """tfds's ``as_data_source`` after checking every record file once (``DamagedDatasetError``)."""
        if not self._files_checked:
            info: Any = self.info  # type: ignore[attr-defined]
            check_record_files(info, self.rebuild_command())
            self._files_checked = bool(info.splits)  # nothing was checked before the dataset is built
        return super().as_data_source(*args, **kwargs)  # type: ignore[misc]


@contextlib.contextmanager
def build_lock(config_dir: Path) -> Iterator[bool]:
    """Holds an exclusive ``flock`` on ``config_dir/.build.lock`` (waits, with a log line, if another holds it).

    Yields:
      True while locked; False where ``fcntl`` is missing (not POSIX: no lock, so no stale-folder cleanup either).
    """
    try:
        import fcntl  # pylint: disable=g-import-not-at-top
    except ImportError:
        yield False
        return
    config_dir.mkdir(parents=True, exist_ok=True)
    with open(config_dir / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            log.warning("waiting for another build in %s (%s) to finish", config_dir, f.read().strip() or "?")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_incomplete_dirs(config_dir: Path) -> list[str]:
    """Deletes the ``incomplete.*`` folders tfds left in ``config_dir``; call only while holding ``build_lock``.

    Returns:
      The names of the folders removed.
    """
    if not config_dir.is_dir():
        return []
    removed = []
    for path in sorted(config_dir.glob(f"{INCOMPLETE_PREFIX}*")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def check_source_files(source: Any) -> None:
    """``check_record_files`` for a tfds data source (``tfds.data_source(...)``); other sources pass unchecked.

    Unlike ``builder.as_data_source()``, ``tfds.data_source("synthetic_pose/<custom config>")`` reads through
    tfds's generic read-only builder, which this module's mixin never sees; the input pipeline calls this.
    """
    info = getattr(source, "dataset_info", None)
    if info is None or not getattr(info, "data_dir", None):
        return
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # lazy: list sources need no tfds

    root = Path(os.fspath(info.data_dir)).parents[2 if info.config_name else 1]
    command = f"the `python -m data.prepare ...` command that built it, with --data-dir {root}"
    try:
        if info.name in _BUILDER_MODULES:
            importlib.import_module(_BUILDER_MODULES[info.name])  # registers the builder class
        builder_cls = tfds.builder_cls(info.name)
    except ValueError:  # tfds's DatasetNotFoundError: keep the generic hint
        builder_cls = None
    if builder_cls is not None and issubclass(builder_cls, GuardedBuilder) and info.config_name:
        command = builder_cls.rebuild_command_for(info.config_name, os.fspath(root))
    check_record_files(info, command)


def check_record_files(info: Any, rebuild_command: str) -> None:
    """Opens every array_record shard of a prepared dataset and checks its record count against the metadata.

    Args:
      info: the ``tfds.core.DatasetInfo`` of a prepared dataset (``builder.info``); ``info.data_dir`` is its
        version folder ``<data_dir>/<name>/<config>/<version>``.
      rebuild_command: the command to print in the error.

    Raises:
      DamagedDatasetError: a shard is missing, unreadable (truncated: no valid footer/index) or holds another
        number of records than ``dataset_info.json`` says.
    """
    if info.file_format is None or info.file_format.value != "array_record":
        return
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    for split_info in info.splits.values():
        for path, expected in zip(split_info.filepaths, split_info.shard_lengths):
            path = Path(os.fspath(path))
            if not path.is_file():
                raise _damaged(info, path, "the file is missing", rebuild_command)
            try:
                # Opening reads the footer and the record index only (no readahead, as tfds's reader).
                reader = array_record_module.ArrayRecordReader(str(path), options="readahead_buffer_size:0")
                try:
                    found = reader.num_records()
                finally:
                    reader.close()
            except RuntimeError as e:  # array_record reports a bad footer/index this way
                detail = str(e).split(";")[0]  # riegeli appends byte offsets and context after ";"
                raise _damaged(info, path, f"unreadable, probably truncated: {detail}", rebuild_command) from None
            if found != expected:
                raise _damaged(info, path, f"{found} records, the metadata says {expected}", rebuild_command)


def _damaged(info: Any, path: Path, reason: str, rebuild_command: str) -> DamagedDatasetError:
    return DamagedDatasetError(
        f"dataset file {path} is damaged ({reason}). Delete the folder {os.fspath(info.data_dir)} and rebuild it "
        f"with: {rebuild_command}")


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Blocks SIGINT in this thread for the duration (a Ctrl-C meanwhile is delivered on exit).

    Processes started inside inherit the block until ``worker_process_init`` ignores SIGINT. Does nothing where
    ``signal.pthread_sigmask`` is missing.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_process_init() -> None:
    """Initializer of a build's worker process: ignore SIGINT, and exit as soon as the parent process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # a pending Ctrl-C is now discarded
    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child
        return
    # The sentinel becomes ready when the parent ends, even by SIGKILL (its end of the pipe closes); without
    # this, a worker blocked on the task queue would wait forever for a parent that is gone.
    threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True,
                     name="exit-with-parent").start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)  # pylint: disable=protected-access
