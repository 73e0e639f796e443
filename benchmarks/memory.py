"""Memory of one training forward + backward of the paper's models (DSNTr loss, all gradients).

Used by `python -m benchmarks.inference` (its docstring describes the methods) and, for the jitted
loss and random batches, by `benchmarks.train_step`:

* `jax_compiled_memory`: XLA's compiled memory analysis of the jitted step (any backend, nothing runs);
* `jax_runtime_peak`: the allocator's `peak_bytes_in_use` after one step (GPU/TPU), and
  `jax_runtime_peak_in_child`, the same in a fresh `python -m benchmarks.inference --memory-child`
  process, since JAX cannot reset the peak;
* `torch_train_memory`: `torch.cuda.max_memory_allocated` of the PyTorch reference, above the baseline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from dsnt_jax.models import pose_loss

if TYPE_CHECKING:  # benchmarks.common imports jax first; keep this module light at run time
    from benchmarks.common import ModelSpec

MEMORY_BATCH = 8


def random_batch(batch: int, input_size: int, num_joints: int = 16, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [B, S, S, 3] in [0, 1], targets [B, J, 2] normalised, mask [B, J] ones), float32."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (batch, input_size, input_size, 3)).astype(np.float32)
    targets = rng.uniform(-0.9, 0.9, (batch, num_joints, 2)).astype(np.float32)
    return images, targets, np.ones((batch, num_joints), np.float32)


def loss_and_grads_fn(model: Any) -> Callable:
    """(params, batch_stats, images, targets, mask) → ((loss, new batch_stats), grads); DSNTr loss."""

    def loss_fn(params, batch_stats, images, targets, mask):
        outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                       train=True, mutable=["batch_stats"])
        loss, _ = pose_loss(outputs, targets, mask, output="dsnt", reg="js")
        return loss, updates["batch_stats"]

    return jax.value_and_grad(loss_fn, has_aux=True)


def jax_compiled_memory(model: Any, input_size: int, batch: int = MEMORY_BATCH) -> int:
    """Bytes XLA plans for one jitted training forward + backward of `model` (a dsnt-output pose model)
    on a [batch, S, S, 3] input: arguments + outputs + temporaries − aliased bytes. Nothing runs."""
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))
    images, targets, mask = random_batch(batch, input_size)
    stats = (jax.jit(loss_and_grads_fn(model))
             .lower(shapes["params"], shapes["batch_stats"], images, targets, mask)
             .compile().memory_analysis())
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def jax_runtime_peak(model: Any, variables: dict[str, Any], input_size: int,
                     batch: int = MEMORY_BATCH) -> int:
    """Allocator peak of this process after one training forward + backward (GPU/TPU only).

    `variables` ({'params', 'batch_stats'} of `model`, already on the default device) count towards
    the peak, as the weights do in training.
    """
    device = jax.devices()[0]
    images, targets, mask = (jax.device_put(a, device) for a in random_batch(batch, input_size))
    out = jax.jit(loss_and_grads_fn(model))(variables["params"], variables["batch_stats"], images,
                                            targets, mask)
    jax.block_until_ready(out)
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        raise RuntimeError(f"{device.platform} reports no allocator statistics")
    return int(stats["peak_bytes_in_use"])


def jax_runtime_peak_in_child(spec: ModelSpec, input_size: int, dtype_name: str) -> int:
    """`jax_runtime_peak` in a fresh interpreter, so earlier models' peaks do not count."""
    cmd = [sys.executable, "-m", "benchmarks.inference", "--memory-child", spec.name,
           "--input-size", str(input_size), "--dtype", dtype_name]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {spec.name} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def torch_train_memory(spec: ModelSpec, input_size: int, dtype_name: str, device: str,
                       batch: int = MEMORY_BATCH) -> int:
    """CUDA bytes allocated at the peak of one training forward + backward, above the prior baseline."""
    import torch

    from benchmarks.torch_reference import build_torch_model, torch_loss

    model = build_torch_model(spec.backbone, spec.res)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.to(device).train()
    images, targets, mask = random_batch(batch, input_size)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(device)
    with torch.autocast("cuda", torch.bfloat16, enabled=dtype_name == "bfloat16"):
        outputs = model(x)
    torch_loss(outputs, torch.from_numpy(targets).to(device), torch.from_numpy(mask).to(device)).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del model, outputs, x
    torch.cuda.empty_cache()
    return int(peak)
