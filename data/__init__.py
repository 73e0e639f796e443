"""Datasets, augmentation, input pipeline and PCKh evaluation for dsnt-jax (knows nothing of models)."""
