"""`python -m train.experiments.ceilings`: the PCKh that each output strategy's decoding alone allows, per map side.

Two limits that no training removes, measured on a dataset's own validation people (in their crops, no
augmentation):

* HM: the exact target (a σ-px Gaussian of peak 1 at the true joint) decoded as the HM runs decode, argmax plus
  the quarter-pixel shift (`dsnt_jax.models.heads.hm_decode`): quantisation to the map's grid.
* DSNT: the true joint clipped to ±(n−1)/n of the crop, the farthest a mean of an n × n map's cell centres can
  reach (any softmax map, whatever the network).

The figures explain the low-resolution end of Fig. 7 (README, "The paper's experiments"): below the HM ceiling
a run is limited by learning, not by its map.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from data.pckh import compute_pckh
from dsnt_jax.models.heads import hm_decode
from dsnt_jax.ops import make_gauss
from train.loop.config import csv_ints

PROG = "python -m train.experiments.ceilings"
SIDES: tuple[int, ...] = (3, 4, 6, 7, 8, 12, 14, 16, 24, 28, 32, 56)


def decoding_ceilings(coords: np.ndarray, annotated: np.ndarray, head_sizes: np.ndarray, sides: Sequence[int],
                      sigma: float = 1.0) -> dict[int, tuple[float, float]]:
    """{side n: (HM ceiling, DSNT ceiling)} as PCKh@0.5 total (%) of the exact decodings on n × n maps.

    Args:
      coords: float [N, 16, 2] true joints, normalised to [-1, 1] across the crop (MPII joint order).
      annotated: bool [N, 16] joints to score.
      head_sizes: float [N] head sizes in the units of `coords`.
      sides: map sides n ≥ 2.
      sigma: the HM target's standard deviation in map pixels (the paper: 1).
    """
    if any(n < 2 for n in sides):
        raise ValueError(f"map sides must be at least 2, got {list(sides)}")
    out = {}
    for n in sides:
        target = make_gauss(jnp.asarray(coords, jnp.float32), (n, n), sigma, normalize=False)
        hm = np.asarray(hm_decode(target), np.float64)
        reach = (n - 1) / n
        dsnt = np.clip(coords, -reach, reach)
        out[n] = tuple(compute_pckh(pred, coords, annotated, head_sizes).summary()["total"] for pred in (hm, dsnt))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the ceilings for the validation people of the synthetic dataset (default) or MPII."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--dataset", choices=("synthetic", "mpii"), default="synthetic")
    p.add_argument("--data-dir", help="tfds data directory (as for python -m train.main)")
    p.add_argument("--sides", type=csv_ints, default=SIDES, metavar="N[,N]", help="map sides (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=1.0, help="HM target σ in map pixels (default 1, the paper's)")
    args = p.parse_args(argv)
    # Imported late: --help needs no data stack.
    from train.loop import config as config_lib
    from train.loop.data import crop_joints, open_datasets

    try:
        cfg = config_lib.resolve({**config_lib.CPU_SIZED, "dataset": args.dataset, "data_dir": args.data_dir})
        ds = open_datasets(cfg)
        coords, mask, heads = crop_joints(ds.val, ds.val[0]["image"].shape[0])
        table = decoding_ceilings(coords, mask, heads, args.sides, args.sigma)
    except (ValueError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"PCKh@0.5 total (%) of the exact decodings, {ds.name} validation ({len(coords)} people)")
    print("| map side | HM: target decoded (argmax + ¼ px) | DSNT: truth within ±(n−1)/n |")
    print("|---|---|---|")
    for n, (hm, dsnt) in table.items():
        print(f"| {n} | {hm:.1f} | {dsnt:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
