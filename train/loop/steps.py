"""Data-parallel (jax.pmap) training and evaluation steps.

Every array crossing a step has a leading device axis D: a global batch of B examples arrives as
[D, B/D, ...] and the TrainState is replicated ([D, ...] leaves). Within a step:

* BatchNorm averages its batch statistics over the pmap axis (the model is built with
  `axis_name=AXIS`), so normalisation uses the statistics of the whole global batch.
* The loss of the paper is a masked mean over the joints of the whole batch, Σ(mask·loss)/Σmask. Each
  device scales its own masked mean by w_d/Σw (w_d = Σmask on device d, or 1 for the unmasked HM
  loss), which makes the scaled losses sum to the global loss, and differentiates that. Because the
  BatchNorm statistics couple the devices, the backward pass of their `pmean` hands every device the
  cotangents of all devices' losses, so each device's gradient is its local share of the gradient of
  the global loss, and their `psum` is that gradient exactly: D devices and one device with the same
  global batch take the same step (tests/test_train_steps.py). Scaling gradients after
  differentiation instead would mix weighted and unweighted terms at the BatchNorm layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsnt_jax.models import pose_loss
from train.inference import forward
from train.loop.state import TrainState

AXIS = "batch"
Batch = dict[str, jax.Array]


def make_train_step(*, output: str, reg: str, sigma: float, reg_coeff: float,
                    learning_rate_fn: optax.Schedule, devices: Sequence[jax.Device] | None = None,
                    hm_amplitude: float = 1.0
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Builds the pmapped update `(state, batch) -> (state, metrics)`.

    Args:
      output, reg, sigma, reg_coeff, hm_amplitude: the loss (`dsnt_jax.models.pose_loss`).
      learning_rate_fn: the optimiser's schedule, to report the rate used by each step.
      devices: the devices to map over, the same list on every process (pmap maps over the devices of this
        process among them, and its collectives span all of them); default: every device of the run. A
        list of this process's devices alone, in a multi-process run, would reduce over this host only.

    Returns:
      A function of a replicated TrainState and a batch {'image' [D, b, S, S, 3], 'coords' [D, b, J, 2],
      'mask' [D, b, J]} returning the new state (the input state's buffers are donated) and replicated
      float32 metrics {'loss', 'lr', 'nonfinite' (1 when the step's loss or new parameters were not finite, so
      the update was not applied), and 'euclidean'/'reg' or 'mse'}, each averaged like the gradient.
      Over several CPU devices it returns only once the step has run (see the end of this function).
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        weight = jnp.ones((), jnp.float32) if output == "hm" else jnp.sum(batch["mask"].astype(jnp.float32))
        scale = weight / jnp.maximum(jax.lax.psum(weight, AXIS), 1e-12)

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[dict[str, jax.Array], Any]]:
            outputs, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
                mutable=["batch_stats"], rngs={"dropout": rng})
            loss, aux = pose_loss(outputs, batch["coords"], batch["mask"], output=output, reg=reg,
                                  sigma_t=sigma, reg_coeff=reg_coeff, hm_amplitude=hm_amplitude)
            # This device's share of the global loss; differentiated as a whole (see the module docstring).
            return loss * scale, (aux, updates["batch_stats"])

        (_, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.psum(grads, AXIS)
        metrics = {k: v for k, v in aux.items() if k != "per_stack"}
        metrics["loss"] = jnp.sum(aux["per_stack"])
        metrics = jax.lax.psum(jax.tree_util.tree_map(lambda m: m * scale, metrics), AXIS)
        metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        # A non-finite loss or update must never reach the parameters: such a step keeps the previous
        # weights, optimiser and BatchNorm state (the step counter still advances) and reports itself, and
        # the host loop decides whether to stop or go on (--on-nonfinite). The loss and gradients are
        # already reduced over the devices, so every device takes the same branch.
        finite = jnp.isfinite(metrics["loss"]) & _all_finite((new_state.params, new_state.batch_stats))
        kept = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                      (new_state.params, new_state.opt_state, new_state.batch_stats),
                                      (state.params, state.opt_state, state.batch_stats))
        new_state = new_state.replace(params=kept[0], opt_state=kept[1], batch_stats=kept[2])
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    pstep = jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=(0,))
    mapped = local_devices(devices)
    if len(mapped) < 2 or mapped[0].platform != "cpu":
        return pstep

    # Several simulated CPU devices (--xla_force_host_platform_device_count) with many pmapped steps queued
    # can deadlock XLA:CPU's all-reduce rendezvous on a small machine (seen on 2 cores: "Termination timeout
    # for all reduce"); one step in flight at a time never did. Accelerators keep asynchronous dispatch.
    def serialized_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        return jax.block_until_ready(pstep(state, batch))

    return serialized_step


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_eval_step(apply_fn: Callable[..., Any], *, output: str, activation: str, flip_test: bool,
                   devices: Sequence[jax.Device] | None = None) -> Callable[[Any, jax.Array], jax.Array]:
    """Builds the pmapped `(variables, images [D, b, S, S, 3]) -> coords [D, b, J, 2]` (normalised), the
    images' predictions by `train.inference.forward.predict`."""

    def step(variables: Any, images: jax.Array) -> jax.Array:
        coords, _ = forward.predict(apply_fn, variables, images, output=output, activation=activation,
                                    flip_test=flip_test)
        return coords

    return jax.pmap(step, axis_name=AXIS, devices=devices)


def local_devices(devices: Sequence[jax.Device] | None) -> list[jax.Device]:
    """This process's devices among `devices` (None: all of this process's devices)."""
    if devices is None:
        return jax.local_devices()
    return [d for d in devices if d.process_index == jax.process_index()]


def replicate(tree: Any, devices: Sequence[jax.Device] | None) -> Any:
    """Copies a pytree to every device, with the leading device axis and sharding a pmap output has.

    Going through a pmapped identity (rather than `flax.jax_utils.replicate`) gives the arrays exactly
    the sharding the train step returns, so the step compiles once instead of twice.
    """
    n = len(local_devices(devices))
    stacked = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
    return jax.pmap(lambda t: t, axis_name=AXIS, devices=devices)(stacked)


def unreplicate(tree: Any) -> Any:
    """The first local device's copy of a replicated pytree, as host numpy arrays."""

    def first(x: jax.Array) -> np.ndarray:
        return np.asarray(x.addressable_shards[0].data).reshape(x.shape[1:])

    return jax.tree_util.tree_map(first, tree)


def shard(batch: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """Reshapes host arrays [B, ...] to [num_devices, B / num_devices, ...] for pmap."""
    out = {}
    for key, value in batch.items():
        if value.shape[0] % num_devices:
            raise ValueError(f"batch of {value.shape[0]} does not split over {num_devices} devices")
        out[key] = value.reshape(num_devices, value.shape[0] // num_devices, *value.shape[1:])
    return out
