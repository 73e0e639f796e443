"""Training, evaluation and inference entry points of dsnt-jax."""
