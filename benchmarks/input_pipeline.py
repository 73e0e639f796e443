"""Input-pipeline throughput: images/s of the training loader for several worker counts.

Usage::

    python -m benchmarks.input_pipeline --workers 0,1,2
    python -m benchmarks.input_pipeline --dataset mpii_human_pose --data-dir ~/tensorflow_datasets

Without ``--dataset`` the source is an in-memory list of synthetic person records in the stored format (smooth
random canvases, JPEG-encoded at quality 95 unless ``--raw``), so decoding is timed as well. The first
``--warmup`` batches of every setting (worker start-up, first reads) are not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import cv2
import numpy as np
from tqdm import tqdm

from data.augment import VARIANTS, input_mean_rgb
from data.joints import NUM_JOINTS
from data.pipeline import make_train_loader
from dsnt_jax.models import input_size_for


def synthetic_records(num: int, canvas_size: int, *, encode: bool, seed: int = 0) -> list[dict]:
    """Random person records (docs/records.md §2) with smooth canvases, optionally JPEG-encoded (quality 95)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in tqdm(range(num), desc="synthetic records", leave=False):
        coarse = rng.integers(0, 256, size=(canvas_size // 16, canvas_size // 16, 3), dtype=np.uint8)
        canvas = cv2.resize(coarse, (canvas_size, canvas_size), interpolation=cv2.INTER_CUBIC)
        if encode:
            ok, buffer = cv2.imencode(".jpg", canvas[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise RuntimeError("OpenCV failed to encode a JPEG")
            image = buffer.tobytes()
        else:
            image = canvas
        scale = rng.uniform(1.0, 3.0)
        records.append({
            "image": image,
            "joints": rng.uniform(0, canvas_size * scale, size=(NUM_JOINTS, 2)).astype(np.float32),
            "annotated": rng.uniform(size=NUM_JOINTS) < 0.9,
            "canvas_to_image": np.array([[scale, 0, 5], [0, scale, 5]], np.float32),
        })
    return records


def cpu_description() -> str:
    """CPU model and the number of cores this process may use."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {usable} usable cores of {os.cpu_count()}"


def time_loader(source, *, workers: int, args: argparse.Namespace) -> float:
    """Returns images/s of the training loader with ``workers`` processes (after the warm-up batches)."""
    is_resnet = args.input != "hourglass"
    loader = make_train_loader(
        source, global_batch_size=args.batch_size, out_size=input_size_for("resnet50" if is_resnet else "hg1"),
        mean_rgb=input_mean_rgb(is_resnet),
        augment_variant=args.variant, seed=0, num_workers=workers, num_threads=args.threads,
        prefetch_batches=args.prefetch)
    iterator = iter(loader)
    for _ in range(args.warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in tqdm(range(args.batches), desc=f"{workers} workers", leave=False):
        batch = next(iterator)
        del batch
    elapsed = time.perf_counter() - start
    if hasattr(iterator, "close"):
        iterator.close()
    return args.batches * args.batch_size / elapsed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1,2",
                        help="comma-separated worker-process counts to time (0: in the main process)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per setting")
    parser.add_argument("--threads", type=int, default=1, help="threads per process (grain ReadOptions)")
    parser.add_argument("--prefetch", type=int, default=2, help="batches buffered per process")
    parser.add_argument("--input", choices=("resnet", "hourglass"), default="resnet",
                        help="resnet: 224 px in [0, 1]; hourglass: 256 px minus the MPII mean")
    parser.add_argument("--variant", choices=VARIANTS, default="paper_code", help="augmentation variant")
    parser.add_argument("--num-records", type=int, default=256, help="synthetic records in memory")
    parser.add_argument("--canvas-size", type=int, default=576, help="synthetic canvas side in px")
    parser.add_argument("--raw", action="store_true", help="store synthetic canvases as arrays, not JPEG")
    parser.add_argument("--dataset", default=None, help="tfds dataset name (instead of synthetic records)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (with --dataset)")
    parser.add_argument("--split", default="train", help="tfds split (with --dataset)")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.worker_counts or min(args.worker_counts) < 0:
        parser.error("--workers needs at least one count, all >= 0")
    if min(args.batch_size, args.batches, args.num_records, args.canvas_size) < 1 or args.warmup < 0:
        parser.error("--batch-size, --batches, --num-records and --canvas-size must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dataset:
        import tensorflow_datasets as tfds  # Deferred: slow import, only needed here.

        source = tfds.data_source(args.dataset, split=args.split, data_dir=args.data_dir)
        what = f"tfds {args.dataset}[{args.split}] ({len(source)} records)"
    else:
        source = synthetic_records(args.num_records, args.canvas_size, encode=not args.raw)
        kind = "raw" if args.raw else "JPEG"
        what = f"{args.num_records} synthetic {kind} records, {args.canvas_size} px canvas"
    print(f"source: {what}")
    print(f"cpu: {cpu_description()}; python {sys.version.split()[0]}; OpenCV {cv2.__version__}")
    print(f"batch {args.batch_size}, input {args.input}, augmentation {args.variant}, threads/process "
          f"{args.threads}")
    print(f"{'workers':>8} {'images/s':>10} {'images/s/worker':>16}")
    for workers in args.worker_counts:
        rate = time_loader(source, workers=workers, args=args)
        per_worker = rate / max(workers, 1)  # 0 workers: the main process is the one worker.
        print(f"{workers:>8} {rate:>10.1f} {per_worker:>16.1f}", flush=True)


if __name__ == "__main__":
    main()
