"""Training throughput (images/s) of one model: dsnt-jax (float32 and bfloat16) vs PyTorch peers
(eager, torch.compile'd, channels_last), side by side in one process.

    python -m benchmarks.train_step [--model resnet50@28] [--batch 32] [--dtypes float32,bfloat16]
                                    [--steps 20] [--repeats 5] [--jax-step train,jit]
                                    [--torch eager,compile] [--no-torch] [--quick] [--json FILE]

One training step = host→device copy of a batch (images, targets, mask), forward in train mode
(batch statistics), the paper's DSNTr loss (Euclidean + JS, σ_t = 1 px, λ = 1), backward and an
RMSProp update with PyTorch's semantics (lr 2.5e-4, decay 0.99, eps 1e-8 outside the square root).

* dsnt-jax, `--jax-step train` (default): the project's training step, `train.loop.steps.make_train_step`
  (jax.pmap over one device, BatchNorm over the pmap axis, state donated) on a `train.loop.state.TrainState`
  with `train.loop.state.torch_rmsprop` — what `python -m train.main` runs per device. `jit`: a plain
  single-device `jax.jit` step (same loss and optimiser) defined here, to see the pmap overhead; both
  may be listed. The dtype is the network's computation dtype (parameters stay float32; heads and loss
  run in float32).
* PyTorch (`--torch`, default eager; see `benchmarks.torch_peers` for the grammar):
  `benchmarks.torch_reference` model, `torch.optim.RMSprop(lr)`, dsntnn loss; bfloat16 via autocast;
  cuDNN benchmark mode on a GPU. `compile` wraps forward + loss in torch.compile (AOTAutograd compiles
  the backward; the optimiser step stays eager), channels_last by default, compile mode `default`
  unless `--torch-compile-mode` / `compile:MODE` says otherwise. A peer that cannot be built or
  compiled is reported in one line and the run goes on.

A measurement is `--steps` consecutive steps, synchronised once at the end (both frameworks dispatch
asynchronously); images/s = steps·batch / elapsed. Reported: median ± MAD/Φ⁻¹(0.75) over
`--repeats` measurements, after warm-up steps (compilation is not timed; `warm-up s` shows it). The
ratio lines are dsnt-jax images/s over each peer's at the same dtype (> 1: dsnt-jax is faster).
`--json` is rewritten after every figure.
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

from benchmarks import targets, torch_peers
from benchmarks.common import (
    DTYPES,
    JsonSink,
    ModelSpec,
    build,
    device_description,
    environment,
    init_variables,
    machine_description,
    median_mad,
    parse_list,
    parse_models,
    run_command,
    short_error,
)
from benchmarks.memory import loss_and_grads_fn, random_batch
from benchmarks.torch_peers import TorchConfig, torch_device_info
from dsnt_jax.models import input_size_for
from train.loop.state import torch_rmsprop

LEARNING_RATE = 2.5e-4
JAX_STEPS = {"train": "train.loop.steps.make_train_step (pmap over 1 device) + TrainState",
             "jit": "plain jax.jit step of benchmarks/train_step.py"}
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]
Runner = Callable[[list[Batch]], float]


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
               ) -> Runner:
    """A function that runs one training step per given host batch and returns the last loss.

    `kind` 'train' uses `train.loop.steps.make_train_step` (pmap over the first device), 'jit' the plain
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

    def run_steps(batches: list[Batch]) -> float:
        loss = None
        for host_batch in batches:
            state[0], loss = step(state[0], *jax.device_put(host_batch, device))
        return float(loss)  # waits for the last step

    return run_steps


def _train_steps_runner(spec: ModelSpec, input_size: int, dtype_name: str
                        ) -> Runner:
    """`jax_runner` with the training loop's own pmapped step and TrainState, on one device."""
    from train.loop import state as state_lib
    from train.loop import steps as steps_lib

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

    def run_steps(batches: list[Batch]) -> float:
        metrics = None
        for images, coords, mask in batches:
            # pmap copies the host arrays to the device, as the training loop's batches are.
            sharded = steps_lib.shard({"image": images, "coords": coords, "mask": mask}, 1)
            replicated[0], metrics = step(replicated[0], sharded)
        return float(metrics["loss"][0])  # waits for the last step

    return run_steps


