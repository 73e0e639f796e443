"""The speed targets of issue #12 and verdicts on benchmark results (used by the CLIs and the GPU suite).

Targets (ResNet-50 @ 28, 224-px input, DSNTr, one GPU, every figure from the same run):

* inference, batch 1, float32, the Table 4 timed region: ≤ 0.8 ms and ≥ 1.2× the fastest compiled
  PyTorch peer timed (the issue names `torch.compile(mode="reduce-overhead")` + channels_last);
  bfloat16 never slower than float32. The fastest dsnt-jax variant timed (`jit`, BatchNorm-`folded`,
  `estimator`) is judged, and the verdict names it;
* training step, batch 32: float32 ≥ 1.3× the fastest compiled peer (compile + channels_last);
  bfloat16 ≥ 2,400 images/s and ≥ 1.5× the fastest compiled bfloat16 peer;
* `python -m train.main` on the synthetic data: ≥ 95 % of the training step's images/s.

A verdict is given only on a GPU at those sizes; anywhere else the line says why there is none.
Results are the row dicts of `benchmarks.inference` ('timings') and `benchmarks.train_step` ('rows').
`variant_overheads` / `variant_lines` set the dsnt-jax inference variants side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MODEL, INPUT_SIZE = "resnet50@28", 224
INFERENCE_MS, INFERENCE_SPEEDUP = 0.8, 1.2
TRAIN_BATCH, TRAIN_F32_SPEEDUP, TRAIN_BF16_IMAGES, TRAIN_BF16_SPEEDUP = 32, 1.3, 2400.0, 1.5
LOADER_FRACTION = 0.95
# The bare compiled forward each dsnt-jax inference variant is set against, in order of preference:
# folding vs the plain jit (what folding BatchNorm saves); PoseEstimator.predict vs the folded forward
# it runs (its per-call overhead: preprocessing, the heatmaps' copy back, back-transform, spreads).
BASELINES = {"folded": ("jit",), "estimator": ("folded", "jit")}
_SAME_FIGURE = ("model", "input_size", "dtype", "batch")


def inference_ratios(timings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """dsnt-jax speed / each peer's (peer ms / dsnt-jax ms) per model, dtype, batch, dsnt-jax config."""
    ratios = []
    for ours in (r for r in timings if r["library"] == "dsnt-jax" and "ms" in r):
        for peer in timings:
            same = all(peer[k] == ours[k] for k in ("model", "dtype", "batch", "input_size"))
            if same and peer["library"] == "pytorch" and "ms" in peer:
                ratios.append({"model": ours["model"], "dtype": ours["dtype"], "batch": ours["batch"],
                               "jax_config": ours["config"], "peer": peer["config"],
                               "ratio": peer["ms"] / ours["ms"]})
    return ratios


