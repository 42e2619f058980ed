import os

import pytest

_started_under: dict[str, str] | None = None  # os.environ when this test process's shared Ray started


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the tests of one module that call the runner in-process, started as the CLI starts it.

    Shared across modules: each Ray start costs ~18 CPU-s (its daemons, two workers importing the pipelines;
    measured), a large part of the suite's time on 2 cores. Its workers inherit the environment of its start, so a
    Ray started under other variables (an object-store module's credentials), or by an in-process CLI run, is
    replaced. A test that runs the CLI under variables of its own shuts Ray down first.
    """
    global _started_under
    import ray

    from pipelines.config import PipelineConfig, RayConfig
    from pipelines.runner import init_ray

    if ray.is_initialized() and _started_under != dict(os.environ):
        ray.shutdown()
    if not ray.is_initialized():
        init_ray(PipelineConfig(ray=RayConfig(num_cpus=2)))
        _started_under = dict(os.environ)
    yield
