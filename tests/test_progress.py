"""The one progress display (dpm.io.progress): nothing for short work, then a line every 5 % or 30 s off a terminal,
a one-line estimate before long work only; and the stop that every long loop honours at its next update."""

import io
import types

import pytest

from dpm.io import progress
from dpm.io.progress import Progress, StopRequested, announce, clear_stop, request_stop


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(perf_counter=c))
    return c


def meter_lines(out: io.StringIO) -> list[str]:
    return [line for line in out.getvalue().splitlines() if line]


def test_work_that_ends_within_a_few_seconds_shows_nothing(clock):
    out = io.StringIO()
    with Progress(100, "short", unit="term", file=out) as bar:
        for _ in range(100):
            clock.now += progress.QUIET_S / 200  # the whole work: half of the quiet time
            bar.update(1, K="1.0")
    assert out.getvalue() == ""
    announce("short work", progress.QUIET_S / 2, file=out)
    assert out.getvalue() == ""


def test_long_work_shows_a_line_every_5_percent_or_30_s_after_the_quiet_time(clock):
    out = io.StringIO()
    with Progress(1000, "long", unit="term", file=out) as bar:
        bar.update(1)  # at once: nothing yet
        assert out.getvalue() == ""
        clock.now += progress.QUIET_S
        bar.update(1)  # the first line once the quiet time has passed
        assert len(meter_lines(out)) == 1 and "long:" in out.getvalue() and "2/1000" in out.getvalue()
        for _ in range(49):  # 4.9 % more, fast: no new line
            clock.now += 0.01
            bar.update(1)
        assert len(meter_lines(out)) == 1
        bar.update(1)  # 5 % since the last line
        assert len(meter_lines(out)) == 2
        clock.now += 31  # slow work: a line after 30 s even without 5 % more
        bar.update(1)
        assert len(meter_lines(out)) == 3
        bar.update(1000 - bar.n)  # the end
        assert len(meter_lines(out)) == 4 and "1000/1000" in meter_lines(out)[-1]
    assert len(meter_lines(out)) == 4  # nothing new to say at close
    assert "\r" not in out.getvalue()


def test_announcement_before_long_work(clock):
    out = io.StringIO()
    announce("mc bound: 400 examples x 64 terms on cpu", 75, file=out)
    assert out.getvalue() == "mc bound: 400 examples x 64 terms on cpu, about 75 s\n"


def test_a_requested_stop_ends_the_loop_at_its_next_update(clock):
    bar = Progress(10, "sampling", unit="step", enabled=False)  # also when nothing is shown
    bar.update(1)
    request_stop("SIGTERM")
    try:
        with pytest.raises(StopRequested, match="sampling stopped by SIGTERM after 1 of 10 steps"):
            bar.update(1)
    finally:
        clear_stop()
    bar.update(1)
    assert bar.n == 2