def variant_overheads(timings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each dsnt-jax variant's ms against its `BASELINES` entry timed at the same model, size, dtype,
    batch: dicts with those keys and config, baseline, ms, baseline_ms, diff_ms (> 0: slower)."""
    ours = [r for r in timings if r["library"] == "dsnt-jax" and "ms" in r]
    rows = []
    for row in ours:
        same = {b["config"]: b for b in ours if all(b[k] == row[k] for k in _SAME_FIGURE)}
        base = next((same[n] for n in BASELINES.get(row["config"], ()) if n in same), None)
        if base is not None:
            rows.append({**{k: row[k] for k in _SAME_FIGURE}, "config": row["config"],
                         "baseline": base["config"], "ms": row["ms"], "baseline_ms": base["ms"],
                         "diff_ms": row["ms"] - base["ms"]})
    return rows


def variant_lines(timings: Sequence[dict[str, Any]]) -> list[str]:
    """One line per model, size, dtype and batch with ≥ 2 dsnt-jax variants timed, side by side:
    'variants resnet50@28 224 px float32 batch 1: jit 1.100 ms | folded 0.900 ms (-0.200 vs jit) | …'."""
    ours = [r for r in timings if r["library"] == "dsnt-jax" and "ms" in r]
    diffs = {tuple(d[k] for k in (*_SAME_FIGURE, "config")): d for d in variant_overheads(timings)}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in ours:
        groups.setdefault(tuple(row[k] for k in _SAME_FIGURE), []).append(row)
    lines = []
    for (model, size, dtype, batch), rows in groups.items():
        if len(rows) < 2:
            continue
        cells = []
        for r in rows:
            d = diffs.get((model, size, dtype, batch, r["config"]))
            vs = f" ({d['diff_ms']:+.3f} ms vs {d['baseline']})" if d else ""
            cells.append(f"{r['config']} {r['ms']:.3f} ms{vs}")
        lines.append(f"variants {model} {size} px {dtype} batch {batch}: " + " | ".join(cells))
    return lines


def train_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """dsnt-jax images/s / each peer's, per dtype and dsnt-jax step."""
    ok = [r for r in rows if "images_per_s" in r]
    return [{"dtype": a["dtype"], "jax_config": a["config"], "peer": b["config"],
             "ratio": a["images_per_s"] / b["images_per_s"]}
            for a in ok if a["library"] == "dsnt-jax"
            for b in ok if b["library"] == "pytorch" and b["dtype"] == a["dtype"]]


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _no_verdict(platform: str, model: str, size: int, batch: int, want_batch: int) -> str | None:
    """Why figures of this setting cannot be judged against the targets, or None when they can."""
    if platform != "gpu":
        return f"no verdict: measured on {platform}, the targets are for a GPU"
    if model != MODEL or size != INPUT_SIZE or batch != want_batch:
        return (f"no verdict: {model} at {size} px, batch {batch}; the targets are for {MODEL} at "
                f"{INPUT_SIZE} px, batch {want_batch}")
    return None


def _fastest_compiled(rows: Sequence[dict[str, Any]], key: str, best: Any) -> dict[str, Any] | None:
    peers = [r for r in rows if r.get("library") == "pytorch" and r["config"].startswith("compile")
             and key in r]
    return best(peers, key=lambda r: r[key]) if peers else None


def _best_variant(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """(the fastest of the dsnt-jax rows, ' (fastest of jit 1.100, folded 0.900 ms)' or '' for one)."""
    best = min(rows, key=lambda r: r["ms"])
    if len(rows) == 1:
        return best, ""
    return best, " (fastest of " + ", ".join(f"{r['config']} {r['ms']:.3f}" for r in rows) + " ms)"


def inference_verdicts(timings: Sequence[dict[str, Any]], platform: str) -> list[str]:
    """Lines judging batch-1 inference rows (dicts with model, input_size, dtype, batch, library,
    config, ms) against the targets; the fastest dsnt-jax variant per dtype is judged and named."""
    lines = []
    one = [r for r in timings if r["batch"] == 1 and r["model"] == MODEL and "ms" in r]
    ours = {d: [r for r in one if r["library"] == "dsnt-jax" and r["dtype"] == d]
            for d in ("float32", "bfloat16")}
    if not ours["float32"]:
        return [f"inference: no dsnt-jax {MODEL} batch-1 float32 figure: no verdict"]
    f32, among = _best_variant(ours["float32"])
    why = _no_verdict(platform, f32["model"], f32["input_size"], 1, 1)
    head = f"inference {MODEL} batch 1 float32: dsnt-jax {f32['config']} {f32['ms']:.3f} ms{among}"
    if why:
        return [f"{head} ({why})"]
    lines.append(f"{head} → ≤ {INFERENCE_MS:g} ms {_met(f32['ms'] <= INFERENCE_MS)}")
    peer = _fastest_compiled([r for r in one if r["dtype"] == "float32"], "ms", min)
    lines.append(_speedup_line(peer, peer and peer["ms"] / f32["ms"], f"{peer['ms']:.3f} ms" if peer else "",
                               INFERENCE_SPEEDUP))
    if ours["bfloat16"]:
        bf16, _ = _best_variant(ours["bfloat16"])
        lines.append(f"  bfloat16 {bf16['config']} {bf16['ms']:.3f} ms vs float32 {f32['config']} "
                     f"{f32['ms']:.3f} ms → bfloat16 never slower {_met(bf16['ms'] <= f32['ms'])}")
    return lines


def _speedup_line(peer: dict[str, Any] | None, ratio: float | None, peer_figure: str, want: float) -> str:
    """'  1.23× torch CONFIG (FIGURE) → ≥ 1.2× met', or why there is no verdict."""
    if peer is None or ratio is None:
        return "  speed-up target: no compiled PyTorch peer timed, no verdict"
    return f"  {ratio:.2f}× torch {peer['config']} ({peer_figure}) → ≥ {want:g}× {_met(ratio >= want)}"


def train_step_verdicts(rows: Sequence[dict[str, Any]], platform: str, model: str, input_size: int,
                        batch: int) -> list[str]:
    """Lines judging training-step rows (dicts with library, config, dtype, images_per_s)."""
    lines = []
    why = _no_verdict(platform, model, input_size, batch, TRAIN_BATCH)
    for dtype in ("float32", "bfloat16"):
        same = [r for r in rows if r["dtype"] == dtype and "images_per_s" in r]
        ours = [r for r in same if r["library"] == "dsnt-jax"]
        if not ours:
            continue
        mine = max(ours, key=lambda r: r["images_per_s"])
        head = f"train step {model} batch {batch} {dtype}: dsnt-jax {mine['images_per_s']:.1f} images/s"
        if why:
            lines.append(f"{head} ({why})")
            continue
        lines.append(head)
        if dtype == "bfloat16":
            lines.append(f"  ≥ {TRAIN_BF16_IMAGES:,.0f} images/s "
                         f"{_met(mine['images_per_s'] >= TRAIN_BF16_IMAGES)}")
        peer = _fastest_compiled(same, "images_per_s", max)
        want = TRAIN_F32_SPEEDUP if dtype == "float32" else TRAIN_BF16_SPEEDUP
        lines.append(_speedup_line(peer, peer and mine["images_per_s"] / peer["images_per_s"],
                                   f"{peer['images_per_s']:.1f} images/s" if peer else "", want))
    return lines


def loader_verdict(train_images_per_s: float, step_images_per_s: float, platform: str) -> str:
    """Line judging `train.main`'s images/s against the training step's at the same precision."""
    fraction = train_images_per_s / step_images_per_s
    text = (f"train.main {train_images_per_s:.1f} images/s = {100 * fraction:.1f} % of the step's "
            f"{step_images_per_s:.1f}")
    if platform != "gpu":
        return f"{text} (no verdict: measured on {platform})"
    return f"{text} → ≥ {100 * LOADER_FRACTION:g} % {_met(fraction >= LOADER_FRACTION)}"
