"""Predicts joints on image files with a trained model and draws them.

    python -m train.predict --checkpoint WORKDIR IMAGE... [--center X,Y --scale S] [--heatmaps]
                            [--out DIR] [--flip] [--step best|latest|N]

Prints one JSON object per image (joint name → [x, y] in 0-based pixels, plus each joint's heatmap spread
in pixels) and writes `<out>/<image stem>_pose.png` with the skeleton over the image; with --heatmaps also
`<out>/<image stem>_heatmaps.png`, one tile per joint over the network's input crop (paper Fig. 2c / 5).
Without --center/--scale the whole image is the person box.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from data.joints import JOINT_NAMES
from train import visualize
from train.inference import Box, PoseEstimator, Prediction


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--checkpoint", required=True, help="a training run's --workdir")
    p.add_argument("--step", default="best", help="'best' (default), 'latest' or a step number")
    p.add_argument("--center", help="person centre X,Y in 0-based pixels (MPII objpos); needs --scale")
    p.add_argument("--scale", type=float, help="person scale as MPII: person height / 200 px")
    p.add_argument("--heatmaps", action="store_true", help="also write a grid of the per-joint heatmaps")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored image")
    p.add_argument("--out", default="predictions", help="folder for the PNGs (default ./predictions)")
    return p


def _box(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Box | None:
    if (args.center is None) != (args.scale is None):
        parser.error("--center and --scale go together (or give neither to use the whole image)")
    if args.center is None:
        return None
    try:
        x, y = (float(v) for v in args.center.split(","))
    except ValueError:
        parser.error(f"--center must be X,Y (two numbers), got {args.center!r}")
    if not args.scale > 0:
        parser.error(f"--scale must be > 0, got {args.scale}")
    return Box((x, y), args.scale)


def _read_rgb(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such image: {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read {path} as an image: {e}") from None


def _as_json(path: str, pred: Prediction) -> dict:
    return {"image": path,
            "joints": {name: [round(float(x), 2), round(float(y), 2)] for name, (x, y) in zip(JOINT_NAMES, pred.joints)},
            "spread_px": {name: round(float(s), 2) for name, s in zip(JOINT_NAMES, pred.spread)},
            "box": {"center": list(pred.box.center), "scale": pred.box.scale}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    box = _box(args, parser)
    try:
        images = [_read_rgb(p) for p in args.images]
        estimator = PoseEstimator.from_checkpoint(args.checkpoint, step=args.step, flip_test=args.flip)
        preds = estimator.predict(images, [box] * len(images))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    for path, image, pred in zip(args.images, images, preds):
        print(json.dumps(_as_json(path, pred)))
        stem = Path(path).stem
        visualize.save_png(out / f"{stem}_pose.png", visualize.draw_skeleton(image, pred.joints))
        if args.heatmaps:
            crop = estimator.preprocess(image, pred.box)["image"]
            if estimator.mean_rgb is not None:
                crop = crop + np.asarray(estimator.mean_rgb, np.float32)
            size = crop.shape[0]
            crop_joints = (pred.coords + 1.0) * size / 2.0 - 0.5
            visualize.save_png(out / f"{stem}_heatmaps.png",
                               visualize.heatmap_grid(np.clip(crop, 0.0, 1.0), pred.heatmaps, crop_joints))
    print(f"wrote {len(preds)} picture(s){' and heatmap grids' if args.heatmaps else ''} to {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
