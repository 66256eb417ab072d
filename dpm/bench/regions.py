"""The profiler regions that dpm.bench.profile sorts a step's operators by (torch.autograd.profiler.record_function)."""

from __future__ import annotations

from contextlib import nullcontext

from torch.autograd.profiler import record_function

NET, LOSS, BACKWARD, CLOSURE, STEP = "dpm::net", "dpm::loss", "dpm::backward", "dpm::closure", "dpm::step"


def region(name: str, on: bool = True):
    """A profiler region named `name`, or nothing when not on (the timed loops stay as they are)."""
    return record_function(name) if on else nullcontext()
