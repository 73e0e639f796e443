"""The optimiser equals the paper's: torch.optim.RMSprop(lr) with MultiStepLR stepped once per epoch.

Needs PyTorch (the `parity` extra); skipped without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.loop import state as state_lib

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.parity

A = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, -0.2], [0.0, -0.2, 0.1]])
B = np.array([1.0, -2.0, 0.5])
X0 = np.array([0.3, -0.7, 2.0])


def _torch_run(num_steps: int, lr: float, steps_per_epoch: int, milestones: tuple[int, ...]) -> np.ndarray:
    x = torch.tensor(X0, dtype=torch.float64, requires_grad=True)
    a, b = torch.tensor(A), torch.tensor(B)
    opt = torch.optim.RMSprop([x], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    trajectory = []
    for step in range(num_steps):
        opt.zero_grad()
        loss = 0.5 * x @ a @ x - b @ x + 0.1 * torch.sum(x**4)
        loss.backward()
        opt.step()
        trajectory.append(x.detach().numpy().copy())
        if (step + 1) % steps_per_epoch == 0:  # the paper's code steps the scheduler once per epoch
            sched.step()
    return np.stack(trajectory)


def _optax_run(num_steps: int, tx: optax.GradientTransformation) -> np.ndarray:
    def loss_fn(x):
        return 0.5 * x @ A @ x - B @ x + 0.1 * jnp.sum(x**4)

    x = jnp.asarray(X0)
    opt_state = tx.init(x)
    trajectory = []
    for _ in range(num_steps):
        updates, opt_state = tx.update(jax.grad(loss_fn)(x), opt_state, x)
        x = optax.apply_updates(x, updates)
        trajectory.append(np.asarray(x))
    return np.stack(trajectory)


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def test_rmsprop_matches_torch() -> None:
    expected = _torch_run(10, 0.05, 1000, ())
    got = _optax_run(10, state_lib.torch_rmsprop(0.05))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The defaults of optax.rmsprop (decay 0.9, eps inside the square root) would not match.
    assert not np.allclose(_optax_run(10, optax.rmsprop(0.05)), expected, atol=1e-6)


def test_rmsprop_with_epoch_milestones_matches_torch_multisteplr() -> None:
    steps_per_epoch, milestones = 3, (2, 3)  # lr 0.05 in epochs 0-1, 0.005 in epoch 2, 0.0005 from epoch 3
    expected = _torch_run(12, 0.05, steps_per_epoch, milestones)
    schedule = state_lib.epoch_schedule(0.05, milestones, 0.1, steps_per_epoch)
    got = _optax_run(12, state_lib.torch_rmsprop(schedule))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
