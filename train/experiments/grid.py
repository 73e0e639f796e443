"""The runs of the paper's experiment grids (`python -m train.experiments {fig7,fig11,table2,table3} [--full]`).

Each experiment is a list of named runs, each a `train.loop.config.Config` resolved from the paper's preset for
that run (train/loop/config.py, so every flag means what it means for `python -m train.main`) plus the series
and x value it contributes to the paper's figure or table:

* fig7: output strategy HM / FC / DSNT / DSNTr × heatmap resolution 7 / 14 / 28 / 56 px (strides 32…4);
* fig11: HM / FC / DSNTr trained on the first 1024…8192 samples without augmentation (ResNet-34 @ 28 px);
* table2: heatmap activations softmax / abs / relu / sigmoid (DSNT, no regulariser);
* table3: regulariser none / variance (λ 100) / KL (λ 1) / JS (λ 1) at σ_t = 1 and 2 px.

`--full` trains the paper's settings (ResNet-34, 224 px, MPII, 120 epochs, lr ×0.1 at 60 and 90). The
default is CPU-sized: the embedded synthetic dataset, a narrow ResNet-18 at 96 px (fig7: 128 px,
`CPU_FIG7_INPUT`, so 7/14/28/56 keep their strides 32/16/8/4 and give 4/8/16/32 px heatmaps), no
augmentation (each example is seen only a few times), learning rate 2e-3, one or two epochs (too few for an lr
drop); fig11 scales the sample counts to 256…2048 and gives every run the same number of updates
(`CPU_FIG11_STEPS`). One epoch leaves fig7's 8-px runs below HM's decoding limit there, so the README also
trains the two lowest resolutions for `--epochs 8` (41 min). The CPU grids' HM runs draw their target
Gaussians with peak `CPU_HM_AMPLITUDE` (10) instead of the paper's 1 (`--hm-amplitude`,
dsnt_jax/models/loss.py): at peak 1 a run this short ends at the all-zero heatmap (issue #14). `--full` keeps
the paper's 1.

Every run lives in ROOT/NAME/<run> and is skipped when its metrics.jsonl already holds the final
validation, so an interrupted grid continues where it stopped. Afterwards ROOT/NAME/results.csv, a PNG in
the style of the paper's figure (line plot) or table (bar chart) and a table on stdout summarise the runs
(train/experiments/report.py; the command line is train/experiments/cli.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dsnt_jax.models import ACTIVATIONS
from train.loop import config as config_lib
from train.loop.config import Config
from train.loop.metrics import read_val_records
from train.loop.workdir import RunDir

EXPERIMENTS: tuple[str, ...] = ("fig7", "fig11", "table2", "table3")
PAPER_SAMPLES: tuple[int, ...] = (1024, 2048, 4096, 8192)
# 4–34 % of the 6000 synthetic training people, as the paper's 1024…8192 are 4–32 % of MPII's 25,925. With
# 512 updates of batch 16 every run has 32/16/8/4 epochs, so all get the lr drop at 3/4 of the run (the
# schedule steps per epoch): 4096 samples (2 epochs) had none, and scored 29 % against 42 % with it (HM).
CPU_SAMPLES: tuple[int, ...] = (256, 512, 1024, 2048)
CPU_FIG11_STEPS = 512
CPU_EPOCHS: dict[str, int] = {"fig7": 1, "table2": 2, "table3": 2}
# fig7's input side on CPU. At 96 px its stride-32 maps are 3 × 3: a DSNT prediction (a mean of cell centres)
# cannot leave ±2/3 of the crop there, and 16 % of the synthetic training joints lie beyond (10.4 % beyond the
# ±3/4 of a 4 × 4 map; 4.5 % beyond the ±6/7 of the paper's 7 × 7; 1.8 % of MPII's validation joints), so FC
# tied DSNT (24.9 ± 1.7 vs 23.6 ± 0.8 over two seeds; 2 epochs: 32.7 vs 31.0). At 128 px DSNT led FC in
# both seeds (24.4 vs 21.0; issue #14); 4-px maps also give HM's quantisation a low limit, 10 % (the paper's
# 7 px on MPII: 39 %). After 8 epochs FC ties DSNT at 4 px as well (README).
CPU_FIG7_INPUT = 128
# The CPU-sized setting shared by every default run (explicit pass-through flags still override it): the
# README run's (`config.CPU_SIZED`) with a narrower network of the usual depth, and batch 16.
CPU_BASE: dict[str, Any] = {
    **config_lib.CPU_SIZED, "batch_size": 16, "keep_checkpoints": 1,
    "model_overrides": {"widths": (16, 32, 64, 128), "stem_width": 16}}
# Peak of the HM target in the CPU grids (the paper: 1). At peak 1 the 24-px HM run of fig7 at 96 px ends its epoch
# at the all-zero heatmap (training MSE ≈ that of zeros, PCKh below the mean pose): the raw 1×1 head's
# initial outputs and RMSProp's per-step moves are fixed in absolute units, and the Gaussian's part of the
# loss, πσ²/(H·W) = 0.0055, is 1 % of the initial loss (0.52) there. Measured on the fig7 hm-56 run (1 epoch,
# PCKh total): peak 1 12.0, 3 37.1, 10 54.3, 100 56.2 (mean pose 15.9); loss ×1e4 15.6 and lr 2.5e-4 11.6
# do not help (issue #14).
CPU_HM_AMPLITUDE = 10.0
STRATEGIES: tuple[tuple[str, str], ...] = (("hm", "HM"), ("fc", "FC"), ("dsnt", "DSNT"), ("dsntr", "DSNTr"))
FIG11_STRATEGIES: tuple[tuple[str, str], ...] = (("hm", "HM"), ("fc", "FC"), ("dsntr", "DSNTr"))
ACTIVATION_LABELS: dict[str, str] = {"softmax": "Softmax", "abs": "Abs", "relu": "ReLU", "sigmoid": "Sigmoid"}
TABLE2_ACTIVATIONS: tuple[tuple[str, str], ...] = tuple((a, ACTIVATION_LABELS[a]) for a in ACTIVATIONS)
TABLE3_REGS: tuple[tuple[str, str], ...] = (("var", "Variance (λ=100)"), ("kl", "KL (λ=1)"), ("js", "JS (λ=1)"))
# Config fields that may differ between a finished run's config.json and the grid's (no effect on results).
FREE_KEYS = frozenset({"workdir", "data_dir", "log_every", "keep_checkpoints", "epochs",
                       "lr_milestones", "eval_every", "preset"})


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a grid: its directory name, plot series, x value (number or label) and config.

    `group` is the name without the seed suffix: the runs of one group differ only in their seed, and the
    report gives their mean and spread.
    """

    name: str
    series: str
    x: Any
    config: Config
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.name)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A grid: `kind` 'line' (PCKh vs a numeric x, one line per series) or 'bar' (category = series).

    `xunit` follows an x value in labels (' px': "HM, 8 px").
    """

    name: str
    title: str
    xlabel: str
    kind: str
    runs: tuple[Run, ...]
    xunit: str = ""


def _specs(name: str, full: bool) -> list[tuple[str, str, Any, str, dict[str, Any]]]:
    """(run name, series, x, paper preset, extra settings) of each run; x None = the heatmap side."""
    if name == "fig7":
        settings = {} if full else {"input_size": CPU_FIG7_INPUT}
        return [(f"{key}-{res}", label, None, f"fig7-r34-{res}-{key}", settings)
                for res in config_lib.RESOLUTIONS for key, label in STRATEGIES]
    if name == "fig11":
        samples = PAPER_SAMPLES if full else CPU_SAMPLES
        return [(f"{key}-n{n}", label, n, f"fig11-{key}-n{paper_n}", {"train_samples": n})
                for paper_n, n in zip(PAPER_SAMPLES, samples) for key, label in FIG11_STRATEGIES]
    if name == "table2":
        return [(act, label, "DSNT, no reg.", f"table2-{act}", {}) for act, label in TABLE2_ACTIVATIONS]
    if name == "table3":
        specs = [("none", "None", "N/A", "table3-none", {})]
        for sigma in (1, 2):
            specs += [(f"{reg}-s{sigma}", label, f"σ_t={sigma}", f"table3-{reg}-s{sigma}", {})
                      for reg, label in TABLE3_REGS]
        return specs
    raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")


def _milestones(epochs: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """LR-drop epochs at the given fractions of the run, keeping those strictly inside it."""
    return tuple(sorted({m for m in (round(f * epochs) for f in fractions) if 1 <= m < epochs}))


def build_experiment(name: str, *, full: bool = False, root: str = "runs/experiments",
                     epochs: int | None = None, overrides: Mapping[str, Any] | None = None,
                     seeds: Sequence[int] | None = None) -> Experiment:
    """The runs of experiment `name` (one of `EXPERIMENTS`), each config validated.

    Args:
      name: 'fig7', 'fig11', 'table2' or 'table3'.
      full: the paper's settings (its presets unchanged); else the CPU-sized synthetic setting.
      root: each run's workdir is root/name/<run>.
      epochs: epochs of every run (default: 120 with --full, else `CPU_EPOCHS`; fig11 on CPU gives every
        run `CPU_FIG11_STEPS` updates). The lr drops keep their place in the run (paper: at 1/2 and 3/4).
      overrides: further Config fields for every run (e.g. data_dir, batch_size, lr, seed); None = unset.
        'hm_amplitude' goes to the HM runs only (default: `CPU_HM_AMPLITUDE` on CPU, the paper's 1 with --full).
      seeds: train every run once per seed (None: once, with the seed of `overrides` or the default). The
        first seed's runs keep the plain name (root/name/<run>), the others get '-s<seed>'.

    Raises:
      ValueError: unknown experiment or an invalid resulting configuration.
    """
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    hm_amplitude = extra.pop("hm_amplitude", None if full else CPU_HM_AMPLITUDE)
    runs = []
    seed_list = [extra.pop("seed", config_lib.Config.seed)] if seeds is None else list(seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be distinct and at least one, got {seed_list}")
    for (group, series, x, preset, settings), seed in (
            (spec, seed) for seed in seed_list for spec in _specs(name, full)):
        run_name = group if seed == seed_list[0] else f"{group}-s{seed}"
        flags: dict[str, Any] = {"preset": preset, **({} if full else CPU_BASE), **settings, **extra}
        if hm_amplitude is not None and config_lib.PRESETS[preset]["output"] == "hm":
            flags["hm_amplitude"] = hm_amplitude
        batch = flags.get("batch_size", config_lib.Config.batch_size)
        if epochs is not None:
            n_epochs = epochs
        elif full:
            n_epochs = config_lib.Config.epochs
        elif name == "fig11":
            n_epochs = max(1, math.ceil(CPU_FIG11_STEPS * batch / settings["train_samples"]))
        else:
            n_epochs = CPU_EPOCHS[name]
        flags["epochs"] = n_epochs
        if epochs is not None or not full:
            flags["lr_milestones"] = _milestones(n_epochs, (0.5, 0.75) if full else (0.75,))
        if not full:
            flags.setdefault("eval_every", n_epochs)  # the final validation only: it costs CPU time
        flags["workdir"] = os.path.join(root, name, run_name)
        flags["seed"] = seed
        cfg = config_lib.resolve(flags)
        runs.append(Run(run_name, series, cfg.model.heatmap_size if x is None else x, cfg, group))
    setting = ("ResNet-34, MPII" if full else
               f"{runs[0].config.model.backbone} (narrow) @ {runs[0].config.model.input_size} px, synthetic")
    titles = {"fig7": ("Fig. 7: output strategy × resolution", "heatmap side (px)", "line", " px"),
              "fig11": ("Fig. 11: training samples, no augmentation", "training samples", "line", " samples"),
              "table2": ("Table 2: heatmap activation", "activation", "bar", ""),
              "table3": ("Table 3: regularisation", "regulariser", "bar", "")}
    title, xlabel, kind, xunit = titles[name]
    return Experiment(name, f"{title}\n{setting}", xlabel, kind, tuple(runs), xunit)


def select_runs(experiment: Experiment, only: str | None) -> tuple[Run, ...]:
    """The runs named in the comma-separated `only` (all if None): a run's name, or its group's (every seed).

    Raises:
      ValueError: a name that is no run's or group's.
    """
    if not only:
        return experiment.runs
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    names = {r.name for r in experiment.runs} | {r.group for r in experiment.runs}
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise ValueError(f"--only: no run {', '.join(unknown)} in {experiment.name}; its runs are "
                         f"{', '.join(dict.fromkeys(r.name for r in experiment.runs))}")
    return tuple(dict.fromkeys(r for w in wanted for r in experiment.runs if w in (r.name, r.group)))


def is_done(cfg: Config) -> bool:
    """True if cfg.workdir holds the final validation of `cfg` (its last epoch) for the same configuration.

    Raises:
      ValueError: the workdir holds a run of a different configuration (the message names the differences;
        only `FREE_KEYS` may differ: a longer --epochs continues a finished run).
    """
    run_dir = RunDir(cfg.workdir)
    if run_dir.has_config():
        saved = run_dir.read_config()
        config_lib.check_resumable(saved, cfg)
        diffs = config_lib.config_differences(
            saved, cfg, [f.name for f in dataclasses.fields(Config) if f.name not in FREE_KEYS])
        if diffs:
            raise ValueError(f"{cfg.workdir} holds a run with other settings ({'; '.join(diffs)}); its results "
                             f"would not be those of this grid: use another --workdir")
    return reached_last_epoch(read_val_records(cfg.workdir), cfg.epochs)


def run_grid(runs: Sequence[Run], train_fn: Callable[[Config], int], log: Callable[[str], None] = print
             ) -> dict[str, float | None]:
    """Trains the runs that are not done yet, in order; returns {run: wall seconds, None = skipped}.

    Raises:
      RuntimeError: a run returned a non-zero status or stopped early (SIGTERM): the grid stops there, and
        rerunning continues it.
    """
    times: dict[str, float | None] = {}
    for i, run in enumerate(runs, 1):
        if is_done(run.config):
            log(f"[{i}/{len(runs)}] {run.name}: done already ({run.config.workdir}), skipped")
            times[run.name] = None
            continue
        log(f"[{i}/{len(runs)}] {run.name}: training in {run.config.workdir}")
        start = time.perf_counter()
        status = train_fn(run.config)
        times[run.name] = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"run {run.name} ended with status {status}; see its output above")
        if not is_done(run.config):  # train.main returns 0 after saving a checkpoint on SIGTERM
            raise RuntimeError(f"run {run.name} stopped before its final validation; rerun the same "
                               f"command to continue the grid")
        log(f"[{i}/{len(runs)}] {run.name}: {times[run.name]:.0f} s")
    return times


def format_grid(experiment: Experiment, runs: Sequence[Run]) -> str:
    """One line per run: name, series, x and the settings that tell the runs apart."""
    lines = [f"{experiment.title.replace(chr(10), ' — ')}: {len(runs)} run(s)"]
    for r in runs:
        c = r.config
        lines.append(f"  {r.name:<10} series={r.series:<18} x={r.x!s:<14} {c.model.backbone}@{c.model.res} "
                     f"in={c.model.input_size} out={c.model.output} act={c.model.activation} reg={c.reg}"
                     f"{f' λ={c.reg_coeff:g} σ={c.sigma:g}' if c.reg != 'none' else ''}"
                     f"{f' amp={c.hm_amplitude:g}' if c.model.output == 'hm' else ''} data={c.dataset} "
                     f"n={c.train_samples or 'all'} aug={c.augment} epochs={c.epochs} batch={c.batch_size} "
                     f"lr={c.lr:g} → {c.workdir}")
    return "\n".join(lines)


def reached_last_epoch(records: Sequence[Mapping[str, Any]], epochs: int) -> bool:
    """True if one of the 'val' records is the validation after the run's last epoch (`epochs`)."""
    return any(r.get("epoch", 0) >= epochs for r in records)
