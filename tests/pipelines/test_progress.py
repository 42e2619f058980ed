"""The pipeline bar: units and samples as they arrive, an ETA from the rate between arrivals (not start-up)."""

import io

from pipelines.progress import RunBar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def arrive(bar: RunBar, clock: Clock, at: float, units: int, samples_per_unit: int = 1) -> None:
    """A writer batch of ``units`` rows reaching the driver at time ``at`` (rows one by one, at once)."""
    clock.now = at
    for _ in range(units):
        bar.update(1, samples_per_unit, kept=bar.bar.n + 1, quarantined=0)


def test_eta_ignores_start_up_and_follows_recent_batches():
    clock, out = Clock(), io.StringIO()
    bar = RunBar("coco", 100, window=30.0, clock=clock, file=out)
    arrive(bar, clock, 60.0, 14)  # first batch after a minute of worker start-up and model loading
    assert bar.eta() is None and "eta=?" in str(bar.bar)  # one arrival: no rate yet (tqdm would say 07:08)
    arrive(bar, clock, 62.0, 14)  # 14 units in 2 s
    assert bar.eta() == (100 - 28) * 2 / 14
    arrive(bar, clock, 64.0, 14)
    arrive(bar, clock, 104.0, 14)  # the work slowed down: 14 units in 40 s
    # the window keeps the arrivals of the last 30 s (plus the one before): the rate is the slow one now
    assert bar.eta() == (100 - 56) * 40 / 14
    assert bar.bar.n == 56 and bar.samples == 56 and "samples=56" in str(bar.bar)
    bar.close()
