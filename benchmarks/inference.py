"""Inference time and training memory of the paper's models, by the method of the paper's Table 4.

    python -m benchmarks.inference [--models resnet50@28,hg8] [--repeats 200] [--dtype float32]
                                   [--input-size S] [--torch] [--quick] [--json out.json]

Time: batch 1, no flip test. Per image, the timed region is what the paper's `batch_infer.py` timed:
host→device copy of the input, forward pass, coordinate extraction, copy of the coordinates back to
the host (which synchronises) and their back-transform to pixels. Reported: median ± MAD/Φ⁻¹(0.75)
(a normal σ estimate) over `--repeats` images, after warm-up (compilation is not timed).

Memory of one training forward + backward (DSNTr loss, gradients of all parameters) at batch 8:

* GPU: JAX's allocator peak (`device.memory_stats()['peak_bytes_in_use']`) in a fresh child process
  per model (JAX cannot reset the peak), and `torch.cuda.max_memory_allocated` above what was
  allocated before the model was moved to the GPU. Both include weights, activations, gradients
  and workspace; unlike the paper's nvidia-smi figure, not the allocator's cache or CUDA context.
  JAX allocates on demand here (XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so that it shares
  the GPU with PyTorch and the child processes.
* CPU (no allocator statistics): XLA's compiled memory analysis of the jitted step,
  arguments + outputs + temporaries − aliased bytes; nothing for PyTorch.

`--torch` also times `benchmarks.torch_reference` (PyTorch eager, ResNets only) in the same process
and prints dsnt-jax's speed-up over it. Every model is run at the paper's input size (224 px ResNet,
256 px hourglass) unless `--input-size` is given; `--quick` is a < 1 min smoke run for a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from benchmarks.memory import (
    MEMORY_BATCH,
    jax_compiled_memory,
    jax_runtime_peak,
    jax_runtime_peak_in_child,
    torch_train_memory,
)
from dsnt_jax.models import create_model, heatmap_size_for, input_size_for

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
RESOLUTIONS = (7, 14, 28, 56)
HOURGLASSES = ("hg1", "hg2", "hg4", "hg8")
ALL_MODELS: tuple[str, ...] = tuple(f"{b}@{r}" for b in RESNETS for r in RESOLUTIONS) + HOURGLASSES
# Φ⁻¹(0.75): MAD / this estimates a normal σ (anibali/tele `MedianValueMeter`).
MAD_TO_SIGMA = 0.6744897501960817
# Targets of this project for an H100 (paper Table 4 reports 18.6 ms on its 2017 GPU).
TARGET_MODEL, TARGET_MS, TARGET_SPEEDUP = "resnet50@28", 2.0, 1.3
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# JAX reserves 75 % of GPU memory when its backend starts (at the first jax.devices(), after this
# import), which would starve the PyTorch side and the memory child processes. On-demand allocation
# leaves steady-state timings unchanged.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A benchmarked network: ResNet backbone with heatmap side `res` (224-px input), or an hourglass."""

    backbone: str
    res: int | None = None

    @property
    def name(self) -> str:
        return self.backbone if self.res is None else f"{self.backbone}@{self.res}"

    @property
    def is_resnet(self) -> bool:
        return self.backbone in RESNETS


def parse_models(text: str) -> list[ModelSpec]:
    """'resnet50@28,hg8' → ModelSpecs; 'all' → every ResNet × resolution and hourglass."""
    names = ALL_MODELS if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    specs = []
    for name in names:
        backbone, _, res = name.partition("@")
        if backbone in RESNETS and res.isdigit() and int(res) in RESOLUTIONS:
            specs.append(ModelSpec(backbone, int(res)))
        elif backbone in HOURGLASSES and not res:
            specs.append(ModelSpec(backbone))
        else:
            raise ValueError(f"bad model {name!r}: use resnetNN@RES with NN in "
                             f"{[r[6:] for r in RESNETS]} and RES in {list(RESOLUTIONS)}, or one of "
                             f"{list(HOURGLASSES)} (comma-separated, or 'all')")
    if not specs:
        raise ValueError("no models selected")
    return specs


