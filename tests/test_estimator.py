"""PoseEstimator: folding BatchNorm at construction changes no prediction, and each batch size's
ahead-of-time compiled program is reused."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trained_like import trained_like

from train.inference import PoseEstimator
from train.loop.config import resolve

# bn_momentum 0: a training-mode call sets the running statistics to the batch's (`_variables`).
TINY_RESNET = {"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1], "bn_momentum": 0.0}
TINY_HOURGLASS = {"features": 16, "depth": 2, "num_stacks": 2, "bn_momentum": 0.0}


def _variables(model: Any, input_size: int, seed: int = 0) -> dict[str, Any]:
    """`trained_like` variables of `model` from a probe of 4 random images of its input size."""
    probe = np.random.default_rng(seed).uniform(-0.5, 0.5, (4, input_size, input_size, 3)).astype(np.float32)
    return trained_like(model, probe, seed)


def _images(count: int, seed: int = 1) -> list[np.ndarray]:
    """uint8 RGB images [H, W, 3] of different, non-square sizes (the crop resamples them)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 6 * i, 52 - 4 * i, 3), dtype=np.uint8) for i in range(count)]


def _pair(flags: dict[str, Any], flip_test: bool) -> tuple[PoseEstimator, PoseEstimator]:
    """(folded, unfolded) estimators of one randomly initialised network."""
    cfg = resolve(flags)
    variables = _variables(cfg.model.build(), cfg.model.input_size)
    return (PoseEstimator(cfg, variables, flip_test=flip_test, fold_batchnorm=True),
            PoseEstimator(cfg, variables, flip_test=flip_test, fold_batchnorm=False))


def _assert_same_predictions(folded: PoseEstimator, plain: PoseEstimator, images: list[np.ndarray]) -> None:
    """coords within 1e-5 (normalised units), heatmaps within 1e-5 of their largest magnitude."""
    for ours, ref in zip(folded.predict(images), plain.predict(images)):
        np.testing.assert_allclose(ours.coords, ref.coords, rtol=0, atol=1e-5)
        scale = float(np.max(np.abs(ref.heatmaps)))
        assert scale > 0
        np.testing.assert_allclose(ours.heatmaps, ref.heatmaps, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(ours.joints, ref.joints, rtol=0, atol=1e-3)  # pixels


@pytest.mark.parametrize("output", ["dsnt", "fc", "hm"])
@pytest.mark.parametrize("flip_test", [False, True])
def test_folded_resnet_estimator_predicts_as_the_unfolded_one(output, flip_test):
    folded, plain = _pair({"backbone": "resnet18", "res": 28, "output": output, "input_size": 32,
                           "model_overrides": TINY_RESNET}, flip_test)
    # Folding must matter here: the folded network holds no BatchNorm statistics at all.
    assert "batch_stats" in plain.variables and not folded.variables.get("batch_stats")
    _assert_same_predictions(folded, plain, _images(2))


def test_folded_hourglass_estimator_predicts_as_the_unfolded_one():
    # The hourglass keeps its pre-activation BNs as scale/shift maps: both kinds of folding are checked.
    folded, plain = _pair({"backbone": "hg2", "input_size": 64, "model_overrides": TINY_HOURGLASS},
                          flip_test=True)
    _assert_same_predictions(folded, plain, _images(2))


def test_estimator_reuses_the_compiled_program_of_a_batch_size():
    cfg = resolve({"backbone": "resnet18", "res": 28, "input_size": 32, "model_overrides": TINY_RESNET})
    estimator = PoseEstimator(cfg, _variables(cfg.model.build(), 32))
    images = _images(3)
    first = estimator.predict(images[:1])
    assert len(estimator._compiled) == 1
    program = estimator._compiled[1]
    again = estimator.predict(images[1:2])
    assert len(estimator._compiled) == 1 and estimator._compiled[1] is program  # not recompiled
    assert not np.array_equal(first[0].coords, again[0].coords)  # a real second call
    estimator.predict(images[:2])
    assert sorted(estimator._compiled) == [1, 2]
    estimator.predict(images[1:3])
    assert sorted(estimator._compiled) == [1, 2]


def test_bfloat16_estimator_casts_the_folded_weights_once_and_stays_close():
    """precision='bfloat16': the folded convolution kernels are stored in bfloat16 (no per-call cast), the
    predictions stay near float32's, and an unknown precision is one clear error."""
    cfg = resolve({"backbone": "resnet18", "res": 28, "input_size": 32, "model_overrides": TINY_RESNET})
    variables = _variables(cfg.model.build(), 32)
    bf16 = PoseEstimator(cfg, variables, precision="bfloat16")
    f32 = PoseEstimator(cfg, variables)
    kernels = [x for path, x in jax.tree_util.tree_leaves_with_path(bf16.variables["params"])
               if path[-1].key == "kernel" and "out_fc" not in jax.tree_util.keystr(path)]
    assert kernels and all(k.dtype == jnp.bfloat16 for k in kernels)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(f32.variables["params"]))
    images = _images(2)
    for ours, ref in zip(bf16.predict(images), f32.predict(images)):
        assert ours.coords.dtype == np.float32
        np.testing.assert_allclose(ours.coords, ref.coords, atol=0.05)
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        PoseEstimator(cfg, variables, precision="float16")
