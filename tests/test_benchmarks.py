"""benchmarks.inference / benchmarks.train_step smoke runs, benchmarks.memory, and the PyTorch reference
model's parity."""

from __future__ import annotations

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import inference, memory, train_step
from dsnt_jax.models import create_model, pose_loss, state_dict_to_variables

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "dsntnn"))
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch/dsntnn not installed")


# ----------------------------------------------------------------------------------------------------
# Pure helpers


def test_parse_models():
    specs = inference.parse_models("resnet50@28, hg8")
    assert [s.name for s in specs] == ["resnet50@28", "hg8"]
    assert specs[0].is_resnet and not specs[1].is_resnet
    assert len(inference.parse_models("all")) == 5 * 4 + 4
    for bad in ("resnet50@9", "resnet50", "hg3", "hg8@64", ""):
        with pytest.raises(ValueError):
            inference.parse_models(bad)


def test_median_mad_is_a_robust_sigma():
    med, sigma = inference.median_mad([1.0, 2.0, 3.0, 4.0, 100.0])
    assert med == 3.0
    assert sigma == pytest.approx(1.0 / 0.6744897501960817)  # MAD = 1, unaffected by the outlier


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        inference.main(["--quick", "--memory", "runtime"])  # CPU: no allocator statistics
    assert "needs a GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_step.main(["--quick", "--dtypes", "float16"])
    assert "--dtypes" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Quick runs


def test_inference_quick(capsys):
    # Memory is tested below on a smaller network (compiling ResNet-18's backward pass costs ~10 s).
    rows = inference.main(["--quick", "--torch", "--models", "resnet18@7", "--input-size", "32",
                           "--repeats", "2", "--warmup", "1", "--memory", "none"])
    out = capsys.readouterr().out
    assert f"device: {jax.devices()[0].platform}" in out
    assert "method: not measured" in out
    (row,) = rows
    assert row["model"] == "resnet18@7" and row["input_size"] == 32 and row["heatmap"] == 1
    assert row["jax_ms"] > 0 and "jax_mib" not in row
    if HAS_TORCH:
        assert row["torch_ms"] > 0
        assert f"ratio resnet18@7: PyTorch eager / dsnt-jax time = {row['speedup']:.2f}×" in out


def test_compiled_training_memory_counts_weights_gradients_and_activations():
    model = create_model("resnet18", res=7, stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64),
                         stem_width=8)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes["params"]))
    batch = 8
    used = memory.jax_compiled_memory(model, 32, batch=batch)
    # Parameters in, gradients out, the input images and the stem's 16×16×8 activations at least.
    assert used >= 2 * param_bytes + batch * (32 * 32 * 3 + 16 * 16 * 8) * 4
    assert used < 64 * 2**20  # and nothing absurd for a 0.1 M-parameter network


def test_train_step_quick(capsys):
    rows = train_step.main(["--quick", "--input-size", "32", "--steps", "1", "--repeats", "1",
                            "--warmup", "1"])
    out = capsys.readouterr().out
    assert f"device: {jax.devices()[0].platform}" in out
    frameworks = [(r["framework"], r["dtype"]) for r in rows]
    assert ("dsnt-jax", "float32") in frameworks
    assert all(r["images_per_s"] > 0 and math.isfinite(r["loss"]) for r in rows)
    if HAS_TORCH:
        assert ("pytorch", "float32") in frameworks
        assert "ratio float32: dsnt-jax / PyTorch eager images/s = " in out


# ----------------------------------------------------------------------------------------------------
# PyTorch reference model


@needs_torch
@pytest.mark.parametrize("res, dilations", [
    (7, {"layer3": [(1, 1)] * 4, "layer4": [(1, 1)] * 4}),
    (28, {"layer3": [(1, 1), (2, 2), (2, 2), (2, 2)], "layer4": [(1, 1), (4, 4), (4, 4), (4, 4)]}),
])
def test_torch_reference_uses_the_papers_dilation_rule(res, dilations):
    import torch

    from benchmarks.torch_reference import build_torch_model

    model = build_torch_model("resnet18", res)
    trunk = model.backbone
    for layer, expected in dilations.items():
        group = getattr(trunk, layer)
        got = [group[0].conv1.dilation, group[0].conv2.dilation, group[1].conv1.dilation,
               group[1].conv2.dilation]
        assert got == expected, layer
    stride = 1 if res == 28 else 2
    assert trunk.layer4[0].conv1.stride == (stride, stride)
    assert trunk.layer4[0].downsample[0].stride == (stride, stride)
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 64, 64))
    side = 64 * res // 224
    assert out["heatmaps"].shape == (1, 16, side, side) and out["coords"].shape == (1, 16, 2)


@needs_torch
def test_torch_reference_matches_flax_model():
    import torch

    from benchmarks.torch_reference import (
        build_torch_model,
        copy_flax_variables,
        torch_loss,
    )

    torch.manual_seed(0)
    net = build_torch_model("resnet18", 28)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    net.eval()

    # torch → Flax through the project's torchvision state-dict import; the head by hand (OIHW → HWIO).
    trunk, _ = state_dict_to_variables(net.backbone.state_dict(), "resnet18")
    model = create_model("resnet18", res=28)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    head = net.hm_conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    assert head.shape == shapes["params"]["hm_conv"]["kernel"].shape
    variables = {"params": {"backbone": trunk["params"], "hm_conv": {"kernel": head}},
                 "batch_stats": {"backbone": trunk["batch_stats"]}}

    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    with torch.no_grad():
        theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    assert np.abs(np.asarray(ours["logits"])).max() > 0.1  # not a comparison of near-zero maps
    for key in ("logits", "heatmaps", "coords"):
        np.testing.assert_allclose(np.asarray(ours[key]), theirs[key].numpy(), rtol=0, atol=1e-4,
                                   err_msg=key)

    targets = rng.uniform(-0.9, 0.9, (2, 16, 2)).astype(np.float32)
    mask = np.ones((2, 16), np.float32)
    mask[0, 3] = 0
    loss, _ = pose_loss(ours, targets, mask, output="dsnt", reg="js")
    expected = torch_loss(theirs, torch.from_numpy(targets), torch.from_numpy(mask))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)

    # And back: Flax variables → a fresh torch model reproduce every tensor.
    fresh = copy_flax_variables(build_torch_model("resnet18", 28), variables)
    for name, tensor in net.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
