"""Training configuration: one frozen dataclass built from command-line flags and named presets.

Config as code (big_vision style): `Config` holds every setting of a run, `PRESETS` maps a name to a dict
of overrides (one per configuration the paper trained, plus `synthetic-cpu`, the README's CPU run), and
`parse_args` resolves `defaults ← preset ← explicit flags`. Defaults are the paper's Table 4 model:
`python -m train.main --backbone=resnet50 --res=28` trains ResNet-50 @ 28 px DSNTr on MPII (RMSProp
2.5e-4, ×0.1 at epochs 60 and 90, 120 epochs, batch 32).

Defaults that depend on other settings (docs/paper-recipe.md §4): `reg` is 'js' (DSNTr) for output 'dsnt' and
'none' otherwise; the batch size is 32, except 6 for hourglasses, 24 for ResNet-101 @ 28 px and 12 for
ResNet-50 @ 56 px; `res` is 28 for ResNets; the input side is 224 (ResNet) or 256 (hourglass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from data import synthetic_pose as synthetic
from dsnt_jax.models import (
    ACTIVATIONS,
    BACKBONES,
    OUTPUTS,
    PRECISIONS,
    REGULARIZERS,
    RESNET_SPECS,
    RESOLUTIONS,
    ModelConfig,
    ModelConfigError,
    input_size_for,
)

DATASETS: tuple[str, ...] = ("mpii", "synthetic")
NONFINITE_POLICIES: tuple[str, ...] = ("stop", "skip")

# Command-line flags that set a `ModelConfig` field (flag name → field).
MODEL_FLAGS: dict[str, str] = {"backbone": "backbone", "res": "res", "output": "output",
                               "activation": "activation", "input_size": "input_size",
                               "model_overrides": "overrides"}
_FLAG_OF_FIELD: dict[str, str] = {field: flag for flag, field in MODEL_FLAGS.items()}

# Settings that must not change when a run resumes from its checkpoints: they define the network's
# parameters or the exact stream of training batches (the data-iterator state depends on them).
RESUME_KEYS: tuple[str, ...] = (
    "model", "dataset", "batch_size", "seed", "train_samples", "augment", "synthetic_train", "synthetic_val",
    "synthetic_canvas", "num_workers",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a training run (see `python -m train.main --help` for each flag).

    `model` is the network (`dsnt_jax.models.ModelConfig`); the other fields are the loss, the data, the
    optimiser and the run's bookkeeping.
    """

    model: ModelConfig = ModelConfig()
    reg: str = "js"
    sigma: float = 1.0
    reg_coeff: float = 1.0
    hm_amplitude: float = 1.0
    dataset: str = "mpii"
    data_dir: str | None = None
    epochs: int = 120
    batch_size: int = 32
    lr: float = 2.5e-4
    lr_milestones: tuple[int, ...] = (60, 90)
    lr_gamma: float = 0.1
    train_samples: int | None = None
    augment: bool = True
    pretrained: str | None = None
    workdir: str = "runs/default"
    seed: int = 0
    precision: str = "float32"
    eval_every: int = 1
    flip_test: bool = False
    num_workers: int | None = None  # None: `train.loop.data.default_num_workers()`
    cache_mb: int = 1024
    keep_checkpoints: int = 3
    on_nonfinite: str = "stop"
    log_every: int = 20
    synthetic_train: int | None = None
    synthetic_val: int | None = None
    synthetic_canvas: int | None = None
    preset: str | None = None

    def run_name(self) -> str:
        """'resnet50@28 dsnt+js': the network (marked custom under model overrides) and its loss."""
        reg = "" if self.reg == "none" else f"+{self.reg}"
        return self.model.describe() + reg

    def to_json(self) -> str:
        values = dataclasses.asdict(self)
        values["model"] = self.model.to_dict()
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Reads `to_json`'s text, or a config.json of the flat layout written before `model` existed."""
        values = json.loads(text)
        model = values.pop("model", None)
        if model is None:  # flat layout: the model's flags sat beside the others
            model = {field: values.pop(flag) for flag, field in MODEL_FLAGS.items() if flag in values}
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}
        if "lr_milestones" in values:
            values["lr_milestones"] = tuple(values["lr_milestones"])
        return cls(model=ModelConfig.from_dict(model), **values)


