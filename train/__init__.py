"""The pose-estimation system of the paper around `dsnt_jax`: training, using a trained model, experiments.

Commands (each `python -m train.NAME --help`): `main` trains, `evaluate` scores predictions or a checkpoint with
the official PCKh, `predict` draws joints on photos, `experiments` runs the paper's comparison grids,
`launch_local` starts a several-process run on one machine. The code behind them:

* `train.loop`: the training loop (configuration, run directory, data, steps, checkpoints, metrics);
* `train.inference`: using a trained model (`PoseEstimator`, the forward pass, images, drawings);
* `train.experiments`: the paper's experiment grids and their reports.
"""
