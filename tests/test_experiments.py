"""train.experiments (grid definitions, CPU and --full = the paper's settings, --dry-run, the skip-if-done
logic) and train.experiments.report (result collection, CSV, plots and table from metrics.jsonl files
written in the real format), and one tiny real two-run grid trained in-process on a tiny synthetic dataset."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from mpii_fake import MPII_VAL, needs_mpii_val
from PIL import Image

from train.experiments import cli
from train.experiments import grid as E
from train.experiments import report as R
from train.loop import config as C
from train.loop.metrics import MetricsWriter, read_val_records
from train.loop.workdir import METRICS_FILE, RunDir

COUNTS = {"fig7": 16, "fig11": 12, "table2": 4, "table3": 7}
TINY = {"widths": [8, 8, 8, 8], "stem_width": 8, "stage_sizes": [1, 1, 1, 1]}


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("name", E.EXPERIMENTS)
def test_grid_sizes_and_valid_configs(name: str, full: bool, tmp_path: Path) -> None:
    exp = E.build_experiment(name, full=full, root=str(tmp_path))
    assert len(exp.runs) == COUNTS[name]
    assert len({r.name for r in exp.runs}) == len(exp.runs)
    for run in exp.runs:
        C.validate(run.config)
        assert run.config.workdir == os.path.join(str(tmp_path), name, run.name)
        assert run.config.dataset == ("mpii" if full else "synthetic")
    # Every (series, x) cell of the figure/table is filled by exactly one run.
    assert len({(r.series, r.x) for r in exp.runs}) == len(exp.runs)


def _paper_common(cfg: C.Config) -> tuple:
    return (cfg.model.backbone, cfg.model.input_size, cfg.dataset, cfg.epochs, cfg.batch_size, cfg.lr,
            cfg.lr_milestones, cfg.lr_gamma, cfg.eval_every)


def test_full_grids_are_the_papers_settings() -> None:
    common = ("resnet34", 224, "mpii", 120, 32, 2.5e-4, (60, 90), 0.1, 1)
    fig7 = E.build_experiment("fig7", full=True)
    cells = set()
    for run in fig7.runs:
        c = run.config
        assert _paper_common(c) == common and c.augment and c.train_samples is None
        cells.add((c.model.res, c.model.output, c.reg, c.reg_coeff, c.sigma))
        assert run.x == c.model.res  # 224-px input: the heatmap side is the paper's resolution name
    assert cells == {(res, out, reg, 1.0, 1.0) for res in (7, 14, 28, 56)
                     for out, reg in (("hm", "none"), ("fc", "none"), ("dsnt", "none"), ("dsnt", "js"))}
    fig11 = E.build_experiment("fig11", full=True)
    assert {(r.config.model.output, r.config.reg, r.config.train_samples) for r in fig11.runs} == {
        (out, reg, n) for n in (1024, 2048, 4096, 8192) for out, reg in (("hm", "none"), ("fc", "none"),
                                                                          ("dsnt", "js"))}
    for run in fig11.runs:
        assert _paper_common(run.config) == common and run.config.model.res == 28 and not run.config.augment
        assert run.x == run.config.train_samples
    table2 = E.build_experiment("table2", full=True)
    m = [r.config.model for r in table2.runs]
    assert {(c.activation, c.output, r.config.reg, c.res) for c, r in zip(m, table2.runs)} == {
        (a, "dsnt", "none", 28) for a in ("softmax", "abs", "relu", "sigmoid")}
    table3 = E.build_experiment("table3", full=True)
    assert {(r.config.reg, r.config.reg_coeff, r.config.sigma) for r in table3.runs if r.config.reg != "none"} == {
        (reg, coeff, s) for s in (1.0, 2.0) for reg, coeff in (("var", 100.0), ("kl", 1.0), ("js", 1.0))}
    for run in (*table2.runs, *table3.runs):
        assert _paper_common(run.config) == common and run.config.augment and run.config.model.res == 28
    for run in (*fig7.runs, *fig11.runs, *table3.runs):
        assert run.config.model.activation == "softmax"
    # --full runs are exactly the training code's paper presets (only the workdir differs).
    for run in (*fig7.runs, *fig11.runs, *table2.runs, *table3.runs):
        assert run.config == C.resolve({"preset": run.config.preset, "workdir": run.config.workdir})


def test_cpu_grids_keep_the_strides_and_scale_the_samples() -> None:
    fig7 = E.build_experiment("fig7")
    stride = {7: 32, 14: 16, 28: 8, 56: 4}
    for run in fig7.runs:
        c = run.config
        assert run.x * stride[c.model.res] == c.model.input_size and c.model.backbone == "resnet18" and c.epochs == 1
        assert c.eval_every == c.epochs  # validation once, at the end
    fig11 = E.build_experiment("fig11")
    for run in fig11.runs:
        c = run.config
        assert not c.augment and c.train_samples in E.CPU_SAMPLES and c.model.res == 28
        steps = c.epochs * -(-c.train_samples // c.batch_size)
        assert E.CPU_FIG11_STEPS <= steps < E.CPU_FIG11_STEPS + c.train_samples // c.batch_size + 1
        # Every run drops its lr once, at 3/4 of its epochs (a 2-epoch run would get no drop at all).
        assert c.lr_milestones == (c.epochs * 3 // 4,) and c.epochs % 4 == 0


def test_cpu_hm_runs_use_the_larger_target_and_full_keeps_the_papers() -> None:
    """Issue #14: on CPU the HM runs draw their targets with peak CPU_HM_AMPLITUDE; --full and every other
    run keep 1; an explicit amplitude reaches the HM runs only."""
    for name in ("fig7", "fig11"):
        for run in E.build_experiment(name).runs:
            expected = E.CPU_HM_AMPLITUDE if run.config.model.output == "hm" else 1.0
            assert run.config.hm_amplitude == expected, run.name
        assert {r.config.hm_amplitude for r in E.build_experiment(name, full=True).runs} == {1.0}
        explicit = E.build_experiment(name, full=True, overrides={"hm_amplitude": 5.0}).runs
        assert {(r.config.model.output == "hm", r.config.hm_amplitude) for r in explicit} == {(True, 5.0), (False, 1.0)}
    assert E.CPU_HM_AMPLITUDE > 1.0
    paper = E.build_experiment("fig7", overrides={"hm_amplitude": 1.0}).runs
    assert {r.config.hm_amplitude for r in paper} == {1.0}


def test_hm_amplitude_flag_and_grid_listing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["fig7", "--dry-run", "--workdir", str(tmp_path), "--only", "hm-56,dsnt-56"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"amp={E.CPU_HM_AMPLITUDE:g}" in lines[1] and "amp=" not in lines[2]
    assert cli.main(["fig7", "--dry-run", "--workdir", str(tmp_path), "--only", "hm-56", "--hm-amplitude=1"]) == 0
    assert "amp=1 " in capsys.readouterr().out


def test_epochs_and_overrides_reach_every_run() -> None:
    exp = E.build_experiment("table3", epochs=8, overrides={"lr": 5e-4, "seed": 3, "batch_size": 16,
                                                           "data_dir": "/d", "precision": None})
    for run in exp.runs:
        c = run.config
        assert (c.epochs, c.lr, c.seed, c.batch_size, c.data_dir, c.lr_milestones, c.precision) == (
            8, 5e-4, 3, 16, "/d", (6,), "float32")
    full = E.build_experiment("fig7", full=True, epochs=12)
    assert {r.config.lr_milestones for r in full.runs} == {(6, 9)}
    with pytest.raises(ValueError, match="--batch-size"):
        E.build_experiment("fig7", overrides={"batch_size": 0})
    with pytest.raises(ValueError, match="unknown experiment"):
        E.build_experiment("fig8")


def test_select_runs() -> None:
    exp = E.build_experiment("fig7")
    assert [r.name for r in E.select_runs(exp, "dsnt-7, hm-56")] == ["dsnt-7", "hm-56"]
    assert E.select_runs(exp, None) == exp.runs
    with pytest.raises(ValueError, match="no run dsnt-8 in fig7; its runs are hm-7"):
        E.select_runs(exp, "dsnt-7,dsnt-8")


def test_dry_run_prints_the_grid_and_trains_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["fig11", "--dry-run", "--workdir", str(tmp_path), "--only", "fc-n256,hm-n2048"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "2 run(s)" in lines[0]
    assert lines[1].split()[0] == "fc-n256" and "out=fc" in lines[1] and "n=256" in lines[1]
    assert lines[2].split()[0] == "hm-n2048" and "aug=False" in lines[2]
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["fig7", "--dry-run", "--full", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("resnet34@") == 16 and out.count("data=mpii") == 16
    with pytest.raises(SystemExit):
        cli.main(["fig7", "--dry-run", "--pretrained", "w.pth"])  # CPU-sized nets cannot take ImageNet weights


def _write_metrics(workdir: str, vals: list[tuple[int, int, float]], *, train: bool = True) -> None:
    """Real-format metrics.jsonl: (step, epoch, total) val records, preceded by a train record."""
    writer = MetricsWriter(workdir)
    for step, epoch, total in vals:
        if train:
            writer.write("train", step, epoch, {"loss": 0.5, "lr": 1e-3, "images_per_s": 10.0})
        writer.write("val", step, epoch, {"total": total, "pckh@0.1": total / 4, "auc": total / 2,
                                          "head": 90.0, "ubody": float("nan")})
    writer.close()


def _fake_grid(exp: E.Experiment, skip: set[str]) -> dict[str, float]:
    totals = {}
    for i, run in enumerate(exp.runs):
        if run.name in skip:
            continue
        totals[run.name] = 10.0 + 3 * i
        epochs = run.config.epochs
        _write_metrics(run.config.workdir, [(10, max(epochs - 1, 0), totals[run.name] + 5),
                                            (20, epochs, totals[run.name])])
    return totals


def test_collect_writes_csv_plot_and_table(tmp_path: Path) -> None:
    exp = E.build_experiment("fig7", root=str(tmp_path))
    totals = _fake_grid(exp, skip={"fc-56"})
    rows, csv_path, (png_path, progress_path) = R.collect(exp, str(tmp_path))
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == [r.name for r in exp.runs]
    assert tuple(table[0]) == R.CSV_COLUMNS
    assert {(r["series"], r["hm_amplitude"]) for r in table if r["series"] in ("HM", "FC")} == {
        ("HM", str(E.CPU_HM_AMPLITUDE)), ("FC", "")}
    for r in table:
        if r["run"] == "fc-56":
            assert (r["total"], r["done"], r["series"], r["x"]) == ("", "False", "FC", "32")
            continue
        assert float(r["total"]) == pytest.approx(totals[r["run"]])  # the last record, not the best
        assert float(r["best_total"]) == pytest.approx(totals[r["run"]] + 5)
        assert float(r["pckh@0.1"]) == pytest.approx(totals[r["run"]] / 4) and r["done"] == "True"
    image = np.asarray(Image.open(png_path))
    assert png_path.endswith("fig7.png") and image.ndim == 3 and image.shape[0] > 100
    # Every run was validated twice (steps 10 and 20): the progress plot is written too.
    assert progress_path.endswith("fig7-progress.png") and Image.open(progress_path).size[0] > 100
    progress = np.asarray(Image.open(progress_path))
    text = R.format_tables(exp, rows)
    header = next(line for line in text.splitlines() if line.startswith("| series"))
    assert header.split("|")[2:6] == [" 4 ", " 8 ", " 16 ", " 32 "]
    fc_line = next(line for line in text.splitlines() if line.startswith("| FC |"))
    assert fc_line.rstrip(" |").endswith("-")  # the missing run
    assert f"| dsnt-7 | 4 | 1 | {totals['dsnt-7']:.1f} |" in text
    # With HM's decoding limit per heatmap side: a table row, and a dashed line in both plots.
    caps = {4: 10.25, 8: 49.7, 16: 100.0, 32: 100.0}
    rows, _, pngs = R.collect(exp, str(tmp_path), caps)
    assert "| HM limit (its target decoded) | 10.2 | 49.7 | 100.0 | 100.0 |" in R.format_tables(exp, rows, caps)
    with_caps = [np.asarray(Image.open(p)) for p in pngs]
    assert all(a.shape == b.shape and np.any(a != b) for a, b in zip(with_caps, (image, progress)))
    # Only where the grid has results (a partial grid, as with --only), and only for a grid with HM runs.
    only_low = {r.name: r for r in exp.runs if r.config.model.heatmap_size <= 8}
    partial = [dict(row, total=None) if row["run"] not in only_low else row for row in rows]
    assert "| HM limit (its target decoded) | 10.2 | 49.7 | - | - |" in R.format_tables(exp, partial, caps)
    no_hm = E.Experiment(exp.name, exp.title, exp.xlabel, exp.kind,
                         tuple(r for r in exp.runs if r.config.model.output != "hm"))
    assert "HM limit" not in R.format_tables(no_hm, [r for r in rows if r["series"] != "HM"], caps)


def test_bar_plot_and_pivot_for_tables(tmp_path: Path) -> None:
    exp = E.build_experiment("table3", root=str(tmp_path))
    _fake_grid(exp, skip=set())
    rows, _, (png_path, _) = R.collect(exp, str(tmp_path))
    series, xs, values = R.pivot(rows)
    assert series == ["None", "Variance (λ=100)", "KL (λ=1)", "JS (λ=1)"]
    assert xs == ["N/A", "σ_t=1", "σ_t=2"]
    assert values[("JS (λ=1)", "σ_t=2")] == pytest.approx(10.0 + 3 * 6)
    assert ("None", "σ_t=1") not in values
    assert Image.open(png_path).size[0] > 100
    # No results at all: CSV with blanks, no plot.
    empty = E.build_experiment("table2", root=str(tmp_path / "empty"))
    rows, csv_path, pngs = R.collect(empty, str(tmp_path / "empty"))
    assert pngs == [] and all(r["total"] is None for r in rows) and os.path.isfile(csv_path)


def test_several_seeds_run_apart_and_report_mean_and_spread(tmp_path: Path) -> None:
    """--seeds 0,1: each run twice (the second in <run>-s1, with seed 1); --only names a run's group; the table
    gives mean ± half the range over the seeds, and the CSV one row per run with its seed."""
    exp = E.build_experiment("fig7", root=str(tmp_path), seeds=(0, 1))
    assert len(exp.runs) == 32 and exp.runs[16].name == "hm-7-s1" and exp.runs[16].group == "hm-7"
    assert {r.config.seed for r in exp.runs[:16]} == {0} and {r.config.seed for r in exp.runs[16:]} == {1}
    assert exp.runs[16].config.workdir.endswith(os.path.join("fig7", "hm-7-s1"))
    assert [r.name for r in E.select_runs(exp, "dsnt-56,fc-7-s1")] == ["dsnt-56", "dsnt-56-s1", "fc-7-s1"]
    for run in exp.runs:
        total = 40.0 if run.name == "dsnt-56" else 44.0 if run.name == "dsnt-56-s1" else 10.0
        _write_metrics(run.config.workdir, [(20, run.config.epochs, total)])
    rows, csv_path, pngs = R.collect(exp, str(tmp_path))
    assert [os.path.basename(p) for p in pngs] == ["fig7.png"]  # validated once each: no progress plot
    with open(csv_path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["seed"]) for r in table][15:17] == [("dsntr-56", "0"), ("hm-7-s1", "1")]
    dsnt_line = next(line for line in R.format_tables(exp, rows).splitlines() if line.startswith("| DSNT |"))
    assert dsnt_line.rstrip(" |").endswith("42.0 ± 2.0 (2)")
    assert R.pivot(rows)[2][("DSNT", 32)] == pytest.approx(42.0)
    # Without --seeds the grid is the single-seed one of before (plain names, the default seed).
    assert [r.name for r in E.build_experiment("fig7", root=str(tmp_path)).runs] == [r.name for r in exp.runs[:16]]


def test_resumed_duplicates_and_torn_lines(tmp_path: Path) -> None:
    workdir = str(tmp_path / "run")
    _write_metrics(workdir, [(10, 1, 30.0), (20, 2, 50.0), (10, 1, 31.0), (20, 2, 40.0)])
    run = E.Run("run", "S", 1, dataclasses.replace(C.resolve({"epochs": 2}), workdir=workdir))
    row = R.summarize_run("x", run)
    assert (row["total"], row["epoch"], row["best_total"], row["best_epoch"]) == (40.0, 2, 50.0, 2)
    path = os.path.join(workdir, METRICS_FILE)
    with open(path, "a") as f:
        f.write('{"split": "val", "step": 30, "to')  # killed mid-write
    assert R.summarize_run("x", run)["total"] == 40.0
    with open(path, "a") as f:
        f.write('\n{"split": "val", "step": 40, "epoch": 2, "total": 1.0}\n')
    with pytest.raises(ValueError, match="line 9, is not JSON"):
        read_val_records(workdir)


def test_run_grid_skips_finished_runs_and_resumes_unfinished(tmp_path: Path) -> None:
    exp = E.build_experiment("table2", root=str(tmp_path), epochs=3)
    calls: list[str] = []

    def fake_train(cfg: C.Config) -> int:
        calls.append(os.path.basename(cfg.workdir))
        os.makedirs(cfg.workdir, exist_ok=True)
        with open(RunDir(cfg.workdir).config_file, "w") as f:
            f.write(cfg.to_json())
        _write_metrics(cfg.workdir, [(30, cfg.epochs, 42.0)], train=False)
        return 0

    # "abs" stopped after epoch 1 of 3; "relu" finished.
    _write_metrics(exp.runs[1].config.workdir, [(10, 1, 5.0)])
    _write_metrics(exp.runs[2].config.workdir, [(30, 3, 7.0)])
    assert [E.is_done(r.config) for r in exp.runs] == [False, False, True, False]
    times = E.run_grid(exp.runs, fake_train, log=lambda _: None)
    assert calls == ["softmax", "abs", "sigmoid"] and times["relu"] is None
    calls.clear()
    assert all(v is None for v in E.run_grid(exp.runs, fake_train, log=lambda _: None).values())
    assert calls == []
    # More epochs: the finished runs are no longer done (train.main resumes them).
    longer = E.build_experiment("table2", root=str(tmp_path), epochs=4)
    assert not any(E.is_done(r.config) for r in longer.runs)
    # A different configuration in the same directory is an error, not a silent skip.
    other = E.build_experiment("table2", root=str(tmp_path), epochs=3, overrides={"seed": 1})
    with pytest.raises(ValueError, match="seed: 0 → 1"):
        E.is_done(other.runs[0].config)
    relu_lr = E.build_experiment("table2", root=str(tmp_path), epochs=3, overrides={"lr": 1e-3}).runs[0]
    with pytest.raises(ValueError, match="other settings .lr: 0.002 → 0.001.; .* use another --workdir"):
        E.is_done(relu_lr.config)
    assert E.is_done(dataclasses.replace(exp.runs[0].config, log_every=5, data_dir="/elsewhere"))
    with pytest.raises(RuntimeError, match="run softmax ended with status 3"):
        E.run_grid(longer.runs[:1], lambda cfg: 3, log=lambda _: None)
    # train.main returns 0 after a SIGTERM checkpoint: the grid must stop there, not go on.
    with pytest.raises(RuntimeError, match="run softmax stopped before its final validation"):
        E.run_grid(longer.runs, lambda cfg: 0, log=lambda _: None)


def test_tiny_real_grid_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two real runs of fig7 (HM and DSNTr, 4×4 heatmaps) trained in-process, collected, then skipped."""
    import data.synthetic_pose
    from train.main import train

    data_dir = str(tmp_path / "tfds")
    data.synthetic_pose.build(data_dir, num_train=16, num_val=8, canvas_size=48, num_workers=1)
    overrides = {"data_dir": data_dir, "synthetic_train": 16, "synthetic_val": 8, "synthetic_canvas": 48,
                 "input_size": 32, "batch_size": 8, "model_overrides": json.dumps(TINY), "log_every": 1,
                 "eval_every": 1}
    root = str(tmp_path / "runs")
    exp = E.build_experiment("fig7", root=root, epochs=2, overrides=overrides)
    runs = E.select_runs(exp, "hm-28,dsntr-28")
    times = E.run_grid(runs, train)
    assert set(times) == {"hm-28", "dsntr-28"} and all(t > 0 for t in times.values())
    rows, _, pngs = R.collect(exp, root)
    done = [r for r in rows if r["done"]]
    assert [r["run"] for r in done] == ["hm-28", "dsntr-28"]
    for r in done:
        assert r["epoch"] == 2 and r["heatmap"] == 4 and 0.0 <= r["total"] <= 100.0
    # Validated after each of the 2 epochs: the grid's plot and the progress plot.
    assert [os.path.basename(p) for p in pngs] == ["fig7.png", "fig7-progress.png"]
    # HM's limit on this dataset's validation people, per heatmap side of the grid (train.experiments.cli).
    caps = cli._hm_caps(exp)
    assert caps is not None and sorted(caps) == [2, 4, 8] and all(0.0 <= v <= 100.0 for v in caps.values())
    assert all(os.path.isfile(p) for p in pngs)
    assert E.run_grid(runs, lambda cfg: pytest.fail("a finished run was trained again")) == {
        "hm-28": None, "dsntr-28": None}


