"""`python -m dsnt_jax.models`: heatmap size, parameters and GFLOPs of every paper backbone."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from dsnt_jax.models.factory import BACKBONES
from dsnt_jax.models.heads import OUTPUTS
from dsnt_jax.models.summary import default_configs, format_table, model_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dsnt_jax.models",
        description="Summary of the paper's pose networks: heatmap size, trunk/head parameter counts "
                    "and per-image GMACs/GFLOPs (counted analytically from an abstract trace; "
                    "nothing is compiled or run). ResNets at 7/14/28/56-px heatmaps for a 224-px "
                    "input, hourglasses for a 256-px input.")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=None, metavar="NAME",
                        help=f"only these backbones, from {', '.join(BACKBONES)} (default: all)")
    parser.add_argument("--output", choices=OUTPUTS, default="dsnt",
                        help="output strategy (fc adds a Dense(H·W → 2) to the head)")
    parser.add_argument("--num-joints", type=int, default=16, help="heatmap channels J")
    args = parser.parse_args(argv)
    if args.num_joints < 1:
        parser.error("--num-joints must be ≥ 1")

    configs = [c for c in default_configs() if args.backbones is None or c[0] in args.backbones]
    rows = [model_summary(b, r, output=args.output, num_joints=args.num_joints)
            for b, r in tqdm(configs, desc="tracing", leave=False)]
    print(format_table(rows))


if __name__ == "__main__":
    main()
