"""Helpers shared by the benchmarks: model specs, random variables, dsnt-jax inference paths, statistics,
descriptions, JSON output.

    python -m benchmarks.common [--json FILE]   # prints (and writes) the environment the benchmarks see

Importing this module sets XLA_PYTHON_CLIENT_PREALLOCATE=false (unless already set): JAX would otherwise
reserve 75 % of GPU memory when its backend starts, starving PyTorch in the same process and the memory
child processes. On-demand allocation leaves steady-state timings unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402  (after the environment variable above)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dsnt_jax.models import (  # noqa: E402
    COMPUTE_DTYPES,
    HOURGLASS_STACKS,
    RESNET_SPECS,
    RESOLUTIONS,
    create_model,
    fold_batchnorm,
)

RESNETS: tuple[str, ...] = tuple(RESNET_SPECS)
HOURGLASSES: tuple[str, ...] = tuple(HOURGLASS_STACKS)
ALL_MODELS: tuple[str, ...] = tuple(f"{b}@{r}" for b in RESNETS for r in RESOLUTIONS) + HOURGLASSES
# Φ⁻¹(0.75): MAD / this estimates a normal σ (anibali/tele `MedianValueMeter`).
MAD_TO_SIGMA = 0.6744897501960817
DTYPES = COMPUTE_DTYPES


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


def parse_list(text: str, flag: str, allowed: Sequence[str] | None = None) -> list[str]:
    """'a, b' → ['a', 'b']; raises ValueError naming `flag` when empty or outside `allowed`."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if bad or not items:
        choices = f" (choose from {', '.join(allowed)})" if allowed is not None else ""
        raise ValueError(f"{flag} must be a comma-separated list{choices}, got {text!r}")
    return items


def parse_ints(text: str, flag: str) -> list[int]:
    """'1, 32' → [1, 32]; every value must be a positive integer."""
    items = parse_list(text, flag)
    if not all(t.isdigit() and int(t) > 0 for t in items):
        raise ValueError(f"{flag} must list positive integers, got {text!r}")
    return [int(t) for t in items]


def median_mad(times: Sequence[float]) -> tuple[float, float]:
    """(median, MAD/Φ⁻¹(0.75)) of a sample: a robust centre and a normal-σ estimate of its spread."""
    med = statistics.median(times)
    return med, statistics.median(abs(t - med) for t in times) / MAD_TO_SIGMA


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
# dsnt-jax inference paths timed by benchmarks.inference: host input → [B, J, 2] pixels on the host

Infer = Callable[[Any], np.ndarray]


def _compiled_infer(forward: Callable[[Any, jax.Array], jax.Array], variables: Any,
                    input_size: int) -> Infer:
    """The Table 4 region around `forward(variables, images [B, S, S, 3]) -> coords [B, J, 2]`:
    [B, S, S, 3] host images → [B, J, 2] pixels on the host."""
    device = jax.devices()[0]
    forward = jax.jit(forward)
    variables = jax.device_put(variables, device)  # weights resident: no copy per call

    def infer(images: np.ndarray) -> np.ndarray:
        coords = forward(variables, jax.device_put(images, device))
        return to_pixels(np.asarray(coords), input_size)  # np.asarray waits for the result

    return infer


def jax_infer_fn(spec: ModelSpec, input_size: int, dtype: Any) -> Infer:
    """dsnt-jax `jit`: the eval-mode apply of the model."""
    model = build(spec, dtype)
    return _compiled_infer(lambda v, x: model.apply(v, x, train=False)["coords"],
                           init_variables(model, input_size), input_size)


def folded_infer_fn(spec: ModelSpec, input_size: int, dtype: Any) -> Infer:
    """dsnt-jax `folded`: BatchNorm folded into the convs once, before timing."""
    model = build(spec, dtype)
    folded = fold_batchnorm(model, init_variables(model, input_size),
                            input_shape=(1, input_size, input_size, 3))
    return _compiled_infer(lambda v, x: folded.apply(v, x)["coords"], folded.variables, input_size)


def estimator_infer_fn(spec: ModelSpec, input_size: int, dtype: Any) -> Infer:
    """dsnt-jax `estimator`: `PoseEstimator.predict` of a list of uint8 [S, S, 3] images → [B, J, 2]
    joints in image pixels (BatchNorm folded, as the estimator does by default)."""
    # Imported here: the training package needs tfds/grain, which the other variants do not.
    from train.inference import PoseEstimator
    from train.loop.config import resolve

    precision = next(name for name, d in COMPUTE_DTYPES.items() if d == dtype)
    cfg = resolve({"backbone": spec.backbone, "res": spec.res, "input_size": input_size})
    estimator = PoseEstimator(cfg, init_variables(cfg.model.build(), input_size), precision=precision)

    def infer(images: list[np.ndarray]) -> np.ndarray:
        return np.stack([p.joints for p in estimator.predict(images)])

    return infer


