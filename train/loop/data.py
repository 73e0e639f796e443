"""Opening the datasets as tfds data sources (no TensorFlow) and building the grain loaders of a run.

* `--dataset=mpii`: the `mpii_human_pose` tfds dataset (default config `canvas576`) that
  `python -m data.prepare mpii` writes; if it is missing the error lists the files expected.
* `--dataset=synthetic`: the embedded `synthetic_pose` dataset, built on first use (the default size
  renders in about a minute on two cores).

Besides the loaders, evaluation needs each validation person's image-frame ground truth (`joints`,
`annotated`, `head_size`), read here once without decoding the images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from data.augment import IDENTITY, input_mean_rgb, normalized_to_canvas
from data.pipeline import make_eval_loader, make_train_loader
from train.loop.config import Config

TRAIN_SPLIT = "train"
VAL_SPLIT = "validation"


@dataclasses.dataclass(frozen=True)
class Datasets:
    """The opened splits of a run.

    Attributes:
      name: e.g. 'mpii_human_pose/canvas576'.
      train, val: random-access record sources (images decoded).
      val_targets: {'joints' float64 [N, 16, 2] image frame, 'annotated' bool [N, 16], 'head_size' [N]}.
      train_coords: normalised (box) coordinates float64 [M, 16, 2] and their mask bool [M, 16] of up
        to 2000 training people (for the mean-pose baseline), as a tuple.
    """

    name: str
    train: Any
    val: Any
    val_targets: dict[str, np.ndarray]
    train_coords: tuple[np.ndarray, np.ndarray]


def default_data_dir() -> str:
    """`$TFDS_DATA_DIR`, else ~/tensorflow_datasets (as `python -m data.prepare`)."""
    return os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())


def _mpii_builder(data_dir: str) -> Any:
    from data.mpii import builder as mpii_builder  # registers mpii_human_pose

    builder = mpii_builder.MpiiHumanPose(data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"MPII is not prepared in --data-dir={data_dir}: expected {builder.data_path}/ with "
            f"dataset_info.json, features.json and mpii_human_pose-{{train,validation}}.array_record-*-of-* "
            f"files. Build them from the MPII release (mpii_human_pose_v1_u12_2.zip and "
            f"mpii_human_pose_v1.tar.gz) with `python -m data.prepare mpii --manual-dir DIR "
            f"--data-dir {data_dir}`, or train on the embedded dataset with --dataset=synthetic.")
    return builder


def _synthetic_builder(cfg: Config, data_dir: str, log: Callable[[str], None]) -> Any:
    from data import records
    from data.synthetic_pose import builder as syn_builder

    config = syn_builder.synthetic_config(cfg.synthetic_train, cfg.synthetic_val, syn_builder.DEFAULT_SEED,
                                          cfg.synthetic_canvas)

    def build_if_missing() -> Any:
        builder = syn_builder.SyntheticPose(config=config, data_dir=data_dir)
        if not builder.is_prepared():
            log(f"building the synthetic dataset ({config.num_train} train + {config.num_val} validation "
                f"people) in {builder.data_path} (once; reused afterwards)")
            with records.tfds_shuffle_without_tensorflow():
                builder.download_and_prepare()
        return builder

    return first_host_first(build_if_missing, "synthetic dataset built")


def first_host_first(fn: Callable[[], Any], name: str) -> Any:
    """Runs `fn` on the first host, then on the others once it has returned there.

    For first-use work on a shared disk (a dataset build): the first host does it and the others find it
    done; on hosts without a shared disk each does its own. One process: just `fn()`.
    """
    if jax.process_count() == 1:
        return fn()
    if jax.process_index() == 0:
        result = fn()
        multihost_utils.sync_global_devices(name)
        return result
    multihost_utils.sync_global_devices(name)
    return fn()


def _val_targets(source: Any) -> dict[str, np.ndarray]:
    n = len(source)
    joints = np.zeros((n, 16, 2))
    annotated = np.zeros((n, 16), bool)
    head_size = np.zeros((n,))
    for i in range(n):
        record = source[i]
        joints[i], annotated[i], head_size[i] = record["joints"], record["annotated"], record["head_size"]
    return {"joints": joints, "annotated": annotated, "head_size": head_size}


def crop_joints(source: Any, canvas_size: int, limit: int | None = None, inside_only: bool = True
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The people of `source` in their crops' normalised frame (no augmentation), the frame of the targets.

    Returns:
      (coords float64 [M, 16, 2], ±1 at the crop's edges, mask bool [M, 16] of the annotated joints (only those
      inside the crop if `inside_only`; validation scores them all), head sizes float64 [M] in the same units) of
      the first `limit` records (all if None).
    """
    to_canvas = normalized_to_canvas(canvas_size, IDENTITY)
    coords, masks, heads = [], [], []
    for i in range(len(source) if limit is None else min(limit, len(source))):
        record = source[i]
        a = np.asarray(record["canvas_to_image"], np.float64)
        # normalised → image: A ∘ to_canvas; invert it to map the image-frame joints back.
        linear = a[:, :2] @ to_canvas[:, :2]
        offset = a[:, :2] @ to_canvas[:, 2] + a[:, 2]
        u = (np.asarray(record["joints"], np.float64) - offset) @ np.linalg.inv(linear).T
        coords.append(u)
        annotated = np.asarray(record["annotated"], bool)
        masks.append(annotated & np.all(np.abs(u) < 1.0, axis=-1) if inside_only else annotated)
        heads.append(float(record["head_size"]) / np.sqrt(abs(np.linalg.det(linear))))
    return np.stack(coords), np.stack(masks), np.asarray(heads)