def test_decoding_ceilings_of_hm_quantisation_and_dsnt_reach() -> None:
    from train.experiments.ceilings import decoding_ceilings, main

    n = 4
    centres = (np.arange(n) + 0.5) * 2 / n - 1  # normalised cell centres of a 4 × 4 map (cells 0.5 wide)
    rng = np.random.default_rng(0)
    # Inner cells only: the quarter-pixel shift is not applied on the border.
    on_grid = rng.choice(centres[1:-1], size=(8, 16, 2))
    annotated = np.ones((8, 16), bool)
    heads = np.full(8, 0.14)  # PCKh@0.5: within 0.07 of the truth
    # Joints at cell centres: the paper's target (integer-centred, so exactly symmetric) decodes exactly.
    assert decoding_ceilings(on_grid, annotated, heads, [n])[n][0] == pytest.approx(100.0)
    # A third of a cell off centre on both axes: the paper's target (centred on the rounded pixel) decodes to the
    # cell centre, 0.236 off; a sub-pixel Gaussian leans to that side and the quarter-pixel shift follows, 0.059
    # off. On a 64 × 64 map both are well within 0.07.
    third = on_grid + 0.5 / 3
    hm, subpixel, _ = decoding_ceilings(third, annotated, heads, [n])[n]
    assert (hm, subpixel) == (pytest.approx(0.0), pytest.approx(100.0))
    assert decoding_ceilings(third, annotated, heads, [64])[64][:2] == (pytest.approx(100.0), pytest.approx(100.0))
    # Beyond ±3/4, DSNT on a 4 × 4 map cannot get within 0.07 of 0.95; on 64 × 64 (reach ±63/64) it can.
    edge = np.full((8, 16, 2), 0.95)
    assert decoding_ceilings(edge, annotated, heads, [n])[n][2] == pytest.approx(0.0)
    assert decoding_ceilings(edge, annotated, heads, [64])[64] == (pytest.approx(100.0),) * 3
    with pytest.raises(ValueError, match="at least 2"):
        decoding_ceilings(edge, annotated, heads, [1])
    assert main(["--dataset", "mpii", "--data-dir", "/nonexistent-data-dir"]) == 2


