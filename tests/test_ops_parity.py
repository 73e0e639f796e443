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
    # Float32 against float32: tolerances of docs/conventions.md §3 (the two libraries round differently).
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


# ---------------------------------------------------------------------------------------------------------
# Non-finite inputs (issue #11): wherever dsntnn propagates NaN or ±inf, values and gradients match it,
# NaN for NaN, inf for inf, position by position; the few documented departures are pinned down below.

NONFINITE = [np.nan, np.inf, -np.inf]


def _assert_same(ours, theirs, **tol):
    """Equal, with NaN and ±inf required at exactly the same positions."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    np.testing.assert_allclose(ours, theirs, **(tol or {"rtol": 1e-10, "atol": 1e-12}))


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 4, 7, 3), (2, 3, 4, 5, 6)])
@pytest.mark.parametrize("reg", ["none", "js", "kl", "var"])
@pytest.mark.parametrize("bad", NONFINITE)
def test_training_loss_nonfinite_logit(x64, shape, reg, bad):
    # NaN or +inf in an annotated joint's logits: NaN loss, the same NaN gradients as dsntnn. −inf is a cell
    # of probability 0: finite, and equal to dsntnn's.
    logits, target, mask = _inputs(shape, seed=hash((shape, reg, "nonfinite")) % 2**31)
    mask[0, 1] = 1.0
    logits[(0, 1) + (0,) * (len(shape) - 2)] = bad
    (loss, coords), grad = jax.value_and_grad(jax_loss, has_aux=True)(
        jnp.asarray(logits), jnp.asarray(target), jnp.asarray(mask), reg, 1.0
    )
    t_logits = _t(logits).requires_grad_(True)
    t_loss, t_coords = torch_loss(t_logits, _t(target), _t(mask), reg, 1.0)
    t_loss.backward()
    assert np.isnan(float(loss)) == (not bad < 0)
    _assert_same(loss, t_loss.item())
    _assert_same(coords, t_coords.detach().numpy())
    _assert_same(grad, t_logits.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("bad", NONFINITE)
def test_coordinate_losses_nonfinite(x64, bad):
    rng = np.random.default_rng(17)
    actual, target = rng.uniform(-1, 1, size=(2, 2, 3, 2))
    for which in (actual, target):
        which[1, 0, 1] = bad
        for ours, theirs in ((ops.euclidean_losses, dsntnn.euclidean_losses),
                             (ops.mse_losses, dsntnn.mse_losses), (ops.l1_losses, dsntnn.l1_losses)):
            values, grads = jax.value_and_grad(lambda a, t: ours(a, t).sum(), argnums=(0, 1))(actual, target)
            t_actual, t_target = _t(actual).requires_grad_(True), _t(target).requires_grad_(True)
            t_values = theirs(t_actual, t_target)
            t_values.sum().backward()
            _assert_same(ours(actual, target), t_values.detach().numpy())
            if ours is ops.l1_losses and np.isnan(bad):
                # Departure: torch.sign(nan) = 0 gives dsntnn a zero gradient at NaN; ours is NaN.
                assert np.isnan(grads[0][1, 0, 1]) and t_actual.grad.numpy()[1, 0, 1] == 0
                continue
            _assert_same(grads[0], t_actual.grad.numpy())
            _assert_same(grads[1], t_target.grad.numpy())
        which[1, 0, 1] = 0.5


@pytest.mark.parametrize("bad", NONFINITE)
def test_regularisers_nonfinite_heatmap(x64, bad):
    logits, target, _ = _inputs((2, 3, 6, 5), seed=19)
    h = np.array(ops.flat_softmax(logits))
    h[1, 2, 3, 4] = bad
    for ours, theirs in (
        (lambda a: ops.js_reg_losses(a, target, 1.0), lambda a: dsntnn.js_reg_losses(a, _t(target), 1.0)),
        (lambda a: ops.kl_reg_losses(a, target, 1.0), lambda a: dsntnn.kl_reg_losses(a, _t(target), 1.0)),
        (lambda a: ops.variance_reg_losses(a, 1.0), lambda a: dsntnn.variance_reg_losses(a, 1.0)),
    ):
        grad = jax.grad(lambda a: ours(a).sum())(h)
        t_h = _t(h).requires_grad_(True)
        t_values = theirs(t_h)
        t_values.sum().backward()
        _assert_same(ours(h), t_values.detach().numpy(), rtol=1e-9)
        _assert_same(grad, t_h.grad.numpy(), rtol=1e-8, atol=1e-12)


def test_nan_target_mean(x64):
    logits, target, _ = _inputs((2, 3, 6, 5), seed=23)
    h = np.asarray(ops.flat_softmax(logits))
    target[0, 1, 1] = np.nan
    for normalize in (True, False):
        _assert_same(ops.make_gauss(target, (6, 5), 1.0, normalize=normalize),
                     dsntnn.make_gauss(_t(target), (6, 5), 1.0, normalize=normalize).numpy(), rtol=1e-9, atol=1e-15)
    for ours, theirs in ((ops.js_reg_losses, dsntnn.js_reg_losses), (ops.kl_reg_losses, dsntnn.kl_reg_losses)):
        values, grads = jax.value_and_grad(lambda a, m: ours(a, m, 1.0).sum(), argnums=(0, 1))(h, target)
        t_h, t_mu = _t(h).requires_grad_(True), _t(target).requires_grad_(True)
        t_values = theirs(t_h, t_mu, 1.0)
        t_values.sum().backward()
        _assert_same(ours(h, target, 1.0), t_values.detach().numpy(), rtol=1e-9)
        _assert_same(grads[0], t_h.grad.numpy(), rtol=1e-8, atol=1e-12)
        _assert_same(grads[1], t_mu.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_target_mean_is_nan_not_an_empty_map(x64, bad):
    """Documented departure: dsntnn draws an all-zero map for a mean at ±inf (so its regularisers compare the
    heatmap with nothing and stay finite); ours is NaN, which a training loop can detect."""
    _, target, _ = _inputs((1, 2, 6, 5), seed=29)
    target[0, 1, 0] = bad
    for normalize in (True, False):
        theirs = dsntnn.make_gauss(_t(target), (6, 5), 1.0, normalize=normalize).numpy()
        ours = np.asarray(ops.make_gauss(target, (6, 5), 1.0, normalize=normalize))
        assert np.all(theirs[0, 1] == 0) and np.all(np.isnan(ours[0, 1]))
        np.testing.assert_allclose(ours[0, 0], theirs[0, 0], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("bad", NONFINITE)
def test_average_loss_nonfinite(x64, bad):
    losses = np.arange(1.0, 7.0).reshape(2, 3)
    losses[1, 1] = bad
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    for m in (None, mask):
        value, grad = jax.value_and_grad(ops.average_loss)(losses, m)
        t_losses = _t(losses).requires_grad_(True)
        t_value = dsntnn.average_loss(t_losses, None if m is None else _t(m))
        t_value.backward()
        _assert_same(value, t_value.item())
        _assert_same(grad, t_losses.grad.numpy())
    # Documented departure: a masked-out point is excluded, not multiplied by 0 (NaN·0 = NaN in dsntnn).
    losses[0, 2] = bad
    losses[1, 1] = 5.0
    theirs = dsntnn.average_loss(_t(losses), _t(mask)).item()
    assert np.isnan(theirs) if np.isnan(bad) else (np.isnan(theirs) or np.isinf(theirs))
    expected = dsntnn.average_loss(_t(np.where(mask != 0, losses, 0.0)), _t(mask)).item()
    np.testing.assert_allclose(ops.average_loss(losses, mask), expected, rtol=1e-12)