def median_mad(times: Sequence[float]) -> tuple[float, float]:
    """(median, MAD/Φ⁻¹(0.75)) of a sample."""
    med = statistics.median(times)
    return med, statistics.median(abs(t - med) for t in times) / MAD_TO_SIGMA


def device_description(device: jax.Device | None = None) -> str:
    """'gpu (NVIDIA H100 80GB HBM3)' style text for the measured JAX device."""
    device = device or jax.devices()[0]
    return f"{device.platform} ({device.device_kind}), jax {jax.__version__}"


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def build(spec: ModelSpec, dtype: Any, axis_name: str | None = None) -> Any:
    """The DSNT model of `spec` (softmax + DSNT head) in computation dtype `dtype`."""
    return create_model(spec.backbone, res=spec.res, output="dsnt", dtype=dtype, axis_name=axis_name)


def init_variables(model: Any, input_size: int, seed: int = 0) -> dict[str, Any]:
    """Random variables of `model`, drawn with numpy, on the default device.

    The tree comes from `jax.eval_shape(model.init)`; kernels are He-normal (std √(2/fan_in)), BatchNorm
    scales and running variances 1, everything else 0. Timings do not depend on the values, and this
    avoids compiling flax's random initialisers (~15 s for a ResNet-18 on a 2-core CPU).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.device_put(jax.tree_util.tree_map_with_path(draw, shapes), jax.devices()[0])


def to_pixels(coords: np.ndarray, input_size: int) -> np.ndarray:
    """Normalised (x, y) → input-image pixels; stands in for the crop → image back-transform."""
    return (coords + 1.0) * (input_size / 2.0) - 0.5


# ----------------------------------------------------------------------------------------------------
# Timing


def time_per_image(infer: Callable[[np.ndarray], Any], images: Sequence[np.ndarray], repeats: int,
                   warmup: int) -> list[float]:
    """Seconds per call of `infer(image)`, one image at a time, cycling through `images`."""
    for i in range(warmup):
        infer(images[i % len(images)])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        infer(images[i % len(images)])
        times.append(time.perf_counter() - start)
    return times


def jax_infer_fn(spec: ModelSpec, input_size: int, dtype: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The timed per-image function for dsnt-jax: [1, S, S, 3] host image → [J, 2] pixels on the host."""
    model = build(spec, dtype)
    variables = init_variables(model, input_size)
    device = jax.devices()[0]

    @jax.jit
    def forward(variables, images):
        return model.apply(variables, images, train=False)["coords"]

    def infer(image: np.ndarray) -> np.ndarray:
        coords = forward(variables, jax.device_put(image, device))
        return to_pixels(np.asarray(coords)[0], input_size)  # np.asarray waits for the result

    return infer


