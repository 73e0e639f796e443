"""Building blocks shared by the backbones: PyTorch-semantics BatchNorm and PyTorch initialisers.

The networks of the paper were PyTorch networks (torchvision ResNets, bearpaw's hourglass), so the
layers here reproduce PyTorch's conventions where they matter for training dynamics or for importing
torchvision weights: explicit symmetric padding, BatchNorm statistics and default initialisations.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# A jax dtype or anything jnp.dtype accepts (the annotation flax uses for its dtype fields).
Dtype = Any

# torchvision ResNets re-initialise every conv with kaiming_normal_(mode="fan_out", relu): an
# untruncated normal with variance 2 / (k·k·out_channels).
resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's default Conv2d/Linear weight init, kaiming_uniform_(a=√5): U(±1/√fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Conv2d/Linear bias init: U(±1/√fan_in), fan_in = in_channels·k·k."""
    bound = 1.0 / math.sqrt(max(fan_in, 1))

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_padding(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """PyTorch's symmetric `padding=dilation·(k−1)/2`.

    Flax's 'SAME' pads strided convolutions asymmetrically, which shifts every feature map by half a
    pixel relative to torchvision and breaks weight parity, so padding is always explicit.
    """
    p = dilation * (kernel - 1) // 2
    return ((p, p), (p, p))


class BatchNorm(nn.Module):
    """BatchNorm over the last (channel) axis with PyTorch's statistics.

    Variables have flax's names: params `scale`, `bias` [C]; batch_stats `mean`, `var` [C] (float32).
    Training mode normalises with the biased batch variance, as both frameworks do, and updates the
    running variance with the *unbiased* one (n/(n−1) correction, n = values per channel over all
    devices), as PyTorch does; `flax.linen.BatchNorm` uses the biased one there. Set
    `unbiased_running_var=False` for flax's behaviour.

    Attributes:
      use_running_average: True in eval mode (may instead be passed at call time).
      momentum: flax convention, running = momentum·running + (1 − momentum)·batch. PyTorch's default
        momentum=0.1 is momentum=0.9 here.
      epsilon: added to the variance (PyTorch default 1e-5).
      axis_name: a pmap/shard_map axis name; batch statistics are then averaged over it (each device
        must hold the same number of examples).
      dtype: output dtype (None: the input's). Statistics are always computed in float32.
      param_dtype: dtype of `scale` and `bias`.
      unbiased_running_var: PyTorch's running-variance update (default) or flax's.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    axis_name: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    unbiased_running_var: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises `x` [..., C]; returns the same shape in `dtype`."""
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average)
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            mean = jnp.mean(x32, axes)
            if self.axis_name is not None:
                mean = jax.lax.pmean(mean, self.axis_name)
            # Two-pass variance: E[x²] − E[x]² loses precision in float32 for large means.
            var = jnp.mean(jnp.square(x32 - mean), axes)
            if self.axis_name is not None:
                var = jax.lax.pmean(var, self.axis_name)
                n = n * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                running_var = var * (n / jnp.maximum(n - 1, 1)) if self.unbiased_running_var else var
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * running_var
        mul = scale.astype(x32.dtype) * jax.lax.rsqrt(var + self.epsilon)
        y = (x32 - mean) * mul + bias.astype(x32.dtype)
        return y.astype(self.dtype if self.dtype is not None else x.dtype)
