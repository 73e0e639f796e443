"""torchvision state-dict import/export: formats, errors, round trip and numerical parity with PyTorch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsnt_jax.models import (
    create_model,
    load_state_dict_file,
    load_torchvision_resnet,
    save_torchvision_resnet,
    state_dict_to_variables,
    variables_to_state_dict,
)
from dsnt_jax.models.pretrained import backbone_template
from dsnt_jax.models.resnet import ResNet


def _torch():
    return pytest.importorskip("torch")


def _random_variables(arch: str, res: int = 28, seed: int = 0):
    """A pose model and random concrete variables with non-trivial BatchNorm parameters/statistics.

    Filled with numpy from the abstract variables: `model.init`'s threefry PRNG compiles slowly on
    XLA:CPU, and a mix-up of mean/var/scale/bias must show, which initial BatchNorms would hide.
    """
    model = create_model(arch, res=res)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            values = rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape)
        elif name in ("scale", "var"):
            values = rng.uniform(0.5, 1.5, s.shape)
        else:
            values = rng.normal(0, 0.1, s.shape)
        return jnp.asarray(values, s.dtype)

    return model, jax.tree_util.tree_map_with_path(fill, shapes)


def _tree_equal(a, b) -> None:
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_b[path]), err_msg=str(path))


# --------------------------------------------------------------------------------------------------
# Key mapping, round trip, formats


@pytest.mark.parametrize("arch, n_tensors", [("resnet18", 120), ("resnet50", 318)])
def test_state_dict_has_torchvision_keys(arch, n_tensors):
    _, variables = _random_variables(arch)
    sd = variables_to_state_dict(variables)
    # torchvision's resnet18/50 state dicts have 122/320 entries, fc.weight and fc.bias included:
    # 20/53 convs (one weight each) and as many BatchNorms (five entries each).
    assert len(sd) == n_tensors
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape[2:] == (1, 1)
    assert "layer2.0.downsample.1.running_var" in sd
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    if arch == "resnet50":
        assert sd["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
        assert sd["layer4.2.bn3.running_mean"].shape == (2048,)
    else:
        assert sd["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors", ".pth"])
def test_round_trip_through_file(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    if suffix == ".pth":
        _torch()
    _, variables = _random_variables("resnet18")
    path = tmp_path / f"weights{suffix}"
    save_torchvision_resnet(path, variables)
    # Load into a differently initialised model: the trunk must come back exactly, the head stays.
    _, fresh = _random_variables("resnet18", seed=1)
    loaded, ignored = load_torchvision_resnet(path, fresh)
    _tree_equal(loaded["params"]["backbone"], variables["params"]["backbone"])
    _tree_equal(loaded["batch_stats"]["backbone"], variables["batch_stats"]["backbone"])
    np.testing.assert_array_equal(loaded["params"]["hm_conv"]["kernel"],
                                  fresh["params"]["hm_conv"]["kernel"])
    assert len(ignored) == 20 and all(k.endswith("num_batches_tracked") for k in ignored)


def test_fc_keys_are_ignored_not_unexpected():
    _, variables = _random_variables("resnet18")
    sd = variables_to_state_dict(variables)
    sd["fc.weight"] = np.zeros((1000, 512), np.float32)
    sd["fc.bias"] = np.zeros((1000,), np.float32)
    trunk, ignored = state_dict_to_variables(sd, "resnet18")
    assert "fc.weight" in ignored and "fc.bias" in ignored
    _tree_equal(trunk["params"], variables["params"]["backbone"])


def test_dataparallel_prefix_and_checkpoint_wrapper(tmp_path):
    torch_mod = _torch()
    _, variables = _random_variables("resnet18")
    sd = {f"module.{k}": torch_mod.from_numpy(v) for k, v in variables_to_state_dict(variables).items()}
    path = tmp_path / "ckpt.pth"
    torch_mod.save({"state_dict": sd, "epoch": 3}, path)
    loaded = load_state_dict_file(path)
    assert "conv1.weight" in loaded and isinstance(loaded["conv1.weight"], np.ndarray)


def test_errors_name_missing_unexpected_and_misshaped_keys():
    _, variables = _random_variables("resnet18")
    sd = variables_to_state_dict(variables)
    del sd["layer3.1.bn2.running_var"]
    sd["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    sd["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError) as e:
        state_dict_to_variables(sd, "resnet18")
    msg = str(e.value)
    assert "missing keys (1): layer3.1.bn2.running_var" in msg
    assert "unexpected keys (1): layer5.0.conv1.weight" in msg
    assert "layer1.0.conv1.weight (64, 64, 1, 1) (expected (64, 64, 3, 3))" in msg


def test_wrong_depth_is_one_clear_error():
    _, variables = _random_variables("resnet18")
    with pytest.raises(ValueError, match="does not match resnet34: missing keys"):
        state_dict_to_variables(variables_to_state_dict(variables), "resnet34")
    _, variables50 = _random_variables("resnet50")
    with pytest.raises(ValueError, match="unexpected keys .*conv3"):
        state_dict_to_variables(variables_to_state_dict(variables50), "resnet18")


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_state_dict_file(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unsupported state-dict format '.h5'"):
        load_state_dict_file(tmp_path / "weights.h5")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="could not read a state dict from"):
        load_state_dict_file(bad)
    with pytest.raises(ValueError, match="no params/backbone"):
        load_torchvision_resnet(bad, {"params": {}, "batch_stats": {}})


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="needs PyTorch"):
        load_state_dict_file(path)


def test_template_dtype_is_respected():
    _, variables = _random_variables("resnet18")
    template = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.bfloat16),
                                      backbone_template("resnet18"))
    trunk, _ = state_dict_to_variables(variables_to_state_dict(variables), template)
    assert trunk["params"]["conv1"]["kernel"].dtype == jnp.bfloat16


# --------------------------------------------------------------------------------------------------
# Numerical parity with a PyTorch network that uses torchvision's module names


def _torch_reference():
    """benchmarks.torch_reference (torchvision-layout ResNets), skipping without torch or dsntnn."""
    _torch()
    pytest.importorskip("dsntnn")
    from benchmarks import torch_reference

    return torch_reference


def _randomise_(net, seed: int) -> None:
    torch_mod = _torch()
    gen = torch_mod.Generator().manual_seed(seed)
    with torch_mod.no_grad():
        for m in net.modules():
            if isinstance(m, torch_mod.nn.BatchNorm2d):
                m.weight.uniform_(0.3, 0.8, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    net.eval()


def _trunk_features(variables, arch: str, res: int, images: np.ndarray) -> np.ndarray:
    """The pose model's ResNet trunk alone (conv1 … layer4), eval mode, NHWC."""
    model = create_model(arch, res=res)
    trunk = ResNet(stage_sizes=model.stage_sizes, block=model.block, dilate=model.dilate)
    trunk_vars = {c: variables[c]["backbone"] for c in ("params", "batch_stats")}
    return np.asarray(jax.jit(trunk.apply)(trunk_vars, jnp.asarray(images)))


