"""tfds builder ``synthetic_pose``: procedurally drawn people in MPII's record schema (no download).

Each example is ``render.render_example(seed, index)`` cropped to the shared canvas (``data/records.py``), so the
MPII crop, augmentation and PCKh code runs on it unchanged. Splits: ``train`` renders indices
[0, num_train), ``validation`` indices [VALIDATION_OFFSET, VALIDATION_OFFSET + num_val): the two never share an
example, and the validation set does not change with num_train.

Configs: the sizes, seed and canvas size are part of the config and of its name (``n6000_v500_s0_c192`` is the
default), so different builds live in different directories ``synthetic_pose/<config name>/1.0.0``.

Interrupted builds, damaged files: see ``data/build_guard.py``. The rendering processes ignore Ctrl-C (the parent
stops them) and exit by themselves when the parent dies, even by SIGKILL; the next build removes the stale
``incomplete.*`` folder; a truncated record file is reported when the dataset is opened.

Usage (no TensorFlow needed)::

    from data.synthetic_pose import builder
    b = builder.SyntheticPose(config=builder.synthetic_config(num_train=100), data_dir=data_dir)
    b.download_and_prepare()  # array_record
    val = b.as_data_source()["validation"]  # or tfds.data_source("synthetic_pose/<config name>", data_dir=...)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import re
from collections.abc import Iterator
from typing import Any

import cv2
import tensorflow_datasets as tfds

from data import build_guard, records
from data.synthetic_pose import DEFAULT_CANVAS_SIZE, DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_SEED, render

VALIDATION_OFFSET = 1_000_000_000  # first index of the validation split (fits the int32 annolist_index)
# Below this many examples in a split, rendering in the calling process beats starting worker processes.
_MIN_PARALLEL = 400
_CHUNK = 32


@dataclasses.dataclass(eq=False)
class SyntheticPoseConfig(tfds.core.BuilderConfig):
    """Builder config.

    Attributes:
      num_train, num_val: examples in the train and validation splits.
      seed: dataset seed (example i is ``render_example(seed, i)``).
      canvas_size: C, side of the stored canvas (multiple of 6).
    """

    num_train: int = DEFAULT_NUM_TRAIN
    num_val: int = DEFAULT_NUM_VAL
    seed: int = DEFAULT_SEED
    canvas_size: int = DEFAULT_CANVAS_SIZE


def synthetic_config(num_train: int | None = None, num_val: int | None = None, seed: int = DEFAULT_SEED,
                     canvas_size: int | None = None) -> SyntheticPoseConfig:
    """A config named after its sizes, e.g. ``n6000_v500_s0_c192`` (None = the default of that field)."""
    num_train = DEFAULT_NUM_TRAIN if num_train is None else int(num_train)
    num_val = DEFAULT_NUM_VAL if num_val is None else int(num_val)
    canvas_size = DEFAULT_CANVAS_SIZE if canvas_size is None else int(canvas_size)
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be at least 1, got {num_train} and {num_val}")
    if num_train > VALIDATION_OFFSET or num_val > 2**31 - 1 - VALIDATION_OFFSET:
        raise ValueError(f"at most {VALIDATION_OFFSET} train and {2**31 - 1 - VALIDATION_OFFSET} validation "
                         f"examples, got {num_train} and {num_val}")
    if not 0 <= int(seed) < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    if canvas_size <= 0 or canvas_size % 6:
        raise ValueError(f"canvas_size must be a positive multiple of 6 (box = 2/3 of it), got {canvas_size}")
    return SyntheticPoseConfig(
        name=f"n{num_train}_v{num_val}_s{int(seed)}_c{canvas_size}", num_train=num_train, num_val=num_val,
        seed=int(seed), canvas_size=canvas_size,
        description=f"{num_train} train + {num_val} validation people, seed {int(seed)}, {canvas_size} px canvas")


def make_example(seed: int, index: int, canvas_size: int) -> tuple[str, dict[str, Any]]:
    """Renders example ``index`` and crops its canvas: (key, record in the shared schema, image JPEG-encoded)."""
    ex = render.render_example(seed, index)
    a = records.canvas_transform(ex["center"], float(ex["scale"]), canvas_size)
    canvas = records.render_canvas(ex["image"], a, canvas_size)
    record = records.make_record(
        canvas=canvas, joints=ex["joints"], annotated=ex["annotated"], visible=ex["visible"],
        head_box=ex["head_box"], center=ex["center"], scale=float(ex["scale"]), canvas_to_image=a,
        image_size=tuple(int(v) for v in ex["image_size"]), image_name=ex["image_name"],
        annolist_index=index, person_index=0)
    return f"{index:010d}", record


def _init_worker() -> None:
    """Initializer of a rendering process: no Ctrl-C, exit with the parent, one OpenCV thread."""
    build_guard.worker_process_init()
    # One OpenCV thread per worker: the workers already use every core.
    cv2.setNumThreads(1)


def _make_chunk(seed: int, indices: range, canvas_size: int) -> list[tuple[str, dict[str, Any]]]:
    return [make_example(seed, i, canvas_size) for i in indices]


class SyntheticPose(build_guard.GuardedBuilder, tfds.core.GeneratorBasedBuilder):
    """Synthetic articulated people with MPII's 16 joints, one example per image."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Procedural people, MPII record schema."}
    BUILDER_CONFIGS = [synthetic_config()]

    def __init__(self, *, num_workers: int | None = None, **kwargs: Any):
        """Args: num_workers: rendering processes (default: the CPU count; 1 renders in this process).

        Other keyword arguments go to ``tfds.core.GeneratorBasedBuilder`` (data_dir, config, file_format:
        default "array_record", readable by ``as_data_source`` and writable without TensorFlow).
        """
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)  # GuardedBuilder swaps a registered config object for its name
        self._num_workers = max(1, num_workers or os.cpu_count() or 1)

    @classmethod
    def rebuild_command_for(cls, config_name: str, data_dir: str) -> str:
        """The ``python -m data.prepare synthetic ...`` command that builds config ``n<N>_v<V>_s<S>_c<C>``."""
        flags = [f"--data-dir {data_dir}"]
        match = re.fullmatch(r"n(\d+)_v(\d+)_s(\d+)_c(\d+)", config_name)
        if match:
            defaults = (DEFAULT_NUM_TRAIN, DEFAULT_NUM_VAL, DEFAULT_SEED, DEFAULT_CANVAS_SIZE)
            for flag, value, default in zip(("--num-train", "--num-val", "--seed", "--canvas-size"),
                                            map(int, match.groups()), defaults):
                if value != default:
                    flags.append(f"{flag} {value}")
        return "python -m data.prepare synthetic " + " ".join(flags)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=("Procedurally drawn articulated people in cluttered scenes with MPII's 16 joints and "
                         "annotation conventions (1-based image frame, objpos, scale, head box, visibility); "
                         "one canvas crop per person as in the mpii_human_pose builder."),
            features=records.features(self.builder_config.canvas_size),
            homepage="https://github.com/anibali/dsnt",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator[Any]]:
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples(range(cfg.num_train)),
            "validation": self._generate_examples(range(VALIDATION_OFFSET, VALIDATION_OFFSET + cfg.num_val)),
        }

    def _generate_examples(self, indices: range) -> Iterator[tuple[str, dict[str, Any]]]:
        cfg = self.builder_config
        workers = min(self._num_workers, -(-len(indices) // _CHUNK))
        if workers <= 1 or len(indices) < _MIN_PARALLEL:
            for i in indices:
                yield make_example(cfg.seed, i, cfg.canvas_size)
            return
        chunks = [indices[k:k + _CHUNK] for k in range(0, len(indices), _CHUNK)]
        # "spawn": fresh interpreters, safe even when the caller already runs threads (JAX, tfds).
        context = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        try:
            for chunk in chunks:
                # Workers start inside submit(): with SIGINT blocked, a Ctrl-C cannot hit one mid-start-up.
                with build_guard.sigint_blocked():
                    pending.append(pool.submit(_make_chunk, cfg.seed, chunk, cfg.canvas_size))
                # A bounded window keeps memory flat; results come back in index order.
                while len(pending) > 3 * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            # Interrupted (Ctrl-C, generator closed): drop the queued chunks; workers exit after their current one.
            pool.shutdown(wait=True, cancel_futures=True)