def default_batch_size(backbone: str, res: int | None) -> int:
    """The paper's batch size: 32, hourglass 6, ResNet-101 @ 28 px 24, ResNet-50 @ 56 px 12."""
    if backbone not in RESNET_SPECS:
        return 6
    return {("resnet101", 28): 24, ("resnet50", 56): 12}.get((backbone, res), 32)


def _paper_presets() -> dict[str, dict[str, Any]]:
    """One preset per configuration the paper trained (docs/paper-recipe.md §9)."""
    out_strats = {"hm": dict(output="hm", reg="none"), "fc": dict(output="fc", reg="none"),
                  "dsnt": dict(output="dsnt", reg="none"), "dsntr": dict(output="dsnt", reg="js")}
    r34 = dict(backbone="resnet34", res=28)
    presets: dict[str, dict[str, Any]] = {
        "table4-r50-dsntr": dict(backbone="resnet50", res=28, output="dsnt", reg="js"),
    }
    for res in RESOLUTIONS:                                     # Fig. 7: output strategy × resolution
        for name, strat in out_strats.items():
            presets[f"fig7-r34-{res}-{name}"] = dict(backbone="resnet34", res=res, **strat)
    for depth in (18, 34, 50, 101):                             # Fig. 8: depth × resolution (DSNTr)
        for res in (14, 28, 56):
            if (depth, res) != (101, 56):
                presets[f"fig8-r{depth}-{res}"] = dict(backbone=f"resnet{depth}", res=res,
                                                       **out_strats["dsntr"])
    for stacks in (1, 2, 4, 8):                                 # Fig. 9: hourglasses, batch 6
        for name in ("hm", "dsnt", "dsntr"):
            presets[f"fig9-hg{stacks}-{name}"] = dict(backbone=f"hg{stacks}", res=None,
                                                      **out_strats[name])
    for act in ACTIVATIONS:                                     # Table 2: heatmap activations
        presets[f"table2-{act}"] = dict(**r34, output="dsnt", reg="none", activation=act)
    presets["table3-none"] = dict(**r34, output="dsnt", reg="none")  # Table 3: regularisers
    for sigma in (1.0, 2.0):
        s = f"s{int(sigma)}"
        presets[f"table3-var-{s}"] = dict(**r34, output="dsnt", reg="var", reg_coeff=100.0, sigma=sigma)
        presets[f"table3-kl-{s}"] = dict(**r34, output="dsnt", reg="kl", reg_coeff=1.0, sigma=sigma)
        presets[f"table3-js-{s}"] = dict(**r34, output="dsnt", reg="js", reg_coeff=1.0, sigma=sigma)
    for coeff in (0.2, 1.0, 5.0, 10.0):                         # Fig. 6: JS strength and width
        presets[f"fig6-lambda{coeff:g}"] = dict(**r34, output="dsnt", reg="js", reg_coeff=coeff)
    for sigma in (0.5, 1.0, 2.0, 4.0):
        presets[f"fig6-sigma{sigma:g}"] = dict(**r34, output="dsnt", reg="js", sigma=sigma)
    for n in (1024, 2048, 4096, 8192):                          # Fig. 11: training-set size, no aug
        for name in ("hm", "fc", "dsntr"):
            presets[f"fig11-{name}-n{n}"] = dict(**r34, **out_strats[name], train_samples=n,
                                                 augment=False)
    return presets


# What every CPU-sized run shares (the README's run below and the grids of train.experiments): the embedded
# synthetic data, a narrow ResNet-18 on 96-px crops, the paper's RMSProp at 8x its learning rate (the runs are
# ~100x shorter), no augmentation.
CPU_SIZED: dict[str, Any] = dict(dataset="synthetic", backbone="resnet18", input_size=96, lr=2e-3, augment=False)

