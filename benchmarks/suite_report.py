"""Reading the GPU suite's part results and writing its summary (markdown + JSON).

Used by `python -m benchmarks.gpu_suite`; imports neither JAX nor PyTorch, so the suite's own process
never touches the GPU. Every reader accepts what a killed part left behind: the benchmarks rewrite
their JSON after every figure, and `train.main` appends to metrics.jsonl as it goes.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks import targets
from train.loop.workdir import RunDir


def load_json(path: str | None) -> dict[str, Any] | None:
    """The JSON object at `path`, or None when it is missing or unreadable (a part killed early)."""
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def train_run_result(workdir: str) -> dict[str, Any] | None:
    """PCKh curve and images/s of a `train.main` run, from WORKDIR/metrics.jsonl.

    Returns {'pckh': [{'epoch', 'step', 'total'}, …], 'images_per_s': median of the train records after
    the first (whose window includes compilation), 'train_records', 'last_loss'} or None without records.
    """
    path = RunDir(workdir).metrics_file
    if not os.path.exists(path):
        return None
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    train = [r for r in records if r.get("split") == "train" and r.get("images_per_s") is not None]
    val = [r for r in records if r.get("split") == "val"]
    if not train and not val:
        return None
    steady = [r["images_per_s"] for r in train[1:]] or [r["images_per_s"] for r in train]
    return {"pckh": [{"epoch": r["epoch"], "step": r["step"], "total": r.get("total")} for r in val],
            "images_per_s": statistics.median(steady) if steady else None,
            "train_records": len(train), "last_loss": train[-1].get("loss") if train else None}


def inference_variants(parts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The inference part's dsnt-jax variants against their bare forward (`targets.variant_overheads`)."""
    result = (parts.get("inference") or {}).get("result") or {}
    if "variants" in result:
        return result["variants"]
    return targets.variant_overheads(result.get("timings", []))  # a part killed before writing them


# ----------------------------------------------------------------------------------------------------
# Verdicts


def verdicts(parts: dict[str, dict[str, Any]], platform: str, train_precision: str, *,
             same_model: bool = True) -> list[str]:
    """The issue #12 target lines for whatever the parts measured.

    `same_model`: the training run trained the step benchmark's network and batch, so their images/s
    compare (the loader line).
    """
    lines: list[str] = []
    inference = (parts.get("inference") or {}).get("result") or {}
    if inference.get("timings"):
        lines += targets.inference_verdicts(inference["timings"], platform)
    step = (parts.get("train_step") or {}).get("result") or {}
    settings = step.get("settings") or {}
    if step.get("rows"):
        lines += targets.train_step_verdicts(step["rows"], platform, settings["model"],
                                             settings["input_size"], settings["batch"])
    run = (parts.get("train") or {}).get("result") or {}
    ours = [r for r in step.get("rows", []) if r["library"] == "dsnt-jax" and r["config"] == "train"
            and r["dtype"] == train_precision and "images_per_s" in r]
    if run.get("images_per_s") and ours and same_model:
        lines.append(targets.loader_verdict(run["images_per_s"], ours[0]["images_per_s"], platform))
    elif run.get("images_per_s"):
        lines.append(f"train.main {run['images_per_s']:.1f} images/s (no loader verdict: no step "
                     f"figure of the same network, batch and precision {train_precision})")
    return lines


# ----------------------------------------------------------------------------------------------------
# Markdown


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _pm(value: float, spread: float, digits: int) -> str:
    return f"{value:.{digits}f} ± {spread:.{digits}f}"


def _environment_lines(env: dict[str, Any] | None) -> list[str]:
    if not env:
        return ["- environment: unknown (the env part produced nothing)"]
    torch_text = (f"torch {env['torch']} (CUDA {env.get('torch_cuda')}) on {env.get('torch_device')}, "
                  f"dsntnn {env.get('dsntnn')}, cudnn.allow_tf32={env.get('cudnn_allow_tf32')}"
                  if env.get("torch") else "torch not installed")
    return [f"- device: {env['jax_platform']} ({env['jax_device']}) × {env['jax_device_count']}; "
            f"nvidia-smi: {env.get('nvidia_smi') or 'n/a'}",
            f"- jax {env['jax']} (jaxlib {env.get('jaxlib')}), flax {env.get('flax')}, "
            f"default matmul precision {env.get('jax_default_matmul_precision')}, "
            f"XLA_FLAGS={env.get('xla_flags') or '(none)'}",
            f"- {torch_text}",
            f"- host: {env['host']}; measured {env['date']}"]