def torch_infer_fn(spec: ModelSpec, input_size: int, dtype_name: str, device: str
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """The same timed region for the PyTorch eager reference ([1, 3, S, S] host image)."""
    import torch

    from benchmarks.torch_reference import build_torch_model

    model = build_torch_model(spec.backbone, spec.res).to(device).eval()
    autocast = dtype_name == "bfloat16"

    def infer(image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image).to(device)
        with torch.inference_mode(), torch.autocast(device.split(":")[0], torch.bfloat16,
                                                    enabled=autocast):
            coords = model(x)["coords"]
        return to_pixels(coords.cpu().numpy()[0], input_size)  # .cpu() synchronises

    return infer


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None,
                        help="comma-separated resnetNN@RES / hgN, or 'all' (default: all; --quick: "
                             "resnet18@28)")
    parser.add_argument("--repeats", type=int, default=None, help="timed images (default 200; quick 5)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed images first, ≥ 1 (compilation) (default 20; quick 2)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side in px (default: 224 ResNet, 256 hourglass; quick 64)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                        help="computation dtype (PyTorch: autocast) (default float32)")
    parser.add_argument("--torch", action="store_true",
                        help="also time the PyTorch eager reference (ResNets; needs torch + dsntnn)")
    parser.add_argument("--memory", choices=("auto", "runtime", "compiled", "none"), default="auto",
                        help="training-memory method: runtime allocator peak (GPU), XLA compiled "
                             "analysis, or none (default auto: runtime on GPU, compiled on CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (< 1 min)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--memory-child", metavar="MODEL", help=argparse.SUPPRESS)
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.models = args.models or ("resnet18@28" if quick else "all")
    args.repeats = args.repeats if args.repeats is not None else (5 if quick else 200)
    args.warmup = args.warmup if args.warmup is not None else (2 if quick else 20)
    if args.input_size is None and quick:
        args.input_size = 64
    for name in ("repeats", "warmup"):  # the first call compiles: at least one warm-up image
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.input_size is not None and args.input_size < 32:
        raise ValueError(f"--input-size must be at least 32 px, got {args.input_size}")
    return args


def torch_device_info() -> tuple[str | None, str]:
    """(device string or None, description) of the PyTorch side."""
    try:
        import dsntnn  # noqa: F401
        import torch
    except ImportError:
        return None, "torch/dsntnn not installed: PyTorch comparison skipped"
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        # Both frameworks may run float32 convolutions in TF32 on Ampere+ GPUs by default (JAX's default
        # precision; cudnn.allow_tf32); say so, since it changes float32 timings.
        return "cuda", (f"torch {torch.__version__} on cuda ({torch.cuda.get_device_name()}), "
                        f"cudnn.benchmark, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                        f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}")
    return "cpu", f"torch {torch.__version__} on cpu ({torch.get_num_threads()} threads)"


def _fmt(value: float | None, spread: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ± {spread:.3f}" if spread is not None else f"{value:.1f}"


def _images(batch_shape: tuple[int, ...], count: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(0, 1, batch_shape).astype(np.float32) for _ in range(count)]


def measure_model(spec: ModelSpec, args: argparse.Namespace, memory: str, torch_device: str | None
                  ) -> dict[str, Any]:
    """Times one model (and its PyTorch twin) and measures its training memory; one result row."""
    device = jax.devices()[0]
    size = args.input_size or input_size_for(spec.backbone)
    row: dict[str, Any] = {"model": spec.name, "input_size": size,
                           "heatmap": heatmap_size_for(spec.backbone, spec.res, size),
                           "dtype": args.dtype, "device": device_description(device),
                           "memory_method": memory}
    nhwc = _images((1, size, size, 3))
    jax_s = median_mad(time_per_image(jax_infer_fn(spec, size, DTYPES[args.dtype]), nhwc,
                                      args.repeats, args.warmup))
    row["jax_ms"], row["jax_ms_spread"] = jax_s[0] * 1e3, jax_s[1] * 1e3
    if torch_device and spec.is_resnet:
        nchw = [np.ascontiguousarray(im.transpose(0, 3, 1, 2)) for im in nhwc]
        torch_s = median_mad(time_per_image(torch_infer_fn(spec, size, args.dtype, torch_device), nchw,
                                            args.repeats, args.warmup))
        row["torch_ms"], row["torch_ms_spread"] = torch_s[0] * 1e3, torch_s[1] * 1e3
        row["speedup"] = torch_s[0] / jax_s[0]
        if torch_device == "cuda":  # hand PyTorch's cached blocks back to the JAX child process
            import torch

            torch.cuda.empty_cache()
    if memory == "compiled":
        row["jax_mib"] = jax_compiled_memory(build(spec, DTYPES[args.dtype]), size) / 2**20
    elif memory == "runtime":
        row["jax_mib"] = jax_runtime_peak_in_child(spec, size, args.dtype) / 2**20
        if torch_device == "cuda" and spec.is_resnet:
            row["torch_mib"] = torch_train_memory(spec, size, args.dtype, torch_device) / 2**20
    return row


def _table_line(row: dict[str, Any]) -> str:
    heatmap = f"{row['heatmap']}×{row['heatmap']}"
    speed = f"{row['speedup']:.2f}×" if "speedup" in row else "n/a"
    return (f"{row['model']:<14}{row['input_size']:>6}{heatmap:>9}  "
            f"{_fmt(row['jax_ms'], row['jax_ms_spread']):>17}  "
            f"{_fmt(row.get('torch_ms'), row.get('torch_ms_spread')):>17}  {speed:>8}  "
            f"{_fmt(row.get('jax_mib')):>8}  {_fmt(row.get('torch_mib')):>9}")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measures every selected model; prints a table and returns one dict per model."""
    specs = parse_models(args.models)
    device = jax.devices()[0]
    memory = args.memory
    if memory == "auto":
        memory = "compiled" if device.platform == "cpu" else "runtime"
    if memory == "runtime" and device.platform == "cpu":
        raise ValueError("--memory runtime needs a GPU/TPU (JAX keeps no CPU allocator statistics); "
                         "use --memory compiled")
    torch_device, torch_text = (torch_device_info() if args.torch
                                else (None, "PyTorch comparison off (--torch)"))
    print("dsnt-jax inference benchmark: paper Table 4 method, batch 1, no flip, "
          "median ± MAD/Φ⁻¹(0.75) per image")
    print(f"device: {device_description(device)}; host: {machine_description()}")
    print(f"torch: {torch_text}")
    print("timed per image: host→device copy, forward, coordinate extraction, copy back (synchronising), "
          "back-transform to pixels")
    method = {"runtime": "allocator peak_bytes_in_use in a fresh process (JAX), max_memory_allocated "
                         "(PyTorch)",
              "compiled": "XLA compiled memory analysis, arguments + outputs + temps − aliases "
                          "(PyTorch: n/a)",
              "none": "not measured"}[memory]
    print(f"memory: one training forward + backward, batch {MEMORY_BATCH}, {args.dtype}; method: {method}")
    print(f"dtype {args.dtype}; {args.repeats} timed images after {args.warmup} warm-up")
    header = (f"{'model':<14}{'input':>6}{'heatmap':>9}  {'dsnt-jax ms/img':>17}  {'torch ms/img':>17}"
              f"  {'speed-up':>8}  {'jax MiB':>8}  {'torch MiB':>9}")
    rows = []
    lines = [header, "-" * len(header)]
    for spec in tqdm(specs, desc="models", leave=False, disable=len(specs) == 1):
        rows.append(measure_model(spec, args, memory, torch_device))
        lines.append(_table_line(rows[-1]))
        if len(specs) > 1:  # progress for long runs; the whole table follows at the end
            tqdm.write(lines[-1])
    print("\n".join(lines))
    for row in rows:
        if "speedup" in row:
            print(f"ratio {row['model']}: PyTorch eager / dsnt-jax time = {row['speedup']:.2f}×")
    _print_targets(rows, device)
    return rows


def _print_targets(rows: list[dict[str, Any]], device: jax.Device) -> None:
    print(f"targets (H100, {TARGET_MODEL} at 224 px, float32): ≤ {TARGET_MS:g} ms per image and "
          f"≥ {TARGET_SPEEDUP:g}× PyTorch eager")
    for row in rows:
        if row["model"] != TARGET_MODEL:
            continue
        text = f"  {TARGET_MODEL}: {row['jax_ms']:.3f} ms/image"
        if "speedup" in row:
            text += f", {row['speedup']:.2f}× PyTorch eager"
        comparable = "H100" in device.device_kind and row["input_size"] == 224 and row["dtype"] == "float32"
        if not comparable:
            print(text + f" (on {device.platform} {device.device_kind}, {row['input_size']} px, "
                         f"{row['dtype']}: not the targets' setting, no verdict)")
            continue
        verdicts = [f"time target {'met' if row['jax_ms'] <= TARGET_MS else 'NOT met'}"]
        if "speedup" in row:
            verdicts.append(f"speed-up target {'met' if row['speedup'] >= TARGET_SPEEDUP else 'NOT met'}")
        print(text + " → " + "; ".join(verdicts))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]] | None:
    """Command-line entry point; returns the result rows (None for the internal memory child)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.memory_child:
            spec = parse_models(args.memory_child)[0]
            size = args.input_size or input_size_for(spec.backbone)
            model = build(spec, DTYPES[args.dtype])
            peak = jax_runtime_peak(model, init_variables(model, size), size)
            print(json.dumps({"peak_bytes": peak}))
            return None
        rows = run(_resolve(args))
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
