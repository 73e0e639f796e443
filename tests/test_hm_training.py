"""Heatmap-matching (HM) training leaves the all-zero heatmap (issue #14).

At 24×24 px the paper's HM target (a σ = 1 px Gaussian of peak 1) carries πσ²/24² ≈ 0.5 % of the map's
energy (0.3 % at 32×32), while the raw 1×1 heatmap conv starts with O(0.5) outputs everywhere and RMSProp moves
every weight by about lr per step (10·lr in the first steps: PyTorch's v₀ = 0). A short run first spends its
steps shrinking that noise and then sits at the all-zero prediction: on the 96-px CPU fig7 grid the 24-px HM run
ended its epoch with the MSE of zeros and a PCKh below the mean pose. The CPU grids therefore draw the target
with a larger peak (`train.experiments.grid.CPU_HM_AMPLITUDE`, `pose_loss(..., hm_amplitude=...)`).

The tiny problem: images of four faint coloured discs (one colour per joint) in noise, the joints scattered
around a mean pose; a narrow ResNet-18 at the geometry of the fig7 grid's hm-56 run (a 128-px input, res 56 →
32×32 heatmaps); the grid's RMSProp learning rate; 60 steps of batch 16 (~15 s on 2 cores). Test images are
held out.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsnt_jax.models import create_model, hm_decode, hm_encode, pose_loss
from train.experiments import grid as E
from train.loop.state import TrainState, create_train_state, torch_rmsprop

J, SIZE, RES, HEATMAP = 4, 128, 56, 32  # res 56 at a 128-px input: stride 4, 32×32 maps (fig7's hm-56)
N_TRAIN, N_TEST, BATCH, STEPS = 256, 64, 16, 60
MEAN_POSE = np.array([[-0.4, -0.4], [0.4, -0.4], [-0.4, 0.4], [0.4, 0.4]])
SPREAD = 0.1                      # joint std around MEAN_POSE (normalised units)
PCK_RADIUS = 0.1                  # normalised: 1.6 heatmap px
COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)  # one per joint
DISC_RADIUS = 0.083               # normalised: 5.3 input px
TINY = {"widths": (8, 8, 16, 64), "stem_width": 8, "stage_sizes": (1, 1, 1, 1)}


def make_problem(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images float32 [n, SIZE, SIZE, 3] in [0, 0.8] and their joints [n, J, 2] (normalised (x, y)).

    Each joint j is a disc of colour COLOURS[j] at 0.3 contrast over uniform [0, 0.5] noise."""
    rng = np.random.default_rng(seed)
    coords = np.clip(MEAN_POSE + rng.normal(0.0, SPREAD, (n, J, 2)), -0.9, 0.9).astype(np.float32)
    images = rng.uniform(0.0, 0.5, (n, SIZE, SIZE, 3)).astype(np.float32)
    centres = (np.arange(SIZE) + 0.5) * 2 / SIZE - 1          # pixel centres, normalised
    for i in range(n):
        for j in range(J):
            d2 = (centres[None, :] - coords[i, j, 0]) ** 2 + (centres[:, None] - coords[i, j, 1]) ** 2
            images[i][d2 < DISC_RADIUS**2] += 0.3 * COLOURS[j]
    return images, coords


def grid_hm_settings() -> tuple[float, float]:
    """(learning rate, target amplitude) of the CPU fig7 grid's highest-resolution HM run: what the test guards."""
    (run,) = E.select_runs(E.build_experiment("fig7"), "hm-56")
    assert (run.config.model.input_size, run.config.model.heatmap_size) == (SIZE, HEATMAP)
    return run.config.lr, run.config.hm_amplitude


@functools.cache
def _model() -> Any:
    return create_model("resnet18", res=RES, output="hm", num_joints=J, **TINY)


@functools.cache
def _train_step() -> Any:
    """The jitted HM update; the amplitude is an argument, so every amplitude shares one compilation."""

    @jax.jit
    def step(state: TrainState, images: jax.Array, coords: jax.Array,
             amplitude: jax.Array) -> tuple[TrainState, jax.Array]:
        mask = jnp.ones(coords.shape[:-1], jnp.float32)

        def loss_fn(params: Any) -> tuple[jax.Array, Any]:
            out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                          train=True, mutable=["batch_stats"])
            loss, _ = pose_loss(out, coords, mask, output="hm", hm_amplitude=amplitude)
            return loss, updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads, batch_stats=stats), loss

    return step


