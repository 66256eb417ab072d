"""The mean of per-example values and its standard error: one function for every table (the bound, Parzen, the
sweep report), the ddof said by each caller."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def mean_and_stderr(values: torch.Tensor | Sequence[float], ddof: int) -> tuple[float, float]:
    """(mean, std(ddof) / sqrt(n)) of values [N], in float64.

    ddof=1 (the unbiased variance) for the bound and the sweep report; ddof=0 where a published estimator used
    numpy's default (Parzen: Goodfellow et al.'s `ll.std() / sqrt(N)`). The standard error is NaN for n <= ddof,
    both are NaN for no values."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        return math.nan, math.nan
    mean = values.mean().item()
    se = values.std(correction=ddof).item() / math.sqrt(n) if n > ddof else math.nan
    return mean, se
