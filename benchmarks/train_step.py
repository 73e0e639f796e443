"""Training throughput (images/s) of one model: dsnt-jax (float32 and bfloat16) vs PyTorch eager.

    python -m benchmarks.train_step [--model resnet50@28] [--batch 32] [--dtypes float32,bfloat16]
                                    [--steps 20] [--repeats 5] [--jax-step train|jit] [--no-torch]
                                    [--quick]

One training step = host→device copy of a batch (images, targets, mask), forward in train mode
(batch statistics), the paper's DSNTr loss (Euclidean + JS, σ_t = 1 px, λ = 1), backward and an
RMSProp update with PyTorch's semantics (lr 2.5e-4, decay 0.99, eps 1e-8 outside the square root).

* dsnt-jax, `--jax-step train` (default): the project's training step, `train.steps.make_train_step`
  (jax.pmap over one device, BatchNorm over the pmap axis, state donated) on a `train.state.TrainState`
  with `train.state.torch_rmsprop` — what `python -m train.main` runs per device. `--jax-step jit`: a
  plain single-device `jax.jit` step (same loss and optimiser) defined here, to see the pmap overhead.
  The dtype is the network's computation dtype (parameters stay float32; heads and loss run in
  float32).
* PyTorch: `benchmarks.torch_reference` model, `torch.optim.RMSprop(lr)`, dsntnn loss; bfloat16 via
  autocast; cuDNN benchmark mode on a GPU.

A measurement is `--steps` consecutive steps, synchronised once at the end (both frameworks dispatch
asynchronously); images/s = steps·batch / elapsed. Reported: median ± MAD/Φ⁻¹(0.75) over
`--repeats` measurements, after warm-up steps (compilation is not timed). The speed-up line is
dsnt-jax images/s over PyTorch's at the same dtype (project target on a GPU: ≥ 1.3×).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from benchmarks.inference import (
    DTYPES,
    ModelSpec,
    build,
    device_description,
    init_variables,
    machine_description,
    median_mad,
    parse_models,
    torch_device_info,
)
from benchmarks.memory import loss_and_grads_fn, random_batch
from dsnt_jax.models import input_size_for
from train.state import torch_rmsprop

LEARNING_RATE = 2.5e-4
TARGET_SPEEDUP = 1.3


def make_jax_step(model: Any, tx: optax.GradientTransformation) -> Callable:
    """Jitted (state, images, targets, mask) → (state, loss); state = (params, batch_stats, opt_state).

    The state is donated, so parameters are updated in place as PyTorch's optimiser does.
    """
    grads_fn = loss_and_grads_fn(model)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, images, targets, mask):
        params, batch_stats, opt_state = state
        (loss, batch_stats), grads = grads_fn(params, batch_stats, images, targets, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    return step


def jax_runner(spec: ModelSpec, input_size: int, dtype_name: str, kind: str = "train"
               ) -> Callable[[list[tuple[np.ndarray, ...]]], float]:
    """A function that runs one training step per given host batch and returns the last loss.

    `kind` 'train' uses `train.steps.make_train_step` (pmap over the first device), 'jit' the plain
    jitted step of `make_jax_step`.
    """
    if kind == "train":
        return _train_steps_runner(spec, input_size, dtype_name)
    if kind != "jit":
        raise ValueError(f"--jax-step must be 'train' or 'jit', got {kind!r}")
    model = build(spec, DTYPES[dtype_name])
    variables = init_variables(model, input_size)
    tx = torch_rmsprop(LEARNING_RATE)
    device = jax.devices()[0]
    # Committed to the device like the step's outputs, so the second call does not recompile.
    state = [jax.device_put((variables["params"], variables["batch_stats"],
                             jax.jit(tx.init)(variables["params"])), device)]
    step = make_jax_step(model, tx)

    def run_steps(batches: list[tuple[np.ndarray, ...]]) -> float:
        loss = None
        for host_batch in batches:
            state[0], loss = step(state[0], *jax.device_put(host_batch, device))
        return float(loss)  # waits for the last step

    return run_steps


def _train_steps_runner(spec: ModelSpec, input_size: int, dtype_name: str
                        ) -> Callable[[list[tuple[np.ndarray, ...]]], float]:
    """`jax_runner` with the training loop's own pmapped step and TrainState, on one device."""
    from train import state as state_lib
    from train import steps as steps_lib

    model = build(spec, DTYPES[dtype_name], axis_name=steps_lib.AXIS)
    variables = init_variables(model, input_size)
    tx = torch_rmsprop(LEARNING_RATE)
    devices = jax.devices()[:1]
    state = state_lib.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                                        batch_stats=variables["batch_stats"], rng=jax.random.PRNGKey(0))
    # Laid out as the pmapped step returns it (train.main uses flax's jax_utils.replicate, whose
    # layout differs and makes the second step compile again; the steady state is the same).
    sharding = NamedSharding(Mesh(np.array(devices), (steps_lib.AXIS,)), PartitionSpec(steps_lib.AXIS))
    replicated = [jax.device_put(jax.tree_util.tree_map(lambda x: np.asarray(x)[None], state), sharding)]
    step = steps_lib.make_train_step(output="dsnt", reg="js", sigma=1.0, reg_coeff=1.0,
                                     learning_rate_fn=optax.constant_schedule(LEARNING_RATE),
                                     devices=devices)

    def run_steps(batches: list[tuple[np.ndarray, ...]]) -> float:
        metrics = None
        for images, targets, mask in batches:
            # pmap copies the host arrays to the device, as the training loop's batches are.
            sharded = steps_lib.shard({"image": images, "coords": targets, "mask": mask}, 1)
            replicated[0], metrics = step(replicated[0], sharded)
        return float(metrics["loss"][0])  # waits for the last step

    return run_steps


