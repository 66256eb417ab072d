"""Writing a matplotlib figure to a PNG (headless: the Agg backend), atomically (dpm.io.files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from dpm.io.files import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: Path) -> Path:
    """Save fig as a PNG at path (parents created; a temporary file renamed), close it, return the path."""
    try:
        fig.tight_layout()
        return write_atomic(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    finally:
        plt.close(fig)
