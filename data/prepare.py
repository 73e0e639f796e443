"""Builds the tfds datasets (array_record files; no TensorFlow needed).

Usage::

    python -m data.prepare mpii --manual-dir DIR [--data-dir DIR] [--canvas-size N] [--threads N]
    python -m data.prepare synthetic [--data-dir DIR] [--num-train N] [--num-val N] [--seed S] [--canvas-size N]

The data directory defaults to ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``. Read the result back with
``tfds.data_source(...)`` or ``builder.as_data_source()``; a dataset already built there is reused.

Ctrl-C or SIGTERM stops a build with one line on stderr (exit status 130 / 143); tfds deletes the unfinished
folder. After a SIGKILL the unfinished ``incomplete.*`` folder stays until the same command runs again, which
removes it before building (``data/build_guard.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR") or str(Path("~/tensorflow_datasets").expanduser())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{mpii,synthetic}")
    data_help = "output tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"

    mpii = sub.add_parser("mpii", help="MPII Human Pose from the manually downloaded release")
    mpii.add_argument("--manual-dir", required=True, type=Path,
                      help="folder holding mpii_human_pose_v1_u12_1.mat (or mpii_human_pose_v1_u12_2.zip) and "
                           "images/ (or mpii_human_pose_v1.tar.gz)")
    mpii.add_argument("--data-dir", help=data_help)
    mpii.add_argument("--canvas-size", type=int, default=576,
                      help="canvas side in pixels, a multiple of 6 (default 576: 384 px person box)")
    mpii.add_argument("--threads", type=int, default=None, help="decode/crop threads (default min(4, CPUs))")

    syn = sub.add_parser("synthetic", help="the synthetic pose dataset (data/synthetic_pose)")
    syn.add_argument("--data-dir", help=data_help)
    syn.add_argument("--num-train", type=int, default=None, help="training examples (default: its own)")
    syn.add_argument("--num-val", type=int, default=None, help="validation examples (default: its own)")
    syn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    syn.add_argument("--canvas-size", type=int, default=None, help="canvas side in pixels (default: its own)")
    return parser


def _prepare_mpii(args: argparse.Namespace, data_dir: str) -> tuple[Any, dict[str, dict[str, int]]]:
    import tensorflow_datasets as tfds

    from data.mpii import builder as mpii_builder
    from data.mpii import manual

    manual.find_manual_files(args.manual_dir)  # fail fast, before tfds creates anything
    config = mpii_builder.mpii_config(args.canvas_size)
    builder = mpii_builder.MpiiHumanPose(config=config, data_dir=data_dir, num_threads=args.threads,
                                         progress=True)
    tfds.disable_progress_bar()  # the builder's per-split bars know their totals
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(args.manual_dir.expanduser())))
    skipped = {k: dict(v) for k, v in builder.skipped.items()}
    if builder.excluded:
        skipped["in no split"] = {f"persons ({reason})": n for reason, n in builder.excluded.items()}
    return builder, skipped


def _prepare_synthetic(args: argparse.Namespace, data_dir: str) -> tuple[Any, dict[str, dict[str, int]]]:
    import data.synthetic_pose
    from data import records

    # Harmless if the builder already does it; needed if a split outgrows tfds's 1 GB in-memory shuffle.
    with records.tfds_shuffle_without_tensorflow():
        builder = data.synthetic_pose.build(data_dir, num_train=args.num_train, num_val=args.num_val,
                                            seed=args.seed, canvas_size=args.canvas_size)
    return builder, {}


def summary(builder: Any, skipped: dict[str, dict[str, int]]) -> str:
    """A few lines: examples per split, what was skipped, where the files are."""
    lines = [f"{builder.name} ({builder.builder_config.name if builder.builder_config else 'default'}, "
             f"version {builder.version}):"]
    for name, info in builder.info.splits.items():
        lines.append(f"  {name:<10} {info.num_examples:>7} examples")
        for reason, n in sorted(skipped.get(name, {}).items()):
            lines.append(f"  {'':<10} {n:>7} {reason}")
    for name, reasons in skipped.items():
        if name not in builder.info.splits:
            lines.extend(f"  {name}: {n} {reason}" for reason, n in sorted(reasons.items()))
    lines.append(f"written to {builder.data_dir}")
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that tfds deletes its unfinished folder on the way out."""


def _raise_terminated(signum: int, frame: Any) -> None:
    del frame
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m data.prepare``.

    Returns:
      The exit status: 0 built (or reused), 2 bad input, 130 Ctrl-C, 143 SIGTERM, 1 a worker process died.
    """
    from concurrent.futures.process import BrokenProcessPool

    args = _parser().parse_args(argv)
    data_dir = str(Path(args.data_dir).expanduser()) if args.data_dir else default_data_dir()
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal.signal needs it
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        if args.dataset == "mpii":
            builder, skipped = _prepare_mpii(args, data_dir)
        else:
            builder, skipped = _prepare_synthetic(args, data_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, BrokenProcessPool) as e:
        # One line, no traceback: the build stopped, nothing half-written is left to be mistaken for a dataset.
        how = ("a worker process died" if isinstance(e, BrokenProcessPool)
               else "terminated" if isinstance(e, Terminated) else "interrupted")
        print(f"{args.dataset} build {how}; nothing was kept in {data_dir}. Run the same command again to "
              "build it.", file=sys.stderr)
        return 1 if isinstance(e, BrokenProcessPool) else 143 if isinstance(e, Terminated) else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(summary(builder, skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
