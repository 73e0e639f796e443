"""Known values of dsnt_jax.ops: dsntnn 0.5.3's own unit-test numbers and the paper's worked example."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from dsnt_jax import ops


def simple_map() -> np.ndarray:
    """dsntnn's SIMPLE 5×5 map (also the paper's Fig. 3): 0.6 at (row 2, col 3), 0.1 at its 4 neighbours."""
    m = np.zeros((5, 5), np.float32)
    m[2, 3] = 0.6
    m[1, 3] = m[2, 2] = m[2, 4] = m[3, 3] = 0.1
    return m


class DsntValuesTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_simple_map_normalised_and_pixel(self):
        h = jnp.asarray(simple_map())[None, None]
        coords = self.variant(ops.dsnt)(h)
        chex.assert_shape(coords, (1, 1, 2))
        chex.assert_type(coords, jnp.float32)
        np.testing.assert_allclose(coords[0, 0], [0.4, 0.0], atol=1e-6)
        pixel = self.variant(lambda x: ops.dsnt(x, normalized_coordinates=False))(h)
        np.testing.assert_allclose(pixel[0, 0], [3.0, 2.0], atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_simple_map_gradient_of_mse(self):
        # d mse(dsnt(x), [0.5, 0.5]) / dx = (c_x - 0.5)·g_x(col) + (c_y - 0.5)·g_y(row), mean over 2 coords.
        def loss(x):
            return ops.mse_losses(ops.dsnt(x), jnp.full((1, 1, 2), 0.5)).sum()

        grad = self.variant(jax.grad(loss))(jnp.asarray(simple_map())[None, None])[0, 0]
        first_col = np.array([0.48, 0.28, 0.08, -0.12, -0.32])
        expected = first_col[:, None] - 0.04 * np.arange(5)[None, :]
        np.testing.assert_allclose(grad, expected, atol=1e-6)

    def test_3d_one_hot(self):
        h = np.zeros((1, 1, 3, 3, 3), np.float32)
        h[0, 0, 1, 2, 0] = 1.0  # (d, h, w) = (1, 2, 0)
        coords = ops.dsnt(h, spatial_ndim=3)
        chex.assert_shape(coords, (1, 1, 3))
        np.testing.assert_allclose(coords[0, 0], [-2 / 3, 2 / 3, 0.0], atol=1e-6)

    def test_pixel_mode_expectation(self):
        # dsntnn's linear_expectation example: 4×5 map, mass at rows 1–2, cols 2–3 → (row, col) = (1.5, 2.5).
        h = np.zeros((1, 1, 4, 5), np.float32)
        h[0, 0, 1, 2], h[0, 0, 1, 3], h[0, 0, 2, 2], h[0, 0, 2, 3] = 0.2, 0.3, 0.3, 0.2
        np.testing.assert_allclose(ops.dsnt(h, normalized_coordinates=False)[0, 0], [2.5, 1.5], atol=1e-6)

    def test_unnormalised_map_scales_output_like_dsntnn(self):
        h = 2.0 * simple_map()[None, None]
        np.testing.assert_allclose(ops.dsnt(h)[0, 0], [0.8, 0.0], atol=1e-6)


class CoordinateTest(parameterized.TestCase):
    @parameterized.parameters(
        (1, [0.0]),
        (4, [-0.75, -0.25, 0.25, 0.75]),
        (5, [-0.8, -0.4, 0.0, 0.4, 0.8]),
    )
    def test_normalized_linspace(self, n, expected):
        np.testing.assert_allclose(ops.normalized_linspace(n), expected, atol=1e-7)

    def test_pixel_normalised_round_trip_and_dsntnn_values(self):
        # size is given in array order (H, W) = (5, 2): x uses W = 2, y uses H = 5.
        np.testing.assert_allclose(ops.normalized_to_pixel_coordinates(jnp.zeros(2), (5, 2)), [0.5, 2.0])
        np.testing.assert_allclose(ops.pixel_to_normalized_coordinates(jnp.array([0.5, 2.0]), (5, 2)), [0, 0])
        rng = np.random.default_rng(0)
        c = rng.uniform(-1, 1, (3, 4, 2))
        back = ops.pixel_to_normalized_coordinates(ops.normalized_to_pixel_coordinates(c, (7, 9)), (7, 9))
        np.testing.assert_allclose(back, c, atol=1e-6)

    def test_edges_are_plus_minus_one(self):
        np.testing.assert_allclose(ops.pixel_to_normalized_coordinates(jnp.array([-0.5, 6.5]), (7, 7)), [-1, 1])


class ActivationTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_flat_softmax_dsntnn_values(self):
        x = jnp.array([[[[10.0, 1.0], [5.0, 2.0]]]])
        out = self.variant(ops.flat_softmax)(x)
        np.testing.assert_allclose(
            out[0, 0], [[0.99285460, 0.00012253], [0.00668980, 0.00033307]], rtol=1e-5, atol=1e-8
        )

    def test_temperature_divides(self):
        x = jnp.array([[[[2.0, 0.0]]]])
        np.testing.assert_allclose(ops.flat_softmax(x, temperature=2.0), ops.flat_softmax(x / 2.0), rtol=1e-6)
        np.testing.assert_allclose(
            jnp.exp(ops.log_flat_softmax(x, temperature=0.5)), ops.flat_softmax(2.0 * x), rtol=1e-6
        )

    @parameterized.parameters("abs", "relu", "sigmoid")
    def test_rectified_kinds_follow_table_2(self, kind):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
        rect = {"abs": np.abs, "relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[kind]
        r = rect(x)
        expected = r / (r.sum(axis=(-2, -1), keepdims=True) + 1e-12)
        out = ops.heatmap_activation(x, kind)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(out.sum(axis=(-2, -1)), 1.0, rtol=1e-5)

    def test_softmax_kind_is_flat_softmax(self):
        x = np.random.default_rng(2).normal(size=(2, 3, 6, 4))
        np.testing.assert_allclose(ops.heatmap_activation(x, "softmax"), ops.flat_softmax(x), rtol=1e-6)


class GaussTest(parameterized.TestCase):
    def test_dsntnn_centre_row_and_corner(self):
        g = ops.make_gauss(jnp.zeros((1, 2)), (5, 5), 1.0)[0]
        np.testing.assert_allclose(
            g[2], [0.0219382313, 0.0983203313, 0.1621028216, 0.0983203313, 0.0219382313], rtol=1e-5
        )
        np.testing.assert_allclose(g[0, 0], 0.0029690167, rtol=1e-5)
        self.assertAlmostEqual(float(ops.make_gauss(jnp.zeros((1, 2)), (5, 5), 1.0, normalize=False).max()), 1.0)

    def test_dsntnn_corner_mean_rectangular(self):
        g = ops.make_gauss(jnp.array([[-1.0, -1.0]]), (3, 5), 1.0)[0]
        np.testing.assert_allclose(g[0], [0.49668297, 0.18271945, 0.02472839, 0.00123115, 0.00002255], rtol=1e-4)

    def test_dsntnn_3d(self):
        g = ops.make_gauss(jnp.array([[-1.0, 1.0, 0.0]]), (3, 3, 3), 0.6)[0]
        np.testing.assert_allclose(g[1, 2, 0], 0.59114508, rtol=1e-5)

    def test_sigma_per_point(self):
        means = jnp.zeros((2, 3, 2))
        sigma = jnp.array([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]])
        g = ops.make_gauss(means, (9, 9), sigma)
        np.testing.assert_allclose(g[0, 1], ops.make_gauss(jnp.zeros((1, 2)), (9, 9), 1.0)[0], rtol=1e-6)
        self.assertGreater(float(g[0, 0, 4, 4]), float(g[0, 2, 4, 4]))


def _kl_maps():
    a = np.zeros((4, 4))
    a[3, 3], a[2, 3], a[3, 2] = 0.8, 0.1, 0.1
    b = np.zeros((4, 4))
    b[0, 0], b[0, 1], b[1, 0] = 0.8, 0.1, 0.1
    return np.stack([a, b])[None]  # [1, 2, 4, 4]


class RegulariserValuesTest(parameterized.TestCase):
    def test_kl_with_mask(self):
        with jax.enable_x64(True):
            h = jnp.asarray(_kl_maps(), jnp.float64)
            target = jnp.array([[[1.0, 1.0], [0.0, 0.0]]])
            loss = ops.average_loss(ops.kl_reg_losses(h, target, 2.0), jnp.array([[1.0, 0.0]]))
            np.testing.assert_allclose(float(loss), 1.2228811717796824, rtol=1e-9)

    def test_kl_rectangular(self):
        with jax.enable_x64(True):
            h = np.zeros((1, 1, 4, 6))
            h[0, 0, 3, 5], h[0, 0, 2, 5], h[0, 0, 3, 4] = 0.8, 0.1, 0.1
            loss = ops.average_loss(ops.kl_reg_losses(jnp.asarray(h), jnp.ones((1, 1, 2)), 2.0))
            np.testing.assert_allclose(float(loss), 1.2646753877545842, rtol=1e-9)

    @parameterized.parameters((4, 4), (4, 6))
    def test_variance_pixel_units_do_not_depend_on_grid(self, h, w):
        m = np.zeros((1, 1, h, w))
        m[0, 0, 2, 2] = 0.6
        m[0, 0, 1, 2] = m[0, 0, 3, 2] = m[0, 0, 2, 1] = m[0, 0, 2, 3] = 0.1
        loss = ops.average_loss(ops.variance_reg_losses(m, 2.0))
        np.testing.assert_allclose(float(loss), 28.88, rtol=1e-5)

    def test_variance_batch(self):
        a = np.zeros((4, 4))
        a[2, 2] = 0.6
        a[1, 2] = a[3, 2] = a[2, 1] = a[2, 3] = 0.1
        b = np.zeros((4, 4))
        b[1, 1], b[2, 0], b[2, 1], b[2, 2], b[3, 1] = 0.2, 0.1, 0.5, 0.1, 0.1
        loss = ops.average_loss(ops.variance_reg_losses(np.stack([a, b])[:, None], 2.0))
        np.testing.assert_allclose(float(loss), 28.54205, rtol=1e-5)

    def test_variance_3d(self):
        with jax.enable_x64(True):
            g = np.round(np.asarray(ops.make_gauss(jnp.array([[[-1.0, 1.0, 0.0]]]), (3, 3, 3), 0.6)), 6)
            loss = ops.average_loss(ops.variance_reg_losses(g, 0.6, spatial_ndim=3))
            np.testing.assert_allclose(float(loss), 0.18564102213775013, rtol=1e-6)

    def test_euclidean_value_and_gradient(self):
        actual = jnp.full((2, 2, 2), jnp.array([3.0, 4.0]))

        def loss(a):
            return ops.average_loss(ops.euclidean_losses(a, jnp.zeros((2, 2, 2))))

        self.assertAlmostEqual(float(loss(actual)), 5.0, places=6)
        np.testing.assert_allclose(jax.grad(loss)(actual), np.full((2, 2, 2), [0.15, 0.20]), atol=1e-7)

    def test_average_loss_mask(self):
        losses = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        mask = jnp.array([[1, 0, 1], [0, 1, 1]])
        self.assertEqual(float(ops.average_loss(losses, mask)), 0.0)
        self.assertAlmostEqual(float(ops.average_loss(losses)), 2 / 6, places=6)

    @parameterized.parameters("js", "kl", "var")
    def test_regulariser_minimised_by_its_own_target(self, reg):
        # dsntnn's regulariser tests: 9×9, μ = (0, 0), σ_t = 1 px.
        def loss(mu, sigma):
            g = ops.make_gauss(jnp.array([[mu]]), (9, 9), sigma)
            if reg == "var":
                return float(ops.variance_reg_losses(g, 1.0)[0, 0])
            fn = ops.js_reg_losses if reg == "js" else ops.kl_reg_losses
            return float(fn(g, jnp.zeros((1, 1, 2)), 1.0)[0, 0])

        base = loss([0.0, 0.0], 1.0)
        self.assertLess(base, 1e-3)
        for sigma in (0.8, 1.2):
            self.assertGreater(loss([0.0, 0.0], sigma), base + 1e-3)
        if reg != "var":  # variance ignores where the blob is
            for mu in ([0.1, 0.0], [0.0, -0.1]):
                self.assertGreater(loss(mu, 1.0), base + 1e-3)


def test_divergences_direct():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(12), size=(2, 3)).reshape(2, 3, 3, 4)
    q = rng.dirichlet(np.ones(12), size=(2, 3)).reshape(2, 3, 3, 4)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=(-2, -1))
    np.testing.assert_allclose(ops.kl_divergence(p, q), kl, rtol=1e-4)
    js = ops.js_divergence(p, q)
    np.testing.assert_allclose(js, ops.js_divergence(q, p), rtol=1e-5)
    assert np.all(np.asarray(js) <= np.log(2) + 1e-6)
    np.testing.assert_allclose(ops.js_divergence(p, p), 0.0, atol=1e-6)


def test_heatmap_variance_matches_paper_eq4_and_units():
    g = ops.make_gauss(jnp.zeros((1, 2)), (64, 48), 2.0)
    var_px = ops.heatmap_variance(g[None], normalized_coordinates=False)[0, 0]
    np.testing.assert_allclose(var_px, [4.0, 4.0], rtol=1e-3)  # σ² in pixels², well inside the map
    var_n = ops.heatmap_variance(g[None])[0, 0]
    np.testing.assert_allclose(var_n, var_px / np.array([24.0**2, 32.0**2]), rtol=1e-5)
    sharp = ops.make_gauss(jnp.zeros((1, 2)), (64, 48), 0.5)
    assert np.all(np.asarray(ops.heatmap_variance(sharp[None])) < np.asarray(var_n))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 64, 64)), dtype)
    h = ops.flat_softmax(x)
    assert h.dtype == jnp.float32
    c = ops.dsnt(h)
    assert c.dtype == jnp.float32
    # The grid is built in float32: the result equals the float32 computation on the same (rounded) inputs.
    np.testing.assert_allclose(c, ops.dsnt(ops.flat_softmax(x.astype(jnp.float32))), atol=1e-6)
    reg = ops.js_reg_losses(h.astype(dtype), c, 1.0)
    assert reg.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(reg)))
