"""One command for the GPU measurements of issue #12: every benchmark at the paper's sizes, side by side
with the PyTorch peers, plus a short `train.main` run, each part under its own timeout.

    python -m benchmarks.gpu_suite --out DIR [--quick] [--wheels .whl] [--parts inference,train]
                                   [--deadline-s 480] [--timeouts inference=200,train=120]
                                   [--inference-args "--torch eager"] [--train-precision float32]

Parts, in this order (ResNet-50 @ 28, 224-px input; `--quick`: tiny sizes for a CPU, < ~2 min):

1. env — `python -m benchmarks.common`: jax / torch / dsntnn versions, devices, nvidia-smi;
2. inference — `benchmarks.inference`: batch 1 (Table 4 region) and batch 32, float32 and bfloat16,
   dsnt-jax (`jit`, BatchNorm-`folded`, and `PoseEstimator.predict` at float32 batch 1) vs PyTorch eager
   and compile(reduce-overhead) + channels_last; the summary sets the variants side by side;
3. train_step — `benchmarks.train_step`: batch 32, float32 and bfloat16, dsnt-jax's training step vs
   PyTorch eager and compile + channels_last;
4. train — `python -m train.main --dataset=synthetic --epochs 3` (`--train-precision`, default bfloat16;
   `--train-workers`, default min(12, CPUs − 4) loader processes, or 'default' for train.main's own):
   validation PCKh after each epoch and training images/s from its metrics.jsonl;
5. ops — `benchmarks.ops`: the DSNTr loss, dsnt-jax vs dsntnn eager and compiled on the same device
   (throughput timing, 20 calls per synchronisation).

Each part is a child process in its own process group, with its output appended to DIR/suite.log. A
part that outlives its timeout (clipped to what is left of `--deadline-s`) is stopped (SIGTERM, then
SIGKILL after 15 s) and reported, keeping the figures it had written: the benchmarks rewrite their
JSON after every figure. Parts that no longer fit before the deadline are skipped and reported. The
suite then writes DIR/summary.md and DIR/summary.json (environment, configuration of every figure,
ratios, issue #12 verdicts) and prints the markdown. DIR receives only those three files; part outputs
and the training run's checkpoints go to a scratch folder (under `--scratch`, default the temporary
folder), deleted at the end unless `--keep-scratch`.

On a GPU machine without a package registry, `--wheels DIR` first installs the wheels in DIR
(`pip install --no-index --no-deps --target`) into the scratch folder and puts it on the parts'
PYTHONPATH (see benchmarks/gpu_wheels.sh). This process imports neither JAX nor PyTorch, so it holds
no GPU memory; the parts run with XLA_PYTHON_CLIENT_PREALLOCATE=false except `train`, which runs as a
user would.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import suite_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("env", "inference", "train_step", "train", "ops")
# Seconds per part: (full, quick). The full ones are estimates for one H200 (torch.compile of a
# ResNet-50 is the largest cost; the folded and estimator variants add about five dsnt-jax compilations
# to inference); `--timeouts` adjusts them. The float32 batch-1 figures come first, so a stopped
# inference part still has the target figures.
TIMEOUTS = {"env": (60, 60), "inference": (240, 150), "train_step": (180, 120), "train": (150, 120),
            "ops": (90, 60)}
MIN_PART_S = 20  # a part that would get less than this before the deadline is skipped
KILL_GRACE_S = 15
TINY_MODEL = {"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1]}


@dataclasses.dataclass
class Part:
    """One child process of the suite and where its results land."""

    name: str
    command: list[str]
    timeout_s: float
    result_path: str | None = None  # JSON the part writes (None: see `workdir`)
    workdir: str | None = None  # train.main's run directory
    env: dict[str, str] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# The parts


def _bench(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{module}", *args]


def _train_command(args: argparse.Namespace, scratch: str, workdir: str, cpus: int) -> list[str]:
    cmd = [sys.executable, "-m", "train.main", "--dataset=synthetic", f"--data-dir={scratch}/tfds",
           f"--workdir={workdir}", "--epochs=3", "--lr=1e-3", "--lr-milestones=2", "--eval-every=1",
           f"--precision={args.train_precision}"]
    workers = args.train_workers
    if workers == "auto":
        workers = str(0 if args.quick else min(12, max(0, cpus - 4)))
    if workers != "default":
        cmd.append(f"--num-workers={workers}")
    if args.quick:
        cmd += ["--backbone=resnet18", "--res=28", "--input-size=32", "--batch-size=8",
                "--synthetic-train=32", "--synthetic-val=8", "--synthetic-canvas=48",
                f"--model-overrides={json.dumps(TINY_MODEL)}"]
    else:
        cmd += ["--backbone=resnet50", "--res=28"]
    return cmd


def build_parts(args: argparse.Namespace, scratch: str, compile_backend: str, cpus: int) -> list[Part]:
    """The parts selected by `args`, with their commands for full or quick sizes."""
    q = args.quick
    backend = [f"--torch-compile-backend={compile_backend}"]
    out = {name: os.path.join(scratch, f"{name}.json") for name in PARTS}
    commands = {
        "env": _bench("common", f"--json={out['env']}"),
        "inference": _bench("inference", "--dtypes=float32,bfloat16", "--jax=jit,folded,estimator",
                            "--torch=eager,compile",
                            "--torch-compile-mode=reduce-overhead", "--memory=none", *backend,
                            *(["--quick", "--models=resnet18@7", "--input-size=32", "--batches=1,2",
                               "--repeats=3", "--warmup=2"] if q else
                              ["--models=resnet50@28", "--batches=1,32", "--repeats=100", "--warmup=10"])),
        # quick: float32 only; compiling the training step costs ~30 s per dtype on a 2-core CPU.
        "train_step": _bench("train_step", "--torch=eager,compile", *backend,
                             *(["--quick", "--dtypes=float32", "--input-size=32", "--batch=2", "--steps=1",
                                "--repeats=2", "--warmup=1"] if q else
                               ["--dtypes=float32,bfloat16", "--model=resnet50@28", "--batch=32",
                                "--steps=20", "--repeats=3", "--warmup=3"])),
        "ops": _bench("ops", "--torch=eager,compile", *backend,
                      *(["--batch=4", "--points=4", "--sizes=8", "--repeats=5", "--calls-per-sync=2"] if q
                        else ["--batch=32", "--points=16", "--sizes=7,28,64", "--repeats=30",
                              "--calls-per-sync=20"])),
    }
    extra = {"inference": args.inference_args, "train_step": args.train_step_args,
             "ops": args.ops_args, "train": args.train_args}
    parts = []
    for name in ["env"] + [p for p in args.part_list if p != "env"]:
        timeout = args.timeout_map.get(name, TIMEOUTS[name][1 if q else 0])
        if name == "train":
            workdir = os.path.join(scratch, "train_run")
            cmd = _train_command(args, scratch, workdir, cpus) + shlex.split(extra["train"] or "")
            parts.append(Part(name, cmd, timeout, workdir=workdir))
            continue
        cmd = commands[name] + shlex.split(extra.get(name) or "")
        if name != "env":
            cmd.append(f"--json={out[name]}")
        # JAX must not reserve 75 % of the GPU where PyTorch shares it.
        parts.append(Part(name, cmd, timeout, out[name], env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}))
    return parts


# ----------------------------------------------------------------------------------------------------
# Running a part


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
    """Sends `sig` to the process group the part leads (its compile workers, loader processes)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_unreaped(proc: subprocess.Popen, seconds: float) -> bool:
    """Waits up to `seconds` for the part's process to end, without reaping it; True if it ended.

    Unreaped, its pid stays reserved, so the group id `_stop_group` signals cannot name anyone else.
    """
    deadline = time.monotonic() + seconds
    while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def run_part(part: Part, log, env: dict[str, str], seconds_left: float) -> dict[str, Any]:
    """Runs one part with output appended to `log`; returns its status record (result not yet read)."""
    timeout = min(part.timeout_s, seconds_left)
    record: dict[str, Any] = {"name": part.name, "command": part.command, "timeout_s": timeout,
                              "wall_s": 0.0, "returncode": None}
    if timeout < MIN_PART_S:
        record["status"] = f"skipped: {seconds_left:.0f} s left before the suite's deadline"
        return record
    log.write(f"\n===== {part.name}: {shlex.join(part.command)} (timeout {timeout:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(part.command, cwd=REPO, env={**env, **part.env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = not _wait_unreaped(proc, timeout)
    if timed_out:
        _stop_group(proc, signal.SIGTERM)  # train.main saves and exits on SIGTERM
        _wait_unreaped(proc, KILL_GRACE_S)
    _stop_group(proc, signal.SIGKILL)  # whatever is left of the group, e.g. inductor's compile workers
    rc = proc.wait()
    record["status"] = (f"timeout: stopped after {timeout:.0f} s (figures so far kept)" if timed_out
                        else "ok" if rc == 0 else f"failed: exit status {rc}")
    record.update(returncode=rc, wall_s=time.monotonic() - start)
    log.write(f"===== {part.name}: {record['status']} in {record['wall_s']:.1f} s\n")
    log.flush()
    return record


def read_result(part: Part) -> dict[str, Any] | None:
    """What the part left: its JSON, or the training run's metrics."""
    if part.workdir is not None:
        return suite_report.train_run_result(part.workdir)
    return suite_report.load_json(part.result_path)


# ----------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for summary.md, summary.json, suite.log")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CPU (< ~2 min)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts of {PARTS} (env always runs) (default all)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="wall-clock budget of the whole suite (default 480; quick 300)")
    parser.add_argument("--timeouts", default="",
                        help="per-part overrides, e.g. 'inference=240,train=100' (seconds)")
    parser.add_argument("--scratch", default=None,
                        help="folder under which a fresh scratch folder is made (default: the system's "
                             "temporary folder)")
    parser.add_argument("--keep-scratch", action="store_true",
                        help="keep the scratch folder (part JSON, the training run) instead of deleting it")
    parser.add_argument("--wheels", default=None,
                        help="folder of wheels to install (no index, no deps) for the parts first")
    parser.add_argument("--train-precision", choices=("float32", "bfloat16"), default="bfloat16",
                        help="train.main --precision (default bfloat16, the issue's loader target)")
    parser.add_argument("--train-workers", default="auto",
                        help="train.main --num-workers: a number, 'auto' (min(12, CPUs − 4); quick 0) "
                             "or 'default' (train.main's own default)")
    for name in ("inference", "train_step", "ops", "train"):
        parser.add_argument(f"--{name.replace('_', '-')}-args", default="",
                            help=f"extra arguments appended to the {name} part's command, as one "
                                 f"string: --{name.replace('_', '-')}-args='--flag value'")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the peers (default inductor; quick on a CPU: "
                             "eager, i.e. dynamo only, since inductor compiles for minutes there)")
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    args.part_list = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.part_list) - set(PARTS)
    if unknown or not args.part_list:
        raise ValueError(f"--parts must list some of {PARTS}, got {args.parts!r}")
    args.timeout_map = {}
    for item in (t.strip() for t in args.timeouts.split(",") if t.strip()):
        name, _, value = item.partition("=")
        if name not in PARTS or not value.replace(".", "", 1).isdigit():
            raise ValueError(f"bad --timeouts item {item!r}: use PART=SECONDS with PART in {PARTS}")
        args.timeout_map[name] = float(value)
    if args.deadline_s is None:
        args.deadline_s = 300.0 if args.quick else 480.0
    if args.train_workers not in ("auto", "default") and not args.train_workers.isdigit():
        raise ValueError(f"--train-workers must be a number, 'auto' or 'default', got {args.train_workers!r}")
    return args


