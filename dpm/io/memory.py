"""How much memory this machine can still give, for refusing work that cannot fit before it starts."""

from __future__ import annotations

import os


def available_bytes() -> int:
    """Memory available to a new allocation without swapping: Linux's MemAvailable (free memory plus what the page
    cache would give back), else the free pages the C library reports."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
