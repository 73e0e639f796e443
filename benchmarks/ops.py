"""Times the DSNTr loss, forward + backward, in dsnt-jax and in dsntnn (PyTorch), side by side in one process
and on the same kind of device: both on the GPU when PyTorch sees CUDA, else both on the CPU.

The measured computation is the paper's training loss on raw heatmaps:
softmax → DSNT → Euclidean + λ·JS(σ_t = 1 px), λ = 1, masked mean, and its gradient w.r.t. the logits.

    python -m benchmarks.ops [--batch 32] [--points 16] [--sizes 7,28,64] [--repeats 50]
                             [--calls-per-sync 1] [--torch eager,compile] [--json FILE]

dsnt-jax: `jax.jit(jax.value_and_grad(loss))`. dsntnn: eager autograd as its users run it and, with
`--torch compile`, the same loss function under `torch.compile` (AOTAutograd compiles the backward);
`--torch` defaults to `auto` = eager + compile on CUDA, eager alone on a CPU (inductor takes minutes to
compile there). Memory formats do not apply to this benchmark. A configuration that cannot be compiled
is reported in one line and the others are timed.

A measurement is `--calls-per-sync` consecutive calls followed by one synchronisation, divided by the
number of calls: 1 (default) is the latency of a call; more measure throughput, hiding the per-call
launch and synchronisation costs (the GPU suite uses 20). The libraries are timed alternately,
measurement by measurement, so that both see the same machine load. Prints the median per call and its
spread (scaled MAD) and the ratio of each dsntnn configuration's time to dsnt-jax's (> 1: dsnt-jax is
faster). dsntnn is skipped (with a note) when torch or dsntnn is not installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import torch_peers
from benchmarks.common import JsonSink, environment, median_mad, parse_ints, short_error
from benchmarks.torch_peers import TorchConfig
from dsnt_jax import ops


@dataclasses.dataclass
class Timed:
    """One timed configuration: `call()` dispatches one forward + backward, `sync()` waits for all."""

    library: str
    config: str
    call: Callable[[], Any]
    sync: Callable[[], Any]


def _time_interleaved(fns: Sequence[Timed], repeats: int, calls_per_sync: int) -> list[list[float]]:
    """Seconds per call of each configuration, alternating between them so that they share any load."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            for _ in range(calls_per_sync):
                fn.call()
            fn.sync()
            out.append((time.perf_counter() - start) / calls_per_sync)
    return times


def jax_timed(logits: np.ndarray, target: np.ndarray, mask: np.ndarray) -> Timed:
    """One jit-compiled forward + backward of the DSNTr loss on JAX's default device."""

    def loss(x, t, m):
        h = ops.flat_softmax(x)
        coords = ops.dsnt(h)
        return ops.average_loss(ops.euclidean_losses(coords, t) + ops.js_reg_losses(h, t, 1.0), m)

    step = jax.jit(jax.value_and_grad(loss))
    args = [jnp.asarray(a) for a in (logits, target, mask)]
    last: list[Any] = [None]

    def call() -> None:
        last[0] = step(*args)

    return Timed("dsnt-jax", "jit", call, lambda: jax.block_until_ready(last[0]))


