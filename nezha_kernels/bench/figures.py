"""Every figure of a result set: the headline speed-up first, then the op and model figures."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .headline import plot_speedup
from .plots import plot_models, plot_ops
from .results import Row

__all__ = ["plot_all"]


def plot_all(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    """Write every figure the rows allow into ``out_dir``; returns the paths written."""
    rows = list(rows)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return plot_speedup(rows, out_dir) + plot_ops(rows, out_dir) + plot_models(rows, out_dir)
