"""Timing: ``triton.testing.do_bench`` on CUDA (CUDA-event medians and quantiles), repeated wall-clock
timing with warm-up on CPU. Both return the median and the 20th / 80th percentiles in milliseconds."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Sequence

import torch

__all__ = ["Timing", "time_cpu", "time_cuda", "time_fn"]


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


def time_cpu(fn: Callable[[], object], *, warmup: int = 1, min_reps: int = 3, max_reps: int = 30,
             budget_s: float = 1.0) -> Timing:
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


def time_cuda(fn: Callable[[], object], *, warmup_ms: int = 25, rep_ms: int = 100,
              grad_to_none: Sequence[torch.Tensor] | None = None) -> Timing:
    """CUDA-event timing through triton.testing.do_bench (it flushes L2 between runs)."""
    from triton.testing import do_bench

    median, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none,
                                quantiles=[0.5, 0.2, 0.8])
    return Timing(float(median), float(p20), float(p80), None)


def time_fn(fn: Callable[[], object], device: torch.device | str, *,
            grad_to_none: Sequence[torch.Tensor] | None = None, cpu_budget_s: float = 1.0,
            cpu_min_reps: int = 3) -> Timing:
    """Time ``fn`` on ``device``: do_bench on CUDA, repeated wall-clock timing on CPU."""
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

    return time_cpu(run, min_reps=cpu_min_reps, budget_s=cpu_budget_s)
