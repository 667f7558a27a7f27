"""From a cubin to profile rows: resources, loops by role, instruction classes, MMA / async summaries, costs.

Used by both backends of ``compile-check --profile``: ``disassemble`` runs triton's bundled nvdisasm
(``-c -g -gi``: code, line info, inline chains) and cuobjdump (``--dump-resource-usage``), which read
nvcc's cubins as well; ``analyze_function`` turns one function's listing into the loop entries of a row.
Scores per iteration are per warp: tile rows x tile columns / warps (the caller says what the tile is).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from . import issue_model, roles, sass

__all__ = ["tool", "disassemble", "resources", "analyze_function", "path_cost", "model_costs"]


def tool(name: str) -> str:
    """Path of triton's bundled ``cuobjdump`` / ``nvdisasm``."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found in triton's bundle ({path.parent})")
    return str(path)


def _with_file(cubin: bytes, args: list[str]) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([*args, f.name], capture_output=True, text=True, check=True).stdout


def disassemble(cubin: bytes) -> str:
    """nvdisasm listing with line info and inline chains."""
    return _with_file(cubin, [tool("nvdisasm"), "-c", "-g", "-gi"])


_RES = re.compile(r"Function (\S+?):?\s*$")


def resources(cubin: bytes) -> dict[str, dict]:
    """{function: {registers, stack, local, shared, spill_bytes}} from ``cuobjdump --dump-resource-usage``."""
    text = _with_file(cubin, [tool("cuobjdump"), "--dump-resource-usage"])
    out, name = {}, None
    for line in text.splitlines():
        m = _RES.search(line.strip())
        if m and line.strip().startswith("Function"):
            name = m.group(1)
            continue
        if name and "REG:" in line:
            vals = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}
            out[name] = {
                "registers": vals.get("reg"),
                "stack": vals.get("stack", 0),
                "local": vals.get("local", 0),
                "static_shared": vals.get("shared", 0),
                "spill_bytes": vals.get("stack", 0) + vals.get("local", 0),
            }
    return out


def path_cost(instrs) -> issue_model.Cost:
    """Per-warp model cost of a list of instructions (one pass)."""
    cost = issue_model.Cost(instructions=len(instrs))
    for ins in instrs:
        if ins.cls == "ex2":
            cost.ex2 += 1
        elif ins.cls == "mma":
            fma = sass.mma_fma(ins.opcode)
            if ins.base.endswith("GMMA"):
                cost.fma_wgmma += fma
            else:
                cost.fma_sync += fma
        cost.shared_bytes += sass.shared_bytes(ins)
    return cost


def _wgmma_operand_bytes(instrs) -> int:
    """Shared-memory bytes one warp's share of its HGMMA read as operands (gdesc = shared; 2-byte inputs)."""
    total = 0
    for ins in instrs:
        if ins.base != "HGMMA":
            continue
        m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", ins.opcode)
        if not m:
            continue
        mm, nn, kk = map(int, m.groups())
        ops = ins.operands.split(",")
        a_shared = len(ops) > 1 and "gdesc" in ops[1]
        total += (mm * kk * 2 * a_shared + nn * kk * 2) // 4
    return total


def _entry(fn, loop, role: str, path: sass.Path, scores: float) -> dict:
    counts = path.counts()
    total = len(path.instrs)
    mma = Counter(sass.mma_shape(i.opcode) for i in path.instrs if i.cls == "mma")
    cost = path_cost(path.instrs)
    entry = {
        "loop": loop.index,
        "depth": loop.depth,
        "header": f"0x{fn.blocks[loop.header].start:04x}",
        "role": role,
        "instructions": {c: counts.get(c, 0) for c in sass.CLASSES},
        "total": total,
        "scores_per_iter": scores,
        "per_score": round(total / scores, 4) if scores else None,
        "ex2_per_score": round(issue_model.LANES * counts.get("ex2", 0) / scores, 4) if scores else None,
        "mma": dict(sorted(mma.items())),
        "wgmma_batches": sass.wgmma_batches(path.instrs),
        "async": sass.async_in_flight(path.instrs),
        "shared_bytes": int(cost.shared_bytes),
        "wgmma_shared_operand_bytes": _wgmma_operand_bytes(path.instrs),
        "bssy_bsync": sum(i.base in ("BSSY", "BSYNC") for i in path.instrs),
        "inner_loops": path.inner_loops,
        "blocks": len(path.blocks),
        "rare_blocks": path.rare_blocks,
    }
    return entry


def _picked(fn, loop) -> list[tuple[str, sass.Path]]:
    """(role, path) entries of one loop: far and band paths where it has both, else its one role."""
    paths = sass.best_paths(fn, loop)
    if "band" in paths and "far" in paths:
        return [("far", paths["far"]), ("band", paths["band"])]
    if "band" in paths:
        return [("band", paths["band"])]
    return [(roles.loop_role(fn, loop), paths["far"])] if "far" in paths else []


def _loop_scores(fn, loop, band_scores, default: float) -> tuple[float, str]:
    """(scores per iteration, function) of a loop with a band path: ``band_scores`` (a number), or by the function
    the loop is written in (a {function name: scores} map: the function most of its instructions' frames name,
    e.g. the Triton forward's ``rotation_band_loop`` of 32-key tiles and its general ``band_loop`` of 16); else
    ``default``."""
    if not band_scores:
        return default, ""
    if not isinstance(band_scores, dict):
        return band_scores, ""
    votes: Counter = Counter()
    for b in loop.own_blocks:
        for ins in fn.blocks[b].instrs:
            names = (roles.function_at(path, line) for path, line in ins.frames)
            name = next((n for n in names if n in band_scores), "")
            if name:
                votes[name] += 1
    if not votes:
        return default, ""
    name = votes.most_common(1)[0][0]
    return band_scores[name], name