@pytest.mark.parametrize("arch, res", [("resnet18", 28), ("resnet50", 28), ("resnet18", 56)])
def test_parity_with_pytorch_resnet(tmp_path, arch, res):
    torch_mod = _torch()
    ref = _torch_reference()
    torch_mod.manual_seed(0)
    dilate = {7: 0, 14: 1, 28: 2, 56: 3}[res]
    # The self-contained copy of torchvision's layout, whether or not torchvision is installed.
    net = ref.apply_paper_dilation(ref.resnet_trunk(arch, use_torchvision=False), dilate)
    stages = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}[arch]
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == stages
    _randomise_(net, seed=1)
    path = tmp_path / "net.pth"
    torch_mod.save(net.state_dict(), path)

    _, template = _random_variables(arch, res, seed=5)
    variables, _ = load_torchvision_resnet(path, template)

    images = np.random.default_rng(2).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    with torch_mod.no_grad():
        expected = ref.trunk_forward(net, torch_mod.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = _trunk_features(variables, arch, res, images).transpose(0, 3, 1, 2)
    assert got.shape == expected.shape == (2, expected.shape[1], 64 * res // 224, 64 * res // 224)
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero tensors
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_parity_with_torchvision_resnet50(tmp_path):
    torch_mod = _torch()
    ref = _torch_reference()
    torchvision = pytest.importorskip("torchvision")
    torch_mod.manual_seed(0)
    net = ref.apply_paper_dilation(torchvision.models.resnet50(), 2)
    _randomise_(net, seed=3)
    path = tmp_path / "resnet50.pth"
    torch_mod.save(net.state_dict(), path)  # includes fc.*: must be ignored
    variables, ignored = load_torchvision_resnet(path, _random_variables("resnet50", seed=5)[1])
    assert "fc.weight" in ignored
    images = np.random.default_rng(4).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    with torch_mod.no_grad():
        expected = ref.trunk_forward(net, torch_mod.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    got = _trunk_features(variables, "resnet50", 28, images).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
