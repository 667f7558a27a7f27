"""Our kernels against the two baselines the GPU goals name, per op cell: SDPA's flash kernel and the plain twin.

For one (dtype, B x L, head dim, mode) of the op bench: vs_sdpa = SDPA's median time / ours (our speed as a fraction
of SDPA flash's: the goal is >= 0.9 for fwd and >= 0.8 for fwd+bwd at L >= 1k, bf16) and, for the relative kernels,
vs_twin = the twin's median time / ours (<= 1; 1 / vs_twin is what the relative terms cost in time). Ratios are of
times, not of TFLOP/s: the FLOP formula credits our kernels with the relative terms' work, SDPA with none.

    python -m nezha_kernels.bench.ratios DIR/results.json   # the ratio table of every op cell (newest run of each)
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable

from .results import OK, Row

__all__ = ["annotate_ratios", "ratio_lines", "ratio_table", "GOALS"]

# The issues' goals for vs_sdpa, bf16, non-causal, L >= 1k.
GOALS = {"fwd": 0.9, "fwd+bwd": 0.8}
GOAL_MIN_LENGTH = 1024
# Whose speed is compared (ours and the twin against SDPA; the relative kernels against the twin).
VS_SDPA = ("triton", "cuda", "twin", "torch", "reference")
VS_TWIN = ("triton", "cuda")


def _cell(row: Row) -> tuple:
    return (row.bench, row.op, row.dtype, row.batch, row.seq_len, row.head_dim, row.mode, row.device_name)


def annotate_ratios(rows: list[Row]) -> list[Row]:
    """Set vs_sdpa / vs_twin on the op rows that ran where the baseline ran too (in place; returns rows)."""
    base: dict[tuple, Row] = {}
    for row in rows:
        if row.bench == "op" and row.provider in ("sdpa", "twin") and row.status == OK:
            base[(row.provider, *_cell(row))] = row
    for row in rows:
        if row.bench != "op" or row.status != OK:
            continue
        sdpa, twin = base.get(("sdpa", *_cell(row))), base.get(("twin", *_cell(row)))
        if row.provider in VS_SDPA and sdpa is not None:
            row.vs_sdpa = sdpa.median_ms / row.median_ms
        if row.provider in VS_TWIN and twin is not None:
            row.vs_twin = twin.median_ms / row.median_ms
    return rows


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}x"


def ratio_lines(rows: Iterable[Row]) -> list[str]:
    """Summary lines (none when no ratio is set): per provider, dtype and head dim, the range over L >= 1k of
    vs_sdpa per mode with the goal met or not, and of vs_twin."""
    groups: OrderedDict[tuple, list[Row]] = OrderedDict()
    for row in rows:
        if row.bench == "op" and (row.vs_sdpa is not None or row.vs_twin is not None):
            groups.setdefault((row.provider, row.dtype, row.head_dim), []).append(row)
    lines = []
    for (provider, dtype, head_dim), members in groups.items():
        long = [r for r in members if r.seq_len >= GOAL_MIN_LENGTH] or members
        parts = []
        for mode in OrderedDict.fromkeys(r.mode for r in long):
            here = [r for r in long if r.mode == mode]
            sdpa = [r.vs_sdpa for r in here if r.vs_sdpa is not None]
            twin = [r.vs_twin for r in here if r.vs_twin is not None]
            text = []
            if sdpa:
                goal = GOALS.get(mode)
                met = "" if goal is None else f" (goal {goal}: {'met' if min(sdpa) >= goal else 'NOT met'})"
                text.append(f"vs SDPA flash {_span(sdpa)}{met}")
            if twin:
                text.append(f"vs twin {_span(twin)}")
            parts.append(f"{mode} " + ", ".join(text))
        lengths = sorted({r.seq_len for r in long})
        lines.append(f"{provider} {dtype} D={head_dim}, L {lengths[0]}..{lengths[-1]}: " + "; ".join(parts))
    if lines:
        lines.insert(
            0, "speed vs baselines (their median time / ours, 1 = as fast; 1 / vs twin = relative terms' cost):"
        )
    return lines


def ratio_table(rows: Iterable[Row]) -> str:
    """Every op cell with a ratio, one line each: dtype, D, mode, B x L, provider, ms, vs_sdpa, vs_twin."""
    lines = [f"{'dtype':9} {'D':>4} {'mode':8} {'B x L':>10} {'provider':8} {'ms':>9} {'vs_sdpa':>8} {'vs_twin':>8}"]
    for r in rows:
        if r.bench == "op" and (r.vs_sdpa is not None or r.vs_twin is not None):
            sdpa = "" if r.vs_sdpa is None else f"{r.vs_sdpa:.3f}"
            twin = "" if r.vs_twin is None else f"{r.vs_twin:.3f}"
            shape, ms = f"{r.batch} x {r.seq_len}", f"{r.median_ms:.4g}"
            lines.append(
                f"{r.dtype:9} {r.head_dim:>4} {r.mode:8} {shape:>10} {r.provider:8} {ms:>9} {sdpa:>8} {twin:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from .results import latest_per_cell, read_json

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m nezha_kernels.bench.ratios DIR/results.json")
    rows = annotate_ratios(latest_per_cell(read_json(argv[0])))
    print(ratio_table(rows))
    print("\n".join(ratio_lines(rows)) or "no op cell with a baseline beside it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