def _train_coords(source: Any, canvas_size: int, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Normalised crop coordinates and their mask of the first `limit` training people."""
    coords, mask, _ = crop_joints(source, canvas_size, limit)
    return coords, mask


def open_datasets(cfg: Config, log: Callable[[str], None] = print) -> Datasets:
    """Opens the train and validation splits of `cfg.dataset` (building the synthetic one if needed).

    Raises:
      FileNotFoundError: MPII is not prepared in the data directory (the message says how to fix it).
    """
    data_dir = str(Path(cfg.data_dir).expanduser()) if cfg.data_dir else default_data_dir()
    builder = _mpii_builder(data_dir) if cfg.dataset == "mpii" else _synthetic_builder(cfg, data_dir, log)
    skip = {"image": tfds.decode.SkipDecoding()}
    sources = builder.as_data_source(split=[TRAIN_SPLIT, VAL_SPLIT])
    light = builder.as_data_source(split=[TRAIN_SPLIT, VAL_SPLIT], decoders=skip)
    canvas = builder.info.features["image"].shape[0]
    if cfg.train_samples is not None and cfg.train_samples > len(sources[0]):
        raise ValueError(f"--train-samples={cfg.train_samples} exceeds the {len(sources[0])} training "
                         f"examples of {builder.name}")
    return Datasets(name=f"{builder.name}/{builder.builder_config.name}", train=sources[0], val=sources[1],
                    val_targets=_val_targets(light[1]), train_coords=_train_coords(light[0], canvas))


def input_spec(cfg: Config) -> tuple[int, tuple[float, float, float] | None]:
    """(input side, mean RGB or None): ResNets take [0, 1] RGB, hourglasses [0, 1] minus the MPII mean."""
    return cfg.model.input_size, input_mean_rgb(cfg.model.is_resnet)


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    """Updates per epoch: ⌈N / global batch⌉ (the paper's loader kept the last partial batch)."""
    n = num_train if cfg.train_samples is None else cfg.train_samples
    return -(-n // cfg.batch_size)


# The default's cap, so that a host with very many cores does not start hundreds of loader processes.
MAX_DEFAULT_WORKERS = 32


def default_num_workers() -> int:
    """Data-loading processes per host when --num-workers is not given.

    None with a CPU-only JAX: the cores compute the training steps, and workers would take them away (on the
    2-core CPU the in-process loader is fastest). With an accelerator, one per CPU core available to this
    process but one (the training loop's), at most `MAX_DEFAULT_WORKERS`: on the 16-core GPU host 12 workers
    kept up with 1,020 augmented 224-px images/s (docs/gpu.md), so bfloat16 training needs all of them.
    """
    if jax.default_backend() == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cores - 1, MAX_DEFAULT_WORKERS))


def num_workers(cfg: Config) -> int:
    """`cfg.num_workers`, or `default_num_workers()` when it is None."""
    return default_num_workers() if cfg.num_workers is None else cfg.num_workers


def train_loader(cfg: Config, source: Any, *, shard_index: int = 0, shard_count: int = 1) -> Any:
    """The training grain dataset of this host (an endless stream; see `data.pipeline`)."""
    size, mean = input_spec(cfg)
    return make_train_loader(
        source, global_batch_size=cfg.batch_size, out_size=size, mean_rgb=mean,
        augment_variant="paper_code" if cfg.augment else "none", seed=cfg.seed,
        num_workers=num_workers(cfg), shard_index=shard_index, shard_count=shard_count,
        train_samples=cfg.train_samples, cache_bytes=cfg.cache_mb << 20)


def eval_loader(cfg: Config, source: Any, *, shard_index: int = 0, shard_count: int = 1) -> Any:
    """The validation grain dataset of this host (one ordered pass, last batch padded)."""
    size, mean = input_spec(cfg)
    return make_eval_loader(source, global_batch_size=cfg.batch_size, out_size=size, mean_rgb=mean,
                            num_workers=num_workers(cfg), shard_index=shard_index, shard_count=shard_count)


def mean_pose(train_coords: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-joint mean of the annotated normalised training coordinates, float64 [16, 2]."""
    coords, mask = train_coords
    weights = mask[..., None].astype(np.float64)
    return (coords * weights).sum(0) / np.maximum(weights.sum(0), 1.0)
