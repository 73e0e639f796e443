"""Times the DSNTr loss, forward + backward, in dsnt-jax and in dsntnn (PyTorch), side by side in one process.

The measured computation is the paper's training loss on raw heatmaps:
softmax → DSNT → Euclidean + λ·JS(σ_t = 1 px), λ = 1, masked mean, and its gradient w.r.t. the logits.

    python -m benchmarks.ops [--batch 32] [--points 16] [--sizes 7,28,64] [--repeats 50]

Prints the median time per call of each library, its spread (scaled MAD) and the ratio dsntnn / dsnt-jax.
The two libraries are timed alternately, call by call, so that both see the same machine load.
dsntnn is skipped (with a note) when torch or dsntnn is not installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dsnt_jax import ops


def _median_mad(times: list[float]) -> tuple[float, float]:
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times) / 0.6745  # MAD scaled to a normal σ
    return med, mad


def _time_interleaved(fns: list, repeats: int, warmup: int = 3) -> list[list[float]]:
    """Per-call wall times of each function, alternating between them so that they share any load."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def jax_step(logits: jax.Array, target: jax.Array, mask: jax.Array):
    """One jit-compiled forward + backward of the DSNTr loss."""

    def loss(x):
        h = ops.flat_softmax(x)
        coords = ops.dsnt(h)
        return ops.average_loss(ops.euclidean_losses(coords, target) + ops.js_reg_losses(h, target, 1.0), mask)

    step = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(step(logits))


def torch_step(logits: np.ndarray, target: np.ndarray, mask: np.ndarray):
    """The same computation with dsntnn and PyTorch autograd (eager, as its users run it)."""
    import dsntnn
    import torch

    x = torch.tensor(logits, requires_grad=True)
    t, m = torch.tensor(target), torch.tensor(mask)

    def run():
        x.grad = None
        h = dsntnn.flat_softmax(x)
        coords = dsntnn.dsnt(h)
        loss = dsntnn.average_loss(dsntnn.euclidean_losses(coords, t) + dsntnn.js_reg_losses(h, t, 1.0), m)
        loss.backward()
        return loss.item()

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--sizes", default="7,28,64", help="comma-separated square heatmap sizes")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)

    try:
        import dsntnn  # noqa: F401
        import torch

        torch_version = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_version = None

    device = jax.devices()[0]
    print(f"dsnt-jax ops benchmark: B={args.batch}, L={args.points}, softmax→DSNT→Euclidean+JS(λ=1, σ=1), fwd+bwd")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"jax {jax.__version__} on {device.platform} ({device.device_kind}); "
          f"{torch_version or 'torch/dsntnn not installed: dsntnn column skipped'}")
    header = f"{'size':>7} | {'dsnt-jax ms':>16} | {'dsntnn ms':>16} | {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for n in (int(s) for s in args.sizes.split(",")):
        logits = rng.normal(size=(args.batch, args.points, n, n)).astype(np.float32)
        target = rng.uniform(-0.9, 0.9, size=(args.batch, args.points, 2)).astype(np.float32)
        mask = (rng.uniform(size=(args.batch, args.points)) > 0.1).astype(np.float32)
        fns = [jax_step(*map(jnp.asarray, (logits, target, mask)))]
        if torch_version:
            fns.append(torch_step(logits, target, mask))
        times = _time_interleaved(fns, args.repeats)
        ours, ours_mad = _median_mad(times[0])
        cells = f"{n:>3}×{n:<3} | {ours * 1e3:>8.3f} ± {ours_mad * 1e3:<5.3f}"
        if torch_version:
            theirs, theirs_mad = _median_mad(times[1])
            cells += f" | {theirs * 1e3:>8.3f} ± {theirs_mad * 1e3:<5.3f} | {theirs / ours:>7.2f}×"
        print(cells)


if __name__ == "__main__":
    main()
