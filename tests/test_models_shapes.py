"""Backbone shapes, the dilation rule, parameter/FLOP counts, BatchNorm semantics, dtypes, factory."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dsnt_jax.models import (
    BACKBONES,
    BatchNorm,
    count_params,
    create_model,
    feature_size,
    heatmap_size_for,
    hm_decode,
    input_size_for,
    output_stride,
    stage_plan,
)
from dsnt_jax.models.__main__ import main as summary_main
from dsnt_jax.models.layers import (
    resnet_conv_init,
    torch_default_bias_init,
    torch_default_kernel_init,
)
from dsnt_jax.models.summary import trace_model

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
RES = (7, 14, 28, 56)
HOURGLASSES = ("hg1", "hg2", "hg4", "hg8")
TINY_RESNET = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8}
TINY_HG = {"features": 16, "depth": 1}


def _variables(model, images, seed=0):
    """Concrete variables without `model.init`'s PRNG work (threefry compiles slowly on XLA:CPU).

    Conv/dense kernels ~ N(0, 1/fan_in), BatchNorm at its initial state. `model.init` itself runs
    in test_pretrained.py and test_models_train.py.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(0, 1 / math.sqrt(math.prod(s.shape[:-1])), s.shape), s.dtype)
        return jnp.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _abstract(model, size, batch=2):
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    return variables, jax.eval_shape(model.apply, variables, images)


# --------------------------------------------------------------------------------------------------
# Shapes


# torchvision's parameter counts minus fc (in·1000 + 1000): 11,689,512 − 513,000 etc.
TORCHVISION_TRUNK = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032,
                     "resnet101": 42_500_160, "resnet152": 58_143_808}
# torchvision's published GFLOPS at 224 px (multiply-adds of convs and fc).
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80,
                     "resnet152": 11.51}


@pytest.mark.parametrize("arch", RESNETS)
def test_resnet_every_res_shapes_params_and_macs(arch):
    # Abstract traces (jax.eval_shape) allocate and compute nothing, so the paper's 224-px input
    # costs no more than a tiny one here.
    feats = 512 if arch in ("resnet18", "resnet34") else 2048
    first_tree, macs_by_res = None, {}
    for res in RES:
        variables, out, macs = trace_model(create_model(arch, res=res), 224)
        assert out["coords"].shape == (1, 16, 2)
        assert out["heatmaps"].shape == out["logits"].shape == (1, 16, res, res)
        assert out["heatmaps"].dtype == jnp.float32
        assert heatmap_size_for(arch, res) == res
        assert heatmap_size_for(arch, res, 64) == 64 * res // 224       # stride 32/16/8/4
        # The dilation rule changes no parameter: every res takes the same (pretrained) weights.
        tree = jax.tree_util.tree_map(lambda s: s.shape, variables)
        assert first_tree is None or tree == first_tree
        first_tree = tree
        assert count_params(variables["params"]) == (TORCHVISION_TRUNK[arch], feats * 16)
        macs_by_res[res] = macs
    # Trunk MACs at res 7, minus our head (feats·16 per position), plus torchvision's fc
    # (feats·1000) must round to the published figure.
    trunk_gmacs = (macs_by_res[7] - feats * 16 * 49 + feats * 1000) / 1e9
    assert round(trunk_gmacs, 2) == TORCHVISION_GMACS[arch], trunk_gmacs
    # Dilation keeps the parameters but multiplies the work.
    assert macs_by_res[7] < macs_by_res[14] < macs_by_res[28] < macs_by_res[56]