@needs_mpii_val
def test_the_papers_hm_target_at_7_px_limits_mpii_validation_to_about_the_papers_44_percent(capsys) -> None:
    """A network that outputs exactly the paper's HM target on 7 × 7 maps scores under the paper's 44 % (§6.4)."""
    from train.experiments.ceilings import decoding_ceilings, main, valid_h5_people

    coords, annotated, heads = valid_h5_people(MPII_VAL / "valid.h5")
    assert coords.shape == (2958, 16, 2) and annotated.sum() > 0.9 * 2958 * 14
    table = decoding_ceilings(coords, annotated, heads, [7, 14])
    assert 35.0 < table[7][0] < 44.0 and table[7][1] > 90.0 and table[14][0] > 99.0
    assert main(["--valid-h5", str(MPII_VAL / "valid.h5"), "--sides", "7"]) == 0
    assert f"| 7 | {table[7][0]:.1f} |" in capsys.readouterr().out
    assert main(["--valid-h5", str(MPII_VAL / "newell.h5")]) == 2
    assert "missing dataset(s)" in capsys.readouterr().err


def test_valid_h5_people_need_the_boxes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import h5py

    from train.experiments.ceilings import main, valid_h5_people

    path = tmp_path / "valid.h5"
    with h5py.File(path, "w") as f:
        f["part"] = np.array([[[110.0, 100.0]] * 16])
        f["normalize"] = np.array([20.0])
        f["center"] = np.array([[100.0, 100.0]])
    assert main(["--valid-h5", str(path)]) == 2
    assert "no scale dataset; expected pose-hg-train's annot/valid.h5" in capsys.readouterr().err
    with h5py.File(path, "a") as f:
        f["scale"] = np.array([0.5])  # a 100-px box: half side 50
    coords, annotated, heads = valid_h5_people(path)
    np.testing.assert_allclose(coords[0, 0], [0.2, 0.0])
    assert annotated.all() and heads == pytest.approx([0.4])
