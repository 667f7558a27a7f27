"""PNG plots (matplotlib, Agg): time and peak memory against sequence length, one line per provider.

ops_<dtype>.png: a 2 x 3 grid (time on top, memory below; fwd, bwd, fwd+bwd across), log-log.
models_<dtype>.png: a 2 x 2 grid (time, memory) x (infer, train) over the batch x length points.
A cell that could not run (OOM, timeout, n/a, error) is an "x" on the top edge in the provider's colour.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from .results import OK, Row

__all__ = ["plot_ops", "plot_models", "plot_all", "log_ticks", "tick_labels"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe under pytest
    import matplotlib.pyplot as plt

    return plt


def _label(provider: str) -> str:
    from .op_bench import PROVIDERS

    return PROVIDERS[provider][1] if provider in PROVIDERS else provider


def _draw(ax, members: list[Row], xkey, metric: str, colors: dict, xlabels: dict | None = None) -> None:
    from matplotlib.transforms import blended_transform_factory

    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    for provider in OrderedDict.fromkeys(r.provider for r in members):
        mine = sorted((r for r in members if r.provider == provider), key=xkey)
        if all(r.status.startswith("skipped") for r in mine):
            continue
        color = colors.setdefault(provider, f"C{len(colors) % 10}")
        # log axes: a zero peak (a rise below the RSS resolution, tiny shapes) cannot be drawn
        ok = [r for r in mine if r.status == OK and getattr(r, metric) is not None and getattr(r, metric) > 0]
        if ok:
            ax.plot(
                [xkey(r) for r in ok],
                [getattr(r, metric) for r in ok],
                marker="o",
                ms=4,
                color=color,
                label=_label(provider),
            )
            if metric == "median_ms":
                ax.fill_between(
                    [xkey(r) for r in ok],
                    [r.p20_ms for r in ok],
                    [r.p80_ms for r in ok],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
        failed = [r for r in mine if r.status != OK and not r.status.startswith("skipped")]
        if failed:
            ax.plot(
                [xkey(r) for r in failed],
                [0.97] * len(failed),
                linestyle="none",
                marker="x",
                ms=8,
                mew=2,
                color=color,
                transform=top_edge,
                clip_on=False,
                label=None if ok else f"{_label(provider)} (did not run)",
            )
    ax.grid(True, which="both", alpha=0.3)


# Mantissas tried in turn for a log axis's labelled ticks: decades, then 1-2-5.
_LOG_STEPS = ((1,), (1, 2, 5))
_MIN_LABELS = 3


def log_ticks(low: float, high: float) -> list[float]:
    """Labelled ticks for a log axis spanning [low, high]: the coarsest of _LOG_STEPS giving at least
    _MIN_LABELS ticks inside, or evenly spaced round values (40, 80, 120, 160) when 1-2-5 is too coarse
    (a span of a few x at most, e.g. one point)."""
    import math

    if not (0 < low < high):
        raise ValueError(f"log_ticks: need 0 < low < high, got {low}, {high}")
    ticks: list[float] = []
    for steps in _LOG_STEPS:
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
            for m in steps
            if low <= m * 10.0**e <= high
        ]
        if len(ticks) >= _MIN_LABELS:
            return ticks
    from matplotlib.ticker import MaxNLocator

    for bins in range(4, 10):
        ticks = [
            float(t) for t in MaxNLocator(nbins=bins, steps=[1, 2, 5, 10]).tick_values(low, high) if low <= t <= high
        ]
        if len(ticks) >= _MIN_LABELS:
            break
    return ticks


def tick_labels(ticks: list[float]) -> list[str]:
    """Plain labels (0.5, 12, 1,200, 10.25; never 1.2x10^1): each tick with the fewest decimals that
    still write it exactly, so neighbouring ticks never read the same."""
    labels = []
    for t in ticks:
        for decimals in range(7):
            text = f"{t:,.{decimals}f}"
            if abs(float(text.replace(",", "")) - t) <= 1e-9 * abs(t):
                break
        labels.append(text)
    return labels


def _plain_log_y(ax) -> None:
    """Log y axis with a few distinct, plainly written labels (see log_ticks); minor ticks unlabelled."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ticks = log_ticks(low, high)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FixedFormatter(tick_labels(ticks)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_ops(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in rows if r.bench == "op"]
    paths = []
    colors: dict = {}
    for dtype in OrderedDict.fromkeys(r.dtype for r in rows):
        mine = [r for r in rows if r.dtype == dtype]
        modes = list(OrderedDict.fromkeys(r.mode for r in mine))
        fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 8.4), squeeze=False)
        for col, mode in enumerate(modes):
            members = [r for r in mine if r.mode == mode]
            for row_i, (metric, ylabel) in enumerate(
                (("median_ms", "time (ms, median; band p20-p80)"), ("peak_mib", "peak memory rise (MiB)"))
            ):
                ax = axes[row_i][col]
                _draw(ax, members, lambda r: r.seq_len, metric, colors)
                ax.set_xscale("log", base=2)
                lengths = sorted({r.seq_len for r in members})
                ax.set_xticks(lengths, [str(length) for length in lengths])
                ax.minorticks_off()
                _plain_log_y(ax)
                ax.set_xlabel("sequence length L (B = tokens / L)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{mode}" if row_i == 0 else f"{mode}: memory")
        sample = mine[0]
        title = (
            f"relative_attention, {dtype}, H={sample.heads}, D={sample.head_dim}, "
            f"B*L = {sample.batch * sample.seq_len} tokens  (x = OOM / not run)\n{sample.device_name}"
        )
        paths.append(_finish(plt, fig, axes, title, Path(out_dir) / f"ops_{dtype}.png"))
    return paths


def _finish(plt, fig, axes, title: str, path: Path) -> Path:
    """One legend for every provider of any panel (some fail everywhere in the first), title, save, close."""
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_models(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    rows = [r for r in rows if r.bench == "model"]
    paths = []
    colors: dict = {}
    for dtype in OrderedDict.fromkeys(r.dtype for r in rows):
        mine = [r for r in rows if r.dtype == dtype]
        points = sorted(OrderedDict.fromkeys((r.batch, r.seq_len) for r in mine), key=lambda p: (p[1], p[0]))
        position = {p: i for i, p in enumerate(points)}
        modes = list(OrderedDict.fromkeys(r.mode for r in mine))
        fig, axes = plt.subplots(2, len(modes), figsize=(5.6 * len(modes), 8.0), squeeze=False)
        for col, mode in enumerate(modes):
            members = [r for r in mine if r.mode == mode]
            for row_i, (metric, ylabel) in enumerate(
                (("median_ms", "time per step (ms)"), ("peak_mib", "peak memory rise (MiB)"))
            ):
                ax = axes[row_i][col]
                _draw(ax, members, lambda r: position[(r.batch, r.seq_len)], metric, colors)  # noqa: B023 (called at once)
                _plain_log_y(ax)
                ax.set_xticks(range(len(points)), [f"{b}x{length}" for b, length in points])
                ax.set_xlim(-0.5, len(points) - 0.5)
                ax.set_xlabel("batch x length")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{mode}" if row_i == 0 else f"{mode}: memory")
        title = (
            f"{mine[0].op} (random weights), {dtype}; train = AdamW step, dropout on  "
            f"(x = OOM / n/a)\n{mine[0].device_name}"
        )
        paths.append(_finish(plt, fig, axes, title, Path(out_dir) / f"models_{dtype}.png"))
    return paths


def plot_all(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    rows = list(rows)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return plot_ops(rows, out_dir) + plot_models(rows, out_dir)
