"""Starts N local `python -m train.main` processes as one multi-host run, for trying and testing several hosts.

    python -m train.launch_local --processes 2 [--cpu-devices 1] -- --preset=synthetic-cpu --workdir runs/two

A thin wrapper over the variables a cluster sets, not a scheduler: process i gets JAX_COORDINATOR_ADDRESS
(127.0.0.1 and a free port), JAX_NUM_PROCESSES=N and JAX_PROCESS_ID=i, which `train.main` hands to
`jax.distributed.initialize`; on the CPU they talk through JAX's gloo collectives. `--cpu-devices K` pins each
process to the CPU with K simulated devices (XLA_FLAGS), so one machine can stand for N hosts of K devices.

Process 0's output is this command's output; the others write to `LOG_DIR/process_<i>.log` (default: a
`launch_logs/` folder in the run's --workdir, or in the current folder without one). When one process
ends with a failure, the others get SIGTERM and, after `--grace` seconds, SIGKILL; the exit status is the
first failure's (0 when all succeed).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "python -m train.launch_local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the coordinator binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_environment(base: dict[str, str], *, process_id: int, num_processes: int, port: int,
                        cpu_devices: int | None) -> dict[str, str]:
    """The environment of process `process_id`: `base` plus the launch variables (see the module docstring)."""
    env = dict(base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id), PYTHONUNBUFFERED="1")
    if cpu_devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={cpu_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _workdir(train_args: Sequence[str]) -> str | None:
    for i, arg in enumerate(train_args):
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
        if arg == "--workdir" and i + 1 < len(train_args):
            return train_args[i + 1]
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                usage=f"{PROG} --processes N [options] -- TRAIN_MAIN_FLAGS...")
    p.add_argument("--processes", type=int, required=True, help="number of processes (hosts) to start")
    p.add_argument("--cpu-devices", type=int, help="run each process on the CPU with this many simulated devices")
    p.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--log-dir", help="where processes 1..N-1 write their output (default WORKDIR/launch_logs)")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds between SIGTERM and SIGKILL for the others after one fails (default 60)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="flags of python -m train.main, after --")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error(f"--cpu-devices must be >= 1, got {args.cpu_devices}")
    log_dir = Path(args.log_dir or os.path.join(_workdir(train_args) or ".", "launch_logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    procs: list[subprocess.Popen] = []
    for i in range(args.processes):
        env = process_environment(dict(os.environ), process_id=i, num_processes=args.processes, port=port,
                                  cpu_devices=args.cpu_devices)
        out = None if i == 0 else open(log_dir / f"process_{i}.log", "w", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "train.main", *train_args], env=env, stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
    return _wait(procs, args.grace, log_dir)


def _wait(procs: list[subprocess.Popen], grace: float, log_dir: Path) -> int:
    """Waits for every process; after the first failure stops the others. Returns the first failure's status."""
    status = 0
    stop_deadline: float | None = None
    try:
        while any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                code = p.poll()
                if code not in (None, 0) and status == 0:
                    status = code if code > 0 else 128 - code
                    where = "" if i == 0 else f" (its output: {log_dir / f'process_{i}.log'})"
                    print(f"{PROG}: process {i} exited with status {code}{where}; stopping the others",
                          file=sys.stderr)
                    for other in procs:
                        if other.poll() is None:
                            other.send_signal(signal.SIGTERM)
                    stop_deadline = time.monotonic() + grace
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        return 130
    if status == 0:
        status = next((p.returncode for p in procs if p.returncode), 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
