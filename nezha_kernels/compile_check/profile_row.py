"""One profile row: a compiled kernel's resources, loops by role and the H100 model's predictions.

Shared by profile (the Triton rows and the command) and profile_cuda, which import it and not each other.
"""

from __future__ import annotations

from pathlib import Path

from . import issue_model, profile_analyze, sass

__all__ = ["LENGTHS", "HEADS", "R", "occupancy", "analyze_row"]

LENGTHS = (512, 1024, 4096, 16384)
HEADS = (16, 16)  # B, H of the model's predictions
R = 64  # max_relative_position of every public NEZHA checkpoint


def occupancy(registers: int | None, shared: int | None, warps: int, arch: int) -> int | None:
    """Resident blocks per SM from registers (allocated per warp in 256-register units), shared memory
    (228 KiB per SM on sm_90, 164 KiB on sm_80, 1 KiB reserved per block) and the 64-warp, 32-block limits."""
    if not registers:
        return None
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = 65536 // (per_warp * warps)
    smem_sm = (228 if arch >= 90 else 164) * 1024
    by_smem = smem_sm // ((shared or 0) + 1024)
    return max(0, min(by_regs, by_smem, 64 // warps, 32))


def _scores(rows: int, cols: int, warps: int) -> float:
    return rows * cols / warps


def analyze_row(
    meta: dict,
    cubin: bytes,
    function: str | None,
    out_dir: Path | None,
    sass_text: str | None = None,
    functions: list | None = None,
):
    """Fill ``meta`` (kernel, backend, arch, dtype, head_dim, tile, warps, stages, rows, cols, other_trips,
    compiler, shared_bytes; optional band_cols: the columns of a band loop's iteration, a number or a {function
    name: columns} map, default cols) with
    the analysis of ``function`` in ``cubin`` (the only one if None).
    ``sass_text`` / ``functions``: the cubin's listing and its parse, when the caller has them already."""
    text = sass_text if sass_text is not None else profile_analyze.disassemble(cubin)
    functions = functions if functions is not None else sass.parse(text)
    fn = next((f for f in functions if function is None or f.name == function), None)
    if fn is None:
        return {**meta, "status": "error", "message": f"function {function} not in the cubin"}
    res = profile_analyze.resources(cubin).get(fn.name, {})
    scores = _scores(meta["rows"], meta["cols"], meta["warps"])
    band_cols = meta.get("band_cols") or meta["cols"]
    if isinstance(band_cols, dict):  # per band-loop function (profile_triton.TILE_GEOMETRY)
        band_scores = {name: _scores(meta["rows"], cols, meta["warps"]) for name, cols in band_cols.items()}
    else:
        band_scores = _scores(meta["rows"], band_cols, meta["warps"])
    analysis = profile_analyze.analyze_function(fn, scores, band_scores)
    band_functions = tuple(band_cols) if isinstance(band_cols, dict) else ()
    far, band, once = profile_analyze.model_costs(analysis, meta.get("other_trips", 1), band_functions)
    heads = HEADS[0] * HEADS[1]
    shared = meta.get("shared_bytes")
    if shared is None:
        shared = res.get("static_shared")
    row = {
        **meta,
        "status": "ok",
        "registers": res.get("registers"),
        "spill_bytes": res.get("spill_bytes"),
        "shared_bytes": shared,
        "occupancy_blocks_per_sm": occupancy(res.get("registers"), shared, meta["warps"], meta["arch"]),
        **{k: v for k, v in analysis.items() if not k.startswith("_")},
        "model": {
            "B*H": f"{HEADS[0]}*{HEADS[1]}",
            "R": R,
            "per_program_once_instructions": round(once.instructions),
            "predictions": [
                issue_model.predict(length, heads, meta["rows"], meta["cols"], meta["warps"], far, band, once, R)
                for length in LENGTHS
            ],
        },
    }
    if out_dir is not None:
        name = f"{meta['kernel']}_sm{meta['arch']}_{meta['dtype']}_d{meta['head_dim']}.sass"
        (out_dir / name).write_text(_function_text(text, fn.name))
        row["sass_file"] = name
    return row


def _function_text(text: str, name: str) -> str:
    """The part of an nvdisasm listing that belongs to one function (the whole listing if not found)."""
    marker = f".text.{name}"
    start = text.find(f"//--------------------- {marker} ")
    if start < 0:
        return text
    end = text.find("//--------------------- .text.", start + 10)
    return text[start : end if end > 0 else len(text)]
