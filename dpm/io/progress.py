"""One progress display for every long loop outside Lightning's fit: the bound, sampling, the posterior tasks,
the Parzen estimate, data generation.

On a terminal it is a tqdm bar. Where stdout is no terminal (CI, SLURM, `> file`) it prints one plain line every
`every_percent` percent or every `every_s` seconds, whichever comes first, with no carriage returns; the line is
tqdm's own meter (done of total, rate, elapsed, time left). `enabled=False` prints nothing at all.

The one rule for short work: nothing is shown for work that ends within QUIET_S seconds (no announcement whose
estimate is shorter, no bar, no line); work that runs longer shows its first line (or its bar) once QUIET_S have
passed, then as above.

update() is also where every long loop stops when a stop was requested (request_stop: SIGTERM during training,
whose handler may not raise inside Lightning's loop): it raises StopRequested, within one unit of work.

Usage:
    with Progress(total=N * (T - 1), desc="exact bound", unit="term", enabled=cfg.progress) as bar:
        ...; bar.update(n, K="3.21 ± 0.05")
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm

QUIET_S = 5.0  # work that ends within this many seconds shows no progress at all (module docstring)


class StopRequested(Exception):
    """A stop was requested (request_stop) while a long loop ran; raised by Progress.update."""


_stop_reason: list[str] = []  # non-empty once a stop was requested: why (e.g. "SIGTERM")


def request_stop(reason: str) -> None:
    """Ask every long loop to stop at its next Progress.update (safe to call from a signal handler)."""
    if not _stop_reason:
        _stop_reason.append(reason)


def clear_stop() -> None:
    """Forget a requested stop (a new run in the same process starts without one)."""
    _stop_reason.clear()


def format_duration(seconds: float) -> str:
    """'42 s', '7 min', '1 h 05 min': the precision a time estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def announce(what: str, seconds: float, enabled: bool = True, file: TextIO | None = None) -> None:
    """One line before long work starts: what will run and about how long it will take (none for work estimated
    to end within QUIET_S)."""
    if enabled and seconds >= QUIET_S:
        print(f"{what}, about {format_duration(seconds)}", file=file or sys.stdout, flush=True)


def time_per_call(fn: Callable[[], object], n: int = 2, sync: Callable[[], None] | None = None,
                  min_seconds: float = 0.5, max_calls: int = 50) -> float:
    """Seconds per call of fn: the mean over at least n timed calls, and more (up to max_calls) until min_seconds
    have passed, after one untimed warm-up call (allocation, kernel choice, caches). A mean over a stretch of time,
    not one call, so that the stalls of a shared machine count as they will in the work itself. sync waits for
    the device (CUDA)."""
    sync = sync or (lambda: None)
    fn()
    sync()
    calls, start = 0, time.perf_counter()
    while calls < n or (calls < max_calls and time.perf_counter() - start < min_seconds):
        fn()
        sync()
        calls += 1
    return (time.perf_counter() - start) / calls


class Progress:
    """Progress over `total` units of work (examples, KL terms, sampling steps).

    update(n, **postfix) adds n done units; postfix values (strings or numbers) are shown after the meter,
    e.g. the running K with its standard error. Nothing is shown before quiet_s seconds (QUIET_S) have passed.
    """

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True, file: TextIO | None = None,
                 every_percent: float = 5.0, every_s: float = 30.0, quiet_s: float | None = None) -> None:
        self.total, self.desc, self.unit, self.enabled = int(total), desc, unit, enabled
        self.file = file or sys.stdout
        self.every_percent, self.every_s = every_percent, every_s
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self.n, self.postfix = 0, ""
        self.start = time.perf_counter()
        self._bar = None
        self._last_line_time, self._last_line_percent, self._last_line = self.start, 0.0, None
        self.unit_scale = self.total >= 10_000
        interactive = hasattr(self.file, "isatty") and self.file.isatty()
        if enabled and interactive:
            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=self.file, dynamic_ncols=True,
                             unit_scale=self.unit_scale, mininterval=0.5, leave=True, delay=self.quiet_s)

    def update(self, n: int = 1, **postfix: object) -> None:
        if _stop_reason:
            raise StopRequested(f"{self.desc} stopped by {_stop_reason[0]} after {self.n:,} of {self.total:,} "
                                f"{self.unit}s")
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
        if now - self.start < self.quiet_s:
            return  # short work shows nothing; longer work, its first line once quiet_s have passed
        percent = 100.0 * self.n / max(self.total, 1)
        if (self._last_line is None or percent - self._last_line_percent >= self.every_percent
                or now - self._last_line_time >= self.every_s or self.n >= self.total):
            self._line(now)
            self._last_line_time, self._last_line_percent = now, percent

    def _line(self, now: float) -> None:
        self._last_line = (self.n, self.postfix)
        meter = tqdm.format_meter(self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit,
                                  unit_scale=self.unit_scale, postfix=self.postfix or None, ncols=0)
        print(meter, file=self.file, flush=True)

    def close(self) -> None:
        """End the display; off a terminal, a last line if any was shown and the work (or its postfix) moved since."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._last_line is not None and self._last_line != (self.n, self.postfix):
            self._line(time.perf_counter())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