def train_hm(amplitude: float, lr: float, seed: int = 0) -> dict[str, float]:
    """Trains the tiny problem; returns the loss vs that of predicting zeros, and held-out PCK.

    Returns:
      {'loss': mean training loss of the last 10 steps, 'zero_loss': the MSE of all-zero heatmaps on the
      training set (same amplitude), 'pck': held-out PCK@PCK_RADIUS of `hm_decode`, 'pck_mean_pose': that of
      the training set's mean pose}.
    """
    images, coords = make_problem(2 * seed, N_TRAIN)
    state = create_train_state(_model(), seed, SIZE, torch_rmsprop(lr))
    step, losses = _train_step(), []
    for i in range(STEPS):
        k = (i * BATCH) % N_TRAIN
        state, loss = step(state, images[k:k + BATCH], coords[k:k + BATCH], jnp.float32(amplitude))
        losses.append(float(loss))
    zero_loss = float(jnp.mean(jnp.square(amplitude * hm_encode(coords, (HEATMAP, HEATMAP)))))
    test_images, test_coords = make_problem(2 * seed + 1, N_TEST)
    out = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, test_images, train=False)
    decoded = np.asarray(hm_decode(out["heatmaps"]))
    mean_pose = coords.mean(axis=0)

    def pck(pred: np.ndarray) -> float:
        return float(np.mean(np.linalg.norm(pred - test_coords, axis=-1) < PCK_RADIUS))

    return {"loss": float(np.mean(losses[-10:])), "zero_loss": zero_loss, "pck": pck(decoded),
            "pck_mean_pose": pck(np.broadcast_to(mean_pose, test_coords.shape))}


@pytest.fixture(scope="module")
def grid_result() -> dict[str, float]:
    lr, amplitude = grid_hm_settings()
    return train_hm(amplitude, lr)


def test_hm_loss_falls_well_below_that_of_zeros(grid_result: dict[str, float]) -> None:
    # Half: at the paper's amplitude the loss ends at 1.0–1.9× that of zeros (seeds 0–2), here 0.11–0.13×.
    assert grid_result["loss"] < 0.5 * grid_result["zero_loss"], grid_result


def test_hm_argmax_decoding_beats_the_mean_pose(grid_result: dict[str, float]) -> None:
    # The mean pose scores 0.39–0.47 here; the grid's setting decodes 1.0, the paper's amplitude 0.58–0.77.
    assert grid_result["pck"] > grid_result["pck_mean_pose"] + 0.4, grid_result


def test_paper_amplitude_stays_near_zeros_in_this_budget() -> None:
    """Guards the problem's sensitivity: with the paper's peak of 1 and the same steps, the loss has not left
    the all-zero level (so the tests above would fail without the grid's amplitude)."""
    lr, _ = grid_hm_settings()
    result = train_hm(1.0, lr)
    assert result["loss"] > 0.8 * result["zero_loss"], result


def test_hm_amplitude_scales_the_target_only() -> None:
    """pose_loss(hm_amplitude=A) is the MSE to A × the paper's target; A = 1 is the paper's loss."""
    rng = np.random.default_rng(0)
    heatmaps = jnp.asarray(rng.normal(size=(2, J, 6, 6)), jnp.float32)
    coords = jnp.asarray(rng.uniform(-0.9, 0.9, (2, J, 2)), jnp.float32)
    mask = jnp.ones((2, J))
    out = {"coords": hm_decode(heatmaps), "heatmaps": heatmaps}
    target = hm_encode(coords, (6, 6))
    for amplitude in (1.0, 10.0):
        loss, aux = pose_loss(out, coords, mask, output="hm", hm_amplitude=amplitude)
        np.testing.assert_allclose(loss, jnp.mean(jnp.square(heatmaps - amplitude * target)), rtol=1e-6)
        np.testing.assert_allclose(aux["mse"], loss)
    np.testing.assert_array_equal(pose_loss(out, coords, mask, output="hm")[0],
                                  pose_loss(out, coords, mask, output="hm", hm_amplitude=1.0)[0])
    # The decoded coordinates of a scaled map are those of the map (argmax and the ¼-px rule).
    np.testing.assert_array_equal(hm_decode(10.0 * heatmaps), hm_decode(heatmaps))


@pytest.mark.parametrize("amplitude", [0.0, -1.0, float("nan"), float("inf")])
def test_hm_amplitude_must_be_positive_and_finite(amplitude: float) -> None:
    heatmaps = jnp.zeros((1, J, 6, 6))
    with pytest.raises(ValueError, match="hm_amplitude"):
        pose_loss({"coords": jnp.zeros((1, J, 2)), "heatmaps": heatmaps}, jnp.zeros((1, J, 2)),
                  jnp.ones((1, J)), output="hm", hm_amplitude=amplitude)


def test_train_main_passes_the_hm_amplitude_to_the_loss(tmp_path) -> None:
    """`python -m train.main --hm-amplitude=A` trains against A × the paper's target: the first step's logged
    MSE (same initialisation, same first batch) changes with A exactly as the loss says it must."""
    import json

    import tiny_run

    from train import main as train_main
    from train.loop import config as C

    _, data_dir = tiny_run.build_data(tmp_path)
    first_mse = {}
    for amplitude in (1.0, 10.0):
        argv = tiny_run.command(tmp_path / f"run-{amplitude:g}", data_dir, epochs=1)[3:]  # drop python -m train.main
        cfg = C.parse_args([*argv, "--output=hm", f"--hm-amplitude={amplitude:g}", "--log-every=1",
                            "--eval-every=1"])
        assert train_main.train(cfg) == 0
        with open(tmp_path / f"run-{amplitude:g}" / "metrics.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        first_mse[amplitude] = next(r["mse"] for r in records if r["split"] == "train" and r["step"] == 1)
    # mse(A) = E[out²] − 2A·E[out·g] + A²·E[g²] with the same outputs at step 1, so the two values differ by
    # far more than rounding unless the flag never reached the loss.
    assert first_mse[10.0] > 2 * first_mse[1.0], first_mse
