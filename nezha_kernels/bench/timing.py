"""Timing: ``triton.testing.do_bench`` on CUDA (CUDA-event medians and quantiles), repeated wall-clock
timing with warm-up on CPU. Both return the median and the 20th / 80th percentiles in milliseconds.
timing_warnings says when the numbers of a run are not to be trusted: a wide p20-p80 spread, or a load
average above the core count (other processes competed for the CPU)."""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Timing",
    "time_cpu",
    "time_cuda",
    "time_fn",
    "WIDE_SPREAD",
    "relative_spread",
    "load_average",
    "cpu_cores",
    "timing_warnings",
]

# (p80 - p20) / median above which a timing is flagged. A quiet machine stays well under it: on 2 cores
# a quiet run's widest is ~0.4 (a 6 ms op); a busy one reached 0.6-1.5 (the reference at L = 512).
WIDE_SPREAD = 0.5


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int | None  # None: do_bench chose the count itself


def _quantile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of sorted samples (numpy's default method)."""
    pos = q * (len(sorted_ms) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def time_cpu(
    fn: Callable[[], object], *, warmup: int = 1, min_reps: int = 3, max_reps: int = 30, budget_s: float = 1.0
) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then at least ``min_reps`` timed runs, continuing while the
    timed total stays under ``budget_s`` (so cheap calls get many samples, costly ones a few)."""
    if min_reps < 1 or max_reps < min_reps:
        raise ValueError(f"min_reps/max_reps: need 1 <= min_reps <= max_reps, got {min_reps}, {max_reps}")
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    total = 0.0
    while len(samples) < max_reps and (len(samples) < min_reps or total < budget_s):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        samples.append(elapsed * 1e3)
        total += elapsed
    samples.sort()
    return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), len(samples))


def time_cuda(
    fn: Callable[[], object],
    *,
    warmup_ms: int = 25,
    rep_ms: int = 100,
    grad_to_none: Sequence[torch.Tensor] | None = None,
) -> Timing:
    """CUDA-event timing through triton.testing.do_bench (it flushes L2 between runs)."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
    return Timing(float(median), float(p20), float(p80), None)


def time_fn(
    fn: Callable[[], object],
    device: torch.device | str,
    *,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    cpu_budget_s: float = 1.0,
    cpu_min_reps: int = 3,
    cpu_warmup: int = 1,
) -> Timing:
    """Time ``fn`` on ``device``: do_bench on CUDA, repeated wall-clock timing on CPU (``cpu_warmup``
    untimed calls first: 0 when the caller has just run ``fn``, e.g. for its memory pass)."""
    if torch.device(device).type == "cuda":
        try:
            return time_cuda(fn, grad_to_none=grad_to_none)
        except ImportError:  # no triton on this CUDA machine: wall clock around a synchronized call
            inner = fn

            def fn():
                inner()
                torch.cuda.synchronize()

    def run():
        for t in grad_to_none or ():
            t.grad = None
        fn()

    return time_cpu(run, warmup=cpu_warmup, min_reps=cpu_min_reps, budget_s=cpu_budget_s)


def relative_spread(median_ms: float, p20_ms: float, p80_ms: float) -> float:
    """(p80 - p20) / median: 0 for identical samples."""
    return (p80_ms - p20_ms) / median_ms if median_ms > 0 else 0.0


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def timing_warnings(
    rows, peak_load: float | None = None, cores: int | None = None, limit: float = WIDE_SPREAD
) -> list[str]:
    """Warnings for a run's result rows (``median_ms``, ``p20_ms``, ``p80_ms``, ``status`` fields): the cells
    whose spread exceeds ``limit``, and a load average above the core count (``peak_load``: the highest
    sampled during the run; None: not checked)."""
    cores = cores or cpu_cores()
    lines = []
    wide = [
        r
        for r in rows
        if r.status == "ok"
        and r.median_ms
        and r.p20_ms is not None
        and r.p80_ms is not None
        and relative_spread(r.median_ms, r.p20_ms, r.p80_ms) > limit
    ]
    if wide:
        cells = ", ".join(
            f"{r.provider} {r.mode} {r.batch}x{r.seq_len} ({r.median_ms:.3g} ms [{r.p20_ms:.3g}-{r.p80_ms:.3g}])"
            for r in wide[:6]
        )
        more = f" and {len(wide) - 6} more" if len(wide) > 6 else ""
        lines.append(
            f"warning: {len(wide)} timing(s) vary widely (p20-p80 wider than {limit:.0%} of the median): "
            f"{cells}{more}. Other work probably competed for the machine: rerun before comparing them."
        )
    if peak_load is not None and peak_load > cores:
        lines.append(
            f"warning: the load average reached {peak_load:.1f} on {cores} core(s) during the run: other "
            "processes competed for the CPU, so the times are inflated and noisy (PyTorch's OpenMP threads spin at "
            "every barrier for a thread that is not running: small ops can take 10-30x longer). Rerun on a quiet "
            "machine before comparing; on a shared one, OMP_WAIT_POLICY=PASSIVE avoids the worst of it."
        )
    return lines
