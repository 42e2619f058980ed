"""The run's progress bar: units done of those listed, samples written, and an ETA from recent throughput.

Units reach the driver a writer batch at a time, and the first batch also pays for starting the workers and
loading the models; tqdm's own ETA would extrapolate that start-up over the whole run (07:48 for work that ends
at once). Here the rate is measured between batches that have arrived, over the last ``window`` seconds, and the
ETA shows ``?`` until a second batch has come.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from tqdm import tqdm


class RunBar:
    def __init__(self, source: str, total: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 **tqdm_kwargs):
        self.bar = tqdm(total=total, desc=source, unit="unit", dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} units [{elapsed}{postfix}]", **tqdm_kwargs)
        self.window, self.clock = window, clock
        self.arrivals: deque[tuple[float, int]] = deque()  # (time, units done) at each arrival
        self.samples = 0

    def eta(self) -> float | None:
        """Seconds left at the rate of the arrivals in the last ``window`` seconds; None before two arrivals."""
        if len(self.arrivals) < 2:
            return None
        (t0, n0), (t1, n1) = self.arrivals[0], self.arrivals[-1]
        if t1 <= t0 or n1 <= n0:
            return None
        return (self.bar.total - n1) * (t1 - t0) / (n1 - n0)

    def update(self, units: int, samples: int, kept: int, quarantined: int) -> None:
        now = self.clock()
        done = self.bar.n + units
        if self.arrivals and now - self.arrivals[-1][0] < 0.05:  # rows of one batch arrive together: one arrival
            self.arrivals[-1] = (self.arrivals[-1][0], done)
        else:
            self.arrivals.append((now, done))
        while len(self.arrivals) > 2 and now - self.arrivals[1][0] >= self.window:
            self.arrivals.popleft()
        self.samples += samples
        eta = self.eta()
        self.bar.set_postfix(samples=self.samples, kept=kept, quarantined=quarantined,
                             eta="?" if eta is None else tqdm.format_interval(eta), refresh=False)
        self.bar.update(units)

    def close(self) -> None:
        self.bar.close()
