"""Predicts joints on image files with a trained model and draws them.

    python -m train.predict --checkpoint WORKDIR IMAGE... [--center X,Y --scale S] [--heatmaps]
                            [--out DIR] [--flip] [--step best|latest|N] [--max-megapixels N]

Prints one JSON object per image (joint name → [x, y] in 0-based pixels, plus each joint's heatmap spread
in pixels, the person box, and the paths of the pictures written) and writes `<out>/<image stem>_pose.png`
with the skeleton over the image; with --heatmaps also `<out>/<image stem>_heatmaps.png`, one tile per
joint over the network's input crop (paper Fig. 2c / 5). Images whose stems coincide (a/img.jpg and
b/img.jpg, or img.jpg and img.png; compared ignoring case) get `<stem>-2`, `<stem>-3`, ... after the first.
Without --center/--scale the whole image is the person box.

Images are read by `train.inference.images.read_rgb`: EXIF orientation applied, so the joints are in the frame of the
image as viewers display it; 16-bit and float images scaled to 8 bits. --scale must give a person box
(side 250·scale) between 1 % and 10× the image's longer side; a box that overlaps an image by less than a
quarter of its area is reported with a warning. Errors are one line, `python -m train.predict: error: ...`,
with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.joints import JOINT_NAMES
from train import inference
from train.inference import Box, PoseEstimator, Prediction, visualize
from train.inference import images as images_lib
from train.loop.workdir import WorkdirError

PROG = "python -m train.predict"


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (see the module docstring)."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, TIFF, ...)")
    p.add_argument("--checkpoint", required=True, help="a training run's --workdir")
    p.add_argument("--step", default="best", help="'best' (default), 'latest' or a step number")
    p.add_argument("--center", help="person centre X,Y in 0-based pixels (MPII objpos); needs --scale")
    p.add_argument("--scale", type=float, help="person scale as MPII: person height / 200 px")
    p.add_argument("--heatmaps", action="store_true", help="also write a grid of the per-joint heatmaps")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored image")
    p.add_argument("--out", default="predictions", help="folder for the PNGs (default ./predictions)")
    p.add_argument("--max-megapixels", type=float, default=images_lib.DEFAULT_MAX_PIXELS / 1e6,
                   help="refuse larger images, a guard against decompression bombs (default %(default)g)")
    return p


def _box(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Box | None:
    """The --center/--scale box (checked for finiteness only; `_check_boxes` checks it per image)."""
    if (args.center is None) != (args.scale is None):
        parser.error("--center and --scale go together (or give neither to use the whole image)")
    if args.center is None:
        return None
    try:
        x, y = (float(v) for v in args.center.split(","))
    except ValueError:
        parser.error(f"--center must be X,Y (two numbers), got {args.center!r}")
    if not (math.isfinite(x) and math.isfinite(y)):
        parser.error(f"--center must be finite, got {args.center!r}")
    if not (math.isfinite(args.scale) and args.scale > 0):
        parser.error(f"--scale must be a finite number > 0, got {args.scale}")
    return Box((x, y), args.scale)


def _max_pixels(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not (math.isfinite(args.max_megapixels) and args.max_megapixels > 0):
        parser.error(f"--max-megapixels must be a finite number > 0, got {args.max_megapixels}")
    return int(args.max_megapixels * 1e6)


def _check_boxes(paths: Sequence[str], images: Sequence[np.ndarray], box: Box | None) -> None:
    """Raises ValueError for a box that does not fit an image; warns (stderr) when it misses one.

    The whole-image box (None) always fits.
    """
    if box is None:
        return
    for path, image in zip(paths, images):
        height, width = image.shape[:2]
        try:
            inference.check_box(box, height, width)
        except ValueError as err:
            raise ValueError(f"--center/--scale for {path}: {err}") from None
        overlap = inference.box_overlap(box, height, width)
        if overlap < inference.MIN_BOX_OVERLAP:
            print(f"{PROG}: warning: {path} ({width}×{height}): the person box ({box.describe()}) overlaps the "
                  f"image by {overlap:.0%} (< {inference.MIN_BOX_OVERLAP:.0%}); its joints are guesses on "
                  "black padding", file=sys.stderr)


def output_stems(paths: Sequence[str]) -> list[str]:
    """One unique output name stem per input path, in order.

    Each image keeps its file stem unless an earlier image took it; then it gets the first free
    `<stem>-2`, `<stem>-3`, ... Stems are compared ignoring case (macOS and Windows file systems do), and
    a suffixed name never takes another input's own stem.
    """
    own = {Path(p).stem.casefold() for p in paths}
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem = name = Path(path).stem
        k = 1
        while name.casefold() in taken or (k > 1 and name.casefold() in own):
            k += 1
            name = f"{stem}-{k}"
        taken.add(name.casefold())
        stems.append(name)
    return stems


def _heatmap_picture(estimator: PoseEstimator, image: np.ndarray, pred: Prediction) -> np.ndarray:
    """The heatmap grid over the network's input crop, un-normalised back to [0, 1] RGB."""
    crop = estimator.preprocess(image, pred.box)["image"]
    if estimator.mean_rgb is not None:
        crop = crop + np.asarray(estimator.mean_rgb, np.float32)
    size = crop.shape[0]
    crop_joints = (pred.coords + 1.0) * size / 2.0 - 0.5
    return visualize.heatmap_grid(np.clip(crop, 0.0, 1.0), pred.heatmaps, crop_joints)


