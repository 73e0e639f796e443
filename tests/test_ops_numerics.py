"""Numerical robustness of dsnt_jax.ops: gradients, properties, the traps of dsnt-conventions.md §3, bad input."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from dsnt_jax import ops


def _finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


def training_loss(logits, target, mask, reg="js", sigma=1.0):
    """softmax → DSNT → Euclidean + λ·regulariser, masked (the paper's DSNTr loss)."""
    h = ops.flat_softmax(logits)
    coords = ops.dsnt(h)
    if reg == "js":
        r = ops.js_reg_losses(h, target, sigma)
    elif reg == "kl":
        r = ops.kl_reg_losses(h, target, sigma)
    else:
        r = ops.variance_reg_losses(h, sigma)
    return ops.average_loss(ops.euclidean_losses(coords, target) + r, mask)


class GradientCheckTest(parameterized.TestCase):
    """Numerical vs analytic derivatives (float64) for every differentiable op."""

    def setUp(self):
        super().setUp()
        self._x64 = jax.enable_x64(True)
        self._x64.__enter__()
        rng = np.random.default_rng(0)
        self.logits = jnp.asarray(rng.normal(size=(2, 3, 5, 4)))
        self.heatmaps = ops.flat_softmax(self.logits)
        self.coords = jnp.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)))
        self.coords2 = jnp.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)))

    def tearDown(self):
        self._x64.__exit__(None, None, None)
        super().tearDown()

    def _check(self, fn, *args, order=1):
        check_grads(fn, args, order=order, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5, eps=1e-6)

    def test_activations(self):
        for kind in ("softmax", "abs", "sigmoid", "relu"):
            self._check(functools.partial(ops.heatmap_activation, kind=kind), self.logits)
        self._check(ops.log_flat_softmax, self.logits)

    def test_dsnt_and_variance(self):
        self._check(ops.dsnt, self.heatmaps)
        self._check(ops.heatmap_variance, self.heatmaps)
        self._check(functools.partial(ops.dsnt, spatial_ndim=3), self.heatmaps[None])

    def test_coordinate_losses(self):
        for fn in (ops.euclidean_losses, ops.mse_losses, ops.l1_losses):
            self._check(fn, self.coords, self.coords2)

    def test_gauss_in_mean_and_sigma(self):
        self._check(lambda m: ops.make_gauss(m, (5, 4), 1.0), self.coords)
        self._check(lambda s: ops.make_gauss(self.coords, (5, 4), s), jnp.full((2, 3), 0.8))
        self._check(lambda m: ops.make_gauss(m, (5, 4), 1.0, normalize=False), self.coords)

    def test_divergences_and_regularisers(self):
        q = ops.flat_softmax(self.logits[::-1])
        self._check(ops.kl_divergence, self.heatmaps, q)
        self._check(ops.js_divergence, self.heatmaps, q)
        self._check(lambda h, m: ops.js_reg_losses(h, m, 1.0), self.heatmaps, self.coords)
        self._check(lambda h, m: ops.kl_reg_losses(h, m, 1.0), self.heatmaps, self.coords)
        self._check(lambda h: ops.variance_reg_losses(h, 1.0), self.heatmaps)

    def test_full_training_loss(self):
        mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
        for reg in ("js", "kl", "var"):
            self._check(lambda x: training_loss(x, self.coords, mask, reg), self.logits)

    def test_second_order(self):
        # Hessian-vector products through the hand-written divergence derivatives and the safe norm.
        mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
        self._check(lambda x: training_loss(x, self.coords, mask, "js"), self.logits, order=2)
        self._check(lambda h, m: ops.kl_reg_losses(h, m, 1.0), self.heatmaps, self.coords, order=2)


