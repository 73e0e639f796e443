"""PyTorch peer configurations of the benchmarks: eager or `torch.compile`d, NCHW or channels_last.

The benchmarks take `--torch CONFIGS`, a comma-separated list of items

    eager | compile[:MODE] [+cl | +nchw]

* `eager`: the network as the paper's code runs it (NCHW, no compilation);
* `compile`: `torch.compile(fn, mode=MODE, dynamic=False)` of the timed function (forward + coordinates,
  or forward + loss for training; the backward is compiled by AOTAutograd). MODE defaults to
  `--torch-compile-mode` (e.g. `reduce-overhead`: CUDA graphs, `max-autotune`); `--torch-compile-backend`
  picks the dynamo backend (default inductor; `eager` runs dynamo only, a quick plumbing check on a CPU);
  a mode is passed to inductor only;
* `+cl` / `+nchw`: memory format. Without it, `--torch-channels-last` decides: `auto` (default) gives
  compiled configurations channels_last and eager ones NCHW, as a PyTorch user tuning for speed and the
  paper's code respectively; `on` / `off` force it.

Channels_last inputs are the NHWC host arrays dsnt-jax gets, seen through a permuted (no-copy) NCHW view
and copied to the device with their strides; NCHW inputs are transposed on the host outside the timed
region, so both copy the same bytes. dsntnn's `flat_softmax` calls `.view()`, which fails on
channels_last tensors: `TorchPoseModel` makes its logits contiguous first (a no-op for NCHW).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclasses.dataclass(frozen=True)
class TorchConfig:
    """One way of running the PyTorch peer.

    Attributes:
      compiled: wrap the timed function in `torch.compile`.
      channels_last: model weights and inputs in channels_last (NHWC in memory) instead of NCHW.
      mode: torch.compile mode (inductor only); 'default' passes none.
      backend: torch.compile backend.
    """

    compiled: bool
    channels_last: bool
    mode: str = "default"
    backend: str = "inductor"

    @property
    def label(self) -> str:
        """'eager', 'compile(reduce-overhead)+channels_last', 'compile[backend=eager]' …"""
        text = "eager"
        if self.compiled:
            text = "compile" if self.mode == "default" else f"compile({self.mode})"
            if self.backend != "inductor":
                text += f"[backend={self.backend}]"
        return text + ("+channels_last" if self.channels_last else "")

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.compiled and self.backend == "inductor" and self.mode in (
            "reduce-overhead", "max-autotune")


def add_torch_arguments(parser: argparse.ArgumentParser, *, default: str | None,
                        compile_mode: str) -> None:
    """Adds --torch, --torch-compile-mode, --torch-compile-backend and --torch-channels-last."""
    parser.add_argument("--torch", nargs="?", const="eager", default=default, metavar="CONFIGS",
                        help="PyTorch peers to time side by side: comma-separated eager | "
                             "compile[:MODE] [+cl|+nchw] (bare --torch: eager; 'none': no peer) "
                             f"(default {default or 'none'})")
    parser.add_argument("--torch-compile-mode", default=compile_mode,
                        help=f"torch.compile mode of 'compile' items without :MODE, one of "
                             f"{', '.join(COMPILE_MODES)} (default {compile_mode})")
    parser.add_argument("--torch-compile-backend", default="inductor",
                        help="torch.compile backend (default inductor; 'eager': dynamo only)")
    parser.add_argument("--torch-channels-last", choices=("auto", "on", "off"), default="auto",
                        help="memory format of items without +cl/+nchw: auto = channels_last for "
                             "compile, NCHW for eager (default auto)")


def parse_torch_configs(text: str | None, *, compile_mode: str = "default", backend: str = "inductor",
                        channels_last: str = "auto") -> list[TorchConfig]:
    """The `--torch` grammar (module docstring) → configurations; None, '' or 'none' → [].

    Raises:
      ValueError: an unknown item or mode, a mode on `eager`, or the same configuration twice.
    """
    if text is None or text.strip() in ("", "none"):
        return []
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"--torch-compile-mode must be one of {COMPILE_MODES}, got {compile_mode!r}")
    configs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, layout = item.partition("+")
        kind, _, mode = kind.partition(":")
        if kind not in ("eager", "compile") or layout not in ("", "cl", "nchw"):
            raise ValueError(f"bad --torch item {item!r}: use eager | compile[:MODE] [+cl|+nchw]")
        if mode and (kind == "eager" or mode not in COMPILE_MODES):
            raise ValueError(f"bad --torch item {item!r}: a mode goes on compile only, one of "
                             f"{COMPILE_MODES}")
        compiled = kind == "compile"
        mode = (mode or compile_mode) if compiled else "default"
        if backend != "inductor":
            mode = "default"  # the modes are inductor's; other backends get none (compile_fn)
        cl = {"cl": True, "nchw": False}.get(layout, {"on": True, "off": False}.get(channels_last,
                                                                                  compiled))
        configs.append(TorchConfig(compiled, cl, mode, backend if compiled else "inductor"))
    if len(set(configs)) != len(configs):
        raise ValueError(f"--torch lists a configuration twice: {text!r}")
    return configs


def configs_from_args(args: argparse.Namespace) -> list[TorchConfig]:
    """`parse_torch_configs` of the flags `add_torch_arguments` added."""
    return parse_torch_configs(args.torch, compile_mode=args.torch_compile_mode,
                               backend=args.torch_compile_backend, channels_last=args.torch_channels_last)


def torch_device_info() -> tuple[str | None, str]:
    """(device string or None, description) of the PyTorch side; turns on cuDNN benchmark mode."""
    try:
        import dsntnn  # noqa: F401
        import torch
    except ImportError:
        return None, "torch/dsntnn not installed: PyTorch comparison skipped"
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        import jax

        # Both frameworks may run float32 convolutions in TF32 on Ampere+ GPUs by default (JAX's default
        # precision; cudnn.allow_tf32); say so, since it changes float32 timings.
        return "cuda", (f"torch {torch.__version__} on cuda ({torch.cuda.get_device_name()}), "
                        f"cudnn.benchmark, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                        f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}")
    return "cpu", f"torch {torch.__version__} on cpu ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------------------------
# Applying a configuration


def prepare_model(model: Any, config: TorchConfig, device: str) -> Any:
    """`model` moved to `device`, in channels_last when the configuration asks for it."""
    import torch

    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def compile_fn(fn: Callable, config: TorchConfig) -> Callable:
    """`fn` itself (eager) or `torch.compile(fn, ...)` with static shapes, as `config` says."""
    if not config.compiled:
        return fn
    import torch

    kwargs: dict[str, Any] = {"backend": config.backend, "dynamic": False}
    if config.backend == "inductor" and config.mode != "default":
        kwargs["mode"] = config.mode  # other backends reject inductor's modes
    return torch.compile(fn, **kwargs)


def host_layout(nhwc: np.ndarray, config: TorchConfig) -> np.ndarray:
    """The host array a configuration copies: NHWC itself (channels_last) or an NCHW copy (untimed)."""
    return nhwc if config.channels_last else np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))


def to_device(host: np.ndarray, config: TorchConfig, device: str) -> Any:
    """Host array of `host_layout` → an NCHW-shaped tensor on `device` (channels_last strides if so)."""
    import torch

    x = torch.from_numpy(host)
    if config.channels_last:
        x = x.permute(0, 3, 1, 2)  # NHWC bytes are a channels_last NCHW tensor; .to keeps the strides
    return x.to(device)


def autocast(device: str, dtype_name: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device` for dtype 'bfloat16', else a no-op context."""
    import torch

    return torch.autocast(device.split(":")[0], torch.bfloat16, enabled=dtype_name == "bfloat16")


def fresh_compile_state(config: TorchConfig) -> None:
    """Forgets dynamo's earlier compilations before a compiled configuration is built.

    Every configuration compiles closures with the same code objects; without this their cache entries
    pile up on one code object until dynamo's recompile limit makes it fall back to eager silently.
    """
    if config.compiled:
        import torch

        torch._dynamo.reset()


def mark_step(config: TorchConfig) -> None:
    """Tells CUDA-graph trees a new training iteration starts (their outputs may be overwritten)."""
    if config.uses_cuda_graphs:
        import torch

        torch.compiler.cudagraph_mark_step_begin()


def synchronize(device: str) -> None:
    """Waits for the device's queued work (no-op on the CPU, where PyTorch runs synchronously)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextlib.contextmanager
def released(device: str) -> Iterator[None]:
    """Returns PyTorch's cached CUDA blocks after the block, for JAX and later configurations."""
    try:
        yield
    finally:
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
