"""An issue-rate model of an H100 SXM, per SM: a kernel's time from its static instruction counts.

Constants (estimates, per SM; see benchmarks/NOTES.md, "Static profile"):
- 4 warp-instructions issued per clock (4 schedulers, 1 each);
- MUFU.EX2: 16 results per clock (a warp's MUFU.EX2 takes 2 clocks of the SFU);
- dense bf16/fp16 tensor work: 2048 multiply-adds per clock with wgmma (989 TFLOP/s over 132 SMs at
  1.83 GHz), about half (1024) with mma.sync;
- shared memory: 128 bytes per clock (LDS / STS / LDSM; the shared-memory operands of wgmma are reported
  apart and left out of this bound, as in the issue's model);
- 132 SMs at 1.83 GHz.
A kernel takes max(issue, tensor, ex2, shared) cycles, each the total over all its programs divided evenly
over the SMs: no latency, no memory bandwidth, no wave quantization, no occupancy limit. It is a lower bound
for an issue-bound kernel and a ranking tool, not a timer.

Work per program (one block of ``rows`` query rows, or key rows for dK/dV) at sequence length L with
relative distance R: its loop runs cdiv(L, cols) iterations, the ones whose tile meets the band
(j0 - (p0 + rows - 1) < R and j0 + cols - 1 - p0 > -R, the kernels' own test) at the band path's cost,
the rest at the far path's cost; plus the straight-line prologue and epilogue once and each "other" loop
``other_trips`` times.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = [
    "prediction_cell",
    "ISSUE_PER_CLOCK",
    "EX2_PER_CLOCK",
    "FMA_PER_CLOCK_WGMMA",
    "FMA_PER_CLOCK_MMA_SYNC",
    "SHARED_BYTES_PER_CLOCK",
    "SMS",
    "CLOCK_HZ",
    "LANES",
    "Cost",
    "band_tiles",
    "cycles",
    "predict",
]

ISSUE_PER_CLOCK = 4
EX2_PER_CLOCK = 16
FMA_PER_CLOCK_WGMMA = 2048
FMA_PER_CLOCK_MMA_SYNC = 1024
SHARED_BYTES_PER_CLOCK = 128
SMS = 132
CLOCK_HZ = 1.83e9
LANES = 32


@dataclasses.dataclass
class Cost:
    """Per-warp work of a piece of code: warp-instructions, MUFU.EX2 warp-instructions, multiply-adds on
    wgmma and on mma.sync, shared-memory bytes (LDS/STS/LDSM)."""

    instructions: float = 0.0
    ex2: float = 0.0
    fma_wgmma: float = 0.0
    fma_sync: float = 0.0
    shared_bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)))

    def __mul__(self, k: float) -> Cost:
        return Cost(*(a * k for a in dataclasses.astuple(self)))

    __rmul__ = __mul__


def cycles(total: Cost, sms: int = SMS) -> dict[str, float]:
    """Cycles per SM of each bound for ``total`` (all warps of all programs) spread over ``sms`` SMs."""
    per_sm = total * (1.0 / sms)
    return {
        "issue": per_sm.instructions / ISSUE_PER_CLOCK,
        "tensor": per_sm.fma_wgmma / FMA_PER_CLOCK_WGMMA + per_sm.fma_sync / FMA_PER_CLOCK_MMA_SYNC,
        "ex2": per_sm.ex2 * LANES / EX2_PER_CLOCK,
        "shared": per_sm.shared_bytes / SHARED_BYTES_PER_CLOCK,
    }


def band_tiles(length: int, rows: int, cols: int, r: int) -> tuple[int, int]:
    """(band tiles, far tiles) summed over the cdiv(length, rows) programs of one head: a program's rows
    [p0, p0 + rows) meet key tile [j0, j0 + cols) in the band when j0 - (p0 + rows - 1) < r and
    j0 + cols - 1 - p0 > -r."""
    tiles = math.ceil(length / cols)
    band = 0
    for block in range(math.ceil(length / rows)):
        p0 = block * rows
        # j0 = t * cols: t * cols < p0 + rows - 1 + r and t * cols > p0 - r - cols + 1
        hi = min(tiles - 1, math.ceil((p0 + rows - 1 + r) / cols) - 1)
        lo = max(0, math.floor((p0 - r - cols + 1) / cols) + 1)
        band += max(0, hi - lo + 1)
    return band, tiles * math.ceil(length / rows) - band


def predict(
    length: int,
    heads: int,
    rows: int,
    cols: int,
    warps: int,
    far: Cost,
    band: Cost | None,
    once: Cost,
    r: int = 64,
    sms: int = SMS,
) -> dict:
    """Predicted time of one kernel launch over ``heads`` (B*H) heads at Lq = Lk = ``length``.

    far / band: per-warp cost of one loop iteration on each path (band None: every tile costs ``far``);
    once: per-warp cost a program pays outside its per-tile loop. Returns the per-SM cycles of each bound,
    the binding one, the time in microseconds and the tile counts per head."""
    n_band, n_far = band_tiles(length, rows, cols, r) if band is not None else (0, 0)
    if band is None:
        n_far = math.ceil(length / cols) * math.ceil(length / rows)
    programs = heads * math.ceil(length / rows)
    per_head = far * n_far + (band or far) * n_band + once * math.ceil(length / rows)
    total = per_head * (heads * warps)
    cyc = cycles(total, sms)
    bound = max(cyc, key=cyc.get)
    return {
        "length": length,
        "heads": heads,
        "programs": programs,
        "far_tiles_per_head": n_far,
        "band_tiles_per_head": n_band,
        "cycles": {k: round(v) for k, v in cyc.items()},
        "bound": bound,
        "time_us": round(cyc[bound] / CLOCK_HZ * 1e6, 2),
    }


def prediction_cell(prediction: dict, digits: int) -> str:
    """One prediction as a table cell: "time_us (bound, x plain)", the ratio only where the row has a plain twin."""
    ratio = prediction.get("vs_plain_flash_fwd")
    return f"{prediction['time_us']:.{digits}f} ({prediction['bound']}{f', {ratio:.2f}x' if ratio else ''})"