def _install_wheels(folder: str, scratch: str, log) -> str:
    """Installs every wheel of `folder` under scratch/site; returns that path."""
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        raise ValueError(f"--wheels {folder}: no .whl files there")
    site = os.path.join(scratch, "site")
    log.write(f"===== installing {len(wheels)} wheels from {folder} into {site}\n")
    log.flush()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", site, *wheels], stdout=log, stderr=subprocess.STDOUT, check=True)
    return site


def _child_env(site: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # what a stopped part printed is not lost
    path = [REPO] + ([site] if site else []) + [p for p in env.get("PYTHONPATH", "").split(":") if p]
    env["PYTHONPATH"] = ":".join(path)
    return env


def _compile_backend(args: argparse.Namespace, env_info: dict[str, Any] | None) -> tuple[str, str]:
    """(torch.compile backend of the peers, a note for the summary) once the env part has run."""
    if args.compile_backend:
        return args.compile_backend, ""
    if args.quick and (env_info or {}).get("torch_device") == "cpu":
        return "eager", ("quick run on a CPU: the torch.compile peers use the 'eager' dynamo backend "
                         "(plumbing only), not inductor")
    return "inductor", ""


def _write_summary(out: str, summary: dict[str, Any]) -> str:
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    markdown = suite_report.render_markdown(summary)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    return markdown


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the parts, writes the summary files and returns the summary."""
    os.makedirs(args.out, exist_ok=True)
    if args.scratch:
        os.makedirs(args.scratch, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="dsnt-gpu-suite-", dir=args.scratch)
    start = time.monotonic()
    cpus = os.cpu_count() or 1
    records: list[dict[str, Any]] = []
    notes = []
    with open(os.path.join(args.out, "suite.log"), "w", encoding="utf-8") as log:
        site = None
        if args.wheels:
            try:
                site = _install_wheels(args.wheels, scratch, log)
            except subprocess.CalledProcessError as e:  # the parts run anyway and say what is missing
                notes.append(f"installing the wheels of {args.wheels} failed (exit {e.returncode}; "
                             "see suite.log)")
        env = _child_env(site)

        def run(part: Part) -> dict[str, Any]:
            record = run_part(part, log, env, args.deadline_s - (time.monotonic() - start))
            record["result"] = read_result(part)
            records.append(record)
            print(f"[{part.name}] {record['status']} ({record['wall_s']:.0f} s)", flush=True)
            return record

        env_info = run(build_parts(args, scratch, "inductor", cpus)[0])["result"]
        backend, note = _compile_backend(args, env_info)
        notes += [note] if note else []
        for part in build_parts(args, scratch, backend, cpus)[1:]:
            run(part)
    platform = (env_info or {}).get("jax_platform", "unknown")
    summary = {"suite": {"command": args.argv, "quick": args.quick, "deadline_s": args.deadline_s,
                         "wall_s": time.monotonic() - start, "scratch": scratch, "note": "; ".join(notes),
                         "compile_backend": backend, "train_precision": args.train_precision},
               "environment": env_info, "parts": records,
               "inference_variants": suite_report.inference_variants({r["name"]: r for r in records})}
    # The quick training run's tiny network is not the step benchmark's: no loader verdict then.
    summary["verdicts"] = suite_report.verdicts({r["name"]: r for r in records}, platform,
                                                args.train_precision, same_model=not args.quick)
    print(_write_summary(args.out, summary))
    if not args.keep_scratch:  # checkpoints of the training run, installed wheels: nothing to keep
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the summary."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = ["python", "-m", "benchmarks.gpu_suite", *(sys.argv[1:] if argv is None else argv)]
    try:
        return run_suite(_resolve(args))
    except ValueError as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