@pytest.mark.parametrize("size", [50, 97, 224, 256])
def test_output_stride_for_any_input_size(size):
    for res in RES:
        dilate = int(math.log2(res // 7))
        _, out = _abstract(create_model("resnet18", res=res, **TINY_RESNET), size, batch=1)
        expected = feature_size(size, dilate)
        assert out["heatmaps"].shape[-2:] == (expected, expected)
        assert expected == math.ceil(size / output_stride(dilate))
        if size == 224:
            assert expected == res


@pytest.mark.parametrize("size", [50, 97, 224])
def test_upsampling_head_gives_stride_4_heatmaps_at_every_res(size):
    for res in RES:
        _, out = _abstract(create_model("resnet18", res=res, upsample=8, **TINY_RESNET), size, batch=1)
        side = heatmap_size_for("resnet18", res, size, upsample=True)
        assert side == math.ceil(size / 4) == feature_size(size, 3)
        assert out["heatmaps"].shape[-2:] == (side, side)


def test_upsampling_head_merges_trunk_and_first_stage():
    model = create_model("resnet18", res=28, num_joints=3, upsample=8, **TINY_RESNET)
    images = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    variables = _variables(model, images)
    assert set(variables["params"]["upsample"]) == {"reduce", "lateral", "conv", "bn1", "bn2"}
    assert "upsample" not in _variables(create_model("resnet18", res=28, **TINY_RESNET), images)["params"]
    def coords_sum(params):
        out, _ = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
        return out["coords"].sum()

    grads = jax.jit(jax.grad(coords_sum))(variables["params"])
    inner = grads["upsample"]
    # Both paths into the head carry gradient: the repeated trunk output and the first stage.
    assert float(jnp.abs(inner["reduce"]["kernel"]).max()) > 0
    assert float(jnp.abs(inner["lateral"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["backbone"]["layer4_0"]["conv2"]["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="upsample must be 0"):
        _abstract(create_model("resnet18", res=28, upsample=-1, **TINY_RESNET), 32)


# Counted on bearpaw/pytorch-pose HourglassNet(Bottleneck, num_stacks, num_blocks=1, 16 classes).
BEARPAW_PARAMS = {"hg1": 3_426_448, "hg2": 6_570_400, "hg4": 12_858_304, "hg8": 25_434_112}


@pytest.mark.parametrize("arch", HOURGLASSES)
def test_hourglass_shapes_and_params(arch):
    stacks = int(arch[2:])
    variables, out, _ = trace_model(create_model(arch), 256)
    assert out["heatmaps"].shape == out["logits"].shape == (1, 16, 64, 64)
    assert out["coords"].shape == (1, 16, 2)
    assert out["stacks"]["heatmaps"].shape == (stacks, 1, 16, 64, 64)
    assert out["stacks"]["coords"].shape == (stacks, 1, 16, 2)
    names = set(variables["params"])
    assert {f"score_{i}" for i in range(stacks)} <= names
    assert sum(n.startswith("score__") for n in names) == stacks - 1
    assert sum(count_params(variables["params"])) == BEARPAW_PARAMS[arch]
    assert heatmap_size_for(arch) == 64 and input_size_for(arch) == 256
    assert heatmap_size_for(arch, input_size=64) == 16


def test_resnet_dilation_rule_matches_the_paper_table():
    # (stride, dilation) of layer1..4 for dilate 0..3 (docs/paper-recipe.md §1 table).
    assert stage_plan(4, 0) == [(1, 1), (2, 1), (2, 1), (2, 1)]
    assert stage_plan(4, 1) == [(1, 1), (2, 1), (2, 1), (1, 2)]
    assert stage_plan(4, 2) == [(1, 1), (2, 1), (1, 2), (1, 4)]
    assert stage_plan(4, 3) == [(1, 1), (1, 2), (1, 4), (1, 8)]
    # In the built network: block 0's formerly strided 3×3 keeps dilation 1 (torchvision's
    # replace_stride_with_dilation would give layer4 block 0 dilation 2 here).
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            path = "/".join(context.module.scope.path[-2:])
            strides, dilation = context.module.strides, context.module.kernel_dilation or 1
            seen[path] = tuple(2 * (v,) if isinstance(v, int) else tuple(v)
                               for v in (strides, dilation))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _abstract(create_model("resnet50", res=28), 32)
    assert seen["layer2_0/conv2"] == ((2, 2), (1, 1))
    assert seen["layer2_0/downsample_conv"] == ((2, 2), (1, 1))
    assert seen["layer3_0/conv2"] == ((1, 1), (1, 1))
    assert seen["layer3_0/downsample_conv"] == ((1, 1), (1, 1))
    assert seen["layer3_5/conv2"] == ((1, 1), (2, 2))
    assert seen["layer4_0/conv2"] == ((1, 1), (1, 1))
    assert seen["layer4_1/conv2"] == ((1, 1), (4, 4))
    assert seen["layer4_2/conv1"] == ((1, 1), (1, 1))  # 1×1 convs are never dilated


def test_real_forward_resnet_and_hourglass():
    # Full-size ResNet forwards run in test_pretrained.py (PyTorch parity); tiny ones here.
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    for model in (create_model("resnet18", res=28, num_joints=3, **TINY_RESNET),):
        variables = _variables(model, images)
        train_apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
        out, updates = jax.jit(train_apply)(variables, images)
        side = feature_size(32, model.dilate)
        assert out["heatmaps"].shape == (2, 3, side, side) and out["coords"].shape == (2, 3, 2)
        assert np.all(np.isfinite(np.asarray(out["coords"])))
        np.testing.assert_allclose(np.sum(out["heatmaps"], axis=(-2, -1)), 1.0, atol=1e-5)
        changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                         updates["batch_stats"], variables["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))      # train mode updates every BatchNorm
    hg = create_model("hg2", num_joints=3, output="hm", **TINY_HG)
    variables = _variables(hg, images)
    out = jax.jit(hg.apply)(variables, images)
    assert out["heatmaps"].shape == (2, 3, 8, 8) and out["stacks"]["logits"].shape == (2, 2, 3, 8, 8)
    np.testing.assert_array_equal(out["stacks"]["logits"][-1], out["logits"])
    assert not np.allclose(out["stacks"]["logits"][0], out["stacks"]["logits"][1])
    np.testing.assert_array_equal(out["coords"], hm_decode(out["logits"]))


# --------------------------------------------------------------------------------------------------
# Parameter and FLOP counts


def test_fc_head_is_counted_as_head():
    variables, _, _ = trace_model(create_model("resnet18", res=28, output="fc"), 224)
    trunk, head = count_params(variables["params"])
    assert trunk == 11_176_512 and head == 512 * 16 + 28 * 28 * 2 + 2


def test_summary_cli(capsys):
    summary_main(["--backbones", "resnet18", "hg1"])
    text = capsys.readouterr().out
    assert "GFLOPs = 2 × GMACs" in text
    lines = [ln for ln in text.splitlines() if ln.startswith(("resnet18@", "hg1"))]
    assert [ln.split()[0] for ln in lines] == ["resnet18@7", "resnet18@14", "resnet18@28",
                                               "resnet18@56", "hg1"]
    assert "11,176,512" in lines[0] and "28x28" in lines[2] and "64x64" in lines[4]
    assert lines[0].split()[-2] == "1.81"                  # GMACs of resnet18@7
    with pytest.raises(SystemExit):
        summary_main(["--help"])


# --------------------------------------------------------------------------------------------------
# BatchNorm semantics


def test_batchnorm_running_stats_follow_pytorch():
    x = jax.random.normal(jax.random.key(0), (4, 3, 5, 6)) * 2 + 1
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(1), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 6)
    n = flat.shape[0]
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    # PyTorch: the running variance takes the unbiased batch variance.
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0, ddof=1),
                               rtol=1e-5)
    normalised = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)   # biased, as PyTorch
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 6), normalised, atol=1e-5)
    assert n > 1
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(6)
    tbn.train()
    ty = tbn(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(updates["batch_stats"]["var"], tbn.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], tbn.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)


def test_batchnorm_axis_name_averages_over_devices():
    if jax.local_device_count() < 2:
        pytest.skip("needs 2 devices (tests/conftest.py simulates them on CPU)")
    tiny = {"stage_sizes": (1, 1), "widths": (8, 8), "stem_width": 8}
    model = create_model("resnet18", res=14, num_joints=2, axis_name="batch", **tiny)
    reference = create_model("resnet18", res=14, num_joints=2, **tiny)
    images = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    variables = _variables(reference, images)
    full, full_upd = jax.jit(lambda v, x: reference.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, images)

    def per_device(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    replicated = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), variables)
    sharded, upd = jax.pmap(per_device, axis_name="batch")(replicated, images.reshape(2, 2, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(sharded["logits"]).reshape(full["logits"].shape),
                               full["logits"], atol=2e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
                           upd["batch_stats"], full_upd["batch_stats"])


def test_initialisers_follow_pytorch():
    key = jax.random.key(0, impl="rbg")  # RngBitGenerator: compiles fast on CPU
    kernel = np.asarray(resnet_conv_init(key, (3, 3, 64, 128)))
    # torchvision: kaiming_normal_(fan_out, relu), std √(2/(3·3·128)), an untruncated normal.
    std = math.sqrt(2 / (9 * 128))
    assert abs(kernel.std() / std - 1) < 0.02 and np.abs(kernel).max() > 3.5 * std
    # PyTorch's default conv/linear init: U(±1/√fan_in) for weights and biases.
    bound = 1 / math.sqrt(3 * 3 * 64)
    kernel = np.asarray(torch_default_kernel_init(key, (3, 3, 64, 32)))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    bias = np.asarray(torch_default_bias_init(3 * 3 * 64)(key, (4000,)))
    assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.99 * bound


# --------------------------------------------------------------------------------------------------
# dtypes


@pytest.mark.parametrize("arch", ["resnet50", "hg1"])
def test_bfloat16_forward(arch):
    overrides = TINY_RESNET if arch.startswith("resnet") else TINY_HG
    kwargs = {"res": 56, "output": "fc"} if arch.startswith("resnet") else {}
    f32 = create_model(arch, num_joints=3, **kwargs, **overrides)
    bf16 = create_model(arch, num_joints=3, dtype=jnp.bfloat16, **kwargs, **overrides)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    variables = _variables(f32, images)
    conv_dtypes = set()

    def record(next_fun, args, kwargs_, context):
        out = next_fun(*args, **kwargs_)
        if isinstance(context.module, nn.Conv):
            conv_dtypes.add(out.dtype)
        return out

    with nn.intercept_methods(record):
        out = jax.jit(bf16.apply)(variables, images)
    assert conv_dtypes == {jnp.dtype(jnp.bfloat16)}         # the network computes in bfloat16
    ref = jax.jit(f32.apply)(variables, images)
    for key in ("coords", "heatmaps", "logits"):
        assert out[key].dtype == jnp.float32                # ... the heads and ops in float32
    np.testing.assert_allclose(np.sum(out["heatmaps"], axis=(-2, -1)), 1.0, atol=1e-6)
    scale = float(jnp.max(jnp.abs(ref["logits"])))
    np.testing.assert_allclose(out["logits"], ref["logits"], atol=0.05 * scale)
    assert jax.tree_util.tree_leaves(variables["params"])[0].dtype == jnp.float32


# --------------------------------------------------------------------------------------------------
# Factory


def test_factory_errors():
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        create_model("vgg16")
    with pytest.raises(ValueError, match="need res in"):
        create_model("resnet50")
    with pytest.raises(ValueError, match="need res in"):
        create_model("resnet50", res=32)
    with pytest.raises(ValueError, match="pass res=None"):
        create_model("hg2", res=28)
    with pytest.raises(ValueError, match="unknown output strategy"):
        create_model("resnet18", res=7, output="gauss")
    with pytest.raises(ValueError, match="unknown heatmap activation"):
        create_model("resnet18", res=7, activation="tanh")
    with pytest.raises(ValueError, match="unknown ResNetPose fields"):
        create_model("resnet18", res=7, num_stacks=2)
    with pytest.raises(ValueError, match="multiples of 64"):
        _abstract(create_model("hg1"), 96)
    with pytest.raises(ValueError, match="NHWC"):
        create_model("resnet18", res=7).init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
    assert set(BACKBONES) == set(RESNETS) | set(HOURGLASSES)
