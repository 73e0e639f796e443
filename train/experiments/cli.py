"""`python -m train.experiments NAME`: trains an experiment grid's runs, then reports them (see grid.py)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from train.experiments.grid import (
    CPU_HM_AMPLITUDE,
    EXPERIMENTS,
    Experiment,
    build_experiment,
    format_grid,
    run_grid,
    select_runs,
)
from train.experiments.report import collect, format_tables
from train.loop import config as config_lib
from train.loop.config import csv_ints

PROG = "python -m train.experiments"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Runs one of the paper's experiment grids, then writes results.csv, a PNG "
        "plot and a table. Default: CPU-sized runs on the synthetic dataset; --full: the paper's settings.",
        epilog="Finished runs are skipped: rerun the same command to continue an interrupted grid.")
    a = p.add_argument
    a("name", choices=EXPERIMENTS, help="fig7 (strategy × resolution), fig11 (training samples), "
      "table2 (activations) or table3 (regularisers)")
    a("--full", action="store_true", help="the paper's settings: ResNet-34 @ 224 px on MPII, 120 epochs")
    a("--workdir", metavar="ROOT", help="runs go to ROOT/NAME/<run> (default runs/experiments, "
      "runs/experiments-full with --full)")
    a("--epochs", type=int, help="epochs of every run (lr drops move with it)")
    a("--only", metavar="RUN[,RUN]", help="train only these runs (the table still lists every run)")
    a("--dry-run", action="store_true", help="print the grid and exit")
    a("--data-dir", help="tfds data directory (as for python -m train.main)")
    for flag, kind in (("--batch-size", int), ("--lr", float), ("--num-workers", int), ("--eval-every", int)):
        a(flag, type=kind, help=f"{flag} of every run (see python -m train.main --help)")
    a("--seeds", type=csv_ints, metavar="S[,S]", help="train every run once per seed; the table gives mean ± half "
      "the range. The first seed's runs keep their plain names, the others get -s<seed> (default: 0)")
    a("--seed", type=int, help="the same as --seeds S with one seed")
    a("--precision", choices=config_lib.PRECISIONS, help="network compute dtype of every run")
    a("--hm-amplitude", type=float, help=f"peak of the HM runs' target Gaussian (default {CPU_HM_AMPLITUDE:g} on "
      "CPU, where the paper's 1 leaves HM at the all-zero heatmap; 1 with --full)")
    a("--pretrained", metavar="PATH", help="with --full: torchvision ResNet-34 ImageNet weights for every run")
    return p


def _hm_caps(experiment: Experiment) -> dict[int, float] | None:
    """HM's limit per heatmap side of the grid (train.experiments.ceilings), or None with a note if unreadable."""
    from train.experiments.ceilings import hm_caps

    cfg = next((r.config for r in experiment.runs if r.config.model.output == "hm"), None)
    if cfg is None:
        return None
    try:
        return hm_caps(cfg, sorted({r.config.model.heatmap_size for r in experiment.runs} - {1}))
    except (ValueError, OSError) as err:
        print(f"note: HM's decoding limit left out of the report: {err}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad arguments or a failed run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.workdir or ("runs/experiments-full" if args.full else "runs/experiments")
    if args.pretrained and not args.full:
        parser.error("--pretrained needs --full: the CPU-sized ResNet is narrower than torchvision's")
    overrides = {k: getattr(args, k) for k in ("data_dir", "batch_size", "lr", "num_workers",
                                                "eval_every", "precision", "pretrained", "hm_amplitude")}
    if args.seeds is not None and args.seed is not None:
        parser.error("pass --seeds or --seed, not both")
    seeds = args.seeds if args.seeds is not None else None if args.seed is None else (args.seed,)
    try:
        experiment = build_experiment(args.name, full=args.full, root=root, epochs=args.epochs,
                                      overrides=overrides, seeds=seeds)
        runs = select_runs(experiment, args.only)
    except ValueError as err:
        parser.error(str(err))
    print(format_grid(experiment, runs))
    if args.full and not args.pretrained:
        print("note: the paper fine-tunes ImageNet-pretrained ResNet-34s; without --pretrained PATH these "
              "runs start from scratch", file=sys.stderr)
    if args.dry_run:
        return 0
    # Imported late: train.main loads the data stack (tfds, grain), which --dry-run does not need.
    from train.main import train

    start = time.perf_counter()
    try:
        times = run_grid(runs, train)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    caps = _hm_caps(experiment) if experiment.name == "fig7" else None
    rows, csv_path, png_paths = collect(experiment, root, caps)
    trained = {k: v for k, v in times.items() if v is not None}
    print("\n" + format_tables(experiment, rows, caps))
    print(f"\nwrote {', '.join([csv_path, *png_paths])}")
    print(f"trained {len(trained)} run(s) in {time.perf_counter() - start:.0f} s wall time "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in trained.items()) or 'all done already'})")
    return 0

