"""Scores MPII predictions with the official PCKh protocol and prints the paper's Table 4 row.

Usage:
  python -m train.evaluate --predictions preds.h5 --annotations gt_valid.mat [--json out.json]
  python -m train.evaluate --checkpoint WORKDIR [--flip] [--step best|latest|N] [--json out.json]

Predictions and annotations are files in the layouts of ``data.eval_files`` (image frame, 1-based MPII
pixels, the same persons in the same order). With ``--checkpoint`` a trained model predicts its run's
validation split (flip test with ``--flip``), the predictions are saved as ``.h5`` ('preds' [N, 16, 2], the
layout ``--predictions`` reads) and scored against the split's annotations. ``--json`` writes
`data.pckh.PCKhResult.to_json_dict()` (percent values).

A file that cannot be scored (missing, corrupt, without the expected variable, holding text, cells or
structs, of the wrong shape, with NaN/infinite predictions) ends the command with one line
``python -m train.evaluate: error: FILE: ...`` saying what was expected, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data import eval_files, pckh
from train.loop.workdir import WorkdirError


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser; the prediction source is a group so that other sources can join it."""
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Official MPII PCKh (Table 4 columns, PCKh@0.1 and AUC) of a prediction file.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--predictions",
        type=Path,
        metavar="FILE",
        help="predictions: .h5 with 'preds' [N,16,2] or [2,16,N], or .mat with 'pos_pred_src' [16,2,N] or 'preds'",
    )
    source.add_argument("--checkpoint", type=Path, metavar="WORKDIR",
                        help="a training run's --workdir: predict and score its validation split")
    parser.add_argument(
        "--annotations",
        type=Path,
        metavar="FILE",
        help="ground truth for --predictions: toolkit .mat (pos_gt_src, jnt_missing, headboxes_src) or "
        "valid.h5 (part, normalize)",
    )
    parser.add_argument("--step", default="best", help="with --checkpoint: 'best' (default), 'latest' or N")
    parser.add_argument("--flip", action="store_true", help="with --checkpoint: flip test (image + mirror)")
    parser.add_argument("--data-dir", help="with --checkpoint: tfds data directory (default: the run's)")
    parser.add_argument("--save-predictions", type=Path, metavar="FILE",
                        help="with --checkpoint: where to write the .h5 predictions "
                        "(default WORKDIR/val_predictions[_flip].h5)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results (percent) as JSON here")
    parser.add_argument("--name", help="row label in the printed table (default: the predictions file name)")
    return parser


def score_predictions(predictions: np.ndarray, annotations: eval_files.Annotations) -> pckh.PCKhResult:
    """PCKh of predictions [N, 16, 2] against `Annotations` of the same N persons (image frame)."""
    if predictions.shape[0] != annotations.num_persons:
        raise ValueError(
            f"predictions hold {predictions.shape[0]} persons but the annotations {annotations.num_persons}; "
            "both files must list the same persons in the same order"
        )
    return pckh.compute_pckh(predictions, annotations.joints, annotations.annotated, annotations.head_sizes)


def evaluate_prediction_file(predictions: str | Path, annotations: str | Path) -> pckh.PCKhResult:
    """Loads a prediction file and an annotation file (``data.eval_files`` layouts) and scores them."""
    preds = eval_files.load_predictions(predictions)
    gt = eval_files.load_annotations(annotations)
    try:
        return score_predictions(preds, gt)
    except ValueError as err:
        raise ValueError(f"{predictions} vs {annotations}: {err}") from None


def evaluate_checkpoint(workdir: str | Path, *, step: str | int = "best", flip: bool = False,
                        data_dir: str | None = None) -> tuple[pckh.PCKhResult, np.ndarray, str]:
    """Predicts a run's validation split with its checkpoint and scores it.

    Returns:
      (PCKh result, predictions float64 [N, 16, 2] in the image frame, row label).
    """
    # Imported here: scoring a prediction file (--predictions) needs neither JAX nor the data stack.
    import dataclasses

    import jax

    from train.inference import PoseEstimator
    from train.loop import data as data_lib
    from train.loop import steps, validation

    estimator = PoseEstimator.from_checkpoint(workdir, step=step, flip_test=flip)
    cfg = estimator.config
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    datasets = data_lib.open_datasets(cfg)
    devices = jax.local_devices()
    eval_step = steps.make_eval_step(estimator.apply_fn, output=cfg.model.output, activation=cfg.model.activation,
                                     flip_test=flip, devices=devices)
    variables = steps.replicate(estimator.variables, devices)
    # The eval batch must split evenly over the local devices.
    cfg = dataclasses.replace(cfg, batch_size=max(len(devices), cfg.batch_size - cfg.batch_size % len(devices)))
    preds, _ = validation.predict_split(eval_step, variables, data_lib.eval_loader(cfg, datasets.val),
                                        len(datasets.val), len(devices))
    name = f"{Path(workdir).name} ({datasets.name}{', flip' if flip else ''})"
    return validation.score(preds, datasets.val_targets), preds, name


def _write_predictions(path: Path, preds: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("preds", data=preds)


def _write_json(path: Path, result: pckh.PCKhResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 on success, 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predictions is not None and args.annotations is None:
        parser.error("--predictions needs --annotations FILE (the ground truth of the same persons)")
    try:
        if args.checkpoint is not None:
            result, preds, name = evaluate_checkpoint(args.checkpoint, step=args.step, flip=args.flip,
                                                      data_dir=args.data_dir)
            out = args.save_predictions or args.checkpoint / f"val_predictions{'_flip' if args.flip else ''}.h5"
            _write_predictions(out, preds)
            print(f"wrote {out} ('preds' [{len(preds)}, 16, 2], image frame)")
        else:
            result = evaluate_prediction_file(args.predictions, args.annotations)
            name = args.predictions.name
        print(pckh.format_table({args.name or name: result.summary()}))
        if args.json is not None:
            _write_json(args.json, result)
            print(f"wrote {args.json}")
    # OSError: unreadable input or unwritable --json; WorkdirError: --checkpoint without that checkpoint.
    except (ValueError, OSError, WorkdirError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