class NoNaNTest(parameterized.TestCase):
    """The traps of dsnt-conventions.md §3: values and gradients stay finite."""

    def test_zero_distance(self):
        c = jnp.array([[[0.25, -0.5], [0.0, 0.0]]])
        for fn in (ops.euclidean_losses, ops.l1_losses, ops.mse_losses):
            value, grad = jax.value_and_grad(lambda a: ops.average_loss(fn(a, c)))(c)
            self.assertEqual(float(value), 0.0)
            np.testing.assert_array_equal(grad, 0.0)

    def test_exactly_zero_cells(self):
        h = np.zeros((1, 2, 6, 6), np.float32)
        h[0, 0, 2, 3] = 1.0
        h[0, 1, :2, :2] = 0.25
        target = jnp.array([[[0.9, -0.9], [-0.6, -0.6]]])

        def loss(h, reg):
            fn = {"js": ops.js_reg_losses, "kl": ops.kl_reg_losses}[reg]
            return ops.average_loss(fn(h, target, 1.0) + ops.euclidean_losses(ops.dsnt(h), target))

        for reg in ("js", "kl"):
            value, grad = jax.value_and_grad(loss)(jnp.asarray(h), reg)
            self.assertTrue(_finite((value, grad)), reg)
        # p = q = 0 everywhere but one shared cell: both divergences are 0 with finite gradients.
        p = jnp.asarray(h[:, :1])
        for fn in (ops.kl_divergence, ops.js_divergence):
            value, grads = jax.value_and_grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(p, p)
            self.assertAlmostEqual(float(value), 0.0, places=6)
            self.assertTrue(_finite(grads))

    def test_fully_masked_joints(self):
        logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 7, 7)), jnp.float32)
        target = jnp.full((2, 4, 2), 5.0)  # garbage targets far outside the map, as unannotated joints may hold
        mask = jnp.zeros((2, 4))
        value, grad = jax.value_and_grad(training_loss)(logits, target, mask)
        self.assertEqual(float(value), 0.0)
        np.testing.assert_array_equal(grad, 0.0)
        # Partially masked: masked joints receive exactly zero gradient.
        mask = jnp.array([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
        grad = jax.grad(training_loss)(logits, target.at[..., :].set(0.3), mask)
        self.assertTrue(_finite(grad))
        np.testing.assert_array_equal(grad[0, 1], 0.0)
        np.testing.assert_array_equal(grad[1, 0], 0.0)
        self.assertGreater(float(jnp.abs(grad[0, 0]).sum()), 0.0)

    def test_huge_logits(self):
        logits = jnp.asarray(np.random.default_rng(2).choice([-1e4, 1e4], size=(2, 3, 8, 8)), jnp.float32)
        target = jnp.zeros((2, 3, 2))
        for reg in ("js", "kl", "var"):
            value, grad = jax.value_and_grad(training_loss)(logits, target, jnp.ones((2, 3)), reg)
            self.assertTrue(_finite((value, grad)), reg)
        h = ops.flat_softmax(logits)
        np.testing.assert_allclose(h.sum(axis=(-2, -1)), 1.0, rtol=1e-6)
        self.assertTrue(_finite(ops.log_flat_softmax(logits)))

    @parameterized.parameters(
        ([[0.013, 0.777]], 0.05),   # σ = 0.05 px, mean between pixel centres: dsntnn underflows to ~1e-19
        ([[25.0, -40.0]], 1.0),     # mean far outside the map: dsntnn returns an all-zero map
        ([[-1.0, 1.0]], 0.01),
    )
    def test_gauss_always_normalised(self, mean, sigma):
        means = jnp.asarray(mean)
        g = ops.make_gauss(means, (7, 9), sigma)
        np.testing.assert_allclose(float(g.sum()), 1.0, rtol=1e-5)
        self.assertTrue(_finite(g))
        grad = jax.grad(lambda m: ops.js_reg_losses(g[None], m[None], sigma).sum())(means)
        self.assertTrue(_finite(grad))
        grad = jax.grad(lambda m: ops.make_gauss(m, (7, 9), sigma).sum())(means)
        self.assertTrue(_finite(grad))

    def test_bfloat16_end_to_end(self):
        logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 28, 28)), jnp.bfloat16)
        target = jnp.zeros((2, 16, 2), jnp.bfloat16)
        value, grad = jax.value_and_grad(training_loss)(logits, target, jnp.ones((2, 16)))
        self.assertTrue(_finite((value, grad)))
        self.assertEqual(grad.dtype, jnp.bfloat16)
        self.assertEqual(value.dtype, jnp.float32)

    def test_relu_all_negative_map(self):
        x = -jnp.ones((1, 1, 4, 4))
        h = ops.heatmap_activation(x, "relu")
        self.assertTrue(_finite(h))
        self.assertTrue(_finite(jax.grad(lambda v: ops.dsnt(ops.heatmap_activation(v, "relu")).sum())(x)))


