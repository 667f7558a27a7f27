"""The printed table: one block per (bench, op, dtype, mode), one line per shape, one column per provider.

A cell reads "median ms [p20-p80] | TFLOP/s | peak MiB" (TFLOP/s for ops only); cells that did not run show
their status (OOM, n/a, timeout, error). Providers skipped everywhere are listed under the table with why; the last
lines sum up the speed-up over transformers (bench/speedup.py) when both ran, and our kernels' speed against SDPA's
flash kernel and the plain twin (bench/ratios.py) when those ran beside them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from .ratios import ratio_lines
from .results import OK, Row
from .speedup import summary_line

__all__ = ["format_table", "format_cell"]


def _short_status(status: str) -> str:
    for word in ("OOM", "n/a", "timeout", "skipped", "error"):
        if status.startswith(word):
            return status if word == "OOM" else word
    return status


def _ms(value: float) -> str:
    """3 significant digits, but never scientific notation: 0.386, 12.5, 1,064, 84,190."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_cell(row: Row) -> str:
    if row.status != OK:
        return _short_status(row.status)
    parts = [f"{_ms(row.median_ms)} ms [{_ms(row.p20_ms)}-{_ms(row.p80_ms)}]"]
    if row.tflops is not None:
        parts.append(f"{row.tflops:.3g} TF/s")
    if row.peak_mib is not None:
        parts.append(f"{row.peak_mib:.0f} MiB")
    return " | ".join(parts)


def format_table(rows: Iterable[Row]) -> str:
    rows = list(rows)
    lines: list[str] = []
    skipped: dict[str, str] = {}
    errors: list[str] = []
    groups: OrderedDict[tuple, list[Row]] = OrderedDict()
    for row in rows:
        groups.setdefault((row.bench, row.op, row.dtype, row.mode), []).append(row)
    for (bench, op, dtype, mode), members in groups.items():
        providers = list(OrderedDict.fromkeys(r.provider for r in members))
        shown = [p for p in providers if not all(r.status.startswith("skipped") for r in members if r.provider == p)]
        for p in providers:
            if p not in shown:
                skipped[p] = next(r.status for r in members if r.provider == p)[len("skipped: ") :]
        errors += [
            f"{r.provider} {r.dtype} {r.mode} {r.shape}: {r.status}" for r in members if r.status.startswith("error")
        ]
        if not shown:
            continue
        shapes = list(OrderedDict.fromkeys((r.batch, r.seq_len) for r in members))
        cells = {(r.provider, r.batch, r.seq_len): format_cell(r) for r in members}
        key_header = "B x L"
        table = [[key_header] + shown]
        for b, length in shapes:
            table.append([f"{b} x {length}"] + [cells.get((p, b, length), "-") for p in shown])
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        unit = f"[B, {members[0].heads}, L, {members[0].head_dim}]" if bench == "op" else "batch x length"
        lines.append(f"\n{bench} {op} {unit}  dtype={dtype}  mode={mode}  ({members[0].device_name})")
        for i, line in enumerate(table):
            lines.append(
                "  ".join(
                    cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(line, widths, strict=True))
                )
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
    if skipped:
        lines.append("\nskipped providers:")
        lines += [f"  {p}: {why}" for p, why in skipped.items()]
    if errors:
        lines.append("\nerrors:")
        lines += [f"  {e}" for e in errors]
    summary = summary_line(rows)
    if summary:
        lines.append("\n" + summary)
    ratios = ratio_lines(rows)
    if ratios:
        lines.append("\n" + "\n".join(ratios))
    return "\n".join(lines).lstrip("\n")
