"""Scores MPII predictions with the official PCKh protocol and prints the paper's Table 4 row.

Usage:
  python -m train.evaluate --predictions preds.h5 --annotations gt_valid.mat [--json out.json]

Predictions and annotations are files in the layouts of ``data.eval_files`` (image frame, 1-based MPII
pixels, the same persons in the same order). ``--json`` writes `data.pckh.PCKhResult.to_json_dict()`
(percent values).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data import eval_files, pckh


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
    parser.add_argument(
        "--annotations",
        type=Path,
        required=True,
        metavar="FILE",
        help="ground truth: toolkit .mat (pos_gt_src, jnt_missing, headboxes_src) or valid.h5 (part, normalize)",
    )
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


def _write_json(path: Path, result: pckh.PCKhResult) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_json_dict(), indent=2, allow_nan=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 on success, 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Only one source exists today; a checkpoint source would add a branch here.
        result = evaluate_prediction_file(args.predictions, args.annotations)
        name = args.name or args.predictions.name
        print(pckh.format_table({name: result.summary()}))
        if args.json is not None:
            _write_json(args.json, result)
            print(f"wrote {args.json}")
    except (ValueError, OSError) as err:  # OSError: unreadable input or unwritable --json
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
