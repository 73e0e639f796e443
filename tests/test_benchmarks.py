"""Smoke runs of benchmarks.inference / train_step / ops with their PyTorch peers, benchmarks.memory, and
the PyTorch reference model's parity. The GPU suite and its summary: tests/test_benchmarks_suite.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_suite, inference, memory, ops, torch_peers, train_step
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
    with pytest.raises(SystemExit):
        inference.main(["--quick", "--torch", "eager,jit"])
    assert "bad --torch item 'jit'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference.main(["--quick", "--batches", "1,0"])
    assert "--batches" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        inference.main(["--quick", "--jax-variants", "jit,fused"])
    assert "--jax must be a comma-separated list (choose from jit, folded, estimator)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_suite.main(["--out", "unused", "--timeouts", "inference=soon"])
    assert "bad --timeouts item" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Quick runs (the PyTorch peers' torch.compile uses dynamo's 'eager' backend: inductor compiles for
# minutes on a 2-core CPU; what inductor adds is checked on the GPU by benchmarks.gpu_suite)

EAGER_COMPILE = ["--torch-compile-backend", "eager"]


def test_inference_quick_times_every_batch_variant_and_peer(capsys, tmp_path):
    # Memory is tested below on a smaller network (compiling ResNet-18's backward pass costs ~10 s).
    out_json = tmp_path / "inference.json"
    results = inference.main(["--quick", "--models", "resnet18@7", "--input-size", "32", "--batches",
                              "1,2", "--repeats", "2", "--warmup", "1", "--memory", "none",
                              "--torch", "eager,compile", *EAGER_COMPILE, "--json", str(out_json)])
    out = capsys.readouterr().out
    assert f"device: {jax.devices()[0].platform}" in out and "memory: none" in out
    assert "dsnt-jax estimator: PoseEstimator.predict" in out
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(results))
    assert list(results["settings"]["jax_config_descriptions"]) == ["jit", "folded", "estimator"]
    timings = results["timings"]
    ours = [r for r in timings if r["library"] == "dsnt-jax"]
    # The estimator runs at float32 batch 1 only: its per-call cost.
    assert [(r["batch"], r["config"]) for r in ours] == [
        (1, "jit"), (1, "folded"), (1, "estimator"), (2, "jit"), (2, "folded")]
    for r in timings:
        assert r["model"] == "resnet18@7" and r["input_size"] == 32 and r["heatmap"] == 1
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["ms"] / 1e3))
        assert r["first_call_s"] > 0
    assert results["memory"] == []
    by_config = {(r["batch"], r["config"]): r for r in ours}
    variants = results["variants"]
    assert [(v["batch"], v["config"], v["baseline"]) for v in variants] == [
        (1, "folded", "jit"), (1, "estimator", "folded"), (2, "folded", "jit")]
    estimator = variants[1]
    assert estimator["diff_ms"] == pytest.approx(by_config[1, "estimator"]["ms"] - by_config[1, "folded"]["ms"])
    assert (f"variants resnet18@7 32 px float32 batch 1: jit {by_config[1, 'jit']['ms']:.3f} ms | folded "
            f"{by_config[1, 'folded']['ms']:.3f} ms ({variants[0]['diff_ms']:+.3f} ms vs jit) | estimator "
            f"{estimator['ms']:.3f} ms ({estimator['diff_ms']:+.3f} ms vs folded)") in out
    if HAS_TORCH:
        peers = ["eager", "compile[backend=eager]+channels_last"]
        assert [r["config"] for r in timings if r["library"] == "pytorch"] == peers * 2
        ratio = results["ratios"][-1]
        assert (ratio["batch"], ratio["jax_config"], ratio["peer"]) == (2, "folded", peers[1])
        assert (f"ratio resnet18@7 float32 batch 2: dsnt-jax folded / torch {peers[1]} speed = "
                f"{ratio['ratio']:.2f}×") in out
        assert len(results["ratios"]) == 2 * len(ours)


def test_inference_reports_an_estimator_that_cannot_be_built_and_goes_on(capsys, monkeypatch):
    def no_training_package(spec, size, dtype):  # a GPU machine without tensorflow-datasets
        raise ModuleNotFoundError("No module named 'tensorflow_datasets'")

    estimator = dataclasses.replace(inference.JAX_CONFIGS["estimator"], make=no_training_package)
    monkeypatch.setitem(inference.JAX_CONFIGS, "estimator", estimator)
    results = inference.main(["--quick", "--models", "resnet18@7", "--input-size", "32", "--repeats", "1",
                              "--warmup", "1", "--memory", "none", "--jax-variants", "estimator,jit"])
    failed, jit = results["timings"]
    assert failed["config"] == "estimator" and failed["error"].startswith("ModuleNotFoundError")
    assert jit["config"] == "jit" and jit["ms"] > 0
    assert results["variants"] == []
    [line] = [t for t in capsys.readouterr().out.splitlines() if "unavailable" in t]
    assert " estimator " in line and "unavailable: ModuleNotFoundError: No module named" in line


def test_inference_variants_time_the_same_network():
    # jit and folded run one network (folding is exact to rounding); the estimator crops the whole image,
    # so its joints land near the others, in the same pixel frame.
    spec = inference.parse_models("resnet18@14")[0]
    images = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    pixels = {name: config.make(spec, 64, jnp.float32)(config.host_input(images))
              for name, config in inference.JAX_CONFIGS.items()}
    assert pixels["jit"].shape == pixels["folded"].shape == pixels["estimator"].shape == (1, 16, 2)
    np.testing.assert_allclose(pixels["folded"], pixels["jit"], atol=1e-3)
    np.testing.assert_allclose(pixels["estimator"], pixels["jit"], atol=2.0)
    estimator = inference.JAX_CONFIGS["estimator"]
    assert estimator.applies("float32", 1) and estimator.applies("bfloat16", 1)  # a per-call cost: batch 1 only
    assert not estimator.applies("float32", 2)
    assert inference.JAX_CONFIGS["folded"].applies("bfloat16", 32)
    [uint8] = estimator.host_input(images)  # made before the timed region
    assert uint8.dtype == np.uint8 and uint8.shape == (64, 64, 3)


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


def test_train_step_quick_reports_a_peer_that_cannot_compile_and_goes_on(capsys, monkeypatch, tmp_path):
    real_compile = torch_peers.compile_fn

    def compile_fn(fn, config):  # stands in for inductor failing on one configuration
        if config.compiled and config.channels_last:
            raise RuntimeError("no C++ compiler found\nlong traceback text")
        return real_compile(fn, config)

    monkeypatch.setattr(torch_peers, "compile_fn", compile_fn)
    rows = train_step.main(["--quick", "--input-size", "32", "--steps", "1", "--repeats", "1",
                            "--warmup", "1", "--torch", "eager,compile+nchw,compile", *EAGER_COMPILE,
                            "--json", str(tmp_path / "step.json")])
    out = capsys.readouterr().out
    assert f"device: {jax.devices()[0].platform}" in out
    assert json.loads((tmp_path / "step.json").read_text())["rows"] == json.loads(json.dumps(rows))
    ok = [(r["library"], r["config"]) for r in rows if "error" not in r]
    assert ok[0] == ("dsnt-jax", "train")
    assert all(r["images_per_s"] > 0 and math.isfinite(r["loss"]) for r in rows if "error" not in r)
    if HAS_TORCH:
        assert ok[1:] == [("pytorch", "eager"), ("pytorch", "compile[backend=eager]")]
        (failed,) = [r for r in rows if "error" in r]
        assert failed["config"] == "compile[backend=eager]+channels_last"
        assert failed["error"] == "RuntimeError: no C++ compiler found"
        lines = [line for line in out.splitlines() if "unavailable" in line]
        assert len(lines) == 1 and "compile[backend=eager]+channels_last" in lines[0]
        assert "ratio float32: dsnt-jax train / torch compile[backend=eager] images/s = " in out


@needs_torch
def test_ops_runs_both_libraries_on_one_device_and_survives_a_failed_compile(capsys, tmp_path):
    rows = ops.main(["--batch", "2", "--points", "2", "--sizes", "4", "--repeats", "2",
                     "--calls-per-sync", "2", "--torch", "eager,compile", "--torch-compile-backend",
                     "no-such-backend", "--json", str(tmp_path / "ops.json")])
    out = capsys.readouterr().out
    assert [(r["library"], r["config"]) for r in rows] == [
        ("dsnt-jax", "jit"), ("dsntnn", "eager"), ("dsntnn", "compile[backend=no-such-backend]")]
    assert {r["device"] for r in rows} == {"cpu"}  # no CUDA here: both on the CPU
    assert rows[1]["ratio"] == pytest.approx(rows[1]["us"] / rows[0]["us"])
    assert rows[2]["error"].startswith("InvalidBackend")
    assert sum("unavailable: InvalidBackend" in line for line in out.splitlines()) == 1
    assert json.loads((tmp_path / "ops.json").read_text())["settings"]["torch_device"] == "cpu"


# ----------------------------------------------------------------------------------------------------
# PyTorch peer configurations


def test_input_pipeline_times_the_loader_per_worker_count(capsys):
    from benchmarks import input_pipeline

    input_pipeline.main(["--workers", "0", "--batch-size", "2", "--batches", "2", "--warmup", "1",
                         "--num-records", "4", "--canvas-size", "96", "--input", "hourglass"])
    out = capsys.readouterr().out
    assert "4 synthetic JPEG records, 96 px canvas" in out and "input hourglass" in out
    rate = float(out.strip().splitlines()[-1].split()[1])  # "<workers> <images/s> <images/s/worker>"
    assert rate > 0


def test_torch_config_grammar_and_labels():
    parse = torch_peers.parse_torch_configs
    eager, compiled = parse("eager, compile", compile_mode="reduce-overhead")
    assert (eager.label, compiled.label) == ("eager", "compile(reduce-overhead)+channels_last")
    assert compiled.uses_cuda_graphs and not eager.uses_cuda_graphs
    assert [c.label for c in parse("eager+cl,compile:max-autotune+nchw,compile")] == [
        "eager+channels_last", "compile(max-autotune)", "compile+channels_last"]
    assert [c.label for c in parse("eager,compile", channels_last="on")] == [
        "eager+channels_last", "compile+channels_last"]
    # Modes are inductor's: another backend gets none, so two modes become one configuration.
    assert parse("compile", compile_mode="reduce-overhead", backend="eager")[0].label == \
        "compile[backend=eager]+channels_last"
    assert parse(None) == parse("none") == []
    for bad in ("jit", "eager:reduce-overhead", "compile:fast", "compile+nhwc", "eager,eager"):
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError):
        parse("compile", compile_mode="fast")


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


@needs_torch
def test_torch_reference_runs_channels_last_despite_dsntnn_view():
    # dsntnn.flat_softmax calls .view(), which fails on channels_last logits unless they are made
    # contiguous first; the channels_last peers depend on TorchPoseModel doing so.
    import torch

    from benchmarks.torch_reference import build_torch_model

    torch.manual_seed(0)
    model = build_torch_model("resnet18", 28).eval()
    images = np.random.default_rng(0).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    config = torch_peers.TorchConfig(compiled=False, channels_last=True)
    with torch.no_grad():
        nchw = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))["coords"]
        x = torch_peers.to_device(torch_peers.host_layout(images, config), config, "cpu")
        assert x.is_contiguous(memory_format=torch.channels_last)
        cl = torch_peers.prepare_model(model, config, "cpu")(x)["coords"]
    np.testing.assert_allclose(cl.numpy(), nchw.numpy(), atol=1e-5)