# The README's CPU run (README "Set up and run"): DSNTr on the embedded synthetic dataset with a small member of
# the ResNet family sized for a 2-core CPU: one basic block per stage (ResNet-18 has two), widths 32-64-128-128
# (ResNet-18: 64-512) after a 16-channel stem, 96-px inputs, res 28 (trunk stride 8) plus a 32-channel
# `UpsamplingHead`, so the heatmaps are 24x24 (stride 4); batch 8, 12 epochs (9000 steps).
# Why (README table, measured on that CPU): the PCKh@0.5 threshold is 4.8 px of the 96-px crop, 0.6 px of a
# 12x12 map, and a quarter of the limb joints missed by less than twice that. The head costs ~6 % of the step and
# gave +5 points; dilating to stride 4 instead costs several times more. The half-width stem runs ~18 % faster
# at equal accuracy per epoch, which buys the two extra epochs. At equal time batch 8 beat 16 and 32 (more
# updates); stride 16 or larger inputs were worse. No augmentation: the net is capacity-bound, and augmentation
# slows fitting; so the loader keeps the crops in memory after the first epoch. Validation with the flip test,
# as the paper's evaluation script; the table shows the plain predictions too.
SYNTHETIC_CPU: dict[str, Any] = dict(
    **CPU_SIZED, res=28, output="dsnt", reg="js", epochs=12, batch_size=8, lr_milestones=(10,), eval_every=6,
    flip_test=True, workdir="runs/synthetic-cpu",
    model_overrides={"widths": (32, 64, 128, 128), "stem_width": 16, "stage_sizes": (1, 1, 1, 1), "upsample": 32},
)

PRESETS: dict[str, dict[str, Any]] = {**_paper_presets(), "synthetic-cpu": SYNTHETIC_CPU}


