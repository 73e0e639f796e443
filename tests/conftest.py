"""Test set-up shared by the whole suite."""

import os

# Two CPU devices, so pmap/chex `with_pmap` variants and data-parallel tests run on a 2-core CPU.
# Must happen before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import chex  # noqa: E402

chex.set_n_cpu_devices(2)

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def env_and_data(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """(subprocess environment, tfds data dir) of tests/tiny_run.py's problem, built once per test module."""
    import tiny_run

    return tiny_run.build_data(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