def _as_json(path: str, pred: Prediction, written: dict[str, str]) -> dict:
    """One image's JSON record: joints, spreads, box and the pictures `written` ({'pose_png': path, ...})."""
    joints = zip(JOINT_NAMES, pred.joints)
    return {"image": path,
            "joints": {name: [round(float(x), 2), round(float(y), 2)] for name, (x, y) in joints},
            "spread_px": {name: round(float(s), 2) for name, s in zip(JOINT_NAMES, pred.spread)},
            "box": {"center": list(pred.box.center), "scale": pred.box.scale},
            **written}


def _write_pictures(out: Path, stem: str, estimator: PoseEstimator, image: np.ndarray, pred: Prediction,
                    heatmaps: bool) -> dict[str, str]:
    """Writes one image's PNGs; returns {'pose_png': path[, 'heatmaps_png': path]} as written."""
    written = {"pose_png": visualize.save_png(out / f"{stem}_pose.png", visualize.draw_skeleton(image, pred.joints))}
    if heatmaps:
        written["heatmaps_png"] = visualize.save_png(out / f"{stem}_heatmaps.png",
                                                     _heatmap_picture(estimator, image, pred))
    return written


def _run(args: argparse.Namespace, box: Box | None, max_pixels: int) -> None:
    """Reads, checks, predicts, writes and prints; raises ValueError/OSError for the user's mistakes."""
    images = [images_lib.read_rgb(p, max_pixels=max_pixels) for p in args.images]
    _check_boxes(args.images, images, box)  # before loading the model: mistakes fail fast
    estimator = PoseEstimator.from_checkpoint(args.checkpoint, step=args.step, flip_test=args.flip)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", inference.BoxOutsideImageWarning)  # `_check_boxes` said it, with names
        preds = estimator.predict(images, [box] * len(images))
    out = Path(args.out)
    names = []
    for path, stem, image, pred in zip(args.images, output_stems(args.images), images, preds):
        written = _write_pictures(out, stem, estimator, image, pred, args.heatmaps)
        print(json.dumps(_as_json(path, pred, written)), flush=True)
        names += [Path(p).name for p in written.values()]
    print(f"wrote {len(names)} picture(s) to {out}/: {', '.join(names)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 on success, 2 on bad input, with a one-line error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    box = _box(args, parser)
    max_pixels = _max_pixels(args, parser)
    try:
        _run(args, box, max_pixels)
    # OSError: a missing image or an unwritable --out; WorkdirError: no such run or checkpoint step.
    except (ValueError, OSError, WorkdirError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