def analyze_function(fn: sass.Function, scores_per_iter: float, band_scores_per_iter=None) -> dict:
    """Loops (one entry per path role), the straight-line part and whole-function summaries of one function.
    Keys starting with "_" hold model costs (issue_model.Cost), not JSON.

    ``band_scores_per_iter``: scores per iteration of a loop with a band path (the split Triton kernels' band
    loops, which run narrower tiles than their far loops, with or without a branch inside), a number or a
    {function name: scores} map (_loop_scores); default ``scores_per_iter``. Such a loop's model costs are scaled
    to ``scores_per_iter`` scores (the model counts band tiles of the far width).

    A loop's inner loops are counted apart (their own entries) and, for the model and the *_with_inner
    fields, added to each iteration of the enclosing path at one trip each: a lower bound where they run
    more (row-staging loops over several rows per thread)."""
    sass.analyze_cfg(fn)
    roles.assign_roles(fn)
    picked = {loop.index: _picked(fn, loop) for loop in fn.loops}
    memo: dict[int, issue_model.Cost] = {}

    def loop_cost(index: int) -> issue_model.Cost:
        """One iteration of a loop's first path (far where it has one), its inner loops included."""
        if index not in memo:
            paths = picked[index]
            memo[index] = issue_model.Cost()
            if paths:
                path = paths[0][1]
                memo[index] = path_cost(path.instrs) + sum((loop_cost(i) for i in path.inner_loops), issue_model.Cost())
        return memo[index]

    loops, costs = [], []
    for loop in fn.loops:
        loop_roles = [role for role, _ in picked[loop.index]]
        scores, function = scores_per_iter, ""
        if "band" in loop_roles:
            scores, function = _loop_scores(fn, loop, band_scores_per_iter, scores_per_iter)
        for role, path in picked[loop.index]:
            entry = _entry(fn, loop, role, path, scores)
            inner = sum((loop_cost(i) for i in path.inner_loops), issue_model.Cost())
            entry["inner_loop_instructions"] = round(inner.instructions)
            with_inner = entry["total"] + inner.instructions
            entry["per_score_with_inner"] = round(with_inner / scores, 4) if scores else None
            loops.append(entry)
            # Top-level loops, and far-only loops at any depth (the CUDA forward runs its far tiles in a loop
            # nested in a loop over the two sides, whose own far path skips it).
            if loop.parent is None or loop_roles == ["far"]:
                scaled = (path_cost(path.instrs) + inner) * (scores_per_iter / scores if scores else 1.0)
                costs.append((role, scaled, loop_roles == ["far"], function))
    line = sass.straight_line(fn)
    every = Counter(sass.mma_shape(i.opcode) for i in fn.instrs if i.cls == "mma")
    return {
        "function": fn.name,
        "sass_instructions": len(fn.instrs),
        "mma_kinds": dict(sorted(every.items())),
        "tma": any(i.base.startswith("UTMA") for i in fn.instrs),
        "cp_async": any(i.base == "LDGSTS" for i in fn.instrs),
        "loops": loops,
        "straight_line": {"total": len(line.instrs), "instructions": dict(sorted(line.counts().items()))},
        "_line_cost": path_cost(line.instrs),
        "_path_costs": costs,
    }


def model_costs(analysis: dict, other_trips: int = 1, band_functions=()):
    """(far, band or None, once) per-warp costs for issue_model.predict from ``analyze_function``'s result,
    over the top-level loops (inner loops inside their parents' costs): far / band the heaviest far / band
    path (band None when the kernel has none; a kernel without roles gets its heaviest loop as "far"), once
    the straight-line part plus each "other" loop ``other_trips`` times. Far tiles run a far-only loop where
    the kernel has one (at any depth): the far path of a loop that also has a band path is then that loop's
    out-of-band case (the split kernels' band loop on a tile past the band; the CUDA forward's loop over the
    two sides, around its far-tile loop), not a far tile. ``band_functions``: band-loop functions in order of
    preference (profile_triton.TILE_GEOMETRY's map): band tiles run the first one the kernel has (the forward's
    rotation band loop; its general band loop then only takes the partial last tile, which the model's lengths
    do not have)."""
    costs = analysis["_path_costs"]
    far_only = [c for role, c, only, _ in costs if role == "far" and only]
    far = far_only or [c for role, c, _, _ in costs if role == "far"]
    band_entries = [(c, name) for role, c, _, name in costs if role == "band"]
    present = [f for f in band_functions if any(name == f for _, name in band_entries)]
    band = [c for c, name in band_entries if not present or name == present[0]]
    other = [c for role, c, _, _ in costs if role == "other"]
    if not far and not band and other:  # no roles at all: the heaviest loop is the per-tile loop
        heaviest = max(other, key=lambda c: c.instructions)
        far, other = [heaviest], [c for c in other if c is not heaviest]
    elif not far:
        far, band = band, []
    once = analysis["_line_cost"]
    for c in other:
        once = once + c * other_trips
    pick = max(far, key=lambda c: c.instructions) if far else issue_model.Cost()
    band_pick = max(band, key=lambda c: c.instructions) if band else None
    return pick, band_pick, once
