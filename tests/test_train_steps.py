"""train.loop.steps / train.loop.state: data-parallel step equivalence, the learning-rate schedule, flip test."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from data.augment import flip_images, unflip_coords
from dsnt_jax.models import create_model, decode_with_params
from train.inference import forward
from train.loop import state as state_lib
from train.loop import steps

TINY = dict(widths=(8, 8, 8, 8), stem_width=8, stage_sizes=(1, 1, 1, 1))
GLOBAL_BATCH, SIZE = 8, 32


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (rng.uniform(size=(GLOBAL_BATCH, 16)) < 0.8).astype(np.float32)
    mask[:2] = 1.0   # the two halves carry different numbers of annotated joints,
    mask[5:] = 0.0   # so a plain mean of per-device losses would give a different step
    return {"image": rng.uniform(size=(GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "coords": rng.uniform(-0.9, 0.9, size=(GLOBAL_BATCH, 16, 2)).astype(np.float32),
            "mask": mask}


def _run_steps(output: str, reg: str, num_devices: int, num_steps: int = 2
               ) -> tuple[state_lib.TrainState, state_lib.TrainState, dict]:
    """(initial state, state after `num_steps` SGD(1) steps, last metrics) on the first `num_devices`."""
    devices = jax.local_devices()[:num_devices]
    model = create_model("resnet18", res=28, output=output, axis_name=steps.AXIS, **TINY)
    schedule = state_lib.epoch_schedule(1e-2, (1,), 0.1, 4)
    # Plain SGD makes the update the gradient itself. (RMSProp's first step, lr·g/(0.1|g| + 1e-8), turns
    # float32 round-off in gradients near 1e-8 into visible differences whatever the device count; its
    # maths is checked against PyTorch in test_optim_parity.py.)
    state = state_lib.create_train_state(model, 0, SIZE, optax.sgd(1.0))
    step = steps.make_train_step(output=output, reg=reg, sigma=1.0, reg_coeff=1.0, learning_rate_fn=schedule,
                                 devices=devices)
    rstate = steps.replicate(state, devices)
    for seed in range(num_steps):
        rstate, metrics = step(rstate, steps.shard(_batch(seed), num_devices))
    return state, steps.unreplicate(rstate), steps.unreplicate(metrics)


def _assert_trees_close(a, b, name: str, atol: float) -> None:
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(y, x, rtol=0, atol=atol, err_msg=f"{name}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("output, reg", [("dsnt", "js"), ("hm", "none")])
def test_two_devices_match_one_device_with_the_same_global_batch(output: str, reg: str) -> None:
    assert jax.local_device_count() >= 2, "conftest should provide 2 CPU devices"
    start, one_state, one_metrics = _run_steps(output, reg, 1)
    _, two_state, two_metrics = _run_steps(output, reg, 2)
    assert int(one_state.step) == int(two_state.step) == 2
    _assert_trees_close(one_state.params, two_state.params, "params", 1e-5)
    _assert_trees_close(one_state.batch_stats, two_state.batch_stats, "batch_stats", 1e-5)
    for key in one_metrics:
        np.testing.assert_allclose(two_metrics[key], one_metrics[key], rtol=1e-5, err_msg=key)
    # The parameters did move: the comparison above is not between two untouched initialisations.
    moved = jax.tree_util.tree_map(lambda p, q: float(np.max(np.abs(p - q))), start.params, one_state.params)
    assert max(jax.tree_util.tree_leaves(moved)) > 1e-3
    # epoch_schedule(1e-2, (1,), 0.1, 4): the second step (count 1) is still in epoch 0.
    np.testing.assert_allclose(one_metrics["lr"], 1e-2, rtol=1e-6)


def test_schedule_values_at_the_milestones() -> None:
    steps_per_epoch = 811  # MPII: ⌈25925 / 32⌉
    schedule = state_lib.epoch_schedule(2.5e-4, (60, 90), 0.1, steps_per_epoch)
    expected = {0: 2.5e-4, 60 * steps_per_epoch - 1: 2.5e-4, 60 * steps_per_epoch: 2.5e-5,
                90 * steps_per_epoch - 1: 2.5e-5, 90 * steps_per_epoch: 2.5e-6, 120 * steps_per_epoch - 1: 2.5e-6}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6, err_msg=f"step {step}")


def _init(model, seed: int):
    return jax.jit(model.init)(jax.random.key(seed, impl="rbg"), jnp.zeros((1, SIZE, SIZE, 3)))


def test_flip_test_is_mirror_consistent() -> None:
    # (Not true of hm: argmax ties and the (0, 0) fallback of hm_decode are not mirror symmetric, and not
    # of fc: its learned Dense is not.)
    output = "dsnt"
    model = create_model("resnet18", res=28, output=output, **TINY)
    variables = _init(model, 1)
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)), jnp.float32)

    def predict(x: jax.Array, flip_test: bool) -> np.ndarray:
        return np.asarray(forward.predict(model.apply, variables, x, output=output, activation="softmax",
                                               flip_test=flip_test)[0])

    plain, flipped = predict(images, True), predict(flip_images(images), True)
    # Averaging a prediction with its mirror makes it equivariant: mirroring the input mirrors the output.
    np.testing.assert_allclose(np.asarray(unflip_coords(flipped)), plain, atol=1e-5)
    assert not np.allclose(predict(images, False), plain, atol=1e-4)


def test_flip_test_fc_applies_the_shared_dense_to_averaged_maps() -> None:
    model = create_model("resnet18", res=28, output="fc", **TINY)
    variables = _init(model, 3)
    image = jnp.asarray(np.random.default_rng(2).uniform(size=(1, SIZE, SIZE, 3)), jnp.float32)
    logits = model.apply(variables, image, train=False)["logits"]
    # Without flipping, the fc decoder applied to the model's own logits reproduces its coordinates.
    direct = decode_with_params(logits, variables["params"], output="fc", activation="softmax")[0]
    np.testing.assert_allclose(np.asarray(direct), np.asarray(model.apply(variables, image)["coords"]), atol=1e-6)
    flipped = forward.predict(model.apply, variables, image, output="fc", activation="softmax",
                                   flip_test=True)[0]
    assert flipped.shape == (1, 16, 2) and np.isfinite(np.asarray(flipped)).all()


def test_flip_test_averages_logits_before_dsnt() -> None:
    model = create_model("resnet18", res=28, output="dsnt", **TINY)
    variables = _init(model, 2)
    image = jnp.asarray(np.random.default_rng(1).uniform(size=(1, SIZE, SIZE, 3)), jnp.float32)
    logits = model.apply(variables, image, train=False)["logits"][0]                  # [J, h, w]
    mirror = model.apply(variables, flip_images(image), train=False)["logits"][0]
    from data.joints import FLIP_PERMUTATION
    averaged = 0.5 * (logits + mirror[np.asarray(FLIP_PERMUTATION), :, ::-1])
    probs = jax.nn.softmax(averaged.reshape(16, -1), axis=-1).reshape(averaged.shape)
    h, w = probs.shape[-2:]
    xs, ys = (2 * np.arange(w) + 1) / w - 1, (2 * np.arange(h) + 1) / h - 1
    expected = np.stack([np.einsum("jhw,w->j", probs, xs), np.einsum("jhw,h->j", probs, ys)], -1)
    got = forward.predict(model.apply, variables, image, output="dsnt", activation="softmax",
                               flip_test=True)[0]
    np.testing.assert_allclose(np.asarray(got[0]), expected, atol=1e-5)
