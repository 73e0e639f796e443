"""Tests of the PCKh command line, ``python -m train.evaluate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from mpii_fake import MPII_VAL, needs_mpii_val

from data import pckh
from train import evaluate

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.evaluate", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _write_files(tmp_path: Path, n_preds: int = 4, n_gt: int = 4) -> tuple[Path, Path]:
    """A toolkit-layout GT .mat with n_gt persons and an [N, 16, 2] preds .h5 with n_preds persons."""
    rng = np.random.default_rng(0)
    gt = rng.uniform(50, 400, (n_gt, 16, 2))
    boxes = np.stack([np.full((n_gt, 2), 10.0), np.full((n_gt, 2), 60.0)], axis=1)  # head size 0.6·50√2
    gt_path = tmp_path / "gt_valid.mat"
    scipy.io.savemat(
        gt_path,
        {
            "pos_gt_src": gt.transpose(1, 2, 0),
            "jnt_missing": np.zeros((16, n_gt), np.uint8),
            "headboxes_src": boxes.transpose(1, 2, 0),
        },
    )
    preds = gt[:n_preds].copy() if n_preds <= n_gt else rng.uniform(0, 1, (n_preds, 16, 2))
    preds[0, 0] += 1000.0  # one wrong r ankle
    pred_path = tmp_path / "preds.h5"
    with h5py.File(pred_path, "w") as f:
        f["preds"] = preds
    return pred_path, gt_path


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--predictions", "--annotations", "--json"):
        assert option in out


def test_missing_required_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--annotations", "gt.mat"])
    assert exit_info.value.code == 2
    assert "--predictions" in capsys.readouterr().err


def test_main_on_small_files(tmp_path, capsys):
    pred_path, gt_path = _write_files(tmp_path)
    out_path = tmp_path / "out" / "result.json"
    status = evaluate.main(
        ["--predictions", str(pred_path), "--annotations", str(gt_path), "--json", str(out_path), "--name", "toy"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("toy"))
    ankle, total = 100.0 * (1 - 1 / 4 / 2), 100.0 * (1 - 1 / (4 * 14))
    assert row.split()[1:9] == ["100.0"] * 6 + [f"{ankle:.1f}", f"{total:.1f}"]
    written = json.loads(out_path.read_text())
    assert written["ankle"] == pytest.approx(ankle)
    assert written["total"] == pytest.approx(total)
    assert written["per_joint"]["r_ankle"] == pytest.approx(75.0)
    assert written == evaluate.evaluate_prediction_file(pred_path, gt_path).to_json_dict()


def test_person_count_mismatch_is_one_clear_error(tmp_path, capsys):
    pred_path, gt_path = _write_files(tmp_path, n_preds=3, n_gt=4)
    status = evaluate.main(["--predictions", str(pred_path), "--annotations", str(gt_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "predictions hold 3 persons but the annotations 4" in err
    assert "Traceback" not in err
    with pytest.raises(ValueError, match="3 persons"):
        evaluate.evaluate_prediction_file(pred_path, gt_path)


def test_errors_in_a_subprocess_have_no_traceback(tmp_path):
    pred_path, _ = _write_files(tmp_path)
    proc = _run_cli("--predictions", str(pred_path), "--annotations", str(tmp_path / "absent.mat"))
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "absent.mat" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_mpii_val
@pytest.mark.parametrize(
    "predictions, annotations",
    [("newell.h5", "detections_our_format.mat"), ("tompson.h5", "valid.h5")],
)
def test_cli_on_real_files_matches_the_library(tmp_path, predictions, annotations):
    out_path = tmp_path / "pckh.json"
    proc = _run_cli(
        "--predictions", str(MPII_VAL / predictions),
        "--annotations", str(MPII_VAL / annotations),
        "--json", str(out_path),
    )
    assert proc.returncode == 0, proc.stderr
    written = json.loads(out_path.read_text())
    library = evaluate.evaluate_prediction_file(MPII_VAL / predictions, MPII_VAL / annotations)
    assert written == library.to_json_dict()
    assert set(pckh.SUMMARY_KEYS) <= set(written)
    assert all(0.0 < written[key] < 100.0 for key in pckh.SUMMARY_KEYS)
    # The printed row shows the same numbers, one decimal.
    row = next(line for line in proc.stdout.splitlines() if line.startswith(predictions))
    expected = [f"{written[key]:.1f}" for key, _ in pckh.TABLE_COLUMNS]
    assert row.split()[1:] == expected
