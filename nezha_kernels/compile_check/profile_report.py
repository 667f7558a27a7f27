"""Markdown tables of a static profile (for benchmarks/NOTES.md and the README).

    python -m nezha_kernels.compile_check.profile_report DIR/profile.json [--arch 90] [--dtype bf16]

Two tables: the top-level far / band loop paths of each row (its heaviest loop where it has neither):
instructions per iteration with the inner loops at one trip, per score, EX2 per score, MMA, wgmma in flight
at a wait, cp.async groups in flight / committed per iteration, TMA loads, and the instructions a program
runs once (prologue, epilogue, "other" loops); then the issue model's predicted times.
"""

from __future__ import annotations

import argparse
import json
import sys

from .issue_model import prediction_cell

__all__ = ["loops_markdown", "model_markdown", "main"]


def _md(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in body]
    return "\n".join(lines)


def _async(e: dict) -> str:
    a = e["async"]
    parts = []
    if a["ldgsts"]:
        parts.append(f"cp.async {a['groups_in_flight']} in flight / {a['commit_groups']} per iter")
    if a["tma_loads"]:
        parts.append(f"TMA {a['tma_loads']} per iter")
    return ", ".join(parts) or "none"


def loops_markdown(rows: list[dict]) -> str:
    header = ("kernel", "be", "sm", "dtype", "D", "tile, warps, stages", "regs", "spill B", "smem B", "loop role",
              "instr / iter", "per score", "EX2 / score", "MMA / iter", "wgmma in flight", "async",
              "once / program")  # fmt: skip
    body = []
    for r in rows:
        head = [r["kernel"], r["backend"], r["arch"], r["dtype"], r["head_dim"]]
        tile = f"{r['tile'][0]}x{r['tile'][1]}, {r['warps']}, {r['stages']}"
        if r.get("status") != "ok":
            body.append([*head, tile, "", "", "", "error", (r.get("message") or "")[:80], *[""] * 6])
            continue
        top = [e for e in r["loops"] if not e["depth"]]
        main_loops = [e for e in top if e["role"] in ("far", "band")]
        if not main_loops and top:  # no roles (a kernel whose tiles all take one path): its heaviest loop
            main_loops = [max(top, key=lambda e: e["total"] + e.get("inner_loop_instructions", 0))]
        for e in main_loops:
            total = e["total"] + e.get("inner_loop_instructions", 0)
            mma = ", ".join(f"{n} {k}" for k, n in e["mma"].items()) or "-"
            flight = max(e["wgmma_batches"]) if e["wgmma_batches"] else "-"
            body.append(
                [
                    *head,
                    tile,
                    r["registers"],
                    r["spill_bytes"],
                    r["shared_bytes"],
                    e["role"],
                    total,
                    e.get("per_score_with_inner", e["per_score"]),
                    e["ex2_per_score"],
                    mma,
                    flight,
                    _async(e),
                    r["model"]["per_program_once_instructions"],
                ]
            )
    return _md(header, body)


def model_markdown(rows: list[dict], lengths) -> str:
    header = ("kernel", "be", "sm", "dtype", "D", *(f"L = {n}: us (bound, x plain)" for n in lengths))
    body = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        cells = [prediction_cell(p, 0) for p in r["model"]["predictions"]]
        body.append([r["kernel"], r["backend"], r["arch"], r["dtype"], r["head_dim"], *cells])
    return _md(header, body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nezha_kernels.compile_check.profile_report")
    parser.add_argument("profile_json")
    parser.add_argument("--arch", type=int, action="append")
    parser.add_argument("--dtype", action="append")
    parser.add_argument("--head-dim", type=int, action="append")
    args = parser.parse_args(argv)
    with open(args.profile_json) as f:
        doc = json.load(f)
    rows = [
        r
        for r in doc["rows"]
        if (not args.arch or r["arch"] in args.arch)
        and (not args.dtype or r["dtype"] in args.dtype)
        and (not args.head_dim or r["head_dim"] in args.head_dim)
    ]
    print(loops_markdown(rows))
    print()
    print(model_markdown(rows, doc["model"]["lengths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
