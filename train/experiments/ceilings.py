"""`python -m train.experiments.ceilings`: the PCKh that each output strategy's decoding alone allows, per map side.

Measured on a dataset's own validation people, in their crops (no augmentation), for n × n maps:

* HM: its training target decoded as the HM runs decode (`dsnt_jax.models.heads.hm_encode`, then `hm_decode`,
  argmax plus the quarter-pixel shift). As in the paper's code, that target is a σ-px Gaussian centred on the
  joint's *rounded* pixel, so it carries no position finer than a cell: a network that learns it perfectly
  scores exactly this. A real network can land a little above it, because where it is unsure between two cells
  its map leans towards the truth and the quarter-pixel shift follows.
* HM, sub-pixel target: the same decoding of a Gaussian centred on the exact joint
  (`dsnt_jax.ops.make_gauss`), what HM would reach with a target that kept the position within the cell.
* DSNT: the true joint clipped to ±(n−1)/n of the crop, the farthest a mean of an n × n map's cell centres can
  reach (any softmax map, whatever the network).

Every annotated joint is scored, as validation does (those outside the crop are misses for HM's map). Besides
the synthetic dataset (default) and a prepared MPII, `--valid-h5` takes pose-hg-train's `annot/valid.h5` (the
paper's 2958 validation people with their boxes; no images needed), so the paper's own 7 × 7 px case can be
checked. The figures explain the low-resolution end of Fig. 7 (README, "The paper's experiments").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import jax.numpy as jnp
import numpy as np

from data.eval_files import load_annotations_h5
from data.pckh import compute_pckh
from dsnt_jax.models.heads import hm_decode, hm_encode
from dsnt_jax.ops import make_gauss
from train.loop import config as config_lib
from train.loop.config import csv_ints

PROG = "python -m train.experiments.ceilings"
SIDES: tuple[int, ...] = (3, 4, 6, 7, 8, 12, 14, 16, 24, 28, 32, 56)
COLUMNS: tuple[str, ...] = ("HM: its target decoded", "HM: sub-pixel target decoded", "DSNT: truth within ±(n−1)/n")


def decoding_ceilings(coords: np.ndarray, annotated: np.ndarray, head_sizes: np.ndarray, sides: Sequence[int],
                      sigma: float = 1.0) -> dict[int, tuple[float, float, float]]:
    """{side n: (HM, HM with a sub-pixel target, DSNT)} as PCKh@0.5 total (%) of the exact decodings on n × n maps.

    Args:
      coords: float [N, 16, 2] true joints, normalised to [-1, 1] across the crop (MPII joint order).
      annotated: bool [N, 16] joints to score.
      head_sizes: float [N] head sizes in the units of `coords`.
      sides: map sides n ≥ 2.
      sigma: the HM target's standard deviation in map pixels (the paper: 1).
    """
    if any(n < 2 for n in sides):
        raise ValueError(f"map sides must be at least 2, got {list(sides)}")
    truth = jnp.asarray(coords, jnp.float32)
    out = {}
    for n in sides:
        reach = (n - 1) / n
        preds = (hm_decode(hm_encode(truth, (n, n), sigma)),
                 hm_decode(make_gauss(truth, (n, n), sigma, normalize=False)),
                 np.clip(coords, -reach, reach))
        hm, subpixel, dsnt = (compute_pckh(np.asarray(p, np.float64), coords, annotated, head_sizes).summary()["total"]
                              for p in preds)
        out[n] = (hm, subpixel, dsnt)
    return out


def dataset_people(cfg: Any, log: Callable[[str], None] = print) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(dataset name, coords [N, 16, 2], annotated [N, 16] (every annotated joint, as validation scores them),
    head sizes [N]) of the validation people of `cfg`'s dataset in `cfg`'s crop (a `train.loop.config.Config`)."""
    from train.loop.data import crop_joints, open_datasets  # the data stack, only when a dataset is read

    ds = open_datasets(cfg, log=log)
    return (ds.name, *crop_joints(ds.val, ds.val[0]["image"].shape[0], inside_only=False))


def hm_caps(cfg: Any, sides: Sequence[int]) -> dict[int, float]:
    """{side n: PCKh total (%) of HM's own target decoded on n × n maps} for the validation people of `cfg`'s
    dataset, in `cfg`'s crop, with `cfg.sigma` (a `train.loop.config.Config`; the dataset must be prepared)."""
    _, coords, mask, heads = dataset_people(cfg, log=lambda _: None)
    return {n: row[0] for n, row in decoding_ceilings(coords, mask, heads, sides, cfg.sigma).items()}


def valid_h5_people(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The people of a pose-hg-train ``valid.h5`` in the paper's crop, as `crop_joints` gives a dataset's.

    The crop is the person box of docs/paper-recipe.md §6: a square of side 200·scale centred on ``center``
    (valid.h5 stores both already adjusted, i.e. 250·s around (cx, cy + 15·s)), ±1 at its edges.

    Returns:
      (coords float64 [N, 16, 2], annotated bool [N, 16], head sizes float64 [N]).
    """
    ann = load_annotations_h5(path)
    with h5py.File(path, "r") as f:
        missing = [k for k in ("center", "scale") if k not in f]
        if missing:
            raise ValueError(f"{path}: no {' or '.join(missing)} dataset; expected pose-hg-train's annot/valid.h5")
        center = np.asarray(f["center"], np.float64)
        half_side = 100.0 * np.asarray(f["scale"], np.float64)
    if center.shape != (ann.num_persons, 2) or half_side.shape != (ann.num_persons,):
        raise ValueError(f"{path}: center must be [N, 2] and scale [N] with N = {ann.num_persons}, got "
                         f"{center.shape} and {half_side.shape}")
    coords = (ann.joints - center[:, None, :]) / half_side[:, None, None]
    return coords, ann.annotated, ann.head_sizes / half_side


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the ceilings for the validation people of the synthetic dataset (default), MPII or a valid.h5."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=("synthetic", "mpii"), help="a prepared dataset (default synthetic)")
    source.add_argument("--valid-h5", metavar="PATH", help="instead of a dataset: pose-hg-train's annot/valid.h5")
    p.add_argument("--data-dir", help="tfds data directory (as for python -m train.main; not with --valid-h5)")
    p.add_argument("--sides", type=csv_ints, default=SIDES, metavar="N[,N]", help="map sides (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=1.0, help="HM target σ in map pixels (default 1, the paper's)")
    args = p.parse_args(argv)
    if args.valid_h5 and args.data_dir:
        p.error("--data-dir names a prepared dataset; --valid-h5 reads the annotation file alone")
    try:
        if args.valid_h5:
            name = f"MPII ({args.valid_h5})"
            coords, mask, heads = valid_h5_people(args.valid_h5)
        else:
            cfg = config_lib.resolve({**config_lib.CPU_SIZED, "dataset": args.dataset or "synthetic",
                                      "data_dir": args.data_dir})
            name, coords, mask, heads = dataset_people(cfg)
        table = decoding_ceilings(coords, mask, heads, args.sides, args.sigma)
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"PCKh@0.5 total (%) of the exact decodings, {name} validation ({len(coords)} people)")
    print("| map side | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for n, row in table.items():
        print(f"| {n} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
