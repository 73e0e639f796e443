"""The training loop of `python -m train.main`.

* `config`: the run's settings (flags, presets), with the network as a `dsnt_jax.models.ModelConfig`;
* `workdir`: the run directory (its files, config.json, the lock);
* `data`: the datasets and loaders of a config; `state`: TrainState and optimiser; `steps`: the pmapped
  train and eval steps; `validation`: official PCKh of the validation split;
* `checkpoint`: orbax checkpoints that survive kills; `metrics`: metrics.jsonl, TensorBoard, progress bar;
* `signals`: stopping on SIGTERM/Ctrl-C or when a peer host dies; `trainer`: `train_and_evaluate`.
"""
