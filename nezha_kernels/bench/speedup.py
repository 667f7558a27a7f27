"""Speed-up of our models over transformers' NEZHA, per workload: the numbers behind the headline figure and the
one-line summary under the table.

A workload is one (model, batch x length, dtype) of the model bench (dense batches) or of the length mix (real
sentence lengths, padded vs padding-free); for each of its modes (infer, train) and each of our providers that ran,
speed-up = transformers' median time / ours (> 1: ours is faster), with the spread from the two p20-p80 ranges:
low = their p20 / our p80, high = their p80 / our p20. Where transformers did not run (n/a past its 512 tokens,
OOM, skipped) the entry keeps why, and no number.
"""

from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from collections.abc import Iterable

from .results import OK, Row

__all__ = ["Speedup", "speedups", "summary_line", "is_transformers"]


@dataclasses.dataclass(frozen=True)
class Speedup:
    workload: str  # "nezha-base 1 x 128" or "nezha-base-2L length mix 16 x 106 (57% real)"
    mode: str  # "infer" / "train"
    dtype: str
    ours: str  # our provider: a backend ("torch") or "ours padding-free" / "ours padded"
    theirs: str  # "hf-4.57.6"
    ratio: float | None = None  # their median / our median
    low: float | None = None  # their p20 / our p80
    high: float | None = None  # their p80 / our p20
    why_not: str = ""  # transformers' status when it did not run ("n/a", "OOM (> 16 GiB)", ...)


def is_transformers(provider: str) -> bool:
    return provider == "hf" or provider.startswith("hf-")


def _short(status: str) -> str:
    """A not-run status in a few words: "n/a: HF NEZHA's relative table covers max_position_embeddings=512 tokens"
    -> "n/a past its 512 tokens"; "OOM (> 16 GiB)" stays; "error: ..." -> "error"."""
    limit = re.search(r"max_position_embeddings=(\d+)", status)
    if status.startswith("n/a") and limit:
        return f"n/a past its {limit.group(1)} tokens"
    head = status.split(":")[0]
    return status if head == status else head


def _workload(row: Row) -> str:
    if row.bench == "length-mix":
        real = re.search(r"\((\d+)%\)", row.note)  # the note reads "968 of 1696 tokens real (57%); ..."
        share = f" ({real.group(1)}% real)" if real else ""
        return f"{row.op} length mix {row.batch} x {row.seq_len}{share}"
    return f"{row.op} {row.batch} x {row.seq_len}"


def speedups(rows: Iterable[Row]) -> list[Speedup]:
    """One Speedup per (workload, mode, our provider that ran), in the rows' order; model and length-mix rows only
    (op rows have no transformers peer)."""
    groups: OrderedDict[tuple, list[Row]] = OrderedDict()
    for row in rows:
        if row.bench == "model" or (row.bench == "length-mix" and row.op != "relative_attention"):
            groups.setdefault((_workload(row), row.mode, row.dtype), []).append(row)
    out = []
    for (workload, mode, dtype), members in groups.items():
        theirs = [r for r in members if is_transformers(r.provider)]
        ours = [r for r in members if not is_transformers(r.provider) and r.status == OK]
        if not theirs or theirs[0].status.startswith("skipped") or not ours:
            continue  # no transformers installed, or none of ours ran: nothing to compare
        hf = theirs[0]
        for mine in ours:
            if hf.status != OK:
                out.append(Speedup(workload, mode, dtype, mine.provider, hf.provider, why_not=_short(hf.status)))
                continue
            out.append(
                Speedup(
                    workload,
                    mode,
                    dtype,
                    mine.provider,
                    hf.provider,
                    ratio=hf.median_ms / mine.median_ms,
                    low=hf.p20_ms / mine.p80_ms,
                    high=hf.p80_ms / mine.p20_ms,
                )
            )
    return out


def summary_line(rows: Iterable[Row]) -> str | None:
    """One line: per mode the range of speed-ups (each workload's fastest of ours), the best workload, and the
    workloads transformers cannot run. None when there is nothing to compare."""
    entries = speedups(rows)
    if not entries:
        return None
    best: OrderedDict[tuple[str, str], Speedup] = OrderedDict()  # (mode, workload) -> our fastest there
    for s in entries:
        if s.ratio is not None:
            key = (s.mode, s.workload)
            if key not in best or s.ratio > best[key].ratio:
                best[key] = s
    parts = []
    for mode in OrderedDict.fromkeys(s.mode for s in entries):
        ratios = [s.ratio for (m, _), s in best.items() if m == mode]
        if ratios:
            low, high = min(ratios), max(ratios)
            parts.append(f"{mode} {high:.2f}x" if len(ratios) == 1 else f"{mode} {low:.2f}x-{high:.2f}x")
    theirs = entries[0].theirs
    line = f"speed-up over {theirs} (its median time / ours, >1 = ours faster): " + ", ".join(parts)
    if best:
        top = max(best.values(), key=lambda s: s.ratio)
        line += f"; best {top.ratio:.2f}x: {top.mode} on {top.workload}, {top.ours}"
    not_run = list(OrderedDict.fromkeys(f"{s.workload} ({s.why_not})" for s in entries if s.ratio is None))
    if not_run:
        line += f"; {theirs} did not run: " + ", ".join(not_run)
    return line
