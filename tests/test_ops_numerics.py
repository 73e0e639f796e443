"""Numerical robustness of dsnt_jax.ops: gradients, properties, the traps of docs/conventions.md §3, bad input."""

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
    """The traps of docs/conventions.md §3: values and gradients stay finite."""

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


# ---------------------------------------------------------------------------------------------------------
# Non-finite inputs (issue #11): NaN and ±inf reach the values and gradients they affect, and only those.

_NONFINITE = (("nan", np.nan), ("inf", np.inf), ("minus_inf", -np.inf))
_NAN_AND_INF = (("nan", np.nan), ("inf", np.inf))


def _is_bad(x) -> bool:
    """True when every element of ``x`` is NaN or ±inf."""
    return bool(np.all(~np.isfinite(np.asarray(x, np.float64))))


def _others_unchanged(actual, clean, point):
    """Every point but ``point`` (an index into the leading [B, L] axes) equals the clean result."""
    keep = np.ones(np.shape(actual)[:2], bool)
    keep[point] = False
    np.testing.assert_allclose(np.asarray(actual)[keep], np.asarray(clean)[keep], rtol=1e-6, atol=1e-7)


class NonFiniteTest(parameterized.TestCase):
    """NaN and ±inf inputs propagate through every op, values and gradients, so a training loop sees them."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(21)
        self.logits = jnp.asarray(rng.normal(size=(2, 3, 5, 6)), jnp.float32)
        self.heatmaps = ops.flat_softmax(self.logits)
        self.coords = jnp.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)), jnp.float32)
        self.target = jnp.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)), jnp.float32)
        self.mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
        self.point, self.cell = (1, 2), (1, 2, 3, 4)  # an unmasked joint and one of its heatmap cells

    @parameterized.named_parameters(*_NONFINITE)
    def test_coordinate_losses(self, bad):
        expected = {ops.euclidean_losses: abs(bad), ops.l1_losses: abs(bad), ops.mse_losses: abs(bad)}
        for fn, value in expected.items():
            clean = fn(self.coords, self.target)
            for argnum in (0, 1):
                args = [self.coords, self.target]
                args[argnum] = args[argnum].at[self.point + (0,)].set(bad)
                losses = fn(*args)
                np.testing.assert_array_equal(losses[self.point], value, err_msg=f"{fn.__name__} arg {argnum}")
                _others_unchanged(losses, clean, self.point)
                # Masked average over a mask that keeps the point: NaN stays NaN, inf stays inf.
                np.testing.assert_array_equal(ops.average_loss(losses, self.mask), value)
                grad = jax.grad(lambda *a: fn(*a).sum(), argnums=argnum)(*args)
                if fn is ops.l1_losses and not np.isnan(bad):
                    np.testing.assert_array_equal(np.abs(grad[self.point]), 0.5)  # |x| at ±inf has slope ±1
                else:
                    self.assertTrue(_is_bad(grad[self.point][0]), f"{fn.__name__} gradient {grad[self.point]}")
                clean_grad = jax.grad(lambda *a: fn(*a).sum(), argnums=argnum)(self.coords, self.target)
                _others_unchanged(grad, clean_grad, self.point)

    def test_zero_distance_still_has_zero_gradient(self):
        # The guard for sqrt at 0 keys on distance == 0 exactly; it must not also catch NaN (NaN > 0 is false).
        for fn in (ops.euclidean_losses, ops.l1_losses, ops.mse_losses):
            grad = jax.jit(jax.grad(lambda a: fn(a, self.target).sum()))(self.target)
            np.testing.assert_array_equal(grad, 0.0)

    @parameterized.named_parameters(*_NONFINITE)
    def test_average_loss_excludes_masked_points_only(self, bad):
        losses = jnp.arange(1.0, 7.0).reshape(2, 3).at[0, 1].set(bad)  # [0, 1] is masked out
        value, (g_losses, g_mask) = jax.value_and_grad(ops.average_loss, argnums=(0, 1))(losses, self.mask)
        self.assertAlmostEqual(float(value), (1 + 3 + 4 + 5 + 6) / 5, places=6)
        self.assertEqual(float(g_losses[0, 1]), 0.0)
        self.assertTrue(_finite((g_losses, g_mask)))
        # The same value in an unmasked point, or without a mask, propagates.
        np.testing.assert_array_equal(ops.average_loss(losses, jnp.ones((2, 3))), bad)
        np.testing.assert_array_equal(ops.average_loss(losses), bad)
        # A non-finite mask entry is not a mask of 0: it poisons the average too.
        self.assertFalse(_finite(ops.average_loss(jnp.ones((2, 3)), self.mask.at[1, 1].set(bad))))

    @parameterized.named_parameters(*_NAN_AND_INF)
    def test_activations(self, bad):
        x = self.logits.at[self.cell].set(bad)
        weights = jnp.asarray(np.random.default_rng(4).normal(size=x.shape[-2:]), jnp.float32)
        # +inf saturates sigmoid to 1 (a finite map); every other kind puts NaN in the map (inf/inf, inf − inf):
        # softmax in every cell, abs and relu in the infinite cell (the others are finite/inf = 0).
        nan_maps = {"softmax": True, "abs": True, "relu": True, "sigmoid": np.isnan(bad)}
        for kind, nan_map in nan_maps.items():
            fn = functools.partial(ops.heatmap_activation, kind=kind)
            h, clean = fn(x), fn(self.logits)
            self.assertEqual(bool(np.isnan(h[self.cell])), nan_map, kind)
            if kind == "softmax" or np.isnan(bad):
                self.assertTrue(np.all(np.isnan(h[self.point])), kind)
            _others_unchanged(h, clean, self.point)
            grad = jax.grad(lambda v: jnp.sum(fn(v) * weights))(x)
            self.assertEqual(bool(np.isnan(grad[self.cell])), nan_map, kind)
            _others_unchanged(grad, jax.grad(lambda v: jnp.sum(fn(v) * weights))(self.logits), self.point)
        log_h = ops.log_flat_softmax(x)
        self.assertTrue(_is_bad(log_h[self.point]))
        _others_unchanged(log_h, ops.log_flat_softmax(self.logits), self.point)

    def test_minus_inf_logit_is_a_zero_probability_cell(self):
        # exp(−inf) = 0 exactly: a legitimate way to rule a cell out, finite everywhere (as dsntnn).
        x = self.logits.at[self.cell].set(-np.inf)
        for kind in ("softmax", "relu", "sigmoid"):
            h = ops.heatmap_activation(x, kind)
            self.assertEqual(float(h[self.cell]), 0.0)
            np.testing.assert_allclose(h.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
        for reg in ("js", "kl", "var"):
            value, grad = jax.value_and_grad(training_loss)(x, self.target, self.mask, reg)
            self.assertTrue(_finite((value, grad)), reg)

    @parameterized.named_parameters(*_NONFINITE)
    def test_dsnt_and_variance(self, bad):
        h = self.heatmaps.at[self.cell].set(bad)
        for fn in (ops.dsnt, functools.partial(ops.dsnt, normalized_coordinates=False), ops.heatmap_variance,
                   lambda m: ops.variance_reg_losses(m, 1.0)):
            out, clean = fn(h), fn(self.heatmaps)
            self.assertTrue(_is_bad(out[self.point]), out[self.point])
            _others_unchanged(out, clean, self.point)

        def loss(m):  # DSNT's gradient is the constant grid; the NaN comes back through the loss above it
            return ops.average_loss(ops.euclidean_losses(ops.dsnt(m), self.target), self.mask)

        value, grad = jax.value_and_grad(loss)(h)
        self.assertTrue(_is_bad(value))
        self.assertTrue(_is_bad(grad[self.point]))
        self.assertTrue(_finite(grad[0]))

    @parameterized.named_parameters(*_NAN_AND_INF)
    def test_nan_logits_give_a_nan_loss(self, bad):
        x = self.logits.at[self.cell].set(bad)

        def euclidean_only(v):
            return ops.average_loss(ops.euclidean_losses(ops.dsnt(ops.flat_softmax(v)), self.target), self.mask)

        for name, fn in [("none", euclidean_only)] + [
                (reg, functools.partial(training_loss, target=self.target, mask=self.mask, reg=reg))
                for reg in ("js", "kl", "var")]:
            for variant in (fn, jax.jit(fn)):
                value, grad = jax.value_and_grad(variant)(x)
                self.assertTrue(np.isnan(value), name)
                self.assertTrue(np.all(np.isnan(grad[self.point])), name)
                self.assertTrue(_finite(grad[0]), name)  # other samples' gradients are untouched
        # vmapped over the batch: only the sample holding the NaN is NaN.
        per_sample = jax.vmap(lambda v, t: ops.average_loss(ops.euclidean_losses(ops.dsnt(ops.flat_softmax(v)), t)))
        values = per_sample(x, self.target)
        self.assertTrue(np.isfinite(values[0]) and np.isnan(values[1]))

    @parameterized.named_parameters(*_NONFINITE)
    def test_divergences(self, bad):
        p = self.heatmaps.at[self.cell].set(bad)
        q = ops.flat_softmax(self.logits[::-1])
        for fn in (ops.kl_divergence, ops.js_divergence):
            for args, argnum in (((p, q), 0), ((q, p), 1)):
                value = fn(*args)
                self.assertTrue(_is_bad(value[self.point]), f"{fn.__name__} {argnum}")
                _others_unchanged(value, fn(p.at[self.cell].set(0.0), q) if argnum == 0 else
                                  fn(q, p.at[self.cell].set(0.0)), self.point)
                grads = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(*args)
                self.assertFalse(_finite([g[self.point] for g in grads]), f"{fn.__name__} {argnum}")
                self.assertTrue(_finite([g[0] for g in grads]))
                # Forward mode runs the hand-written JVP directly. (For KL(q‖p) with p = ±inf in a cell the
                # exact derivative in p there, −q/(p + ε), is 0, as in dsntnn; the value is already −inf/NaN.)
                _, tangent = jax.jvp(lambda a: fn(*(a, args[1]) if argnum == 0 else (args[0], a)),
                                     (args[argnum],), (jnp.ones_like(p),))
                self.assertTrue(_finite(tangent[0]))
                if np.isnan(bad) or fn is ops.js_divergence or argnum == 0:
                    self.assertTrue(_is_bad(tangent[self.point]), f"{fn.__name__} jvp {argnum}")
                if np.isnan(bad):
                    self.assertTrue(np.isnan(grads[argnum][self.cell]), f"{fn.__name__} {argnum}")

    @parameterized.named_parameters(*_NONFINITE)
    def test_divergence_regularisers(self, bad):
        h = self.heatmaps.at[self.cell].set(bad)
        mu = self.target.at[self.point + (0,)].set(bad)
        for name, fn in (("js", ops.js_reg_losses), ("kl", ops.kl_reg_losses)):
            clean = fn(self.heatmaps, self.target, 1.0)
            for args in ((h, self.target), (self.heatmaps, mu)):
                value = fn(*args, 1.0)
                self.assertTrue(_is_bad(value[self.point]), name)
                _others_unchanged(value, clean, self.point)
                grads = jax.grad(lambda a, b: fn(a, b, 1.0).sum(), argnums=(0, 1))(*args)
                self.assertFalse(_finite([g[self.point] for g in grads]), name)
                self.assertTrue(_finite([g[0] for g in grads]), name)
            # A non-finite target mean: the target map is NaN, so are the heatmap's and the mean's gradients
            # in reverse mode and the JVP (hand-written for JS) in forward mode.
            grads = jax.grad(lambda a, b: fn(a, b, 1.0).sum(), argnums=(0, 1))(self.heatmaps, mu)
            self.assertTrue(np.all(np.isnan(grads[0][self.point])), name)
            self.assertTrue(np.all(np.isnan(grads[1][self.point])), name)
            for tangents in ((jnp.ones_like(h), jnp.zeros_like(mu)), (jnp.zeros_like(h), jnp.ones_like(mu))):
                _, tangent = jax.jvp(lambda a, b: fn(a, b, 1.0), (self.heatmaps, mu), tangents)
                self.assertTrue(np.isnan(tangent[self.point]), name)
                self.assertTrue(_finite(tangent[0]), name)
        # A traced NaN σ (concrete ones are rejected) gives NaN everywhere.
        self.assertTrue(_is_bad(jax.jit(lambda s: ops.js_reg_losses(self.heatmaps, self.target, s))(jnp.nan)))

    @parameterized.named_parameters(*_NONFINITE)
    def test_make_gauss(self, bad):
        means = self.target.at[self.point + (0,)].set(bad)
        weights = jnp.asarray(np.random.default_rng(6).normal(size=(5, 6)), jnp.float32)
        for normalize in (True, False):
            fn = functools.partial(ops.make_gauss, size=(5, 6), sigma=1.0, normalize=normalize)
            g = fn(means)
            # A mean at ±inf is no finite Gaussian: NaN (not an all-zero map that a loss would take at face value).
            self.assertTrue(np.all(np.isnan(g[self.point])), f"normalize={normalize}")
            _others_unchanged(g, fn(self.target), self.point)
            grad = jax.grad(lambda m: jnp.sum(fn(m) * weights))(means)
            self.assertTrue(np.all(np.isnan(grad[self.point])), f"normalize={normalize}")
            self.assertTrue(_finite(grad[0]))
        # Far off the map but finite is still a normalised map (the existing guarantee), not NaN.
        g = ops.make_gauss(self.target.at[self.point + (0,)].set(1e30), (5, 6), 1.0)
        self.assertTrue(_finite(g))
        np.testing.assert_allclose(g.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
        self.assertTrue(_is_bad(jax.jit(lambda s: ops.make_gauss(self.target, (5, 6), s))(jnp.nan)))

    @parameterized.named_parameters(*_NONFINITE)
    def test_coordinate_conversions(self, bad):
        c = self.coords.at[self.point + (0,)].set(bad)
        for fn in (ops.normalized_to_pixel_coordinates, ops.pixel_to_normalized_coordinates):
            out = fn(c, (5, 6))
            self.assertTrue(_is_bad(out[self.point + (0,)]))
            _others_unchanged(out, fn(self.coords, (5, 6)), self.point)

    def test_bfloat16_nan_survives_the_upcast(self):
        x = self.logits.astype(jnp.bfloat16).at[self.cell].set(jnp.nan)
        value, grad = jax.value_and_grad(training_loss)(x, self.target.astype(jnp.bfloat16), self.mask)
        self.assertTrue(np.isnan(value))
        self.assertEqual(grad.dtype, jnp.bfloat16)
        self.assertTrue(np.all(np.isnan(np.asarray(grad[self.point], np.float32))))


class PoseLossNonFiniteTest(parameterized.TestCase):
    """`models.pose_loss`: NaN in what counts propagates; NaN in the targets of masked joints does not."""

    CONFIGS = [("dsnt", reg, False) for reg in ("none", "js", "kl", "var")] + [("fc", "js", False),
                                                                                ("hm", "none", False),
                                                                                ("hm", "none", True)]

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(31)
        self.logits = jnp.asarray(rng.normal(size=(2, 3, 6, 6)), jnp.float32)
        self.target = jnp.asarray(rng.uniform(-0.8, 0.8, size=(2, 3, 2)), jnp.float32)
        self.mask = jnp.array([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])

    def _loss(self, logits, target, output, reg, hm_masked):
        from dsnt_jax.models.loss import pose_loss

        if output == "hm":
            outputs = {"coords": jnp.zeros(target.shape), "heatmaps": logits}
        else:
            h = ops.flat_softmax(logits)
            outputs = {"coords": ops.dsnt(h), "heatmaps": h}
        return pose_loss(outputs, target, self.mask, output=output, reg=reg, hm_masked=hm_masked)[0]

    @parameterized.named_parameters(*_NONFINITE)
    def test_masked_joint_with_garbage_target(self, bad):
        # Datasets may store NaN for unannotated joints; mask = 0 must keep loss *and* gradients finite.
        # dsntnn's average_loss multiplies by the mask (NaN·0 = NaN); here the joint is excluded instead.
        target = self.target.at[0, 1].set(bad)
        for config in self.CONFIGS:
            value, grad = jax.value_and_grad(self._loss)(self.logits, target, *config)
            self.assertTrue(_finite((value, grad)), config)
            if config[0] != "hm" or config[2]:
                # Excluded entirely: the same as any finite placeholder.
                placeholder = self._loss(self.logits, self.target.at[0, 1].set(0.3), *config)
                np.testing.assert_allclose(value, placeholder, rtol=1e-6)

    @parameterized.named_parameters(*_NONFINITE)
    def test_annotated_joint_with_nan_target(self, bad):
        target = self.target.at[1, 2, 1].set(bad)
        for config in self.CONFIGS:
            self.assertFalse(_finite(self._loss(self.logits, target, *config)), config)

    @parameterized.named_parameters(*_NAN_AND_INF)
    def test_nan_prediction(self, bad):
        logits = self.logits.at[1, 2, 3, 4].set(bad)
        for config in self.CONFIGS:
            value, grad = jax.value_and_grad(self._loss)(logits, self.target, *config)
            # NaN, except hm's squared error of an inf map cell, which is inf (with an inf gradient).
            self.assertFalse(_finite(value), config)
            self.assertFalse(_finite(grad[1, 2]), config)
            self.assertTrue(_finite(grad[0]), config)


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
