"""Parity of dsnt_jax.ops with the authors' PyTorch library dsntnn 0.5.3 (skipped when torch is absent)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the `parity` extra (torch==2.13.0, dsntnn==0.5.3)")
dsntnn = pytest.importorskip("dsntnn", reason="parity tests need the `parity` extra (dsntnn==0.5.3)")

from dsnt_jax import ops  # noqa: E402

pytestmark = pytest.mark.parity

# [B, L, *spatial]: square, non-square, size-1 axes, a single pixel, and 3-D volumes.
SHAPES = [(2, 3, 5, 5), (1, 4, 7, 3), (2, 2, 1, 6), (3, 2, 6, 1), (2, 1, 1, 1), (2, 3, 4, 5, 6), (1, 2, 1, 3, 2)]


def _inputs(shape, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    d = len(shape) - 2
    logits = (rng.normal(size=shape) * 2).astype(dtype)
    target = rng.uniform(-0.9, 0.9, size=shape[:2] + (d,)).astype(dtype)
    mask = (rng.uniform(size=shape[:2]) > 0.3).astype(dtype)
    return logits, target, mask


def _t(x):
    return torch.tensor(np.asarray(x))


def jax_loss(logits, target, mask, reg, sigma):
    d = target.shape[-1]
    h = ops.flat_softmax(logits, spatial_ndim=d)
    coords = ops.dsnt(h, spatial_ndim=d)
    losses = ops.euclidean_losses(coords, target)
    if reg == "js":
        losses = losses + ops.js_reg_losses(h, target, sigma)
    elif reg == "kl":
        losses = losses + ops.kl_reg_losses(h, target, sigma)
    elif reg == "var":
        losses = losses + ops.variance_reg_losses(h, sigma, spatial_ndim=d)
    return ops.average_loss(losses, mask), coords


def torch_loss(logits, target, mask, reg, sigma):
    h = dsntnn.flat_softmax(logits)
    coords = dsntnn.dsnt(h)
    losses = dsntnn.euclidean_losses(coords, target)
    if reg == "js":
        losses = losses + dsntnn.js_reg_losses(h, target, sigma)
    elif reg == "kl":
        losses = losses + dsntnn.kl_reg_losses(h, target, sigma)
    elif reg == "var":
        losses = losses + dsntnn.variance_reg_losses(h, sigma)
    return dsntnn.average_loss(losses, mask), coords


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reg", ["none", "js", "kl", "var"])
def test_training_loss_value_and_gradient_float64(x64, shape, reg):
    logits, target, mask = _inputs(shape, seed=hash((shape, reg)) % 2**31)
    sigma = 1.0
    (loss, coords), grad = jax.value_and_grad(jax_loss, has_aux=True)(
        jnp.asarray(logits), jnp.asarray(target), jnp.asarray(mask), reg, sigma
    )
    t_logits = _t(logits).requires_grad_(True)
    t_loss, t_coords = torch_loss(t_logits, _t(target), _t(mask), reg, sigma)
    t_loss.backward()
    np.testing.assert_allclose(coords, t_coords.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-10)
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 16, 28, 28), (2, 5, 9, 13)])
@pytest.mark.parametrize("reg", ["js", "kl", "var"])
def test_training_loss_float32(shape, reg):
    # Float32 against float32: tolerances of dsnt-conventions.md §3 (the two libraries round differently).
    logits, target, mask = _inputs(shape, seed=7, dtype=np.float32)
    (loss, coords), grad = jax.value_and_grad(jax_loss, has_aux=True)(
        jnp.asarray(logits), jnp.asarray(target), jnp.asarray(mask), reg, 1.0
    )
    t_logits = _t(logits).requires_grad_(True)
    t_loss, t_coords = torch_loss(t_logits, _t(target), _t(mask), reg, 1.0)
    t_loss.backward()
    np.testing.assert_allclose(coords, t_coords.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-5)
    scale = float(np.abs(t_logits.grad.numpy()).max())
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), atol=1e-5 * scale)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_op(x64, shape):
    logits, target, mask = _inputs(shape, seed=11)
    d = len(shape) - 2
    size = shape[2:]
    h = np.asarray(ops.flat_softmax(logits, spatial_ndim=d))
    t_h = dsntnn.flat_softmax(_t(logits))
    np.testing.assert_allclose(h, t_h.numpy(), rtol=1e-12, atol=1e-15)
    for normalized in (True, False):
        np.testing.assert_allclose(
            ops.dsnt(h, spatial_ndim=d, normalized_coordinates=normalized),
            dsntnn.dsnt(t_h, normalized_coordinates=normalized).numpy(),
            rtol=1e-12, atol=1e-12,
        )
    for sigma in (0.5, 1.0, 2.5):
        for normalize in (True, False):
            np.testing.assert_allclose(
                ops.make_gauss(target, size, sigma, normalize=normalize),
                dsntnn.make_gauss(_t(target), size, sigma, normalize=normalize).numpy(),
                rtol=1e-9, atol=1e-15,
            )
        np.testing.assert_allclose(
            ops.js_reg_losses(h, target, sigma), dsntnn.js_reg_losses(t_h, _t(target), sigma).numpy(), rtol=1e-9
        )
        np.testing.assert_allclose(
            ops.kl_reg_losses(h, target, sigma), dsntnn.kl_reg_losses(t_h, _t(target), sigma).numpy(), rtol=1e-9
        )
        np.testing.assert_allclose(
            ops.variance_reg_losses(h, sigma, spatial_ndim=d),
            dsntnn.variance_reg_losses(t_h, sigma).numpy(), rtol=1e-9, atol=1e-12,
        )
    other = np.asarray(ops.dsnt(h, spatial_ndim=d))
    for ours, theirs in (
        (ops.euclidean_losses, dsntnn.euclidean_losses),
        (ops.l1_losses, dsntnn.l1_losses),
        (ops.mse_losses, dsntnn.mse_losses),
    ):
        np.testing.assert_allclose(ours(other, target), theirs(_t(other), _t(target)).numpy(), rtol=1e-12)
    losses = np.asarray(ops.euclidean_losses(other, target))
    np.testing.assert_allclose(
        ops.average_loss(losses, mask), dsntnn.average_loss(_t(losses), _t(mask)).item(), rtol=1e-12
    )
    np.testing.assert_allclose(ops.average_loss(losses), dsntnn.average_loss(_t(losses)).item(), rtol=1e-12)
    np.testing.assert_allclose(
        ops.normalized_to_pixel_coordinates(target, size),
        dsntnn.normalized_to_pixel_coordinates(_t(target), size).numpy(), rtol=1e-12,
    )
    np.testing.assert_allclose(
        ops.pixel_to_normalized_coordinates(target, size),
        dsntnn.pixel_to_normalized_coordinates(_t(target), size).numpy(), rtol=1e-12,
    )
    for n in size:
        np.testing.assert_allclose(
            ops.normalized_linspace(n, jnp.float64), dsntnn.normalized_linspace(n, dtype=torch.float64).numpy(),
            atol=1e-15,
        )


def test_gaussian_gradient_wrt_means(x64):
    # Both libraries are differentiable in the target mean; the gradients must agree.
    _, target, _ = _inputs((2, 3, 6, 7), seed=13)
    weights = np.random.default_rng(14).normal(size=(2, 3, 6, 7))
    grad = jax.grad(lambda m: jnp.sum(ops.make_gauss(m, (6, 7), 1.3) * weights))(jnp.asarray(target))
    t_target = _t(target).requires_grad_(True)
    (dsntnn.make_gauss(t_target, (6, 7), 1.3) * _t(weights)).sum().backward()
    np.testing.assert_allclose(grad, t_target.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_where_dsntnn_underflows_we_stay_normalised():
    """Documented divergence from dsntnn: for σ = 0.05 px and a mean midway between pixel centres its float32
    target Gaussian underflows (sum ≪ 1, so the JS/KL regulariser pulls towards nothing); ours sums to 1."""
    means = np.array([[[1 / 9, 1 / 7]]], np.float32)  # midway between pixel centres on a 7×9 map
    theirs = dsntnn.make_gauss(_t(means), (7, 9), 0.05).numpy()
    ours = np.asarray(ops.make_gauss(means, (7, 9), 0.05))
    assert theirs.sum() < 1e-6
    np.testing.assert_allclose(ours.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(ours[0, 0, 3:5, 4:6], 0.25, rtol=1e-3)  # the four nearest cells share the mass
