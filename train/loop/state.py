"""Train state, the paper's optimiser (PyTorch RMSProp) and its step-wise learning-rate schedule.

The paper's code (anibali/dsnt-pose2d `bin/train.py`) used `torch.optim.RMSprop(lr=2.5e-4)` with PyTorch's
defaults — v ← 0.99·v + 0.01·g², θ ← θ − lr·g/(√v + 1e-8), v₀ = 0, no momentum — and a MultiStepLR that
multiplies the rate by 0.1 at epochs 60 and 90, stepped once per epoch. Here the schedule is indexed by
optimiser step, so an epoch milestone m becomes step m·steps_per_epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState plus BatchNorm statistics and a PRNG key.

    Attributes (beyond step, params, tx, opt_state, apply_fn):
      batch_stats: the model's 'batch_stats' collection (running means/variances).
      rng: uint32 [2] PRNG key; step t uses fold_in(rng, t) (the networks are deterministic today, but
        the key is checkpointed with the rest so that stochastic layers would resume exactly).
    """

    batch_stats: Any
    rng: jax.Array


def torch_rmsprop(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """`torch.optim.RMSprop(lr)` with its defaults: decay 0.99, eps 1e-8 outside the √, v₀ = 0."""
    return optax.rmsprop(learning_rate, decay=0.99, eps=1e-8, initial_scale=0.0, eps_in_sqrt=False,
                         centered=False, momentum=None)


def epoch_schedule(lr: float, milestones: Sequence[int], gamma: float,
                   steps_per_epoch: int) -> optax.Schedule:
    """MultiStepLR stepped per epoch, as a function of the optimiser step.

    lr·gamma^k during epoch e, k = number of milestones ≤ e; the step that starts epoch m (step
    m·steps_per_epoch, 0-based count of updates already applied) is the first to use the new rate.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    # optax multiplies the scales cumulatively, so each milestone contributes one factor gamma.
    boundaries = {int(m) * steps_per_epoch: gamma for m in milestones}
    return optax.piecewise_constant_schedule(lr, boundaries)


def create_train_state(model: nn.Module, seed: int, input_size: int,
                       tx: optax.GradientTransformation) -> TrainState:
    """Initialises the model on a [1, S, S, 3] dummy batch and wraps it with `tx`.

    Args:
      model: a pose model from `dsnt_jax.models.create_model`.
      seed: initialisation seed; the state's own key is `jax.random.PRNGKey(seed)`.
      input_size: S, the input side in pixels.
      tx: the optimiser.

    Returns:
      A TrainState at step 0 (not replicated).
    """
    # XLA's RngBitGenerator ('rbg') compiles the initialisers several times faster than threefry,
    # which matters on CPU where compiling the init can take longer than compiling the train step.
    init_key = jax.random.key(seed, impl="rbg")
    dummy = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, dummy, train=False))(init_key)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}),
                             rng=jax.random.PRNGKey(seed))


def replace_variables(state: TrainState, variables: dict[str, Any]) -> TrainState:
    """Swaps in new params/batch_stats (e.g. pretrained weights) and re-initialises the optimiser."""
    params = variables["params"]
    return state.replace(params=params, batch_stats=variables.get("batch_stats", state.batch_stats),
                         opt_state=state.tx.init(params))