def _as_uint8_images(images: np.ndarray) -> list[np.ndarray]:
    """[B, S, S, 3] floats in [0, 1] → B uint8 [S, S, 3] images (made before the timed region)."""
    return list(np.round(images * 255).astype(np.uint8))


@dataclasses.dataclass(frozen=True)
class JaxConfig:
    """A dsnt-jax inference path that `--jax` selects.

    Attributes:
      make: (spec, input size S, jnp dtype) → the timed function.
      description: what a call runs, for the printed legend and the JSON settings.
      host_input: [B, S, S, 3] float32 host batch → the timed function's argument, made untimed.
      only_batch1: timed at batch 1 only (a per-call cost).
      optional: a failure becomes the row's 'error' instead of ending the benchmark.
    """

    make: Callable[[ModelSpec, int, Any], Infer]
    description: str
    host_input: Callable[[np.ndarray], Any] = lambda images: images
    only_batch1: bool = False
    optional: bool = False

    def applies(self, dtype: str, batch: int) -> bool:
        del dtype  # every path runs in both precisions
        return not self.only_batch1 or batch == 1


# name → dsnt-jax inference path; rows carry the name as their 'config'.
JAX_CONFIGS: dict[str, JaxConfig] = {
    "jit": JaxConfig(jax_infer_fn, "jax.jit of the eval-mode apply"),
    "folded": JaxConfig(folded_infer_fn, "jax.jit of the apply with BatchNorm folded into the convs"),
    "estimator": JaxConfig(estimator_infer_fn, "PoseEstimator.predict([uint8 S×S image]): preprocessing, "
                           "folded forward, coords + heatmaps back, joints in pixels (batch 1 only)",
                           host_input=_as_uint8_images, only_batch1=True,
                           # It imports the training package (tensorflow-datasets, grain), which a
                           # bare GPU machine may lack: the other figures must still be measured.
                           optional=True),
}


# ----------------------------------------------------------------------------------------------------
# Descriptions of what was measured


def device_description(device: jax.Device | None = None) -> str:
    """'gpu (NVIDIA H200), jax 0.11.2' style text for the measured JAX device."""
    device = device or jax.devices()[0]
    return f"{device.platform} ({device.device_kind}), jax {jax.__version__}"


def machine_description() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}")


def short_error(error: BaseException, limit: int = 160) -> str:
    """'TypeName: first line of the message' cut to `limit` characters, for one-line failure notes."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _torch_environment() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "torch_threads": torch.get_num_threads()}
    try:
        import dsntnn  # noqa: F401

        info["dsntnn"] = importlib.metadata.version("dsntnn")
    except (ImportError, importlib.metadata.PackageNotFoundError):
        info["dsntnn"] = None
    if torch.cuda.is_available():
        info["torch_device"] = torch.cuda.get_device_name()
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    else:
        info["torch_device"] = "cpu"
    return info


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.max.sm"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False, timeout=30)
    return done.stdout.strip() or None


def environment() -> dict[str, Any]:
    """Versions, devices and host of this process: what a benchmark figure was measured on.

    Starts JAX's backend (and probes CUDA through PyTorch when installed).
    """
    device = jax.devices()[0]
    import flax

    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "jax": jax.__version__, "jaxlib": _jaxlib_version(),
            "flax": flax.__version__, "jax_platform": device.platform, "jax_device": device.device_kind,
            "jax_device_count": jax.device_count(), "python": platform.python_version(),
            "host": machine_description(), "cpu_count": os.cpu_count(),
            "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    info.update(_torch_environment())
    info["nvidia_smi"] = _nvidia_smi()
    return info


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------------
# Output


class JsonSink:
    """A JSON object rewritten (atomically) after every update, so a killed benchmark leaves its figures.

    `JsonSink(None)` is a no-op, for runs without --json.
    """

    def __init__(self, path: str | None, **initial: Any):
        self.path = path
        self.data: dict[str, Any] = dict(initial)
        self._flush()

    def update(self, **values: Any) -> None:
        self.data.update(values)
        self._flush()

    def append(self, key: str, item: Any) -> None:
        self.data.setdefault(key, []).append(item)
        self._flush()

    def _flush(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Prints the environment as JSON (and writes it to --json)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.common", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the environment to FILE")
    args = parser.parse_args(argv)
    info = environment()
    print(json.dumps(info, indent=1))
    JsonSink(args.json, **info)
    return info


if __name__ == "__main__":
    main()


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace, run: Callable[[], Any]) -> Any:
    """Runs a benchmark's `run()`: a ValueError (bad arguments found late) exits with the parser's usage
    error; says where --json went."""
    try:
        result = run()
    except ValueError as e:
        parser.error(str(e))
    if getattr(args, "json", None):
        print(f"wrote {args.json}")
    return result
