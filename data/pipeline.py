"""grain input pipelines: random-access person records -> crop/augment -> static-shape batches.

Sources are random-access collections of person records (docs/records.md): a tfds data source
(``tfds.data_source(name, split=..., data_dir=...)``, no TensorFlow needed), or anything with ``__len__`` and
``__getitem__`` (an in-memory list in the tests). Pipelines use grain's dataset API (``grain.MapDataset``):

* **Train.** ``range(N) -> shuffle -> repeat -> load + augment (random_map) -> host shard -> batch``. The
  shuffle is a fresh deterministic permutation per epoch (grain folds the epoch into the seed); augmentation
  draws from a generator grain seeds from ``seed`` and the position in the global stream. Batches are cut
  from the continuous stream of epochs (epoch e is stream positions [e N, (e + 1) N)), so a batch may straddle
  an epoch boundary; one epoch is N / global_batch_size steps. Host h of n takes stream positions
  h, h + n, ...: at every step the hosts' batches together form exactly the global batch a single host
  would see, whatever the host count.
* **Eval.** No shuffle, no augmentation, one pass. The last partial batch is kept and padded to the full
  batch size so shapes stay static under ``jit``: padded rows are zeros with ``valid`` False and ``index``
  -1. With several hosts, host h takes examples h, h + n, ..., and every host yields the same number of
  batches.

Batches are dicts of numpy arrays (B = per-host batch = global batch / shard count, S = output side):
``image`` float32 [B, S, S, 3], ``coords`` float32 [B, 16, 2] (normalised, +-1 = crop edges), ``mask``
float32 [B, 16], ``normalized_to_image`` float32 [B, 2, 3], ``index`` int32 [B] (source index), and for eval
``valid`` bool [B].

Determinism and checkpoints: the batches are a function of the arguments other than ``num_workers``,
``num_threads``, ``prefetch_batches`` and ``cache_bytes``, which change speed only: batching happens inside
the ``MapDataset`` (before ``mp_prefetch`` slices the work), so each worker computes whole batches and grain
interleaves them back in order. ``it = iter(loader)`` is a grain
``DatasetIterator``: ``it.get_state()`` / ``it.set_state(state)`` (or orbax with
``grain.checkpoint.CheckpointSave(it)`` / ``CheckpointRestore(it)``) resume at exactly the next batch.
A state is only valid for a loader built with the same arguments, ``num_workers`` included (a worker
iterator's state records per-worker positions).

With ``num_workers > 0`` batches arrive as grain ``SharedMemoryArray`` (``np.ndarray`` subclasses backed by
shared memory, freed when garbage-collected): hand them to the device and drop them, or ``np.array`` them to
keep them, and ``close()`` the iterator when done. ``num_workers > 0`` also marks absl flags parsed if nobody
parsed them (see ``_finish``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import grain
import numpy as np
from absl import flags

from data import build_guard
from data.augment import VARIANTS, augment, preprocess_eval, sample_augmentation
from data.joints import NUM_JOINTS


class RecordSource(Protocol):
    """A random-access collection of person records (tfds data source, list, ...)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class _LoadAndAugment(grain.transforms.RandomMap):
    """Stream element (a source index) -> augmented example with its ``index``.

    Without augmentation an index always gives the same example, so up to ``cache_bytes`` of them are
    kept (in each process) and later epochs skip reading, decoding and warping those records.
    """

    def __init__(self, source: RecordSource, out_size: int, mean_rgb: Sequence[float] | None, variant: str,
                 cache_bytes: int = 0):
        self._source = source
        self._out_size = out_size
        self._mean_rgb = mean_rgb
        self._variant = variant
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_room = cache_bytes if variant == "none" else 0

    def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        index = int(index)
        cached = self._cache.get(index)
        if cached is not None:
            return dict(cached)
        params = sample_augmentation(rng, self._variant)
        example = augment(self._source[index], params, out_size=self._out_size, mean_rgb=self._mean_rgb)
        example["index"] = np.int32(index)
        size = sum(v.nbytes for v in example.values())
        if size <= self._cache_room:
            self._cache[index] = example
            self._cache_room -= size
            example = dict(example)
        return example


