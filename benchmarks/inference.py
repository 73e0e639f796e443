"""Inference time and training memory of the paper's models, by the method of the paper's Table 4,
with PyTorch peers timed side by side in the same process.

    python -m benchmarks.inference [--models resnet50@28,hg8] [--dtypes float32,bfloat16]
                                   [--batches 1,32] [--jax jit,folded,estimator]
                                   [--torch eager,compile] [--repeats 200] [--input-size S]
                                   [--memory none] [--quick] [--json out.json]

Time: no flip test. Per call, the timed region is what the paper's `batch_infer.py` timed per image:
host→device copy of the input batch, forward pass, coordinate extraction, copy of the coordinates back
to the host (which synchronises) and their back-transform to pixels. Batch 1 is the Table 4 figure
(ms per image); a larger batch gives throughput (images/s = batch / median time per call). Reported:
median ± MAD/Φ⁻¹(0.75) (a normal σ estimate) over `--repeats` calls after `--warmup` calls; the first
call (compilation) is reported separately as `first s`.

Configurations (every figure's line names its own):

* dsnt-jax (`--jax`, alias `--jax-variants`; default all three; new paths are added to `common.JAX_CONFIGS`):
  - `jit`: `jax.jit` of the model's eval-mode apply, weights already on the device;
  - `folded`: the same with BatchNorm folded into the convs before it (`dsnt_jax.models.fold_batchnorm`,
    done once before timing), as `PoseEstimator` runs it;
  - `estimator`: `train.inference.PoseEstimator.predict([image])` on a ready-made uint8 S×S×3 image, its
    whole per-call path: crop/resize preprocessing, the folded forward compiled ahead of time, coordinates
    and heatmaps copied back, joints and spreads in image pixels. Batch 1 only (its per-call cost), in each
    --dtypes precision. The `variants` lines set each
    variant beside its bare compiled forward (folded vs jit, estimator vs folded): ms and difference;
* PyTorch (`--torch`, ResNets only): `benchmarks.torch_reference` + dsntnn, eager or torch.compile'd,
  NCHW or channels_last; see `benchmarks.torch_peers` for the grammar. The compile mode defaults to
  `reduce-overhead` (CUDA graphs), as the issue's batch-1 figure used. bfloat16 = autocast. A peer that
  cannot be built or compiled is reported in one line and the run goes on.

The ratio lines are dsnt-jax's speed over each peer's (peer time / dsnt-jax time) at the same dtype and
batch: > 1 means dsnt-jax is faster.

Memory of one training forward + backward (DSNTr loss, gradients of all parameters) at batch 8, per
dtype (`benchmarks.memory`): on a GPU JAX's allocator peak in a fresh child process and PyTorch's
`max_memory_allocated`; on a CPU XLA's compiled memory analysis (nothing for PyTorch).

Every model runs at the paper's input size (224 px ResNet, 256 px hourglass) unless `--input-size` is
given; `--quick` is a < 1 min smoke run for a CPU. `--json` is rewritten after every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from benchmarks import targets, torch_peers
from benchmarks.common import (
    DTYPES,
    JAX_CONFIGS,
    Infer,
    JsonSink,
    ModelSpec,
    build,
    device_description,
    environment,
    init_variables,
    machine_description,
    median_mad,
    parse_ints,
    parse_list,
    parse_models,
    run_command,
    short_error,
    to_pixels,
)
from benchmarks.memory import (
    MEMORY_BATCH,
    jax_compiled_memory,
    jax_runtime_peak,
    jax_runtime_peak_in_child,
    torch_train_memory,
)
from benchmarks.torch_peers import TorchConfig, torch_device_info
from dsnt_jax.models import heatmap_size_for, input_size_for

# ----------------------------------------------------------------------------------------------------
# Timed functions: host batch → [B, J, 2] pixel coordinates on the host (dsnt-jax's: common.JAX_CONFIGS)


def torch_infer_fn(spec: ModelSpec, input_size: int, dtype_name: str, device: str,
                   config: TorchConfig | None = None) -> Infer:
    """The same timed region for a PyTorch peer; takes host arrays of `torch_peers.host_layout`."""
    import torch

    from benchmarks.torch_reference import build_torch_model

    config = config or TorchConfig(compiled=False, channels_last=False)
    torch_peers.fresh_compile_state(config)
    model = torch_peers.prepare_model(build_torch_model(spec.backbone, spec.res).eval(), config, device)

    def coords_of(x: torch.Tensor) -> torch.Tensor:
        with torch_peers.autocast(device, dtype_name):
            return model(x)["coords"]

    forward = torch_peers.compile_fn(coords_of, config)

    def infer(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            coords = forward(torch_peers.to_device(images, config, device))
            return to_pixels(coords.cpu().numpy(), input_size)  # .cpu() synchronises

    return infer


def time_calls(infer: Infer, inputs: Sequence[np.ndarray], repeats: int, warmup: int
               ) -> tuple[list[float], float]:
    """(seconds of each of `repeats` timed calls, seconds of the first call), cycling through `inputs`."""
    start = time.perf_counter()
    infer(inputs[0])
    first = time.perf_counter() - start
    for i in range(1, warmup):
        infer(inputs[i % len(inputs)])
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        infer(inputs[i % len(inputs)])
        times.append(time.perf_counter() - start)
    return times, first


# ----------------------------------------------------------------------------------------------------
# One model


def _images(batch_shape: tuple[int, ...], count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(0, 1, batch_shape).astype(np.float32) for _ in range(count)]


def _timing(base: dict[str, Any], make: Callable[[], Infer], inputs: Sequence[Any],
            args: argparse.Namespace, fatal: bool = False) -> dict[str, Any]:
    """One figure: builds the timed function, times it, returns the row (with 'error' if it failed).

    A `fatal` failure (dsnt-jax's own paths) propagates; a PyTorch peer's or the estimator's becomes the
    row's 'error' (compilation may be unavailable, e.g. inductor without a C++ compiler; the estimator
    needs the training package), so the other figures are still measured.
    """
    row = dict(base)
    try:
        times, first = time_calls(make(), inputs, args.repeats, args.warmup)
    except Exception as e:  # noqa: BLE001  (any peer failure is reported, not fatal)
        if fatal:
            raise
        row["error"] = short_error(e)
        return row
    med, spread = median_mad(times)
    row.update(ms=med * 1e3, ms_spread=spread * 1e3, images_per_s=row["batch"] / med, first_call_s=first)
    return row


def measure_model(spec: ModelSpec, args: argparse.Namespace, memory: str, torch_device: str | None,
                  sink: JsonSink) -> None:
    """Times every dtype × batch × configuration of one model and measures its training memory.

    Rows go to `sink` ('timings', 'memory') and are printed as they are measured.
    """
    size = args.input_size or input_size_for(spec.backbone)
    peers = args.torch_configs if torch_device and spec.is_resnet else []
    for dtype in args.dtype_list:
        infer_fns: dict[str, Infer] = {}  # one model + jit per dtype; batches retrace it
        for batch in args.batch_list:
            nhwc = _images((batch, size, size, 3))
            base = {"model": spec.name, "input_size": size, "dtype": dtype, "batch": batch,
                    "heatmap": heatmap_size_for(spec.backbone, spec.res, size)}
            for name in (n for n in args.jax_list if JAX_CONFIGS[n].applies(dtype, batch)):
                def make(name=name):
                    if name not in infer_fns:
                        infer_fns[name] = JAX_CONFIGS[name].make(spec, size, DTYPES[dtype])
                    return infer_fns[name]
                variant = JAX_CONFIGS[name]
                _emit(sink, _timing({**base, "library": "dsnt-jax", "config": name}, make,
                                    [variant.host_input(x) for x in nhwc], args, fatal=not variant.optional))
            for config in peers:
                inputs = [torch_peers.host_layout(x, config) for x in nhwc]
                with torch_peers.released(torch_device):
                    _emit(sink, _timing(
                        {**base, "library": "pytorch", "config": config.label},
                        lambda c=config: torch_infer_fn(spec, size, dtype, torch_device, c), inputs, args))
        if memory != "none":
            sink.append("memory", _memory_row(spec, size, dtype, memory, torch_device, peers))
            print(_memory_line(sink.data["memory"][-1]), flush=True)


def _memory_row(spec: ModelSpec, size: int, dtype: str, memory: str, torch_device: str | None,
                peers: list[TorchConfig]) -> dict[str, Any]:
    row: dict[str, Any] = {"model": spec.name, "input_size": size, "dtype": dtype, "method": memory,
                           "batch": MEMORY_BATCH}
    if memory == "compiled":
        row["jax_mib"] = jax_compiled_memory(build(spec, DTYPES[dtype]), size) / 2**20
    else:
        row["jax_mib"] = jax_runtime_peak_in_child(spec, size, dtype) / 2**20
        if torch_device == "cuda" and peers:  # the eager NCHW model, as the paper's code trains
            row["torch_mib"] = torch_train_memory(spec, size, dtype, torch_device) / 2**20
    return row


# ----------------------------------------------------------------------------------------------------
# Printing


HEADER = (f"{'model':<13}{'dtype':>9}{'batch':>6}  {'library':<9}{'configuration':<42}"
          f"{'ms/call':>18}{'images/s':>11}{'first s':>9}")


def _timing_line(row: dict[str, Any]) -> str:
    head = f"{row['model']:<13}{row['dtype']:>9}{row['batch']:>6}  {row['library']:<9}{row['config']:<42}"
    if "error" in row:
        return head + f"unavailable: {row['error']}"
    return (head + f"{row['ms']:>9.3f} ± {row['ms_spread']:<6.3f}{row['images_per_s']:>11.1f}"
            f"{row['first_call_s']:>9.1f}")


def _memory_line(row: dict[str, Any]) -> str:
    torch_text = f", PyTorch eager {row['torch_mib']:.1f} MiB" if "torch_mib" in row else ""
    return (f"memory {row['model']} {row['dtype']} (training step, batch {row['batch']}, "
            f"{row['method']}): dsnt-jax {row['jax_mib']:.1f} MiB{torch_text}")


def _emit(sink: JsonSink, row: dict[str, Any]) -> None:
    sink.append("timings", row)
    tqdm.write(_timing_line(row))


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None,
                        help="comma-separated resnetNN@RES / hgN, or 'all' (default: all; --quick: "
                             "resnet18@28)")
    parser.add_argument("--dtypes", "--dtype", dest="dtypes", default=None,
                        help="comma-separated computation dtypes, float32 / bfloat16 (PyTorch: "
                             "autocast) (default float32)")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes; 1 is Table 4's (default 1; quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 200; quick 5)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first, ≥ 1 (compilation) (default 20; quick 2)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side in px (default: 224 ResNet, 256 hourglass; quick 64)")
    parser.add_argument("--jax", "--jax-variants", dest="jax", default=",".join(JAX_CONFIGS),
                        help=f"comma-separated dsnt-jax configurations, of {tuple(JAX_CONFIGS)} "
                             "(default all; see above)")
    torch_peers.add_torch_arguments(parser, default=None, compile_mode="reduce-overhead")
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
    for name in ("repeats", "warmup"):  # the first call compiles: at least one warm-up call
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.input_size is not None and args.input_size < 32:
        raise ValueError(f"--input-size must be at least 32 px, got {args.input_size}")
    args.dtype_list = parse_list(args.dtypes or "float32", "--dtypes", tuple(DTYPES))
    args.batch_list = parse_ints(args.batches or "1", "--batches")
    args.jax_list = parse_list(args.jax, "--jax", tuple(JAX_CONFIGS))
    args.torch_configs = torch_peers.configs_from_args(args)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measures every selected model; prints each figure as it comes and returns the JSON object."""
    specs = parse_models(args.models)
    device = jax.devices()[0]
    memory = args.memory
    if memory == "auto":
        memory = "compiled" if device.platform == "cpu" else "runtime"
    if memory == "runtime" and device.platform == "cpu":
        raise ValueError("--memory runtime needs a GPU/TPU (JAX keeps no CPU allocator statistics); "
                         "use --memory compiled")
    torch_device, torch_text = (torch_device_info() if args.torch_configs
                                else (None, "PyTorch comparison off (--torch)"))
    settings = {"models": [s.name for s in specs], "dtypes": args.dtype_list, "batches": args.batch_list,
                "repeats": args.repeats, "warmup": args.warmup, "input_size": args.input_size,
                "jax_configs": args.jax_list, "memory": memory,
                "jax_config_descriptions": {n: JAX_CONFIGS[n].description for n in args.jax_list},
                "torch_configs": [c.label for c in args.torch_configs] if torch_device else []}
    sink = JsonSink(args.json, benchmark="inference", environment=environment(), settings=settings,
                    timings=[], memory=[])
    print("dsnt-jax inference benchmark: paper Table 4 method, no flip, median ± MAD/Φ⁻¹(0.75) per call")
    print(f"device: {device_description(device)}; host: {machine_description()}")
    print(f"torch: {torch_text}; peers: {', '.join(settings['torch_configs']) or 'none'}")
    print("timed per call: host→device copy, forward, coordinate extraction, copy back (synchronising), "
          "back-transform to pixels")
    for name, text in settings["jax_config_descriptions"].items():
        print(f"dsnt-jax {name}: {text}")
    print(f"dtypes {', '.join(args.dtype_list)}; batches {', '.join(map(str, args.batch_list))}; "
          f"{args.repeats} timed calls after {args.warmup} warm-up; memory: {memory}")
    print(HEADER + "\n" + "-" * len(HEADER))
    for spec in tqdm(specs, desc="models", leave=False, disable=len(specs) == 1):
        measure_model(spec, args, memory, torch_device, sink)
    ratios = targets.inference_ratios(sink.data["timings"])
    sink.update(ratios=ratios, variants=targets.variant_overheads(sink.data["timings"]),
                verdicts=targets.inference_verdicts(sink.data["timings"], device.platform))
    for line in targets.variant_lines(sink.data["timings"]):
        print(line)
    for r in ratios:
        print(f"ratio {r['model']} {r['dtype']} batch {r['batch']}: dsnt-jax {r['jax_config']} / "
              f"torch {r['peer']} speed = {r['ratio']:.2f}×")
    print("\n".join(sink.data["verdicts"]))
    return sink.data


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; returns the results (None for the internal memory child)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.memory_child:
        return run_command(parser, args, lambda: _print_memory_peak(args))
    return run_command(parser, args, lambda: run(_resolve(args)))


def _print_memory_peak(args: argparse.Namespace) -> None:
    """--memory-child: one model's training-memory peak as JSON on stdout (run in its own process)."""
    spec = parse_models(args.memory_child)[0]
    size = args.input_size or input_size_for(spec.backbone)
    model = build(spec, DTYPES[args.dtypes or "float32"])
    print(json.dumps({"peak_bytes": jax_runtime_peak(model, init_variables(model, size), size)}))


if __name__ == "__main__":
    main()