def _inference_lines(result: dict[str, Any]) -> list[str]:
    s = result.get("settings", {})
    sizes = sorted({r["input_size"] for r in result.get("timings", [])}) or [s.get("input_size")]
    lines = [f"## Inference — {', '.join(s.get('models', []))}, input {', '.join(map(str, sizes))} px",
             "Timed per call: host→device copy, forward, coordinates, copy back, pixels (Table 4 region); "
             f"median ± scaled MAD of {s.get('repeats')} calls after {s.get('warmup')} warm-up.", ""]
    rows = []
    for r in result.get("timings", []):
        cells = [r["model"], r["dtype"], r["batch"], r["library"], r["config"]]
        if "error" in r:
            rows.append(cells + [f"unavailable: {r['error']}", "", ""])
        else:
            rows.append(cells + [_pm(r["ms"], r["ms_spread"], 3), f"{r['images_per_s']:.1f}",
                                 f"{r['first_call_s']:.1f}"])
    lines += _table(["model", "dtype", "batch", "library", "configuration", "ms/call", "images/s",
                     "first call s"], rows)
    legend = s.get("jax_config_descriptions") or {}
    lines += [""] + [f"- dsnt-jax `{name}`: {text}" for name, text in legend.items()]
    lines += [f"- {line}" for line in targets.variant_lines(result.get("timings", []))]
    lines += [f"- {r['model']} {r['dtype']} batch {r['batch']}: dsnt-jax {r['jax_config']} / torch "
              f"{r['peer']} speed **{r['ratio']:.2f}×**" for r in _ratios(result, "inference")]
    return lines


def _ratios(result: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The part's ratios, recomputed when it was killed before writing them."""
    if "ratios" in result:
        return result["ratios"]
    if kind == "inference":
        return targets.inference_ratios(result.get("timings", []))
    return targets.train_ratios(result.get("rows", []))


def _train_step_lines(result: dict[str, Any]) -> list[str]:
    s = result.get("settings", {})
    lines = [f"## Training step — {s.get('model')}, input {s.get('input_size')} px, batch {s.get('batch')}",
             f"DSNTr loss + RMSProp; median ± scaled MAD of {s.get('repeats')} × {s.get('steps')} steps "
             f"after {s.get('warmup')} warm-up steps.", ""]
    rows = []
    for r in result.get("rows", []):
        cells = [r["dtype"], r["library"], r["config"]]
        if "error" in r:
            rows.append(cells + [f"unavailable: {r['error']}", "", ""])
        else:
            rows.append(cells + [_pm(r["images_per_s"], r["images_per_s_spread"], 1),
                                 f"{r['ms_per_step']:.2f}", f"{r['warmup_s']:.1f}"])
    lines += _table(["dtype", "library", "configuration", "images/s", "ms/step", "warm-up s"], rows)
    lines += [""] + [f"- {r['dtype']}: dsnt-jax {r['jax_config']} / torch {r['peer']} images/s "
                     f"**{r['ratio']:.2f}×**" for r in _ratios(result, "train_step")]
    return lines


def _ops_lines(result: dict[str, Any]) -> list[str]:
    s = result.get("settings", {})
    timing = ("latency" if s.get("calls_per_sync") == 1
              else f"throughput, {s.get('calls_per_sync')} calls per sync")
    lines = [f"## DSNTr loss forward + backward — B {s.get('batch')}, J {s.get('points')} ({timing})", ""]
    rows = []
    for r in result.get("rows", []):
        cells = [f"{r['size']}²", r["library"], r["config"], r["device"]]
        if "error" in r:
            rows.append(cells + [f"unavailable: {r['error']}", ""])
        elif "us" in r:
            ratio = f"{r['ratio']:.2f}×" if "ratio" in r else ""
            rows.append(cells + [_pm(r["us"], r["us_spread"], 1), ratio])
    return lines + _table(["H×W", "library", "configuration", "device", "µs/call",
                           "time / dsnt-jax's"], rows)


def _train_lines(part: dict[str, Any]) -> list[str]:
    run = part.get("result") or {}
    lines = ["## `python -m train.main` synthetic run", "", f"`{' '.join(part['command'])}`", ""]
    if not run:
        return lines + ["No metrics were written."]
    curve = " → ".join(f"{p['total']:.1f}" for p in run["pckh"] if p["total"] is not None)
    ips = run.get("images_per_s")
    lines.append(f"- validation PCKh after each epoch: {curve or 'none'} %")
    lines.append(f"- training images/s: {ips:.1f} (median of {run['train_records'] - 1} log windows; the "
                 "first, which includes compilation, left out)" if ips else "- training images/s: n/a")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: environment, part status, one table per benchmark, the verdicts."""
    suite = summary["suite"]
    lines = [f"# dsnt-jax GPU suite{' (--quick)' if suite['quick'] else ''}", ""]
    lines += _environment_lines(summary.get("environment"))
    lines += [f"- command: `{' '.join(suite['command'])}`",
              f"- wall time {suite['wall_s']:.0f} s (deadline {suite['deadline_s']:.0f} s)"]
    if suite.get("note"):
        lines.append(f"- note: {suite['note']}")
    lines += ["", "## Parts", ""]
    lines += _table(["part", "status", "wall s", "timeout s"],
                    [[p["name"], p["status"], f"{p['wall_s']:.0f}", f"{p['timeout_s']:.0f}"]
                     for p in summary["parts"]])
    parts = {p["name"]: p for p in summary["parts"]}
    for name, render in (("inference", _inference_lines), ("train_step", _train_step_lines),
                         ("ops", _ops_lines)):
        result = (parts.get(name) or {}).get("result")
        if result:
            lines += [""] + render(result)
    if "train" in parts and parts["train"].get("command"):
        lines += [""] + _train_lines(parts["train"])
    lines += ["", "## Targets of issue #12", ""] + [f"- {v}" for v in summary.get("verdicts", [])]
    return "\n".join(lines) + "\n"
