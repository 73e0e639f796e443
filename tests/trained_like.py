"""Random variables for a pose network that look trained, for the tests of BatchNorm folding.

Folding only matters, and is only checked, when every BatchNorm has a non-trivial scale, shift and running
statistics, while activations keep a sane scale through the network (made-up statistics blow an hourglass's
logits up to ~10³, where float32 rounding alone exceeds the tests' 1e-5).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def trained_like(model: Any, images: Any, seed: int = 0) -> dict[str, Any]:
    """{'params', 'batch_stats'} for `model` (built with bn_momentum=0) and probe `images` [B, S, S, 3].

    Parameters are drawn with numpy from `jax.eval_shape(model.init)` (running flax's initialisers costs more
    than the tests): He-normal kernels, scales U(0.5, 1.5), biases N(0, 0.3). The running statistics are the
    batch statistics of `images` (a training-mode call with momentum 0 sets them), then perturbed (means by
    0.2 standard deviations, variances ×U(0.6, 1.6)), so that mean ≠ 0 and var ≠ 1 everywhere.
    """
    rng = np.random.default_rng(seed)
    draws = {
        "kernel": lambda s: rng.normal(0.0, np.sqrt(2.0 / np.prod(s[:-1])), s),
        "scale": lambda s: rng.uniform(0.5, 1.5, s),
        "bias": lambda s: rng.normal(0.0, 0.3, s),
        "mean": np.zeros,
        "var": np.ones,
    }
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(draws[path[-1].key](s.shape), s.dtype), shapes)
    _, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, images)

    def perturb(stats: dict[str, Any]) -> dict[str, Any]:
        if set(stats) == {"mean", "var"}:  # one BatchNorm
            mean, var = np.asarray(stats["mean"]), np.asarray(stats["var"])
            return {"mean": jnp.float32(mean + 0.2 * np.sqrt(var) * rng.normal(size=mean.shape)),
                    "var": jnp.float32(var * rng.uniform(0.6, 1.6, var.shape))}
        return {k: perturb(v) for k, v in stats.items()}

    return {"params": variables["params"], "batch_stats": perturb(dict(updated["batch_stats"]))}