def torch_timed(logits: np.ndarray, target: np.ndarray, mask: np.ndarray, device: str,
                config: TorchConfig) -> Timed:
    """The same computation with dsntnn and PyTorch autograd on `device`, eager or compiled."""
    import dsntnn
    import torch

    x = torch.tensor(logits, device=device, requires_grad=True)
    t, m = torch.tensor(target, device=device), torch.tensor(mask, device=device)

    def loss_of(x: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h = dsntnn.flat_softmax(x)
        coords = dsntnn.dsnt(h)
        return dsntnn.average_loss(dsntnn.euclidean_losses(coords, t) + dsntnn.js_reg_losses(h, t, 1.0), m)

    torch_peers.fresh_compile_state(config)
    loss_fn = torch_peers.compile_fn(loss_of, config)

    def call() -> None:
        x.grad = None
        torch_peers.mark_step(config)
        loss_fn(x, t, m).backward()

    return Timed("dsntnn", config.label, call, lambda: torch_peers.synchronize(device))


def _warm(timed: Timed, calls: int = 3) -> float:
    """Runs `calls` untimed calls (compilation, autotuning); returns the seconds of the first."""
    start = time.perf_counter()
    timed.call()
    timed.sync()
    first = time.perf_counter() - start
    for _ in range(calls - 1):
        timed.call()
    timed.sync()
    return first


def _torch_setup(text: str | None, args: argparse.Namespace) -> tuple[str | None, list[TorchConfig], str]:
    """(PyTorch device or None, configurations, description) for `--torch`."""
    device, description = torch_peers.torch_device_info()
    if device is None:
        return None, [], description
    if text == "auto":
        text = "eager,compile" if device == "cuda" else "eager"
    configs = torch_peers.parse_torch_configs(text, compile_mode=args.torch_compile_mode,
                                              backend=args.torch_compile_backend, channels_last="off")
    return device, configs, description


def measure_size(n: int, args: argparse.Namespace, device: str | None, configs: Sequence[TorchConfig]
                 ) -> list[dict[str, Any]]:
    """Rows of one heatmap size: dsnt-jax and every dsntnn configuration (or its one-line failure)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(args.batch, args.points, n, n)).astype(np.float32)
    target = rng.uniform(-0.9, 0.9, size=(args.batch, args.points, 2)).astype(np.float32)
    mask = (rng.uniform(size=(args.batch, args.points)) > 0.1).astype(np.float32)
    base = {"size": n, "batch": args.batch, "points": args.points, "calls_per_sync": args.calls_per_sync}
    timed, rows = [], []
    candidates: list[tuple[str, str, str, Callable[[], Timed]]] = [
        ("dsnt-jax", "jit", jax.devices()[0].platform, lambda: jax_timed(logits, target, mask))]
    candidates += [("dsntnn", c.label, device, lambda c=c: torch_timed(logits, target, mask, device, c))
                   for c in configs]
    for library, label, where, make in candidates:
        row = {**base, "library": library, "config": label, "device": where}
        try:
            fn = make()
            row["first_call_s"] = _warm(fn)
        except Exception as e:  # noqa: BLE001  (a peer that cannot compile is reported, not fatal)
            if library == "dsnt-jax":
                raise
            rows.append({**row, "error": short_error(e)})
            continue
        timed.append(fn)
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    for row, times in zip(ok, _time_interleaved(timed, args.repeats, args.calls_per_sync)):
        med, spread = median_mad(times)
        row.update(us=med * 1e6, us_spread=spread * 1e6)
    ours = ok[0]["us"]
    for row in ok[1:]:
        row["ratio"] = row["us"] / ours
    return rows


def _line(row: dict[str, Any]) -> str:
    head = f"{row['size']:>3}×{row['size']:<3} {row['library']:<9}{row['config']:<26}{row['device']:<6}"
    if "error" in row:
        return head + f"unavailable: {row['error']}"
    ratio = f"{row['ratio']:>8.2f}×" if "ratio" in row else ""
    return head + f"{row['us']:>11.1f} ± {row['us_spread']:<9.1f}{row['first_call_s']:>8.2f}{ratio}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--sizes", default="7,28,64", help="comma-separated square heatmap sizes")
    parser.add_argument("--repeats", type=int, default=50, help="measurements per configuration")
    parser.add_argument("--calls-per-sync", type=int, default=1,
                        help="calls per measurement, synchronised once at the end (default 1: latency)")
    torch_peers.add_torch_arguments(parser, default="auto", compile_mode="default")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point; returns one row per size × configuration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sizes = parse_ints(args.sizes, "--sizes")
        if min(args.batch, args.points, args.repeats, args.calls_per_sync) < 1:
            raise ValueError("--batch, --points, --repeats and --calls-per-sync must be ≥ 1")
        device, configs, torch_text = _torch_setup(args.torch, args)
    except ValueError as e:
        parser.error(str(e))
    jax_device = jax.devices()[0]
    settings = {"batch": args.batch, "points": args.points, "sizes": sizes, "repeats": args.repeats,
                "calls_per_sync": args.calls_per_sync, "torch_device": device,
                "torch_configs": [c.label for c in configs]}
    sink = JsonSink(args.json, benchmark="ops", environment=environment(), settings=settings, rows=[])
    timing = "latency" if args.calls_per_sync == 1 else f"throughput, {args.calls_per_sync} calls per sync"
    print(f"dsnt-jax ops benchmark: B={args.batch}, L={args.points}, softmax→DSNT→Euclidean+JS(λ=1, σ=1), "
          f"fwd+bwd, µs per call ({timing})")
    print(f"jax {jax.__version__} on {jax_device.platform} ({jax_device.device_kind}); "
          f"dsntnn: {torch_text}; configurations: {', '.join(settings['torch_configs']) or 'none'}")
    if device and {"cuda": "gpu"}.get(device, device) != jax_device.platform:
        print(f"note: PyTorch runs on {device} but JAX on {jax_device.platform}: not the same device")
    header = f"{'size':>7} {'library':<9}{'configuration':<26}{'device':<6}{'µs/call':>22}{'first s':>8}  ratio"
    print(header + "\n" + "-" * len(header))
    for n in sizes:
        for row in measure_size(n, args, device, configs):
            sink.append("rows", row)
            print(_line(row), flush=True)
    return sink.data["rows"]


if __name__ == "__main__":
    main()
