"""One set of rules for every count and range a setting has, whichever layer checks it (a data set's constructor,
an evaluate task, the app's checks before anything is built): an integer is an int that is not a bool (True and
2.5 are no counts), a real number is a finite int or float that is not a bool, and bounds are inclusive unless
said open. A failure is a ConfigError naming the key, the value and what would be valid."""

from __future__ import annotations

import math
import numbers

from dpm.errors import ConfigError


def integer_problem(value: object, least: int | None = None, most: int | None = None) -> str | None:
    """Why value is not an integer in [least, most] ("must be an integer >= 1"), or None when it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return "must be an integer" + (f" >= {least}" if least is not None else "") + (
            f" and <= {most}" if most is not None else "")
    if least is not None and value < least:
        return f"must be an integer >= {least}" + (f" and <= {most}" if most is not None else "")
    if most is not None and value > most:
        return f"must be an integer <= {most}" + (f" and >= {least}" if least is not None else "")
    return None


def real_problem(value: object, low: float | None = None, high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> str | None:
    """Why value is not a finite real number in the interval (low, high, open or closed), or None when it is."""
    interval = " ".join(filter(None, [f"{'>' if low_open else '>='} {low}" if low is not None else "",
                                      "and" if low is not None and high is not None else "",
                                      f"{'<' if high_open else '<='} {high}" if high is not None else ""]))
    wanted = "must be a finite number" + (f" {interval}" if interval else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return wanted
    if low is not None and (value <= low if low_open else value < low):
        return wanted
    if high is not None and (value >= high if high_open else value > high):
        return wanted
    return None


def count(key: str, value: object, least: int | None = 0, most: int | None = None, why: str = "",
          allow: tuple = ()) -> int:
    """value as an int in [least, most] (or one of `allow`, e.g. None for "all"), else a ConfigError naming key."""
    if value in allow and not isinstance(value, bool):
        return value
    problem = integer_problem(value, least, most)
    if problem:
        also = f" (or {', '.join('null' if a is None else repr(a) for a in allow)})" if allow else ""
        raise ConfigError(f"{key}={value!r} is invalid: it {problem}{also}{why}")
    return int(value)


def real(key: str, value: object, low: float | None = None, high: float | None = None, low_open: bool = False,
         high_open: bool = False, why: str = "", allow: tuple = ()) -> float:
    """value as a float in the interval (or one of `allow`), else a ConfigError naming key."""
    if value in allow and not isinstance(value, bool):
        return value
    problem = real_problem(value, low, high, low_open, high_open)
    if problem:
        raise ConfigError(f"{key}={value!r} is invalid: it {problem}{why}")
    return float(value)
