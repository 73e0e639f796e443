"""Results of the paper's experiment grids (`python -m train.experiments`): CSV, tables and plots.

Each run of a grid (`train.experiments.Run`) is summarised from the 'val' records of its workdir's
metrics.jsonl: the last validation (the run's result) and the best one. `collect` writes ROOT/NAME/results.csv
(`CSV_COLUMNS`) and ROOT/NAME/NAME.png, a line plot of validation PCKh against x (one line per series, as the
paper's figures) or grouped bars (the paper's tables); `format_tables` gives the same numbers as Markdown.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from train.metrics import METRICS_FILE

if TYPE_CHECKING:  # train.experiments imports this module: no import back at run time
    from train.experiments import Experiment, Run

CSV_COLUMNS: tuple[str, ...] = (
    "experiment", "run", "series", "x", "res", "heatmap", "train_samples", "epochs", "hm_amplitude", "done",
    "epoch", "total", "pckh@0.1", "auc", "best_total", "best_epoch")


def read_val_records(workdir: str) -> list[dict[str, Any]]:
    """The 'val' records of workdir/metrics.jsonl in file order ([] if there is no file).

    A torn last line (a run killed while writing) is ignored; any other unreadable line raises ValueError.
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue
            raise ValueError(f"{path}, line {i + 1}, is not JSON: {line[:80]!r}; fix or delete the line")
        if record.get("split") == "val":
            out.append(record)
    return out


def reached_last_epoch(records: Sequence[Mapping[str, Any]], epochs: int) -> bool:
    """True if one of the 'val' records is the validation after the run's last epoch (`epochs`)."""
    return any(r.get("epoch", 0) >= epochs for r in records)


def summarize_run(experiment: str, run: Run) -> dict[str, Any]:
    """One results row (`CSV_COLUMNS`) for `run`: its last and best validation; blanks if none yet."""
    cfg = run.config
    row: dict[str, Any] = {"experiment": experiment, "run": run.name, "series": run.series, "x": run.x,
                           "res": cfg.res, "heatmap": cfg.heatmap_size,
                           "train_samples": cfg.train_samples, "epochs": cfg.epochs,
                           "hm_amplitude": cfg.hm_amplitude if cfg.output == "hm" else None}
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


def pivot(rows: Sequence[Mapping[str, Any]], value: str = "total"
          ) -> tuple[list[str], list[Any], dict[tuple[str, Any], float | None]]:
    """(series in order of appearance, x values in order, {(series, x): value}) of the results rows."""
    series = list(dict.fromkeys(r["series"] for r in rows))
    xs = list(dict.fromkeys(r["x"] for r in rows))
    if all(isinstance(x, (int, float)) for x in xs):
        xs = sorted(xs)
    return series, xs, {(r["series"], r["x"]): r.get(value) for r in rows}


def _cell(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def format_tables(experiment: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown tables: final PCKh total as series × x (the paper's layout), then one line per run."""
    series, xs, values = pivot(rows)
    lines = ["| " + " | ".join(["series", *map(str, xs)]) + " |", "|" + "---|" * (len(xs) + 1)]
    lines += ["| " + " | ".join([s, *(_cell(values.get((s, x))) for x in xs)]) + " |" for s in series]
    lines += ["", "| run | heatmap | epochs | PCKh | PCKh@0.1 | AUC | best (epoch) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r.get("best_total") is None else f"{_cell(r['best_total'])} ({r['best_epoch']})"
        lines.append(f"| {r['run']} | {r['heatmap']} | {r['epochs']} | {_cell(r.get('total'))} | "
                     f"{_cell(r.get('pckh@0.1'))} | {_cell(r.get('auc'))} | {best} |")
    title = experiment.title.replace("\n", " — ")
    return f"{title}: validation PCKh total (%)\n\n" + "\n".join(lines)


def plot_bars(rows: Sequence[Mapping[str, Any]], path: str, *, title: str, xlabel: str) -> str:
    """Grouped bar chart of final PCKh: one group per series, one bar per x value (paper tables)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series, xs, values = pivot(rows)
    fig = Figure(figsize=(6.0, 4.0), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(xs)
    for i, x in enumerate(xs):
        heights = [values.get((s, x)) for s in series]
        keep = [j for j, h in enumerate(heights) if h is not None and np.isfinite(h)]
        bars = ax.bar([j + (i - (len(xs) - 1) / 2) * width for j in keep], [heights[j] for j in keep],
                      width, label=str(x))
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(series)), series)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation PCKh total (%)")
    ax.grid(True, axis="y", alpha=0.3)
    if len(xs) > 1:
        ax.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    return path


def plot_experiment(experiment: Experiment, rows: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """The experiment's PNG (line plot vs x, log2 axis, or bars); None when no run has a result yet."""
    if not any(r.get("total") is not None for r in rows):
        return None
    if experiment.kind == "bar":
        return plot_bars(rows, path, title=experiment.title, xlabel=experiment.xlabel)
    from train.visualize import plot_curves

    series, xs, values = pivot(rows)
    wide = [{"x": x, **{s: values.get((s, x)) for s in series}} for x in xs]
    return plot_curves(wide, "x", series, path, title=experiment.title, xlabel=experiment.xlabel,
                       ylabel="validation PCKh total (%)", log_x=True)


def collect(experiment: Experiment, root: str) -> tuple[list[dict[str, Any]], str, str | None]:
    """Summarises every run of the grid; writes root/NAME/results.csv and NAME.png; returns (rows, csv, png)."""
    rows = [summarize_run(experiment.name, run) for run in experiment.runs]
    out_dir = os.path.join(root, experiment.name)
    csv_path = write_csv(rows, os.path.join(out_dir, "results.csv"))
    return rows, csv_path, plot_experiment(experiment, rows, os.path.join(out_dir, f"{experiment.name}.png"))
