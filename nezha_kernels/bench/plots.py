"""PNG plots (matplotlib, Agg).

speedup_<dtype>.png (bench/headline.py): the headline, ours vs transformers' speed-up per workload.
ops_<dtype>.png: a 2 x 3 grid (fwd, bwd, fwd+bwd across): time against sequence length on log-log axes (one
line per provider: a sweep at a constant token count), peak memory below on a linear axis from zero.
models_<dtype>.png: a 2 x 2 grid (time, memory) x (infer, train): the batch x length points are separate
workloads, so nothing joins them: time is a marker with its p20-p80 whisker per provider (log axis), memory a bar
from zero. A cell that could not run (OOM, timeout, n/a, error) is written as text where it would be, never
drawn as a point.

Each figure is built by a *_figure function (returned, for tests to read what is plotted) and saved by plot_*.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from .figures import pyplot, save_figure
from .results import OK, Row

__all__ = [
    "plot_ops",
    "plot_models",
    "plot_all",
    "ops_figure",
    "models_figure",
    "log_ticks",
    "tick_labels",
    "not_run_text",
]


def _label(provider: str) -> str:
    from .op_bench import PROVIDERS

    return PROVIDERS[provider][1] if provider in PROVIDERS else provider


def not_run_text(provider: str, status: str) -> str:
    """What a cell that did not run says on a plot: "hf-4.57.6: n/a", "reference: OOM (> 16 GiB)"."""
    head = status.split(":")[0]
    return f"{_label(provider)}: {status if head == status else head}"


def _shown(members: list[Row]) -> list[str]:
    """Providers in order, less those skipped everywhere (listed under the table instead)."""
    providers = OrderedDict.fromkeys(r.provider for r in members)
    return [p for p in providers if not all(r.status.startswith("skipped") for r in members if r.provider == p)]


def _write_not_run(ax, failed: list[tuple[float, str, str]]) -> None:
    """Cells that did not run as text at their x, stacked down from the top edge: (x, text, colour)."""
    from matplotlib.transforms import blended_transform_factory

    top_edge = blended_transform_factory(ax.transData, ax.transAxes)
    stacked: dict[float, int] = {}
    for x, text, color in failed:
        level = stacked.get(x, 0)
        stacked[x] = level + 1
        ax.text(x, 0.97 - 0.07 * level, text, transform=top_edge, ha="center", va="top", fontsize=8, color=color)


def _failed(members: list[Row]) -> list[Row]:
    return [r for r in members if r.status != OK and not r.status.startswith("skipped")]


def _draw_sweep(ax, members: list[Row], metric: str, colors: dict) -> None:
    """One line per provider across sequence lengths (the op grid keeps B*L constant: one sweep)."""
    failed = []
    for provider in _shown(members):
        mine = sorted((r for r in members if r.provider == provider), key=lambda r: r.seq_len)
        color = colors.setdefault(provider, f"C{len(colors) % 10}")
        # log time axis: a zero time cannot be drawn; memory is linear, a zero rise (below RSS resolution) is drawn
        ok = [r for r in mine if r.status == OK and getattr(r, metric) is not None]
        if metric == "median_ms":
            ok = [r for r in ok if r.median_ms > 0]
        if ok:
            xs = [r.seq_len for r in ok]
            ax.plot(xs, [getattr(r, metric) for r in ok], marker="o", ms=4, color=color, label=_label(provider))
            if metric == "median_ms":
                ax.fill_between(xs, [r.p20_ms for r in ok], [r.p80_ms for r in ok], color=color, alpha=0.15, lw=0)
        failed += [(r.seq_len, not_run_text(provider, r.status), color) for r in _failed(mine)]
    _write_not_run(ax, failed)
    ax.grid(True, which="both", alpha=0.3)


def _draw_points(ax, members: list[Row], position: dict, metric: str, colors: dict) -> None:
    """Separate workloads at categorical x: per provider a marker with its p20-p80 whisker (time) or a bar from
    zero (memory), side by side; nothing joins two workloads."""
    providers = _shown(members)
    width = 0.8 / max(len(providers), 1)
    failed = []
    for i, provider in enumerate(providers):
        color = colors.setdefault(provider, f"C{len(colors) % 10}")
        offset = (i - (len(providers) - 1) / 2) * width
        mine = [r for r in members if r.provider == provider]
        ok = [r for r in mine if r.status == OK and getattr(r, metric) is not None]
        xs = [position[(r.batch, r.seq_len)] + offset for r in ok]
        if metric == "median_ms" and ok:
            ys = [r.median_ms for r in ok]
            spread = [[r.median_ms - r.p20_ms for r in ok], [r.p80_ms - r.median_ms for r in ok]]
            ax.errorbar(xs, ys, yerr=spread, fmt="o", ms=6, capsize=4, color=color, label=_label(provider))
        elif ok:
            ax.bar(xs, [getattr(r, metric) for r in ok], width=width * 0.9, color=color, label=_label(provider))
        failed += [
            (position[(r.batch, r.seq_len)] + offset, not_run_text(provider, r.status), color) for r in _failed(mine)
        ]
    _write_not_run(ax, failed)
    ax.grid(True, axis="y", which="both", alpha=0.3)


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


def ops_figure(rows: Iterable[Row], dtype: str):
    """The op figure of ``dtype``: axes[0][c] time, axes[1][c] memory, one column per mode."""
    plt = pyplot()
    mine = [r for r in rows if r.bench == "op" and r.dtype == dtype]
    modes = list(OrderedDict.fromkeys(r.mode for r in mine))
    fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 8.4), squeeze=False)
    colors: dict = {}
    for col, mode in enumerate(modes):
        members = [r for r in mine if r.mode == mode]
        lengths = sorted({r.seq_len for r in members})
        for row_i, (metric, ylabel) in enumerate(
            (("median_ms", "time (ms, median; band p20-p80)"), ("peak_mib", "peak memory rise (MiB, from 0)"))
        ):
            ax = axes[row_i][col]
            _draw_sweep(ax, members, metric, colors)
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [str(length) for length in lengths])
            ax.minorticks_off()
            if metric == "median_ms":
                _plain_log_y(ax)
            else:
                ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)  # headroom for not-run text
            ax.set_xlabel("sequence length L (B = tokens / L)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode}" if row_i == 0 else f"{mode}: memory")
    sample = mine[0]
    title = (
        f"relative_attention, {dtype}, H={sample.heads}, D={sample.head_dim}, "
        f"B*L = {sample.batch * sample.seq_len} tokens\n{sample.device_name}"
    )
    _finish(fig, axes, title)
    return fig


def plot_ops(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    rows = [r for r in rows if r.bench == "op"]
    return [save_figure(ops_figure(rows, dtype), Path(out_dir) / f"ops_{dtype}.png") for dtype in _dtypes(rows)]


def _dtypes(rows: list[Row]) -> list[str]:
    return list(OrderedDict.fromkeys(r.dtype for r in rows))


def _finish(fig, axes, title: str) -> None:
    """One legend for every provider of any panel (some fail everywhere in the first), title, layout."""
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="lower center", ncol=min(max(len(labels), 1), 4), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))


def models_figure(rows: Iterable[Row], dtype: str):
    """The model figure of ``dtype``: axes[0][c] time, axes[1][c] memory, one column per mode (infer, train)."""
    plt = pyplot()
    mine = [r for r in rows if r.bench == "model" and r.dtype == dtype]
    points = sorted(OrderedDict.fromkeys((r.batch, r.seq_len) for r in mine), key=lambda p: (p[1], p[0]))
    position = {p: i for i, p in enumerate(points)}
    modes = list(OrderedDict.fromkeys(r.mode for r in mine))
    fig, axes = plt.subplots(2, len(modes), figsize=(5.6 * len(modes), 8.0), squeeze=False)
    colors: dict = {}
    for col, mode in enumerate(modes):
        members = [r for r in mine if r.mode == mode]
        for row_i, (metric, ylabel) in enumerate(
            (("median_ms", "time per step (ms; whisker p20-p80)"), ("peak_mib", "peak memory rise (MiB, from 0)"))
        ):
            ax = axes[row_i][col]
            _draw_points(ax, members, position, metric, colors)
            if metric == "median_ms":
                ax.margins(y=0.2)  # room above the top point for the not-run text
                _plain_log_y(ax)
            else:
                ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.15)
            ax.set_xticks(range(len(points)), [f"{b}x{length}" for b, length in points])
            ax.set_xlim(-0.5, len(points) - 0.5)
            ax.set_xlabel("batch x length (separate workloads)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{mode}" if row_i == 0 else f"{mode}: memory")
    title = f"{mine[0].op} (random weights), {dtype}; train = AdamW step, dropout on\n{mine[0].device_name}"
    _finish(fig, axes, title)
    return fig


def plot_models(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    rows = [r for r in rows if r.bench == "model"]
    return [save_figure(models_figure(rows, dtype), Path(out_dir) / f"models_{dtype}.png") for dtype in _dtypes(rows)]


def plot_all(rows: Iterable[Row], out_dir: Path) -> list[Path]:
    """Every figure the rows allow: the headline speed-up first, then ops and models."""
    from .headline import plot_speedup

    rows = list(rows)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return plot_speedup(rows, out_dir) + plot_ops(rows, out_dir) + plot_models(rows, out_dir)
