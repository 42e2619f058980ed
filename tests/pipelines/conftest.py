import os

import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray for the tests of one module that call the runner in-process."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():  # left up by a CLI run of another module (the CLI keeps its Ray for the next source)
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
