"""The headline figure, speedup_<dtype>.png: how much faster than transformers' NEZHA, on what.

One panel per mode (inference, training step). Each workload (a dense batch of the model bench, a batch of real
sentence lengths of the length mix) is a row; each of our providers that ran there is a horizontal bar of
speed-up = transformers' median time / ours, from zero, with a whisker for the spread (their p20 / our p80 to
their p80 / our p20) and its value written at the end. A dashed line at 1 is transformers' own time. Where
transformers did not run, the row says so in words instead of a bar.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from .figures import pyplot, save_figure
from .results import Row
from .speedup import speedups

__all__ = ["speedup_figure", "plot_speedup"]

_MODE_TITLES = {"infer": "inference", "train": "training step (AdamW, dropout on)"}


def _ours_label(provider: str) -> str:
    """Legend text: a model-bench backend reads "ours (torch backend)"; length-mix providers already say "ours"."""
    return provider if provider.startswith("ours") else f"ours ({provider} backend)"


def speedup_figure(rows: Iterable[Row], dtype: str):
    """The headline figure of ``dtype`` (None when nothing compares): axes[c] one per mode; each bar's width is a
    speed-up, each not-run workload a text in the axes."""
    entries = [s for s in speedups(rows) if s.dtype == dtype]
    if not entries:
        return None
    plt = pyplot()
    workloads = list(OrderedDict.fromkeys(s.workload for s in entries))
    modes = list(OrderedDict.fromkeys(s.mode for s in entries))
    ours = list(OrderedDict.fromkeys(s.ours for s in entries))
    colors = {name: f"C{i % 10}" for i, name in enumerate(ours)}
    # bar height: the most providers any one workload has share its row
    height = 0.8 / max(sum(1 for s in entries if s.workload == w and s.mode == entries[0].mode) for w in workloads)
    top = max([s.high for s in entries if s.high is not None] + [1.0])
    fig, axes = plt.subplots(1, len(modes), figsize=(6.8 * len(modes), 2.4 + 0.9 * len(workloads)), squeeze=False)
    for col, mode in enumerate(modes):
        ax = axes[0][col]
        for row_i, workload in enumerate(workloads):
            here = [s for s in entries if s.mode == mode and s.workload == workload]
            if here and all(s.ratio is None for s in here):
                ax.text(
                    0.05 * top,
                    row_i,
                    f"{here[0].theirs} cannot run here ({here[0].why_not}): ours only",
                    va="center",
                    fontsize=9,
                    style="italic",
                    color="0.3",
                )
                continue
            for i, s in enumerate(here):  # side by side, centred on the workload's row
                y = row_i + (i - (len(here) - 1) / 2) * height
                ax.barh(
                    y,
                    s.ratio,
                    height=height * 0.9,
                    color=colors[s.ours],
                    xerr=[[s.ratio - s.low], [s.high - s.ratio]],
                    capsize=3,
                    label=_ours_label(s.ours),
                )
                ax.text(s.high + 0.02 * top, y, f"{s.ratio:.2f}x", va="center", fontsize=9)
        ax.axvline(1.0, color="0.2", linestyle="--", linewidth=1, label=f"{entries[0].theirs} (= 1)")
        ax.set_xlim(0, top * 1.25)
        ax.set_ylim(len(workloads) - 0.5, -0.5)  # first workload on top
        ax.set_yticks(range(len(workloads)), [w.replace(" length mix ", "\nlength mix ") for w in workloads])
        ax.set_xlabel("speed-up: transformers' time / ours (> 1 = ours faster)")
        ax.set_title(_MODE_TITLES.get(mode, mode))
        ax.grid(True, axis="x", alpha=0.3)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    device = next(r.device_name for r in rows if r.dtype == dtype) if isinstance(rows, list) else ""
    fig.suptitle(
        f"Ours vs {entries[0].theirs}: speed-up per workload, {dtype} (bars: median, whiskers: p20-p80 spread)"
        + (f"\n{device}" if device else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    return fig


def plot_speedup(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    rows = list(rows)
    paths = []
    for dtype in OrderedDict.fromkeys(r.dtype for r in rows):
        fig = speedup_figure(rows, dtype)
        if fig is not None:
            paths.append(save_figure(fig, Path(out_dir) / f"speedup_{dtype}.png"))
    return paths
