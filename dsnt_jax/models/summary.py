"""Parameter counts and multiply-accumulate counts of the pose networks, without running them.

Everything is traced abstractly with `jax.eval_shape` (no compilation, no arrays), so even the 8-stack
hourglass costs only a trace. MACs are counted analytically for every convolution and dense layer
(out_positions · k_h · k_w · C_in/groups · C_out, the convention of torchvision's published GFLOPS);
BatchNorm, ReLU, pooling, additions, the heatmap activation and DSNT are not counted. GFLOPs are
reported as 2 × GMACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsnt_jax.models.factory import create_model, heatmap_size_for, input_size_for

# Parameters that depend on J or on the output strategy ("head"); everything else is the trunk.
# ResNet: hm_conv; hourglass: score_{i} (features → J) and score__{i} (J → features); FC: out_fc.
_HEAD_PREFIXES = ("hm_conv", "out_fc", "score_")


def _is_head(name: str) -> bool:
    return name.startswith(_HEAD_PREFIXES)


def count_params(params: Mapping[str, Any]) -> tuple[int, int]:
    """(trunk, head) parameter counts of a pose model's `params` (arrays or ShapeDtypeStructs).

    Only trainable parameters count (BatchNorm running statistics do not, as in torchvision).
    """
    trunk = head = 0
    for name, subtree in params.items():
        n = sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(subtree))
        if _is_head(name):
            head += n
        else:
            trunk += n
    return trunk, head


def _macs_interceptor(counter: list[int]) -> Callable[..., Any]:
    """A flax method interceptor that adds the MACs of every Conv and Dense call to ``counter[0]``."""

    def interceptor(next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    context: nn.module.InterceptorContext) -> Any:
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__" or not args:
            return out
        if isinstance(module, nn.Conv):
            c_in = args[0].shape[-1]
            kernel = module.kernel_size
            k = math.prod((kernel,) if isinstance(kernel, int) else kernel)  # flax reads an int k as (k,)
            positions = math.prod(out.shape[:-1])
            counter[0] += positions * k * (c_in // module.feature_group_count) * out.shape[-1]
        elif isinstance(module, nn.Dense):
            counter[0] += math.prod(out.shape[:-1]) * args[0].shape[-1] * out.shape[-1]
        return out

    return interceptor


def trace_model(module: nn.Module, input_size: int, batch: int = 1
                ) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Abstractly traces `module.init` on `batch` images of `input_size`².

    Returns:
      (variables, outputs) as ShapeDtypeStruct trees, and the MACs of the whole batch.
    """
    counter = [0]
    images = jax.ShapeDtypeStruct((batch, input_size, input_size, 3), jnp.float32)

    def init(rng: jax.Array, x: jax.Array) -> tuple[Any, Any]:
        return module.init_with_output(rng, x)

    with nn.intercept_methods(_macs_interceptor(counter)):
        outputs, variables = jax.eval_shape(init, jax.random.key(0), images)
    return variables, outputs, counter[0]


@dataclass(frozen=True)
class SummaryRow:
    """One line of the summary table."""

    name: str
    input_size: int
    heatmap: int
    trunk_params: int
    head_params: int
    gmacs: float

    @property
    def gflops(self) -> float:
        return 2.0 * self.gmacs


def default_configs() -> list[tuple[str, int | None]]:
    """(backbone, res) of every row: ResNet-18…152 at 7/14/28/56 px, then hg1/2/4/8."""
    rows = [(f"resnet{d}", r) for d in (18, 34, 50, 101, 152) for r in (7, 14, 28, 56)]
    return rows + [(f"hg{s}", None) for s in (1, 2, 4, 8)]


def model_summary(backbone: str, res: int | None = None, *, output: str = "dsnt",
                  num_joints: int = 16, input_size: int | None = None) -> SummaryRow:
    """Heatmap side, parameter counts and per-image MACs of one configuration (abstract trace)."""
    size = input_size_for(backbone) if input_size is None else input_size
    module = create_model(backbone, res=res, output=output, num_joints=num_joints)
    variables, _, macs = trace_model(module, size)
    trunk, head = count_params(variables["params"])
    name = backbone if res is None else f"{backbone}@{res}"
    return SummaryRow(name, size, heatmap_size_for(backbone, res, size), trunk, head, macs / 1e9)


def format_table(rows: list[SummaryRow]) -> str:
    """The rows as a fixed-width text table with a header stating the FLOP convention."""
    header = (f"{'model':<14}{'input':>6}{'heatmap':>9}{'trunk params':>15}{'head params':>13}"
              f"{'GMACs':>9}{'GFLOPs':>9}")
    lines = ["GMACs: multiply-accumulates of conv/dense layers per image; GFLOPs = 2 × GMACs.",
             header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.name:<14}{r.input_size:>6}{f'{r.heatmap}x{r.heatmap}':>9}"
                     f"{r.trunk_params:>15,}{r.head_params:>13,}{r.gmacs:>9.2f}{r.gflops:>9.2f}")
    return "\n".join(lines)
