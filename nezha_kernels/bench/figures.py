"""matplotlib for the bench's figures: the Agg backend (no display, safe under pytest) and saving a figure."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is in the bench extra only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """``fig`` as a PNG at 80 dpi, then closed (pyplot keeps every open figure alive otherwise)."""
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return path
