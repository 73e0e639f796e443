"""Tests for data/pipeline.py: batching, epochs, determinism, sharding, eval padding, resumable state, workers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from data import augment as aug
from data import pipeline as pl
from data.joints import FLIP_PERMUTATION, MPII_MEAN_RGB, NUM_JOINTS

CANVAS = 48
OUT = 16
KEYS = ("image", "coords", "mask", "normalized_to_image", "index")


def make_record(i: int) -> dict:
    """A person record in the stored format (JPEG canvas) with a record-specific canvas -> image map."""
    rng = np.random.default_rng(1000 + i)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    canvas = cv2.resize(coarse, (CANVAS, CANVAS), interpolation=cv2.INTER_LINEAR)
    ok, jpeg = cv2.imencode(".jpg", canvas[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    scale = 1.0 + i
    return {
        "image": jpeg.tobytes(),
        "joints": (rng.uniform(0, CANVAS, size=(NUM_JOINTS, 2)) * scale + [7, 3]).astype(np.float32),
        "annotated": rng.uniform(size=NUM_JOINTS) < 0.8,
        "canvas_to_image": np.array([[scale, 0, 7], [0, scale, 3]], np.float32),
        "image_name": f"{i:09d}.jpg",
    }


@pytest.fixture(scope="module")
def source() -> list[dict]:
    return [make_record(i) for i in range(12)]


def copy_batch(batch: dict) -> dict:
    # Worker outputs live in shared memory; copy so that they can be kept after the iterator closes.
    return {k: np.array(v) for k, v in batch.items()}


def take(iterator, n: int) -> list[dict]:
    return [copy_batch(next(iterator)) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def train(source, **kwargs):
    kwargs = {"global_batch_size": 4, "out_size": OUT, "seed": 3, **kwargs}
    return pl.make_train_loader(source, **kwargs)


def test_train_batch_shapes_and_dtypes(source):
    batch = next(iter(train(source, global_batch_size=6)))
    assert set(batch) == set(KEYS)
    assert batch["image"].shape == (6, OUT, OUT, 3) and batch["image"].dtype == np.float32
    assert batch["coords"].shape == (6, NUM_JOINTS, 2) and batch["coords"].dtype == np.float32
    assert batch["mask"].shape == (6, NUM_JOINTS) and batch["mask"].dtype == np.float32
    assert batch["normalized_to_image"].shape == (6, 2, 3) and batch["normalized_to_image"].dtype == np.float32
    assert batch["index"].shape == (6,) and batch["index"].dtype == np.int32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1


def test_every_epoch_is_a_fresh_permutation(source):
    batches = list(train(source, num_epochs=3))
    assert len(batches) == 3 * len(source) // 4
    order = np.concatenate([b["index"] for b in batches]).reshape(3, len(source))
    for epoch in order:
        assert sorted(epoch) == list(range(len(source)))
    assert not np.array_equal(order[0], order[1]) and not np.array_equal(order[1], order[2])
    # A forever loader yields the same stream.
    forever = iter(train(source, num_epochs=None))
    assert_batches_equal(take(forever, len(batches)), [copy_batch(b) for b in batches])


def test_drop_remainder(source):
    assert [len(b["index"]) for b in train(source, global_batch_size=5, num_epochs=1)] == [5, 5]
    kept = train(source, global_batch_size=5, num_epochs=1, drop_remainder=False)
    assert [len(b["index"]) for b in kept] == [5, 5, 2]


def test_deterministic_for_a_seed(source):
    a = take(iter(train(source)), 3)
    assert_batches_equal(a, take(iter(train(source)), 3))
    b = take(iter(train(source, seed=4)), 3)
    assert not np.array_equal(a[0]["image"], b[0]["image"])


def test_train_samples_keeps_the_first_examples(source):
    indices = np.concatenate([b["index"] for b in train(source, train_samples=5, global_batch_size=5,
                                                          num_epochs=2)])
    assert sorted(indices[:5]) == sorted(indices[5:]) == [0, 1, 2, 3, 4]


def test_no_aug_equals_eval_preprocessing(source):
    for batch in train(source, augment_variant="none", num_epochs=1, mean_rgb=MPII_MEAN_RGB):
        for row, index in enumerate(batch["index"]):
            expected = aug.preprocess_eval(source[index], OUT, MPII_MEAN_RGB)
            for key in expected:
                np.testing.assert_array_equal(batch[key][row], expected[key], err_msg=key)


class CountingSource(list):
    """A list source that counts record reads."""

    reads = 0

    def __getitem__(self, index):
        self.reads += 1
        return super().__getitem__(index)


def test_unaugmented_cache_skips_rereads_and_changes_no_batch(source):
    plain = [copy_batch(b) for b in train(source, augment_variant="none", num_epochs=3)]
    example = aug.preprocess_eval(source[0], OUT)
    example_bytes = sum(v.nbytes for v in example.values()) + np.int32(0).nbytes  # + 'index'

    def reads(cache_bytes: int, variant: str = "none") -> tuple[int, list[dict]]:
        counting = CountingSource(source)
        batches = [copy_batch(b) for b in train(counting, augment_variant=variant, num_epochs=3,
                                                 cache_bytes=cache_bytes)]
        return counting.reads, batches

    n = len(source)
    everything, cached = reads(n * example_bytes)
    assert everything == n
    assert_batches_equal(cached, plain)
    # Room for 5 examples: the other n - 5 are read again in each of the two later epochs.
    some, partly = reads(5 * example_bytes)
    assert some == n + 2 * (n - 5)
    assert_batches_equal(partly, plain)
    assert reads(0)[0] == 3 * n
    # Augmented examples differ every epoch and are never kept.
    assert reads(n * example_bytes, "paper_code")[0] == 3 * n
    with pytest.raises(ValueError, match="cache_bytes must be >= 0"):
        train(source, cache_bytes=-1)


def test_augmented_rows_map_back_to_their_records(source):
    """Each row's coords map back to its record's joints; mirrored rows (det < 0) have swapped slots."""
    flips = 0
    for batch in train(source, num_epochs=2):
        for row, index in enumerate(batch["index"]):
            affine = batch["normalized_to_image"][row]
            coords = batch["coords"][row]
            if np.linalg.det(affine[:, :2]) < 0:
                coords = coords[list(FLIP_PERMUTATION)]
                flips += 1
            back = aug.normalized_to_image_points(coords, affine)
            np.testing.assert_allclose(back, source[index]["joints"], atol=1e-3 * (1 + index))
    assert 0 < flips < 2 * len(source)


def test_shards_split_each_global_batch(source):
    """Host h takes rows h, h + n, ... of the single-host global batch: same data, augmentation included."""
    single = take(iter(train(source, global_batch_size=4)), 6)
    hosts = [take(iter(train(source, global_batch_size=4, shard_index=h, shard_count=2)), 6) for h in (0, 1)]
    for step in range(6):
        for h in (0, 1):
            for key in KEYS:
                np.testing.assert_array_equal(hosts[h][step][key], single[step][key][h::2], err_msg=key)
    # Within the first epoch (3 steps) the two hosts partition the data.
    first_epoch = [np.concatenate([b["index"] for b in host[:3]]) for host in hosts]
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(np.concatenate(first_epoch)) == list(range(len(source)))


def test_eval_loader_pads_the_last_batch(source):
    batches = list(pl.make_eval_loader(source, global_batch_size=5, out_size=OUT))
    assert len(batches) == pl.num_eval_batches(len(source), global_batch_size=5) == 3
    assert all(b["image"].shape == (5, OUT, OUT, 3) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(valid, np.arange(15) < 12)
    np.testing.assert_array_equal(index, np.where(valid, np.arange(15), -1))
    last = batches[-1]
    assert not last["image"][2:].any() and not last["mask"][2:].any()
    expected = aug.preprocess_eval(source[11], OUT)
    for key in expected:
        np.testing.assert_array_equal(last[key][1], expected[key], err_msg=key)


def test_eval_shards_cover_every_example_once(source):
    per_host = [list(pl.make_eval_loader(source, global_batch_size=6, out_size=OUT, shard_index=h,
                                         shard_count=3)) for h in range(3)]
    assert pl.num_eval_batches(12, global_batch_size=6, shard_count=3) == 2
    assert [len(b) for b in per_host] == [2, 2, 2]
    seen = np.concatenate([b["index"][b["valid"]] for host in per_host for b in host])
    assert sorted(seen) == list(range(len(source)))


def test_state_resumes_at_the_next_batch(source):
    loader = train(source, global_batch_size=5)  # Batches straddle epoch boundaries.
    iterator = iter(loader)
    take(iterator, 3)
    state = iterator.get_state()
    json.dumps(state)  # Plain data: fits a JSON/orbax checkpoint.
    expected = take(iterator, 2)
    fresh = iter(train(source, global_batch_size=5))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), expected)


def test_orbax_checkpoint_round_trip(source, tmp_path):
    grain = pytest.importorskip("grain")
    ocp = pytest.importorskip("orbax.checkpoint")
    iterator = iter(train(source))
    take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 2)
    fresh = iter(train(source))
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(take(fresh, 2), expected)


def test_worker_processes_match_in_process(source):
    """Two worker processes yield exactly the in-process batches, and their state resumes too."""
    small = source[:6]
    kwargs = {"global_batch_size": 2, "num_epochs": 2}
    reference = [copy_batch(b) for b in train(small, **kwargs)]
    iterator = iter(train(small, num_workers=2, **kwargs))
    try:
        first = take(iterator, 3)
        state = iterator.get_state()
        rest = [copy_batch(b) for b in iterator]
    finally:
        iterator.close()
    assert_batches_equal(first + rest, reference)
    resumed = iter(train(small, num_workers=2, **kwargs))
    try:
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 2), rest[:2])
    finally:
        resumed.close()
    evaluated = iter(pl.make_eval_loader(small, global_batch_size=4, out_size=OUT, num_workers=2))
    try:
        in_process = pl.make_eval_loader(small, global_batch_size=4, out_size=OUT)
        assert_batches_equal([copy_batch(b) for b in evaluated], [copy_batch(b) for b in in_process])
    finally:
        evaluated.close()


@pytest.mark.parametrize("kwargs, match", [
    ({"global_batch_size": 5, "shard_count": 2}, "multiple of shard_count"),
    ({"shard_index": 2, "shard_count": 2}, "shard_index"),
    ({"train_samples": 13}, "train_samples"),
    ({"augment_variant": "newell"}, "augment_variant"),
    ({"num_epochs": 0}, "num_epochs"),
    ({"num_workers": -1}, "num_workers"),
])
def test_bad_arguments_raise(source, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(source, **kwargs)


def test_bad_sources_raise():
    with pytest.raises(ValueError, match="empty"):
        pl.make_eval_loader([], global_batch_size=2)
    with pytest.raises(ValueError, match="random access"):
        pl.make_train_loader(iter([1, 2]), global_batch_size=2)