class _LoadEval(grain.transforms.Map):
    """Host-local position -> preprocessed example, or a zero row with ``valid`` False past the data."""

    def __init__(self, source: RecordSource, num_examples: int, shard_index: int, shard_count: int,
                 out_size: int, mean_rgb: Sequence[float] | None):
        self._source = source
        self._num_examples = num_examples
        self._shard_index = shard_index
        self._shard_count = shard_count
        self._out_size = out_size
        self._mean_rgb = mean_rgb

    def map(self, position: int) -> dict[str, np.ndarray]:
        index = self._shard_index + int(position) * self._shard_count
        if index < self._num_examples:
            example = preprocess_eval(self._source[index], self._out_size, self._mean_rgb)
            example.update(index=np.int32(index), valid=np.bool_(True))
            return example
        size = self._out_size
        return {
            "image": np.zeros((size, size, 3), np.float32),
            "coords": np.zeros((NUM_JOINTS, 2), np.float32),
            "mask": np.zeros((NUM_JOINTS,), np.float32),
            "normalized_to_image": np.zeros((2, 3), np.float32),
            "index": np.int32(-1),
            "valid": np.bool_(False),
        }


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    # Parallelism comes from the worker processes; OpenCV's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)


def _check_common(source: Any, global_batch_size: int, shard_index: int, shard_count: int,
                  num_workers: int, num_threads: int, prefetch_batches: int) -> int:
    """Validates the shared arguments and returns the per-host batch size."""
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(f"source must be random access (__len__ and __getitem__), got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError("source is empty; check the dataset name, split and data_dir")
    # A truncated record file fails here with a clear message, not with a bare RuntimeError in the first read.
    build_guard.check_source_files(source)
    if not (isinstance(shard_count, (int, np.integer)) and shard_count >= 1 and 0 <= shard_index < shard_count):
        raise ValueError(f"need shard_count >= 1 and 0 <= shard_index < shard_count, got shard_index={shard_index}, "
                         f"shard_count={shard_count}")
    if not (isinstance(global_batch_size, (int, np.integer)) and global_batch_size >= 1
            and global_batch_size % shard_count == 0):
        raise ValueError(f"global_batch_size must be a positive multiple of shard_count={shard_count}, "
                         f"got {global_batch_size}")
    if num_workers < 0 or num_threads < 0 or prefetch_batches < 0:
        raise ValueError(f"num_workers, num_threads and prefetch_batches must be >= 0, got "
                         f"{num_workers}, {num_threads}, {prefetch_batches}")
    return global_batch_size // shard_count


def _finish(ds: grain.MapDataset, num_workers: int, num_threads: int, prefetch_batches: int) -> grain.IterDataset:
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
    iter_ds = ds.to_iter_dataset(read)
    if num_workers > 0:
        # grain 0.2.18 reads an absl flag when starting workers with JAX installed, which fails in scripts
        # that never parse absl flags (google/grain#1355); marking them parsed keeps the flags' defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=num_workers,
                                               per_worker_buffer_size=max(prefetch_batches, 1))
        iter_ds = iter_ds.mp_prefetch(options, worker_init_fn=_init_worker)
    return iter_ds