def csv_ints(text: str) -> tuple[int, ...]:
    """argparse type: '60,90' → (60, 90)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 60,90, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The `python -m train.main` flags. Unset flags are None so that presets can fill them."""
    p = argparse.ArgumentParser(
        prog="python -m train.main",
        description="Trains a DSNT/FC/HM pose model (Nibali et al. 2018) with data-parallel pmap. "
                    "Defaults: the paper's Table 4 run, ResNet-50 @ 28 px DSNTr on MPII.",
        epilog="Presets: " + ", ".join(PRESETS))
    a = p.add_argument
    d, m = Config(), ModelConfig()
    a("--preset", choices=sorted(PRESETS), metavar="NAME",
      help="start from a named configuration of the paper (explicit flags override it); see the list below")
    a("--backbone", choices=BACKBONES, help=f"network (default {m.backbone})")
    a("--res", type=int, help=f"ResNet heatmap side for a {input_size_for('resnet50')}-px input: "
                              f"{', '.join(map(str, RESOLUTIONS))} (default {m.res})")
    a("--output", choices=OUTPUTS, help=f"output strategy (default {m.output})")
    a("--reg", choices=REGULARIZERS, help="heatmap regulariser (default js for dsnt = DSNTr, else none)")
    a("--sigma", type=float, help=f"regulariser / HM target σ in heatmap pixels (default {d.sigma:g})")
    a("--reg-coeff", type=float, help=f"regulariser weight λ (default {d.reg_coeff:g}; var: normalised units)")
    a("--hm-amplitude", type=float, help=f"HM only: peak of the target Gaussian (default {d.hm_amplitude:g}, the "
                                         "paper's; not in the paper: short runs need a larger one to leave the "
                                         "all-zero heatmap, see dsnt_jax/models/loss.py)")
    a("--activation", choices=ACTIVATIONS, help=f"heatmap activation (default {m.activation})")
    a("--dataset", choices=DATASETS, help="mpii (built with python -m data.prepare) or synthetic "
                                          f"(default {d.dataset})")
    a("--data-dir", help="tfds data directory (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    a("--epochs", type=int, help=f"training epochs (default {d.epochs})")
    a("--batch-size", type=int, help=f"global batch size (default {d.batch_size}; the paper's: "
                                     f"{default_batch_size('hg2', None)} hourglass, "
                                     f"{default_batch_size('resnet101', 28)} R101@28, "
                                     f"{default_batch_size('resnet50', 56)} R50@56)")
    a("--lr", type=float, help=f"RMSProp learning rate (default {d.lr:g})")
    a("--lr-milestones", type=csv_ints, help="epochs where the lr is multiplied by --lr-gamma (default "
                                              f"{','.join(map(str, d.lr_milestones))})")
    a("--lr-gamma", type=float, help=f"lr factor at each milestone (default {d.lr_gamma:g})")
    a("--train-samples", type=int, help="train on the first N training examples only")
    a("--no-aug", dest="augment", action="store_const", const=False, help="disable augmentation")
    a("--aug", dest="augment", action="store_const", const=True, help="enable augmentation (default; for presets "
                                                                      "without it)")
    a("--pretrained", metavar="PATH", help="torchvision ResNet ImageNet state dict (.pth/.safetensors/.npz)")
    a("--workdir", help=f"checkpoints, config.json, metrics.jsonl and TensorBoard logs (default {d.workdir})")
    a("--seed", type=int, help=f"seed of the initialisation, shuffling and augmentation (default {d.seed})")
    a("--precision", choices=PRECISIONS, help=f"network compute dtype (parameters stay float32; default "
                                              f"{d.precision})")
    a("--eval-every", type=int, help=f"validate every N epochs (and after the last; default {d.eval_every})")
    a("--flip-test", action=argparse.BooleanOptionalAction,
      help="also validate with flip test-time augmentation (default off; on in synthetic-cpu)")
    a("--input-size", type=int, help=f"input side in px (default {input_size_for('resnet50')} ResNet, "
                                     f"{input_size_for('hg2')} hourglass)")
    a("--num-workers", type=int, help="data-loading processes per host (default: none with a CPU-only JAX, whose "
                                      "cores do the training; with an accelerator one per CPU core but one, at most "
                                      "32; a resumed run keeps the number it started with)")
    a("--cache-mb", type=int, help="with --no-aug: MiB per data-loading process for crops kept after their "
                                   f"first epoch (default {d.cache_mb}; 0 disables)")
    a("--keep-checkpoints", type=int, help=f"latest checkpoints kept besides the best (default "
                                           f"{d.keep_checkpoints})")
    a("--on-nonfinite", choices=NONFINITE_POLICIES,
      help="a step whose loss or new parameters are not finite is never applied; 'stop' (default) ends the run "
           "there without saving, 'skip' drops that step's update and goes on")
    a("--log-every", type=int, help=f"steps between metric log lines (default {d.log_every})")
    a("--synthetic-train", type=int, help="synthetic dataset: training examples (default "
                                          f"{synthetic.DEFAULT_NUM_TRAIN})")
    a("--synthetic-val", type=int, help=f"synthetic dataset: validation examples (default {synthetic.DEFAULT_NUM_VAL})")
    a("--synthetic-canvas", type=int, help="synthetic dataset: canvas side, multiple of 6 (default "
                                           f"{synthetic.DEFAULT_CANVAS_SIZE})")
    a("--model-overrides", metavar="JSON",
      help='extra model fields for small experiments and tests, e.g. \'{"widths": [8, 16, 16, 16]}\'')
    return p


def resolve(flags: Mapping[str, Any]) -> Config:
    """Config from explicitly set flag values (None = unset): defaults ← preset ← flags.

    Raises:
      ValueError: for an unknown preset or an impossible combination (see `validate`).
    """
    values: dict[str, Any] = {}
    preset = flags.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in flags.items() if v is not None})
    values["preset"] = preset
    model = _resolve_model({field: values.pop(flag) for flag, field in MODEL_FLAGS.items() if flag in values})
    if flags.get("output") is not None and flags.get("reg") is None:
        values.pop("reg", None)  # an explicit --output re-derives the preset's regulariser default
    values.setdefault("reg", "js" if model.output == "dsnt" else "none")
    values.setdefault("batch_size", default_batch_size(model.backbone, model.res))
    if "lr_milestones" in values:
        values["lr_milestones"] = tuple(values["lr_milestones"])
    cfg = Config(model=model, **values)
    validate(cfg)
    return cfg


