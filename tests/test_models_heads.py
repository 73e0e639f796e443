"""Output strategies, the HM target encoder/decoder and the pose loss."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from dsnt_jax import ops
from dsnt_jax.models import (
    hm_decode,
    hm_encode,
    outputs_from_logits,
    pose_loss,
    variance_reg_losses_normalized,
)
from dsnt_jax.models.heads import make_fc

# --------------------------------------------------------------------------------------------------
# Loop references written from the paper code's description (anibali/dsnt-pose2d util.py)


def _encode_reference(coords: np.ndarray, height: int, width: int, sigma: float = 1.0) -> np.ndarray:
    out = np.zeros(coords.shape[:-1] + (height, width), np.float64)
    for idx in np.ndindex(coords.shape[:-1]):
        x = round(float(np.float32((coords[idx][0] + 1) * (width / 2) - 0.5)))
        y = round(float(np.float32((coords[idx][1] + 1) * (height / 2) - 0.5)))
        if x <= -3.5 or y <= -3.5 or x >= width - 1 + 3.5 or y >= height - 1 + 3.5:
            continue
        for yy in range(max(0, math.ceil(y - 3.5)), min(height, int(y + 4.5))):
            for xx in range(max(0, math.ceil(x - 3.5)), min(width, int(x + 4.5))):
                out[idx + (yy, xx)] = math.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out


def _decode_reference(heatmaps: np.ndarray) -> np.ndarray:
    *lead, height, width = heatmaps.shape
    out = np.zeros((*lead, 2))
    for idx in np.ndindex(*lead):
        hm = heatmaps[idx]
        flat = int(np.argmax(hm))
        x, y = (flat % width, flat // width) if hm.max() > 0 else (0, 0)
        px, py = float(x), float(y)
        if 0 < x < width - 1 and 0 < y < height - 1:
            px += 0.25 * np.sign(hm[y, x + 1] - hm[y, x - 1])
            py += 0.25 * np.sign(hm[y + 1, x] - hm[y - 1, x])
        out[idx] = [(px + 0.5) * 2 / width - 1, (py + 0.5) * 2 / height - 1]
    return out


# --------------------------------------------------------------------------------------------------
# HM encode / decode


def test_decode_paper_vectors():
    hm = np.zeros((1, 1, 4, 4), np.float32)
    hm[0, 0, 2, 1] = 0.9
    hm[0, 0, 2, 2] = 0.1
    hm[0, 0, 3, 1] = 0.1
    np.testing.assert_allclose(hm_decode(hm), [[[-0.125, 0.375]]], atol=1e-7)
    border = np.array([[[[0, 0.9], [0, 0.1]]]], np.float32)
    np.testing.assert_allclose(hm_decode(border), [[[0.5, -0.5]]], atol=1e-7)


def test_decode_of_a_non_finite_map_is_nan():
    # Before: `max > 0` is false for NaN, so a NaN map decoded to a confident corner and evaluation scored it.
    maps = np.zeros((3, 4, 4), np.float32)
    maps[:, 1, 2] = 1.0
    maps[0, 0, 0] = np.nan
    maps[1, 3, 3] = np.inf
    coords = np.asarray(hm_decode(maps))
    assert np.isnan(coords[:2]).all()
    np.testing.assert_allclose(coords[2], [0.25, -0.25], atol=1e-7)  # pixel (2, 1) of 4 × 4


def test_encode_paper_vector():
    target = np.asarray(hm_encode(jnp.array([[[-0.8, 0.8]]]), (5, 5)))[0, 0]
    assert target.shape == (5, 5)
    assert np.unravel_index(np.argmax(target), target.shape) == (4, 0)  # (row y4, column x0)
    assert target[4, 0] == 1.0
    np.testing.assert_allclose(target[3, 1], math.exp(-1.0), rtol=1e-6)  # unnormalised, σ = 1
    np.testing.assert_allclose(target[1, 0], math.exp(-4.5), rtol=1e-6)  # 3 rows up: in the window
    assert np.all(target[0] == 0)  # 4 rows up: outside the 7×7 window


def test_encode_window_and_rounding():
    # 12-px axis: c = 0 → p = 5.5, rounded half-to-even to 6 (Python's round), not 5.
    target = np.asarray(hm_encode(jnp.array([[0.0, 0.0]]), (12, 12)))[0]
    assert np.unravel_index(np.argmax(target), target.shape) == (6, 6)
    nonzero_cols = np.flatnonzero(target[6] > 0)
    assert nonzero_cols.min() == 3 and nonzero_cols.max() == 9  # 7×7 window: centre ± 3
    off_map = np.asarray(hm_encode(jnp.array([[3.0, 0.0], [0.0, -1.9]]), (8, 8)))
    assert np.all(off_map == 0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1.5, 1.5, width=32), min_size=6, max_size=6),
       st.sampled_from([(5, 5), (7, 9), (16, 16)]), st.sampled_from([0.5, 1.0, 2.0]))
def test_encode_matches_loop_reference(values, size, sigma):
    coords = np.asarray(values, np.float32).reshape(1, 3, 2)
    got = np.asarray(hm_encode(jnp.asarray(coords), size, sigma))
    np.testing.assert_allclose(got, _encode_reference(coords, *size, sigma), rtol=1e-6, atol=1e-7)


def test_decode_matches_loop_reference_and_jits():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 4, 6, 6)).astype(np.float32)
    maps[0, 0] = -np.abs(maps[0, 0])          # max ≤ 0 → (0, 0) pixel
    maps[0, 1] = 0.0
    maps[1, 2] = np.round(maps[1, 2])         # ties between neighbours → sign 0
    expected = _decode_reference(maps)
    np.testing.assert_allclose(hm_decode(maps), expected, atol=1e-6)
    np.testing.assert_allclose(jax.jit(hm_decode)(maps), expected, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(hm_decode)(maps), expected, atol=1e-6)
    assert hm_decode(maps.astype(jnp.bfloat16)).dtype == jnp.float32


def test_decode_inverts_encode_at_pixel_centres():
    n = 10
    pixels = np.array([[[1, 8], [4, 4], [8, 2]]], np.float32)
    coords = (2 * pixels + 1) / n - 1
    np.testing.assert_allclose(hm_decode(hm_encode(coords, (n, n))), coords, atol=1e-6)


def test_encode_decode_bad_input():
    with pytest.raises(ValueError, match="sigma must be positive"):
        hm_encode(jnp.zeros((1, 2)), (4, 4), sigma=0.0)
    with pytest.raises(ValueError, match=r"\[..., J, 2\]"):
        hm_encode(jnp.zeros((1, 3)), (4, 4))
    with pytest.raises(ValueError, match=r"\[..., J, H, W\]"):
        hm_decode(jnp.zeros((4, 4)))


# --------------------------------------------------------------------------------------------------
# Output strategies


def _logits(seed=0, shape=(2, 6, 5, 3)):
    return jax.random.normal(jax.random.key(seed), shape) * 2.0   # NHWC: [B, H, W, J]


@pytest.mark.parametrize("activation", ["softmax", "abs", "relu", "sigmoid"])
def test_dsnt_strategy_is_activation_then_dsnt(activation):
    logits = _logits()
    out = outputs_from_logits(logits, output="dsnt", activation=activation)
    chw = jnp.transpose(logits, (0, 3, 1, 2))
    expected_maps = ops.heatmap_activation(chw, activation)
    np.testing.assert_allclose(out["logits"], chw, atol=0)
    np.testing.assert_allclose(out["heatmaps"], expected_maps, atol=1e-7)
    np.testing.assert_allclose(out["coords"], ops.dsnt(expected_maps), atol=1e-7)
    assert out["heatmaps"].shape == (2, 3, 6, 5) and out["coords"].shape == (2, 3, 2)
    np.testing.assert_allclose(jnp.sum(out["heatmaps"], axis=(-2, -1)), 1.0, atol=1e-5)


def test_activations_differ():
    logits = _logits()
    coords = {a: outputs_from_logits(logits, output="dsnt", activation=a)["coords"]
              for a in ("softmax", "abs", "relu", "sigmoid")}
    for a in ("abs", "relu", "sigmoid"):
        assert not np.allclose(coords[a], coords["softmax"], atol=1e-3)


def test_fc_strategy_is_one_dense_shared_by_joints():
    logits = _logits()

    class Head(nn.Module):
        @nn.compact
        def __call__(self, x):
            return outputs_from_logits(x, output="fc", fc=make_fc(x.shape[1] * x.shape[2]))

    head = Head()
    variables = head.init(jax.random.key(1), logits)
    kernel = variables["params"]["out_fc"]["kernel"]
    assert kernel.shape == (30, 2)                      # H·W → 2, no per-joint weights
    out = head.apply(variables, logits)
    flat = out["heatmaps"].reshape(2, 3, 30)
    expected = flat @ kernel + variables["params"]["out_fc"]["bias"]
    np.testing.assert_allclose(out["coords"], expected, atol=1e-6)
    # Same weights for every joint: permuting the joint channels permutes the coordinates.
    permuted = head.apply(variables, logits[..., ::-1])
    np.testing.assert_allclose(permuted["coords"], out["coords"][:, ::-1], atol=1e-6)
    with pytest.raises(ValueError, match="needs the Dense"):
        outputs_from_logits(logits, output="fc")


def test_hm_strategy_returns_raw_maps_and_decodes():
    logits = _logits().astype(jnp.bfloat16)
    out = outputs_from_logits(logits, output="hm")
    chw = jnp.transpose(logits, (0, 3, 1, 2)).astype(jnp.float32)
    assert out["heatmaps"].dtype == jnp.float32
    np.testing.assert_array_equal(out["heatmaps"], chw)
    np.testing.assert_allclose(out["coords"], _decode_reference(np.asarray(chw)), atol=1e-6)


def test_unknown_strategy_or_activation():
    with pytest.raises(ValueError, match="unknown output strategy 'gauss'"):
        outputs_from_logits(_logits(), output="gauss")
    with pytest.raises(ValueError, match="unknown heatmap activation 'tanh'"):
        outputs_from_logits(_logits(), output="dsnt", activation="tanh")


# --------------------------------------------------------------------------------------------------
# Pose loss


def _outputs(seed=0, b=2, j=3, n=8, stacks=None):
    logits = _logits(seed, (b, n, n, j))
    out = outputs_from_logits(logits, output="dsnt")
    if stacks:
        per = [outputs_from_logits(_logits(seed + s, (b, n, n, j)), output="dsnt")
               for s in range(stacks)]
        out = dict(per[-1])
        out["stacks"] = {k: jnp.stack([p[k] for p in per]) for k in per[-1]}
    return out


TARGET = jnp.array([[[0.1, -0.2], [0.5, 0.5], [-0.9, 0.3]], [[0.0, 0.0], [0.2, -0.7], [0.6, 0.1]]])
MASK = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


def test_dsnt_loss_is_masked_mean_euclidean():
    out = _outputs()
    loss, aux = pose_loss(out, TARGET, MASK, output="dsnt")
    d = np.linalg.norm(np.asarray(out["coords"]) - np.asarray(TARGET), axis=-1)
    expected = (d * np.asarray(MASK)).sum() / np.asarray(MASK).sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["euclidean"], expected, rtol=1e-6)
    assert float(aux["reg"]) == 0.0


@pytest.mark.parametrize("reg", ["js", "kl"])
def test_divergence_regulariser_and_coefficient(reg):
    out = _outputs()
    loss, aux = pose_loss(out, TARGET, MASK, output="dsnt", reg=reg, sigma_t=1.5, reg_coeff=0.7)
    fn = ops.js_reg_losses if reg == "js" else ops.kl_reg_losses
    reg_expected = ops.average_loss(fn(out["heatmaps"], TARGET, 1.5), MASK)
    euclid = ops.average_loss(ops.euclidean_losses(out["coords"], TARGET), MASK)
    np.testing.assert_allclose(aux["reg"], reg_expected, rtol=1e-6)
    np.testing.assert_allclose(loss, euclid + 0.7 * reg_expected, rtol=1e-6)
    assert float(aux["reg"]) > 0


@pytest.mark.parametrize("n", [7, 28])
def test_variance_regulariser_is_in_normalised_units(n):
    out = _outputs(n=n)
    normalised = variance_reg_losses_normalized(out["heatmaps"], 1.0)
    pixels = ops.variance_reg_losses(out["heatmaps"], 1.0)
    np.testing.assert_allclose(normalised * (n / 2) ** 4, pixels, rtol=2e-5)
    loss, aux = pose_loss(out, TARGET, MASK, output="fc", reg="var", reg_coeff=100.0)
    np.testing.assert_allclose(aux["reg"], ops.average_loss(normalised, MASK), rtol=1e-6)
    np.testing.assert_allclose(loss, aux["euclidean"] + 100.0 * aux["reg"], rtol=1e-6)


def test_variance_regulariser_is_zero_for_the_target_spread():
    # A separable map whose marginals have variance exactly σ_n² = (2σ/n)² in normalised units.
    n, sigma = 16, 1.5
    g = ops.normalized_linspace(n)
    var_n = (2 * sigma / n) ** 2
    # Two spikes at ±a with a² = var: mean 0, variance var.
    a = math.sqrt(var_n)
    marginal = np.zeros(n)
    marginal[np.argmin(np.abs(np.asarray(g) - a))] = 0.5
    marginal[np.argmin(np.abs(np.asarray(g) + a))] = 0.5
    assert abs(float(np.sum(marginal * np.asarray(g) ** 2)) - var_n) < 1e-7  # a lies on the grid
    hm = jnp.asarray(np.outer(marginal, marginal))[None, None]
    np.testing.assert_allclose(variance_reg_losses_normalized(hm, sigma), 0.0, atol=1e-12)


def test_stacks_are_summed():
    out = _outputs(stacks=3)
    loss, aux = pose_loss(out, TARGET, MASK, output="dsnt", reg="js")
    singles = [pose_loss({k: v[s] for k, v in out["stacks"].items()}, TARGET, MASK,
                         output="dsnt", reg="js")[0] for s in range(3)]
    np.testing.assert_allclose(aux["per_stack"], singles, rtol=1e-6)
    np.testing.assert_allclose(loss, sum(singles), rtol=1e-6)


def test_hm_loss_is_unmasked_mse_against_paper_targets():
    logits = _logits(3, (2, 8, 8, 3))
    out = outputs_from_logits(logits, output="hm")
    loss, aux = pose_loss(out, TARGET, MASK, output="hm")
    target = _encode_reference(np.asarray(TARGET), 8, 8)
    expected = np.mean((np.asarray(out["heatmaps"], np.float64) - target) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(aux["mse"], expected, rtol=1e-5)
    # The paper's HM loss ignores the mask; the optional masked variant does not.
    assert float(pose_loss(out, TARGET, jnp.zeros_like(MASK), output="hm")[0]) == float(loss)
    masked = pose_loss(out, TARGET, MASK, output="hm", hm_masked=True)[0]
    per_joint = np.mean((np.asarray(out["heatmaps"]) - target) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(masked, (per_joint * MASK).sum() / MASK.sum(), rtol=1e-5)


def test_hm_loss_sums_stacks():
    per = [outputs_from_logits(_logits(s, (2, 8, 8, 3)), output="hm") for s in range(2)]
    out = dict(per[-1], stacks={k: jnp.stack([p[k] for p in per]) for k in per[-1]})
    loss, aux = pose_loss(out, TARGET, MASK, output="hm")
    np.testing.assert_allclose(loss, sum(pose_loss(p, TARGET, MASK, output="hm")[0] for p in per),
                               rtol=1e-6)
    assert aux["per_stack"].shape == (2,)


@pytest.mark.parametrize("output, reg", [("dsnt", "js"), ("fc", "kl"), ("dsnt", "var")])
def test_masked_joints_get_no_gradient(output, reg):
    logits = _logits(5, (2, 8, 8, 3))
    fc_params = {"kernel": jnp.ones((64, 2)) * 0.01, "bias": jnp.zeros(2)}

    def loss(logits):
        fc = (lambda h: h @ fc_params["kernel"] + fc_params["bias"]) if output == "fc" else None
        out = outputs_from_logits(logits, output=output, fc=fc)
        return pose_loss(out, TARGET, MASK, output=output, reg=reg)[0]

    grads = np.asarray(jax.jit(jax.grad(loss))(logits))        # [B, H, W, J]
    assert np.all(np.isfinite(grads))
    for b in range(2):
        for j in range(3):
            if MASK[b, j] == 0:
                assert np.all(grads[b, :, :, j] == 0)
            else:
                assert np.any(grads[b, :, :, j] != 0)


def test_loss_under_jit():
    out = _outputs()
    f = jax.jit(lambda o, t, m: pose_loss(o, t, m, output="dsnt", reg="js")[0])
    np.testing.assert_allclose(f(out, TARGET, MASK),
                               pose_loss(out, TARGET, MASK, output="dsnt", reg="js")[0], rtol=1e-6)


def test_loss_bad_arguments():
    out = _outputs()
    with pytest.raises(ValueError, match="unknown regulariser 'mse'"):
        pose_loss(out, TARGET, MASK, output="dsnt", reg="mse")
    with pytest.raises(ValueError, match="use reg='none' with output='hm'"):
        pose_loss(out, TARGET, MASK, output="hm", reg="js")
    with pytest.raises(ValueError, match="unknown output strategy"):
        pose_loss(out, TARGET, MASK, output="gauss")
    with pytest.raises(ValueError, match=r"mask must be \[B, J\]"):
        pose_loss(out, TARGET, MASK[:, :2], output="dsnt")
    with pytest.raises(ValueError, match="differ in shape"):
        pose_loss(out, TARGET[:, :2], MASK[:, :2], output="dsnt")
    with pytest.raises(ValueError, match="sigma_t must be positive"):
        pose_loss(out, TARGET, MASK, output="dsnt", reg="js", sigma_t=0.0)