class BadInputTest(parameterized.TestCase):
    def test_wrong_rank(self):
        with self.assertRaisesRegex(ValueError, r"\[\.\.\., L, H, W\].*got shape \(5, 5\)"):
            ops.dsnt(jnp.zeros((5, 5)))
        with self.assertRaisesRegex(ValueError, r"\[\.\.\., L, D, H, W\]"):
            ops.dsnt(jnp.zeros((4, 4, 4)), spatial_ndim=3)

    def test_mismatched_points(self):
        with self.assertRaisesRegex(ValueError, r"must agree on \[\.\.\., L\].*\(2, 3, 5, 5\).*\(2, 4, 2\)"):
            ops.js_reg_losses(jnp.zeros((2, 3, 5, 5)), jnp.zeros((2, 4, 2)), 1.0)
        with self.assertRaisesRegex(ValueError, "same shape"):
            ops.euclidean_losses(jnp.zeros((2, 3, 2)), jnp.zeros((2, 4, 2)))
        with self.assertRaisesRegex(ValueError, "same shape"):
            ops.average_loss(jnp.zeros((2, 3)), jnp.ones((2, 4)))
        with self.assertRaisesRegex(ValueError, "same shape"):
            ops.kl_divergence(jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 2, 3, 4)))

    def test_wrong_coordinate_size(self):
        with self.assertRaisesRegex(ValueError, r"size must list the 2 spatial lengths"):
            ops.make_gauss(jnp.zeros((1, 2)), (4, 4, 4), 1.0)
        with self.assertRaisesRegex(ValueError, r"\[\.\.\., L, H, W\]"):
            ops.js_reg_losses(jnp.zeros((1, 5, 5)), jnp.zeros((1, 1, 2)), 1.0)  # no point axis
        with self.assertRaisesRegex(ValueError, r"\[\.\.\., L, d\]"):
            ops.make_gauss(jnp.zeros((2,)), (4, 4), 1.0)

    def test_bad_hyper_parameters(self):
        with self.assertRaisesRegex(ValueError, "sigma must be > 0"):
            ops.make_gauss(jnp.zeros((1, 2)), (4, 4), 0.0)
        with self.assertRaisesRegex(ValueError, "sigma_t must be > 0"):
            ops.variance_reg_losses(jnp.zeros((1, 1, 4, 4)), -1.0)
        with self.assertRaisesRegex(ValueError, "temperature must be > 0"):
            ops.flat_softmax(jnp.zeros((1, 1, 4, 4)), temperature=0.0)
        with self.assertRaisesRegex(ValueError, "kind must be one of"):
            ops.heatmap_activation(jnp.zeros((1, 1, 4, 4)), "tanh")
        with self.assertRaisesRegex(ValueError, "broadcastable"):
            ops.make_gauss(jnp.zeros((2, 3, 2)), (4, 4), jnp.ones((4,)))
        with self.assertRaisesRegex(ValueError, "positive integer"):
            ops.normalized_linspace(0)

    def test_shape_errors_raise_inside_user_jit(self):
        with self.assertRaisesRegex(ValueError, r"\[\.\.\., L, H, W\]"):
            jax.jit(ops.dsnt)(jnp.zeros((5, 5)))


