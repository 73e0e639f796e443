"""`python -m train.experiments`: see train/experiments/cli.py."""

import sys

from train.experiments.cli import main

sys.exit(main())
