"""Results of the paper's experiment grids (`python -m train.experiments`): CSV, tables and plots.

Each run of a grid (`train.experiments.Run`) is summarised from the 'val' records of its workdir's
metrics.jsonl: the last validation (the run's result) and the best one. `collect` writes ROOT/NAME/results.csv
(`CSV_COLUMNS`) and ROOT/NAME/NAME.png, a line plot of validation PCKh against x (one line per series, as the
paper's figures; with several seeds the mean, and bars of half their range) or grouped bars (the paper's
tables); `format_tables` gives the same numbers as Markdown.
Runs validated more than once (`--eval-every`) also get ROOT/NAME/NAME-progress.png: validation PCKh against
training updates, one line per run (its seeds' mean), which shows whether a comparison depends on the budget.
Given `hm_caps` ({heatmap side: PCKh of HM's own target decoded}, `train.experiments.ceilings.hm_caps`), fig7's
table gets a row and its plots a dashed line for that limit, which no HM run can pass by much.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from train.experiments.grid import Experiment, Run, reached_last_epoch
from train.experiments.plots import grouped, pivot, plot_bars, plot_curves
from train.loop.metrics import read_val_records

CSV_COLUMNS: tuple[str, ...] = (
    "experiment", "run", "seed", "series", "x", "res", "heatmap", "train_samples", "epochs", "hm_amplitude", "done",
    "epoch", "total", "pckh@0.1", "auc", "best_total", "best_epoch")


def summarize_run(experiment: str, run: Run) -> dict[str, Any]:
    """One results row (`CSV_COLUMNS`) for `run`: its last and best validation; blanks if none yet."""
    cfg = run.config
    row: dict[str, Any] = {"experiment": experiment, "run": run.name, "seed": cfg.seed, "series": run.series,
                           "x": run.x,
                           "res": cfg.model.res, "heatmap": cfg.model.heatmap_size,
                           "train_samples": cfg.train_samples, "epochs": cfg.epochs,
                           "hm_amplitude": cfg.hm_amplitude if cfg.model.output == "hm" else None}
    records = read_val_records(cfg.workdir)
    row["done"] = reached_last_epoch(records, cfg.epochs)
    if records:
        # Resumed runs may repeat a step; the later line wins, and the highest step is the latest state.
        last = max(reversed(records), key=lambda r: r.get("step", 0))
        best = max(records, key=lambda r: -math.inf if r.get("total") is None else r["total"])
        row.update(epoch=last.get("epoch"), total=last.get("total"), **{"pckh@0.1": last.get("pckh@0.1")},
                   auc=last.get("auc"), best_total=best.get("total"), best_epoch=best.get("epoch"))
    return {k: row.get(k) for k in CSV_COLUMNS}


def write_csv(rows: Sequence[Mapping[str, Any]], path: str) -> str:
    """Writes `rows` (`CSV_COLUMNS`; None → blank) to `path`; returns it."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
    return path


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _mean_and_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, half the range) over the seeds' values; None where there is no value, or one for the spread."""
    if not values:
        return None, None
    return sum(values) / len(values), (max(values) - min(values)) / 2 if len(values) > 1 else None


def _mean_cell(values: Sequence[float]) -> str:
    """'42.1' for one seed; 'mean ± half the range (n)' for several."""
    mean, spread = _mean_and_spread(values)
    if spread is None:
        return _cell(mean)
    return f"{mean:.1f} ± {spread:.1f} ({len(values)})"


HM_CAP_LABEL = "HM limit (its target decoded)"


def _caps_where_measured(experiment: Experiment, rows: Sequence[Mapping[str, Any]],
                         hm_caps: Mapping[int, float] | None) -> dict[Any, float]:
    """`hm_caps` at the x values where some run has a result, if the grid has HM runs (else empty): a partial
    grid (--only) is not drawn or tabled out to sides it did not train."""
    if not hm_caps or not any(run.config.model.output == "hm" for run in experiment.runs):
        return {}
    measured = {x for (_, x), values in grouped(rows).items() if values}
    return {x: v for x, v in hm_caps.items() if x in measured}


