"""Plots of results (no display): PCKh curves over a setting, PCKh vs distance, grouped bars.

* `plot_curves` (PCKh vs resolution, vs training samples, over epochs: Figs. 7, 8, 11) and
  `plot_pckh_curve` (PCKh vs normalised distance) and `plot_bars` (the paper's tables) write PNGs with
  matplotlib's Agg canvas; pyplot's global state is never touched, so plotting is safe in scripts, tests and
  threads.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _read_records(data: str | os.PathLike | Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CSV file not found: {path}")
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    return list(data)


def _number(value: Any) -> float:
    """A cell as a float; blanks and None (a missing run, e.g. R101@56 in Fig. 8) become NaN."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _save_figure(fig: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def plot_curves(data: str | os.PathLike | Sequence[Mapping[str, Any]], x: str, ys: str | Sequence[str],
                path: str | os.PathLike, *, title: str = "", xlabel: str | None = None,
                ylabel: str = "", log_x: bool = False, labels: Sequence[str] | None = None,
                errors: Sequence[str | None] | None = None, dashed: Mapping[str, str] | None = None) -> str:
    """Line plot of one or more columns against another (e.g. PCKh vs heatmap resolution, per method).

    Each column in `ys` is one line with markers, over the rows sorted by `x`; rows where that column
    is blank/None are left out of its line (runs that do not exist). With `log_x` the x axis is
    logarithmic base 2 (resolutions 7…56 px, 1024…8192 samples) and ticked at the data's x values.

    Args:
      data: a CSV file with a header row, or a sequence of records (mappings column → value).
      x: the x column.
      ys: one y column or several.
      path: output .png.
      title, xlabel (default: `x`), ylabel: text.
      log_x: logarithmic x axis.
      labels: legend entries, one per y column (default: the column names).
      errors: per y column, the column of its ± error bar (e.g. half the range over seeds), or None for none.
      dashed: y columns that are references rather than measurements (e.g. a decoding limit), each mapped to the
        earlier y column whose colour it takes: dashed, no markers.

    Returns:
      The path written.
    """
    records = _read_records(data)
    ys = [ys] if isinstance(ys, str) else list(ys)
    if not records:
        raise ValueError("no rows to plot")
    if not ys:
        raise ValueError("ys must name at least one column")
    labels = ys if labels is None else list(labels)
    if len(labels) != len(ys):
        raise ValueError(f"{len(ys)} y columns but {len(labels)} labels")
    error_columns = [None] * len(ys) if errors is None else list(errors)
    if len(error_columns) != len(ys):
        raise ValueError(f"{len(ys)} y columns but {len(error_columns)} error columns")
    dashed = dict(dashed or {})
    late = [c for c, partner in dashed.items() if c not in ys or partner not in ys[:ys.index(c)]]
    if late:
        raise ValueError(f"dashed columns {late} must be y columns after the column whose colour they take")
    missing = [c for c in [x, *ys, *filter(None, error_columns)] if c not in records[0]]
    if missing:
        raise ValueError(f"columns {missing} not in the data; it has {sorted(records[0])}")
    xs = np.array([_number(r[x]) for r in records])
    order = np.argsort(xs, kind="stable")
    # Beyond a handful of lines an inside legend hides data: it goes to the right of a wider figure.
    legend_outside = len(ys) > 5
    fig = Figure(figsize=(8.0 if legend_outside else 5.5, 4.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    colours: dict[str, Any] = {}
    for column, label, error in zip(ys, labels, error_columns):
        values = np.array([_number(r[column]) for r in records])[order]
        keep = np.isfinite(values) & np.isfinite(xs[order])
        if column in dashed:
            style: dict[str, Any] = dict(linestyle="--", linewidth=1.2, color=colours[dashed[column]])
        else:
            style = dict(marker="o", markersize=4)
        line = ax.plot(xs[order][keep], values[keep], label=label, **style)[0]
        colours[column] = line.get_color()
        if error is not None:
            spread = np.array([_number(r[error]) for r in records])[order][keep]
            has = np.isfinite(spread) & (spread > 0)
            ax.errorbar(xs[order][keep][has], values[keep][has], yerr=spread[has], fmt="none",
                        ecolor=line.get_color(), capsize=3, linewidth=1)
    if log_x:
        if np.any(xs[np.isfinite(xs)] <= 0):
            raise ValueError("log_x needs positive x values")
        ax.set_xscale("log", base=2)
        ticks = np.unique(xs[np.isfinite(xs)])
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_title(title)
    ax.set_xlabel(x if xlabel is None else xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if legend_outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    elif len(ys) > 1:
        ax.legend()
    return _save_figure(fig, path)


def plot_pckh_curve(thresholds: Any, total_pck: Any | Mapping[str, Any], path: str | os.PathLike, *,
                    title: str = "PCKh", label: str | None = None) -> str:
    """PCKh (percent) against the normalised distance threshold, as `data.pckh.PCKhResult` holds it.

    Args:
      thresholds: [T] thresholds (fractions of the head size, e.g. 0.00 … 0.50).
      total_pck: [T] PCK in percent, or a mapping label → [T] to compare several curves.
      path: output .png.
      title: plot title.
      label: legend entry of a single curve.

    Returns:
      The path written.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    curves = dict(total_pck) if isinstance(total_pck, Mapping) else {label: total_pck}
    if thresholds.ndim != 1 or thresholds.size < 2:
        raise ValueError(f"thresholds must be [T] with T >= 2, got shape {thresholds.shape}")
    fig = Figure(figsize=(5.0, 4.0), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for name, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64)
        if curve.shape != thresholds.shape:
            raise ValueError(f"PCK curve {name!r} has shape {curve.shape}, thresholds {thresholds.shape}")
        ax.plot(thresholds, curve, label=name)
    ax.set_xlim(thresholds.min(), thresholds.max())
    ax.set_ylim(0, 100)
    ax.set_xlabel("normalised distance (fraction of head size)")
    ax.set_ylabel("PCKh (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(name is not None for name in curves):
        ax.legend(loc="lower right")
    return _save_figure(fig, path)


def plot_bars(rows: Sequence[Mapping[str, Any]], path: str, *, title: str, xlabel: str) -> str:
    """Grouped bar chart of final PCKh: one group per series, one bar per x value (paper tables)."""
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
    return _save_figure(fig, path)


def grouped(rows: Sequence[Mapping[str, Any]], value: str = "total") -> dict[tuple[str, Any], list[float]]:
    """{(series, x): the non-missing `value` of every row there} (several rows: one per seed)."""
    out: dict[tuple[str, Any], list[float]] = {}
    for r in rows:
        cell = out.setdefault((r["series"], r["x"]), [])
        if r.get(value) is not None:
            cell.append(float(r[value]))
    return out


def pivot(rows: Sequence[Mapping[str, Any]], value: str = "total"
          ) -> tuple[list[str], list[Any], dict[tuple[str, Any], float | None]]:
    """(series in order of appearance, x values in order, {(series, x): mean value over its rows, or None})."""
    series = list(dict.fromkeys(r["series"] for r in rows))
    xs = list(dict.fromkeys(r["x"] for r in rows))
    if all(isinstance(x, (int, float)) for x in xs):
        xs = sorted(xs)
    means = {k: (sum(v) / len(v) if v else None) for k, v in grouped(rows, value).items()}
    return series, xs, means
