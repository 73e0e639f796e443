"""BatchNorm folding (dsnt_jax.models.fold): the folded forward equals the eval-mode model."""

from __future__ import annotations

import functools

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from trained_like import trained_like

from dsnt_jax.models import create_model
from dsnt_jax.models.fold import bn_affine, fold_batchnorm, fold_conv

TINY_RESNET = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 16, 16, 16), "stem_width": 8}
TINY_HG = {"features": 16, "depth": 2}


def _paths(tree, prefix=()):
    """Paths of the dicts in `tree` that hold arrays directly (one per layer)."""
    if any(not isinstance(v, dict) for v in tree.values()):
        yield prefix
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


def _at(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _assert_outputs_close(ref, out, atol):
    assert set(out) == set(ref)
    for k in ref:
        if k == "stacks":
            _assert_outputs_close(ref[k], out[k], atol)
            continue
        r, o = np.asarray(ref[k], np.float32), np.asarray(out[k], np.float32)
        assert o.shape == r.shape and o.dtype == r.dtype
        # Logits can be large: compare them relative to their scale.
        scale = 1.0 if k == "coords" else max(1.0, float(np.max(np.abs(r))))
        np.testing.assert_allclose(o, r, rtol=0, atol=atol * scale, err_msg=k)


def _check_equal(model, images, atol=1e-5):
    variables = trained_like(model, images)
    folded = fold_batchnorm(model, variables)
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    out = jax.jit(folded.apply)(folded.variables, images)
    _assert_outputs_close(ref, out, atol)
    return variables, folded


def _images(size, batch=2, seed=1):
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3))


@pytest.mark.parametrize("backbone,res,output,upsample", [
    ("resnet18", 28, "dsnt", 0),
    ("resnet18", 28, "fc", 0),
    ("resnet18", 28, "hm", 0),
    ("resnet18", 7, "dsnt", 0),
    ("resnet18", 7, "hm", 8),
    ("resnet50", 28, "dsnt", 0),
])
def test_resnet_folded_matches_eval(backbone, res, output, upsample):
    widths = (4, 4, 4, 4) if backbone == "resnet50" else TINY_RESNET["widths"]
    model = create_model(backbone, res=res, output=output, num_joints=3, bn_momentum=0.0,
                         upsample=upsample, **{**TINY_RESNET, "widths": widths})
    variables, folded = _check_equal(model, _images(48))
    n_bns = len(list(_paths(variables["batch_stats"])))
    # Only the upsampling head's bn1 (after a sum of two convs) cannot be folded.
    assert len(folded.affine) == (1 if upsample else 0)
    assert len(folded.folded) == n_bns - len(folded.affine)


def test_hourglass_folded_matches_eval():
    model = create_model("hg2", num_joints=3, bn_momentum=0.0, **TINY_HG)
    variables, folded = _check_equal(model, _images(32))
    residuals = 3 + 2 * (3 * TINY_HG["depth"] + 2)
    # Pre-activation bn1 of each residual unit reads the residual stream; its bn2/bn3 read a conv.
    assert len(folded.affine) == residuals
    assert all(path[-1] == "bn1" for path in folded.affine)
    assert len(folded.folded) == 2 * residuals + 1 + 2
    assert len(folded.folded) + len(folded.affine) == len(list(_paths(variables["batch_stats"])))


def test_bfloat16_kernels_folded_once():
    model = create_model("resnet18", res=28, num_joints=3, bn_momentum=0.0, dtype=jnp.bfloat16,
                         **TINY_RESNET)
    images = _images(48)
    variables, folded = _check_equal(model, images, atol=5e-2)
    for conv, _ in folded.folded:
        leaf = _at(folded.variables["params"], conv)
        assert leaf["kernel"].dtype == jnp.bfloat16 and leaf["bias"].dtype == jnp.bfloat16
    # No weight is cast per call (the unfolded bf16 model casts its float32 kernels every call).
    ref = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images).jaxpr
    out = jax.make_jaxpr(folded.apply)(folded.variables, images).jaxpr
    assert _kernel_casts(ref) > 0
    assert _kernel_casts(out) == 0


def _all_eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jex_core.Jaxpr):
                    yield from _all_eqns(sub)


def _kernel_casts(jaxpr):
    """float32 → bfloat16 casts of 4-D operands other than feature maps (batch 2): conv kernels."""
    return sum(e.primitive.name == "convert_element_type" and e.invars[0].aval.ndim == 4
               and e.invars[0].aval.dtype == jnp.float32 and e.invars[0].aval.shape[0] != 2
               and e.outvars[0].aval.dtype == jnp.bfloat16 for e in _all_eqns(jaxpr))


def _count(jaxpr, names, ndim=None):
    return sum(e.primitive.name in names and (ndim is None or e.outvars[0].aval.ndim == ndim)
               for e in jaxpr.eqns)


