"""matplotlib without a display, and saving a figure: what every figure module of the bench shares."""

from __future__ import annotations

from pathlib import Path

__all__ = ["pyplot", "save"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: the bench runs without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe under pytest
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` and release it."""
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return path
