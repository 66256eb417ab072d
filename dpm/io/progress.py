"""One progress display for every long loop outside Lightning's fit: the bound, sampling, the posterior tasks,
the Parzen estimate, data generation.

On a terminal it is a tqdm bar. Where stdout is no terminal (CI, SLURM, `> file`) it prints one plain line every
`every_percent` percent or every `every_s` seconds, whichever comes first, with no carriage returns; the line is
tqdm's own meter (done of total, rate, elapsed, time left). `enabled=False` prints nothing at all.

Usage:
    with Progress(total=N * (T - 1), desc="exact bound", unit="term", enabled=cfg.progress) as bar:
        ...; bar.update(n, K="3.21 ± 0.05")
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """'42 s', '7 min', '1 h 05 min': the precision a time estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def announce(what: str, seconds: float, enabled: bool = True, file: TextIO | None = None) -> None:
    """One line before long work starts: what will run and about how long it will take."""
    if enabled:
        print(f"{what}, about {format_duration(seconds)}", file=file or sys.stdout, flush=True)


def time_per_call(fn: Callable[[], object], n: int = 3, sync: Callable[[], None] | None = None) -> float:
    """Seconds per call of fn, from n timed calls after one untimed warm-up call (allocation, kernel choice,
    caches); the median, so a stray slow call does not skew the estimate. sync waits for the device (CUDA)."""
    sync = sync or (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class Progress:
    """Progress over `total` units of work (examples, KL terms, sampling steps).

    update(n, **postfix) adds n done units; postfix values (strings or numbers) are shown after the meter,
    e.g. the running K with its standard error.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, file: TextIO | None = None,
                 every_percent: float = 5.0, every_s: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.file = file or sys.stdout
        self.every_percent, self.every_s = every_percent, every_s
        self.n, self.postfix = 0, ""
        self.start = time.perf_counter()
        self._bar = None
        self._last_line_time, self._last_line_percent, self._last_line = self.start, 0.0, ""
        self.unit_scale = self.total >= 10_000
        interactive = hasattr(self.file, "isatty") and self.file.isatty()
        if enabled and interactive:
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True,
                             unit_scale=self.unit_scale, mininterval=0.5, leave=True)

    def update(self, n: int = 1, **postfix: object) -> None:
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k}={v}" for k, v in postfix.items())
        if not self.enabled:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
            self._bar.update(n)
            return
        if n == 0:
            return  # a new postfix alone: shown with the next line, or the last one at close()
        now = time.perf_counter()
        percent = 100.0 * self.n / max(self.total, 1)
        if (percent - self._last_line_percent >= self.every_percent or now - self._last_line_time >= self.every_s
                or self.n >= self.total):
            self._line(now)
            self._last_line_time, self._last_line_percent = now, percent

    def _line(self, now: float) -> None:
        self._last_line = (self.n, self.postfix)
        meter = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                  unit_scale=self.unit_scale, postfix=self.postfix or None, ncols=0)
        print(meter, file=self.file, flush=True)

    def close(self) -> None:
        """End the display; off a terminal, a last line if the work (or its postfix) moved since the last one."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n > 0 and self._last_line != (self.n, self.postfix):
            self._line(time.perf_counter())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
