"""Embedded synthetic pose dataset: procedurally drawn articulated people with MPII's 16 joints (no download).

``build(data_dir)`` writes the ``synthetic_pose`` tfds dataset (array_record, the shared record schema of
``data/records.py``); ``render.render_example(seed, index)`` draws one example (numpy/OpenCV only).
Importing this package is light: tfds is only imported by ``build`` and ``data.synthetic_pose.builder``.
"""

from __future__ import annotations

from typing import Any

# The dataset's default sizes (a config named ``n6000_v500_s0_c192``), here so that reading them is light.
DEFAULT_NUM_TRAIN = 6000
DEFAULT_NUM_VAL = 500
DEFAULT_SEED = 0
DEFAULT_CANVAS_SIZE = 192  # a 128 px person box


def build(data_dir: str | None, *, num_train: int | None = None, num_val: int | None = None, seed: int = 0,
          canvas_size: int | None = None, num_workers: int | None = None) -> Any:
    """Builds (or reuses) the synthetic dataset and returns its tfds builder.

    Args:
        data_dir: tfds data directory (None: tfds's default, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets).
        num_train, num_val: split sizes (None: `DEFAULT_NUM_TRAIN` and `DEFAULT_NUM_VAL`).
        seed: dataset seed; the same sizes and seed always give the same examples.
        canvas_size: canvas side in pixels, a multiple of 6 (None: `DEFAULT_CANVAS_SIZE`).
        num_workers: rendering processes (None: the CPU count).

    Returns:
        The ``tfds.core.DatasetBuilder`` after ``download_and_prepare`` (array_record files), e.g.
        ``build(d).as_data_source()["train"]``.
    """
    from data.synthetic_pose import builder as builder_lib

    config = builder_lib.synthetic_config(num_train, num_val, seed, canvas_size)
    b = builder_lib.SyntheticPose(config=config, data_dir=data_dir, num_workers=num_workers)
    b.download_and_prepare()
    return b