def torch_runner(spec: ModelSpec, dtype_name: str, device: str
                 ) -> Callable[[list[tuple[np.ndarray, ...]]], float]:
    """The same loop for the PyTorch eager reference (NCHW host batches)."""
    import torch

    from benchmarks.torch_reference import build_torch_model, torch_loss

    model = build_torch_model(spec.backbone, spec.res).to(device).train()
    optimiser = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE)
    autocast = dtype_name == "bfloat16"
    kind = device.split(":")[0]

    def run_steps(batches: list[tuple[np.ndarray, ...]]) -> float:
        loss = None
        for images, targets, mask in batches:
            x, t, m = (torch.from_numpy(a).to(device) for a in (images, targets, mask))
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(kind, torch.bfloat16, enabled=autocast):
                outputs = model(x)
            loss = torch_loss(outputs, t, m)
            loss.backward()
            optimiser.step()
        return float(loss.item())  # .item() synchronises

    return run_steps


def measure(run_steps: Callable[[list[tuple[np.ndarray, ...]]], float],
            batches: list[tuple[np.ndarray, ...]], steps: int, repeats: int, warmup: int
            ) -> tuple[list[float], float]:
    """(images/s of each of `repeats` runs of `steps` steps, last loss); raises on a non-finite loss."""
    cycle = [batches[i % len(batches)] for i in range(steps)]
    run_steps([batches[i % len(batches)] for i in range(warmup)])
    rates, loss = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        loss = run_steps(cycle)
        rates.append(steps * cycle[0][0].shape[0] / (time.perf_counter() - start))
    if not np.isfinite(loss):
        raise RuntimeError(f"training diverged: loss {loss}")
    return rates, loss


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="resnetNN@RES or hgN (default resnet50@28; quick resnet18@7)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32; quick 2)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side in px (default: the paper's, 224/256; quick 64)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dsnt-jax dtypes (default float32,bfloat16; quick float32)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per measurement (default 20; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="measurements (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first, ≥ 1 (compilation) (default 3; quick 2)")
    parser.add_argument("--jax-step", choices=("train", "jit"), default="train",
                        help="dsnt-jax step: train.steps' pmapped training step (default) or a plain "
                             "jit step")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (< 1 min)")
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    # flag → (full default, --quick default)
    defaults = {"model": ("resnet50@28", "resnet18@7"), "batch": (32, 2),
                "dtypes": ("float32,bfloat16", "float32"), "steps": (20, 2), "repeats": (5, 2),
                "warmup": (3, 2), "input_size": (None, 64)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    specs = parse_models(args.model)
    if len(specs) != 1:
        raise ValueError(f"--model takes one model, got {args.model!r}")
    args.spec = specs[0]
    args.dtype_list = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in args.dtype_list if d not in DTYPES]
    if bad or not args.dtype_list:
        raise ValueError(f"--dtypes must list some of {tuple(DTYPES)}, got {args.dtypes!r}")
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup < 1:  # the first step compiles; it must not be timed
        raise ValueError(f"--warmup must be ≥ 1 (compilation), got {args.warmup}")
    args.input_size = args.input_size or input_size_for(args.spec.backbone)
    if args.input_size < 32:
        raise ValueError(f"--input-size must be at least 32 px, got {args.input_size}")
    return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measures dsnt-jax (each dtype) and PyTorch; prints a table and returns one dict per row."""
    spec, size, batch = args.spec, args.input_size, args.batch
    torch_device, torch_text = ((None, "PyTorch comparison off (--no-torch)") if args.no_torch
                                else torch_device_info())
    if torch_device and not spec.is_resnet:
        torch_device, torch_text = None, f"no PyTorch reference for {spec.backbone}: comparison skipped"
    print(f"dsnt-jax training-step benchmark: {spec.name}, input {size} px, batch {batch}, DSNTr loss, "
          f"RMSProp (PyTorch semantics)")
    print(f"device: {device_description()}; host: {machine_description()}")
    print(f"torch: {torch_text}")
    print("dsnt-jax step: " + ("train.steps.make_train_step (pmap over 1 device) + train.state.TrainState"
                               if args.jax_step == "train" else
                               "plain jax.jit step of benchmarks/train_step.py")
          + ", RMSProp eps outside the √ (PyTorch's)")
    print(f"{args.repeats} measurements of {args.steps} steps after {args.warmup} warm-up steps")
    nhwc = [random_batch(batch, size, seed=s) for s in range(2)]
    nchw = [(np.ascontiguousarray(im.transpose(0, 3, 1, 2)), t, m) for im, t, m in nhwc]
    runs = [("dsnt-jax", d) for d in args.dtype_list]
    runs += [("pytorch", d) for d in args.dtype_list] if torch_device else []
    rows = []
    for framework, dtype in runs:
        if framework == "dsnt-jax":
            runner, batches = jax_runner(spec, size, dtype, args.jax_step), nhwc
        else:
            runner, batches = torch_runner(spec, dtype, torch_device), nchw
        rates, loss = measure(runner, batches, args.steps, args.repeats, args.warmup)
        rate, spread = median_mad(rates)
        rows.append({"framework": framework, "dtype": dtype, "images_per_s": rate,
                     "images_per_s_spread": spread, "ms_per_step": 1e3 * batch / rate, "loss": loss})
    header = f"{'framework':<10}{'dtype':>10}  {'images/s':>20}  {'ms/step':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['framework']:<10}{r['dtype']:>10}  "
              f"{r['images_per_s']:>10.1f} ± {r['images_per_s_spread']:<7.1f}  {r['ms_per_step']:>9.2f}")
    rate = {(r["framework"], r["dtype"]): r["images_per_s"] for r in rows}
    for dtype in args.dtype_list:
        if ("pytorch", dtype) in rate:
            ratio = rate[("dsnt-jax", dtype)] / rate[("pytorch", dtype)]
            print(f"ratio {dtype}: dsnt-jax / PyTorch eager images/s = {ratio:.2f}× "
                  f"(target on a GPU: ≥ {TARGET_SPEEDUP:g}×)")
    if ("dsnt-jax", "float32") in rate and ("dsnt-jax", "bfloat16") in rate:
        print(f"dsnt-jax bfloat16 / float32 images/s = "
              f"{rate[('dsnt-jax', 'bfloat16')] / rate[('dsnt-jax', 'float32')]:.2f}×")
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point; returns the result rows."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(_resolve(args))
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