def format_tables(experiment: Experiment, rows: Sequence[Mapping[str, Any]],
                  hm_caps: Mapping[int, float] | None = None) -> str:
    """Markdown tables: final PCKh total as series × x (the paper's layout; several seeds: mean ± half their
    range, and their count; with `hm_caps`, a row of HM's limit per heatmap side), then one line per run."""
    series, xs, _ = pivot(rows)
    values = grouped(rows)
    lines = ["| " + " | ".join(["series", *map(str, xs)]) + " |", "|" + "---|" * (len(xs) + 1)]
    lines += ["| " + " | ".join([s, *(_mean_cell(values.get((s, x), [])) for x in xs)]) + " |" for s in series]
    caps = _caps_where_measured(experiment, rows, hm_caps)
    if caps:
        lines.append("| " + " | ".join([HM_CAP_LABEL, *(_cell(caps.get(x)) for x in xs)]) + " |")
    lines += ["", "| run | heatmap | epochs | PCKh | PCKh@0.1 | AUC | best (epoch) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r.get("best_total") is None else f"{_cell(r['best_total'])} ({r['best_epoch']})"
        lines.append(f"| {r['run']} | {r['heatmap']} | {r['epochs']} | {_cell(r.get('total'))} | "
                     f"{_cell(r.get('pckh@0.1'))} | {_cell(r.get('auc'))} | {best} |")
    title = experiment.title.replace("\n", " — ")
    return f"{title}: validation PCKh total (%)\n\n" + "\n".join(lines)


def plot_experiment(experiment: Experiment, rows: Sequence[Mapping[str, Any]], path: str,
                    hm_caps: Mapping[int, float] | None = None) -> str | None:
    """The experiment's PNG (line plot vs x, log2 axis, or bars; `hm_caps` dashed); None when no run has a result
    yet."""
    if not any(r.get("total") is not None for r in rows):
        return None
    if experiment.kind == "bar":
        return plot_bars(rows, path, title=experiment.title, xlabel=experiment.xlabel)
    series, xs, _ = pivot(rows)
    # Error bars: half the range over the seeds, the ± of the tables.
    stats = {k: _mean_and_spread(v) for k, v in grouped(rows).items()}
    caps = _caps_where_measured(experiment, rows, hm_caps)
    wide = [{"x": x, **{s: stats.get((s, x), (None, None))[0] for s in series},
             **{f"{s} ±": stats.get((s, x), (None, None))[1] for s in series},
             HM_CAP_LABEL: caps.get(x)} for x in xs]
    hm_series = next((r.series for r in experiment.runs if r.config.model.output == "hm"), None)
    lines = [*series, *([HM_CAP_LABEL] if caps else [])]
    return plot_curves(wide, "x", lines, path, title=experiment.title, xlabel=experiment.xlabel,
                       ylabel="validation PCKh total (%)", log_x=True,
                       errors=[f"{s} ±" for s in series] + [None] * (len(lines) - len(series)),
                       dashed={HM_CAP_LABEL: hm_series} if caps and hm_series else None)


def plot_progress(experiment: Experiment, path: str, hm_caps: Mapping[int, float] | None = None) -> str | None:
    """Validation PCKh total against training updates, one line per run validated at least twice (the mean of
    its seeds, with bars of half their range; an HM run's limit from `hm_caps` dashed); None if there is no such
    run."""
    curves: dict[str, dict[int, list[float]]] = {}
    seeds: dict[str, int] = {}
    names: dict[str, str] = {}
    caps: dict[str, float] = {}
    for run in experiment.runs:
        names[run.group] = f"{run.series}, {run.x}{experiment.xunit}"
        if hm_caps and run.config.model.output == "hm" and run.x in hm_caps:
            caps[run.group] = hm_caps[run.x]
        # Later lines of a resumed run win, as in summarize_run.
        by_step = {r["step"]: r.get("total") for r in read_val_records(run.config.workdir) if "step" in r}
        if len(by_step) < 2:
            continue
        seeds[run.group] = seeds.get(run.group, 0) + 1
        for step, total in by_step.items():
            if total is not None:
                curves.setdefault(run.group, {}).setdefault(step, []).append(total)
    if not curves:
        return None
    steps = sorted({s for by_step in curves.values() for s in by_step})
    wide = []
    for step in steps:
        row: dict[str, Any] = {"step": step}
        for group, totals in curves.items():
            row[group], row[f"{group} ±"] = _mean_and_spread(totals.get(step, []))
            row[f"{group} limit"] = caps.get(group)
        wide.append(row)
    groups = list(curves)
    limits = [g for g in groups if g in caps]
    labels = [f"{names[g]} ({seeds[g]} seeds)" if seeds[g] > 1 else names[g] for g in groups]
    labels += [f"{names[g]}: limit (its target decoded)" for g in limits]
    title = experiment.title.split("\n")[0] + ": during training"
    return plot_curves(wide, "step", groups + [f"{g} limit" for g in limits], path, title=title,
                       xlabel="training updates", ylabel="validation PCKh total (%)", labels=labels,
                       errors=[f"{g} ±" for g in groups] + [None] * len(limits),
                       dashed={f"{g} limit": g for g in limits})


def collect(experiment: Experiment, root: str, hm_caps: Mapping[int, float] | None = None
            ) -> tuple[list[dict[str, Any]], str, list[str]]:
    """Summarises every run of the grid; writes root/NAME/results.csv, NAME.png and, when runs were validated
    more than once, NAME-progress.png (both with `hm_caps` dashed, if given). Returns (rows, csv path, PNG paths
    written)."""
    rows = [summarize_run(experiment.name, run) for run in experiment.runs]
    out_dir = os.path.join(root, experiment.name)
    csv_path = write_csv(rows, os.path.join(out_dir, "results.csv"))
    pngs = [plot_experiment(experiment, rows, os.path.join(out_dir, f"{experiment.name}.png"), hm_caps),
            plot_progress(experiment, os.path.join(out_dir, f"{experiment.name}-progress.png"), hm_caps)]
    return rows, csv_path, [p for p in pngs if p]