def test_folding_removes_batch_stats_and_normalisation_ops():
    model = create_model("resnet18", res=28, num_joints=3, bn_momentum=0.0, **TINY_RESNET)
    images = _images(48)
    variables = trained_like(model, images)
    folded = fold_batchnorm(model, variables)
    assert "batch_stats" not in folded.variables
    for conv, bn in folded.folded:
        assert "bias" in _at(folded.variables["params"], conv)
        assert not np.allclose(_at(folded.variables["params"], conv)["kernel"],
                               _at(variables["params"], conv)["kernel"])
        with pytest.raises(KeyError):
            _at(folded.variables["params"], bn)
    ref = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images).jaxpr
    out = jax.make_jaxpr(folded.apply)(folded.variables, images).jaxpr
    assert _count(ref, {"rsqrt"}) >= len(folded.folded) > 0
    assert _count(out, {"rsqrt"}) == 0
    assert _count(out, {"conv_general_dilated"}) == _count(ref, {"conv_general_dilated"})
    # Each BN costs a sub, mul and add over the feature map; a folded one only the conv's bias add.
    elementwise = {"sub", "mul", "add"}
    assert _count(ref, elementwise, 4) - _count(out, elementwise, 4) >= 2 * len(folded.folded)


class _AwkwardGraph(nn.Module):
    """Conv outputs with a second reader, a shared conv, flax BNs without scale or bias."""

    @nn.compact
    def __call__(self, x, train=False):
        bn = functools.partial(nn.BatchNorm, use_running_average=not train)
        y = nn.Conv(4, (3, 3), use_bias=False, name="conv_a")(x)
        z = nn.relu(bn(use_scale=False, name="bn_a")(y))
        a = nn.Conv(4, (1, 1), name="conv_b")(z + y)  # y is read twice: bn_a must not be folded
        a = bn(use_bias=False, epsilon=1e-3, name="bn_b")(a)
        b = bn(use_scale=False, use_bias=False, name="bn_c")(nn.Conv(4, (1, 1), name="conv_c")(a))
        d = nn.Conv(4, (1, 1), name="conv_d")(b)  # also a model output: bn_d must not be folded
        shared = nn.Conv(4, (1, 1), name="conv_s")  # called twice: bn_s must not be folded
        e = bn(name="bn_d")(d) + bn(name="bn_s")(shared(b)) + shared(a)
        return {"logits": e, "raw": d}


def test_awkward_graph_and_flax_batchnorm_flags():
    model = _AwkwardGraph()
    images = _images(8)
    variables = model.init(jax.random.key(0), images)
    stats = jax.tree.map(lambda a: a + 0.5 * jax.random.uniform(jax.random.key(2), a.shape),
                         variables["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": stats}
    folded = fold_batchnorm(model, variables, input_shape=images.shape)
    assert folded.folded == ((("conv_b",), ("bn_b",)), (("conv_c",), ("bn_c",)))
    assert folded.affine == (("bn_a",), ("bn_d",), ("bn_s",))
    ref = model.apply(variables, images)
    out = jax.jit(folded.apply)(folded.variables, images)
    _assert_outputs_close(ref, out, 1e-5)


def test_fold_conv_and_bn_affine_math():
    k = jax.random.normal(jax.random.key(0), (3, 3, 2, 5))
    mul, add = bn_affine({"scale": jnp.full(5, 2.0), "bias": jnp.ones(5)},
                         {"mean": jnp.full(5, 3.0), "var": jnp.full(5, 4.0 - 1e-5)}, 1e-5)
    np.testing.assert_allclose(mul, 1.0, rtol=1e-6)
    np.testing.assert_allclose(add, -2.0, rtol=1e-6)
    f = fold_conv({"kernel": k, "bias": jnp.ones(5)}, mul * 2, add, jnp.bfloat16)
    assert f["kernel"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(f["kernel"]), np.float32(k * 2), rtol=1e-2)
    np.testing.assert_allclose(np.float32(f["bias"]), 0.0, atol=1e-6)


def test_training_mode_batchnorm_is_rejected():
    class Train(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.BatchNorm(use_running_average=False)(nn.Conv(2, (1, 1))(x))

    variables = Train().init(jax.random.key(0), _images(8))
    with pytest.raises(ValueError, match="inference mode"):
        fold_batchnorm(Train(), variables, input_shape=(1, 8, 8, 3))


def test_folded_apply_is_called_like_model_apply_and_has_no_training_mode():
    model = create_model("resnet18", res=28, num_joints=3, **TINY_RESNET)
    images = _images(32)
    folded = fold_batchnorm(model, model.init(jax.random.key(0), images))
    np.testing.assert_array_equal(folded.apply(folded.variables, images, train=False)["coords"],
                                  folded.apply(folded.variables, images)["coords"])
    with pytest.raises(ValueError, match="no training mode"):
        folded.apply(folded.variables, images, train=True)