def torch_runner(spec: ModelSpec, dtype_name: str, device: str, config: TorchConfig | None = None
                 ) -> Runner:
    """The same loop for a PyTorch peer; takes host batches whose images are in `host_layout`."""
    import torch

    from benchmarks.torch_reference import build_torch_model, torch_loss

    config = config or TorchConfig(compiled=False, channels_last=False)
    torch_peers.fresh_compile_state(config)
    model = torch_peers.prepare_model(build_torch_model(spec.backbone, spec.res).train(), config, device)
    optimiser = torch.optim.RMSprop(model.parameters(), lr=LEARNING_RATE)

    def loss_of(x: torch.Tensor, t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        with torch_peers.autocast(device, dtype_name):
            outputs = model(x)
        return torch_loss(outputs, t, m)  # float32 heads, as dsnt-jax's

    step_loss = torch_peers.compile_fn(loss_of, config)

    def run_steps(batches: list[Batch]) -> float:
        loss = None
        for images, targets_, mask in batches:
            x = torch_peers.to_device(images, config, device)
            t, m = (torch.from_numpy(a).to(device) for a in (targets_, mask))
            optimiser.zero_grad(set_to_none=True)
            torch_peers.mark_step(config)
            loss = step_loss(x, t, m)
            loss.backward()
            optimiser.step()
        return float(loss.item())  # .item() synchronises

    return run_steps


def measure(run_steps: Runner, batches: list[Batch], steps: int, repeats: int, warmup: int
            ) -> tuple[list[float], float, float]:
    """(images/s of each of `repeats` runs of `steps` steps, last loss, seconds of the warm-up steps).

    Raises RuntimeError on a non-finite loss.
    """
    cycle = [batches[i % len(batches)] for i in range(steps)]
    start = time.perf_counter()
    run_steps([batches[i % len(batches)] for i in range(warmup)])
    warmup_s = time.perf_counter() - start
    rates, loss = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        loss = run_steps(cycle)
        rates.append(steps * cycle[0][0].shape[0] / (time.perf_counter() - start))
    if not np.isfinite(loss):
        raise RuntimeError(f"training diverged: loss {loss}")
    return rates, loss, warmup_s


def _figure(base: dict[str, Any], make: Callable[[], Runner], batches: list[Batch],
            args: argparse.Namespace) -> dict[str, Any]:
    """One row: builds the runner and measures it; a PyTorch peer's failure becomes 'error'."""
    row = dict(base)
    try:
        rates, loss, warmup_s = measure(make(), batches, args.steps, args.repeats, args.warmup)
    except Exception as e:  # noqa: BLE001  (a peer that cannot compile is reported, not fatal)
        if row["library"] == "dsnt-jax":
            raise
        row["error"] = short_error(e)
        return row
    rate, spread = median_mad(rates)
    row.update(images_per_s=rate, images_per_s_spread=spread, ms_per_step=1e3 * args.batch / rate,
               loss=loss, warmup_s=warmup_s)
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="resnetNN@RES or hgN (default resnet50@28; quick resnet18@7)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32; quick 2)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side in px (default: the paper's, 224/256; quick 64)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dtypes (default float32,bfloat16; quick float32)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per measurement (default 20; quick 2)")
    parser.add_argument("--repeats", type=int, default=None, help="measurements (default 5; quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first, ≥ 1 (compilation) (default 3; quick 2)")
    parser.add_argument("--jax-step", default="train",
                        help="comma-separated dsnt-jax steps: train (train.loop.steps' pmapped step, "
                             "default) and/or jit (a plain jit step)")
    torch_peers.add_torch_arguments(parser, default="eager", compile_mode="default")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run (< 1 min)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
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
    args.dtype_list = parse_list(args.dtypes, "--dtypes", tuple(DTYPES))
    args.jax_steps = parse_list(args.jax_step, "--jax-step", tuple(JAX_STEPS))
    for name in ("batch", "steps", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup < 1:  # the first step compiles; it must not be timed
        raise ValueError(f"--warmup must be ≥ 1 (compilation), got {args.warmup}")
    args.input_size = args.input_size or input_size_for(args.spec.backbone)
    if args.input_size < 32:
        raise ValueError(f"--input-size must be at least 32 px, got {args.input_size}")
    args.torch_configs = [] if args.no_torch else torch_peers.configs_from_args(args)
    return args


HEADER = f"{'library':<10}{'configuration':<46}{'dtype':>9}  {'images/s':>20}  {'ms/step':>9}  {'warm-up s':>9}"


def _row_line(r: dict[str, Any]) -> str:
    head = f"{r['library']:<10}{r['config']:<46}{r['dtype']:>9}  "
    if "error" in r:
        return head + f"unavailable: {r['error']}"
    return (head + f"{r['images_per_s']:>10.1f} ± {r['images_per_s_spread']:<7.1f}  "
            f"{r['ms_per_step']:>9.2f}  {r['warmup_s']:>9.1f}")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measures dsnt-jax and the PyTorch peers per dtype; prints each row as measured; returns them."""
    spec, size, batch = args.spec, args.input_size, args.batch
    torch_device, torch_text = (torch_device_info() if args.torch_configs
                                else (None, "PyTorch comparison off (--no-torch / --torch none)"))
    if torch_device and not spec.is_resnet:
        torch_device, torch_text = None, f"no PyTorch reference for {spec.backbone}: comparison skipped"
    peers = args.torch_configs if torch_device else []
    settings = {"model": spec.name, "input_size": size, "batch": batch, "dtypes": args.dtype_list,
                "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                "jax_steps": args.jax_steps, "torch_configs": [c.label for c in peers]}
    sink = JsonSink(getattr(args, "json", None), benchmark="train_step", environment=environment(),
                    settings=settings, rows=[])
    print(f"dsnt-jax training-step benchmark: {spec.name}, input {size} px, batch {batch}, DSNTr loss, "
          f"RMSProp (PyTorch semantics)")
    print(f"device: {device_description()}; host: {machine_description()}")
    print(f"torch: {torch_text}; peers: {', '.join(settings['torch_configs']) or 'none'}")
    for name in args.jax_steps:
        print(f"dsnt-jax {name}: {JAX_STEPS[name]}, RMSProp eps outside the √ (PyTorch's)")
    print(f"{args.repeats} measurements of {args.steps} steps after {args.warmup} warm-up steps")
    print(HEADER + "\n" + "-" * len(HEADER))
    nhwc = [random_batch(batch, size, seed=s) for s in range(2)]
    for dtype in args.dtype_list:
        for name in args.jax_steps:
            row = _figure({"library": "dsnt-jax", "config": name, "dtype": dtype},
                          lambda n=name: jax_runner(spec, size, dtype, n), nhwc, args)
            sink.append("rows", row)
            print(_row_line(row), flush=True)
        for config in peers:
            batches = [(torch_peers.host_layout(im, config), t, m) for im, t, m in nhwc]
            with torch_peers.released(torch_device):
                row = _figure({"library": "pytorch", "config": config.label, "dtype": dtype},
                              lambda c=config: torch_runner(spec, dtype, torch_device, c), batches, args)
            sink.append("rows", row)
            print(_row_line(row), flush=True)
    rows = sink.data["rows"]
    ratios = targets.train_ratios(rows)
    platform = jax.devices()[0].platform
    sink.update(ratios=ratios, verdicts=targets.train_step_verdicts(rows, platform, spec.name, size, batch))
    for r in ratios:
        print(f"ratio {r['dtype']}: dsnt-jax {r['jax_config']} / torch {r['peer']} images/s = "
              f"{r['ratio']:.2f}×")
    rate = {(r["library"], r["config"], r["dtype"]): r.get("images_per_s") for r in rows}
    for name in args.jax_steps:
        f32, bf16 = rate.get(("dsnt-jax", name, "float32")), rate.get(("dsnt-jax", name, "bfloat16"))
        if f32 and bf16:
            print(f"dsnt-jax {name} bfloat16 / float32 images/s = {bf16 / f32:.2f}×")
    print("\n".join(sink.data["verdicts"]))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Command-line entry point; returns the result rows."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser, args, lambda: run(_resolve(args)))


if __name__ == "__main__":
    main()