class VariantsTest(parameterized.TestCase):
    """Same results with and without jit and under pmap; shapes and dtypes as documented."""

    @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
    def test_loss_pipeline(self):
        rng = np.random.default_rng(5)
        logits = jnp.asarray(rng.normal(size=(2, 3, 4, 6, 5)), jnp.float32)  # leading device axis for pmap
        target = jnp.asarray(rng.uniform(-0.9, 0.9, size=(2, 3, 4, 2)), jnp.float32)

        def per_device(x, t):
            h = ops.flat_softmax(x)
            c = ops.dsnt(h)
            losses = ops.euclidean_losses(c, t) + ops.js_reg_losses(h, t, 1.0)
            return c, losses, ops.average_loss(losses)

        coords, losses, avg = self.variant(per_device)(logits, target)
        chex.assert_shape(coords, (2, 3, 4, 2))
        chex.assert_shape(losses, (2, 3, 4))
        chex.assert_type([coords, losses], jnp.float32)
        ref = [per_device(logits[i], target[i]) for i in range(2)]
        np.testing.assert_allclose(coords, jnp.stack([r[0] for r in ref]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(losses, jnp.stack([r[1] for r in ref]), rtol=1e-5, atol=1e-6)
        # pmap averages per device; the other variants see one batch of twice the size (equal halves).
        expected_avg = jnp.stack([r[2] for r in ref])
        np.testing.assert_allclose(avg, expected_avg if avg.ndim else expected_avg.mean(), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_leading_dims_and_3d(self):
        h = ops.flat_softmax(jnp.zeros((2, 3, 4, 5, 6, 7)), spatial_ndim=3)
        c = self.variant(functools.partial(ops.dsnt, spatial_ndim=3))(h)
        chex.assert_shape(c, (2, 3, 4, 3))
        np.testing.assert_allclose(c, 0.0, atol=1e-6)  # a uniform map is centred
        g = ops.make_gauss(jnp.full((2, 3, 4, 3), 0.2), (5, 6, 7), 1.0)
        chex.assert_shape(g, (2, 3, 4, 5, 6, 7))


# ---------------------------------------------------------------------------------------------------------
# Property tests

_sizes = st.integers(min_value=1, max_value=12)


@settings(max_examples=40, deadline=None)
@given(h=_sizes, w=_sizes, seed=st.integers(0, 2**31 - 1), scale=st.floats(0.1, 30.0))
def test_coordinates_of_a_normalised_map_lie_inside(h, w, seed, scale):
    logits = np.random.default_rng(seed).normal(size=(1, 2, h, w)) * scale
    c = np.asarray(ops.dsnt(ops.flat_softmax(logits)))
    assert np.all(np.abs(c) < 1.0)
    # Strictly within the outermost pixel centres ±(1 − 1/n) (up to float rounding).
    assert np.all(np.abs(c) <= 1.0 - 1.0 / np.array([w, h]) + 1e-6)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 16), w=st.integers(2, 16), data=st.data())
def test_shifted_one_hot_moves_by_two_over_n(h, w, data):
    row = data.draw(st.integers(0, h - 1))
    col = data.draw(st.integers(0, w - 2))
    a = np.zeros((1, 1, h, w), np.float32)
    a[0, 0, row, col] = 1
    b = np.zeros_like(a)
    b[0, 0, row, col + 1] = 1
    ca, cb = np.asarray(ops.dsnt(a))[0, 0], np.asarray(ops.dsnt(b))[0, 0]
    np.testing.assert_allclose(cb[0] - ca[0], 2.0 / w, atol=1e-6)
    np.testing.assert_allclose(cb[1], ca[1], atol=1e-7)
    # The one-hot sits exactly at its pixel centre.
    np.testing.assert_allclose(ca, [(2 * col + 1) / w - 1, (2 * row + 1) / h - 1], atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(sigma=st.floats(1.0, 2.5), data=st.data())
def test_dsnt_of_gauss_returns_its_mean(sigma, data):
    # For σ ≥ 1 px the discrete Gaussian's mean equals the continuous one to ~1e-8 (the sampling error falls
    # as exp(−2π²σ²)); keep the mean ≥ 5σ from every edge so that truncation by the border is negligible.
    h, w = 40, 32
    margin = 5 * sigma
    px = data.draw(st.floats(margin, w - 1 - margin))
    py = data.draw(st.floats(margin, h - 1 - margin))
    mean = np.asarray(ops.pixel_to_normalized_coordinates(jnp.array([[px, py]]), (h, w)))
    g = ops.make_gauss(mean, (h, w), sigma)
    np.testing.assert_allclose(np.asarray(ops.dsnt(g[None]))[0, 0], mean[0], atol=2e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sigma=st.floats(0.02, 5.0), spread=st.floats(0.0, 50.0))
def test_gauss_normalised_for_any_mean_and_sigma(seed, sigma, spread):
    means = np.random.default_rng(seed).uniform(-1, 1, size=(3, 2)) * (1 + spread)
    g = np.asarray(ops.make_gauss(means, (6, 5), sigma))
    assert np.all(np.isfinite(g)) and np.all(g >= 0)
    np.testing.assert_allclose(g.sum(axis=(-2, -1)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_size_one_and_small_axes(n):
    c = ops.dsnt(ops.flat_softmax(jnp.zeros((1, 1, n, 1))))
    np.testing.assert_allclose(c, 0.0, atol=1e-7)
    g = ops.make_gauss(jnp.zeros((1, 2)), (n, 1), 1.0)
    np.testing.assert_allclose(float(g.sum()), 1.0, rtol=1e-6)