def make_train_loader(
    source: RecordSource,
    *,
    global_batch_size: int,
    out_size: int = 224,
    mean_rgb: Sequence[float] | None = None,
    augment_variant: str = "paper_code",
    seed: int = 0,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    train_samples: int | None = None,
    drop_remainder: bool = True,
    num_threads: int = 1,
    prefetch_batches: int = 2,
    cache_bytes: int = 0,
) -> grain.IterDataset:
    """Builds the training pipeline (see the module docstring for order, sharding and determinism).

    Args:
      source: random-access person records.
      global_batch_size: batch size summed over hosts; each host yields global_batch_size / shard_count.
      out_size: output side S (224 ResNet, 256 hourglass).
      mean_rgb: subtracted from [0, 1] RGB (``MPII_MEAN_RGB`` for the hourglass), or None.
      augment_variant: 'paper_code', 'paper_text' or 'none' (``--no-aug``).
      seed: seeds the per-epoch shuffles and the augmentation.
      num_workers: worker processes (0: in this process).
      shard_index, shard_count: this host and the host count (``jax.process_index()``, ``jax.process_count()``).
      num_epochs: passes over the data; None repeats forever.
      train_samples: keep only the FIRST N examples of the source (the paper's ``--train-samples``).
      drop_remainder: drop the final partial batch of a finite stream (if False it is yielded smaller).
      num_threads: threads per process computing batches concurrently (grain ``ReadOptions``).
      prefetch_batches: batches buffered per process.
      cache_bytes: with augment_variant 'none', memory (per process) for examples kept after their first
        epoch, about 4 S² · 3 bytes each (110 KB at 96 px, 600 KB at 224 px); changes speed only.

    Returns:
      A grain ``IterDataset`` of batch dicts: ``image`` float32 [B, S, S, 3], ``coords`` float32 [B, 16, 2],
      ``mask`` float32 [B, 16], ``normalized_to_image`` float32 [B, 2, 3], ``index`` int32 [B].
    """
    per_host = _check_common(source, global_batch_size, shard_index, shard_count, num_workers, num_threads,
                             prefetch_batches)
    if augment_variant not in VARIANTS:
        raise ValueError(f"unknown augment_variant {augment_variant!r}; choose one of {VARIANTS}")
    if cache_bytes < 0:
        raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
    if num_epochs is not None and not (isinstance(num_epochs, (int, np.integer)) and num_epochs >= 1):
        raise ValueError(f"num_epochs must be a positive int or None (forever), got {num_epochs!r}")
    num_examples = len(source)
    if train_samples is not None:
        if not 1 <= train_samples <= num_examples:
            raise ValueError(f"train_samples must be in [1, {num_examples}] (the source size), "
                             f"got {train_samples}")
        num_examples = int(train_samples)
    # Distinct seeds for the two random steps, both derived from `seed`.
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
    ds = grain.MapDataset.range(num_examples).shuffle(seed=int(shuffle_seed)).repeat(num_epochs)
    load = _LoadAndAugment(source, out_size, mean_rgb, augment_variant, cache_bytes)
    ds = ds.random_map(load, seed=int(augment_seed))
    ds = ds[shard_index::shard_count]
    ds = ds.batch(per_host, drop_remainder=drop_remainder)
    return _finish(ds, num_workers, num_threads, prefetch_batches)


def make_eval_loader(
    source: RecordSource,
    *,
    global_batch_size: int,
    out_size: int = 224,
    mean_rgb: Sequence[float] | None = None,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 1,
    prefetch_batches: int = 2,
) -> grain.IterDataset:
    """Builds the evaluation pipeline: one ordered pass, no augmentation, last batch padded.

    Arguments are those of ``make_train_loader``. Every host yields ``num_eval_batches(len(source), ...)``
    batches of B = global_batch_size / shard_count rows; padded rows have ``valid`` False and ``index`` -1.

    Returns:
      A grain ``IterDataset`` of batch dicts: the training keys plus ``valid`` bool [B].
    """
    per_host = _check_common(source, global_batch_size, shard_index, shard_count, num_workers, num_threads,
                             prefetch_batches)
    num_examples = len(source)
    num_batches = num_eval_batches(num_examples, global_batch_size=global_batch_size, shard_count=shard_count)
    ds = grain.MapDataset.range(num_batches * per_host)
    ds = ds.map(_LoadEval(source, num_examples, shard_index, shard_count, out_size, mean_rgb))
    ds = ds.batch(per_host, drop_remainder=False)
    return _finish(ds, num_workers, num_threads, prefetch_batches)


def num_eval_batches(num_examples: int, *, global_batch_size: int, shard_count: int = 1) -> int:
    """Batches per host of ``make_eval_loader`` (the same on every host)."""
    per_host = global_batch_size // shard_count
    per_host_examples = -(-num_examples // shard_count)
    return -(-per_host_examples // per_host)