def _resolve_model(values: dict[str, Any]) -> ModelConfig:
    """The network from its flags, with the paper's defaults for the backbone; errors name the flag."""
    backbone = values.setdefault("backbone", ModelConfig.backbone)
    if backbone in BACKBONES:  # otherwise ModelConfig names the problem
        values.setdefault("res", ModelConfig.res if backbone in RESNET_SPECS else None)
        values.setdefault("input_size", input_size_for(backbone))
    try:
        return ModelConfig.from_dict(values)  # parses the command line's JSON overrides
    except ModelConfigError as err:
        raise ValueError(f"--{_FLAG_OF_FIELD.get(err.field, err.field).replace('_', '-')} {err.problem}") from None


def validate(cfg: Config) -> None:
    """Raises ValueError with one line naming the problem for an impossible configuration."""
    if cfg.reg not in REGULARIZERS:
        raise ValueError(f"--reg must be one of {', '.join(REGULARIZERS)}, got {cfg.reg!r}")
    output = cfg.model.output
    if output == "hm" and cfg.reg != "none":
        raise ValueError("--reg applies to dsnt/fc outputs; use --reg=none with --output=hm")
    if output != "hm" and cfg.hm_amplitude != 1.0:
        raise ValueError(f"--hm-amplitude applies to --output=hm only (got --output={output})")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    positive = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                    keep_checkpoints=cfg.keep_checkpoints, log_every=cfg.log_every)
    for name, value in positive.items():
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    reals = dict(lr=cfg.lr, sigma=cfg.sigma, reg_coeff=cfg.reg_coeff, lr_gamma=cfg.lr_gamma,
                 hm_amplitude=cfg.hm_amplitude)
    for name, value in reals.items():
        if not math.isfinite(value) or value < 0 or (value == 0 and name != "reg_coeff"):
            bound = ">= 0" if name == "reg_coeff" else "> 0"
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number {bound}, got {value}")
    if cfg.on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"--on-nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {cfg.on_nonfinite!r}")
    if any(m < 1 for m in cfg.lr_milestones) or list(cfg.lr_milestones) != sorted(set(cfg.lr_milestones)):
        raise ValueError(f"--lr-milestones must be increasing positive epochs, got {cfg.lr_milestones}")
    if cfg.train_samples is not None and cfg.train_samples < 1:
        raise ValueError(f"--train-samples must be at least 1, got {cfg.train_samples}")
    if (cfg.num_workers is not None and cfg.num_workers < 0) or cfg.cache_mb < 0:
        raise ValueError(f"--num-workers and --cache-mb must be >= 0, got {cfg.num_workers} and {cfg.cache_mb}")
    if cfg.pretrained is not None and not cfg.model.is_resnet:
        raise ValueError("--pretrained loads torchvision ResNet weights; the hourglass trains from scratch")


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parses the command line into a validated `Config`; bad combinations exit with one error line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return resolve(vars(args))
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def config_differences(a: Config, b: Config, keys: Sequence[str]) -> list[str]:
    """'name: a → b' for each of `keys` that differs; the model's fields are named by their flags. `b`'s
    num_workers None (not given: the run keeps the number it started with) differs from nothing."""
    diffs = [f"{k}: {getattr(a, k)!r} → {getattr(b, k)!r}" for k in keys
             if k != "model" and getattr(a, k) != getattr(b, k) and not (k == "num_workers" and b.num_workers is None)]
    if "model" in keys:
        diffs += [f"{_FLAG_OF_FIELD.get(f.name, f.name)}: {getattr(a.model, f.name)!r} → {getattr(b.model, f.name)!r}"
                  for f in dataclasses.fields(ModelConfig) if getattr(a.model, f.name) != getattr(b.model, f.name)]
    return diffs


def check_resumable(saved: Config, current: Config) -> None:
    """Raises ValueError if `current` cannot continue the checkpoints written under `saved`."""
    diffs = config_differences(saved, current, RESUME_KEYS)
    if diffs:
        raise ValueError(f"{current.workdir} holds checkpoints of a different configuration ("
                         + "; ".join(diffs) + "); use another --workdir or the original flags")
