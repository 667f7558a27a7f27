"""Tile configurations and autotuning.

Each config fixes (BLOCK_M, BLOCK_N) and derives BLOCK_P = next_pow2(BLOCK_M + BLOCK_N - 1), the
rows of the table slice a band tile can touch. Autotuning is keyed on (HEAD_DIM, LQ_KEY, LK_KEY) plus
the tensors' dtypes (triton adds those), where the *_KEY are the lengths rounded up to a power of two
so that every new length does not re-tune. Under TRITON_INTERPRET=1 one small fixed config is used:
small tiles put both band and far-field tiles in tests of a few dozen rows.
"""

from __future__ import annotations

import functools
import os
import re

import torch
import triton

AUTOTUNE_KEY = ["HEAD_DIM", "LQ_KEY", "LK_KEY"]
# "0": run the main tile that fits instead of autotuning (correctness runs such as the GPU tests).
AUTOTUNE_ENV = "NEZHA_KERNELS_TRITON_AUTOTUNE"

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the first entry of each list is the "main" config.
# Forward (the flash skeleton, benchmarks/NOTES.md "Triton flash skeleton"): 128 x 64 with 8 warps is two
# warpgroups of 64 rows, so every GEMM is wgmma on sm_90 (HGMMA 64x64x16), K/V pipelined 2 deep; spill-free at
# D = 64 (232 registers) and D = 128 (254). 64x32 w8 s2 stays a candidate (and the head-dim-256 tile). fp32 uses
# FMA (ieee) dots that hold operands in registers: 32x16 w8 s1 is spill-free for all three kernels.
FWD_TILES = [(128, 64, 8, 2), (64, 32, 8, 2), (32, 16, 8, 1)]
# dK/dV keeps per-tile table slices (two [BLOCK_M, BLOCK_P] products per band tile): 32x32 w8 s1 is its
# spill-free tile; dQ uses the block band like the forward.
DKDV_TILES = [(32, 32, 8, 1), (64, 32, 8, 2), (32, 16, 8, 1)]
# dQ on the flash skeleton (dq.py): 128 x 64 w8 s2, two 64-row warpgroups (wgmma), spill-free (246 registers).
DQ_TILES = [(128, 64, 8, 2), (64, 32, 8, 2), (32, 16, 8, 1)]
TILES = {"fwd": FWD_TILES, "bwd_dkdv": DKDV_TILES, "bwd_dq": DQ_TILES}
# Head dim 128, backward: every tile above that fits spills (dK/dV fp16 112-136 B, fp32 584-704 B; dQ fp16
# 144-400 B, fp32 352-376 B). These tiles are spill-free on sm_80 and sm_90 (dQ fp32: 0 / 16 B), from a sweep
# of the AOT report (benchmarks/NOTES.md). They run first for D > 64 (the main tile when autotuning is off);
# the spilling tiles stay candidates so the autotuner can still time them. Keyed on (kernel, input bytes).
WIDE_HEAD_TILES = {
    ("bwd_dkdv", 2): (16, 32, 8, 1),
    ("bwd_dkdv", 4): (16, 16, 8, 1),
    ("bwd_dq", 2): (32, 32, 8, 1),
    ("bwd_dq", 4): (16, 16, 8, 1),
}
INTERPRETER_TILE = (16, 16, 1, 1)
# "gpu": under the interpreter, run the tiles a GPU runs instead of INTERPRETER_TILE (slow; the tests use
# it with NEZHA_KERNELS_TRITON_AUTOTUNE=0 to check the GPU's main tiles on the CPU).
INTERPRETER_TILES_ENV = "NEZHA_KERNELS_TRITON_INTERPRETER_TILES"


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_p(block_m: int, block_n: int) -> int:
    return triton.next_power_of_2(block_m + block_n - 1)


# Block-band mode (forward and dQ) holds a [BLOCK_M, BAND_P] fp32 tile only in the prologue and
# epilogue; past 128 columns (R > 64) the kernels use per-tile table slices instead.
MAX_BAND_P = 128


def band_p(r: int) -> int:
    """Scratch columns of block-band mode for max_relative_position r (the 2r - 1 in-band offsets), 0 if too wide."""
    width = max(16, triton.next_power_of_2(max(2 * r - 1, 1)))
    return width if width <= MAX_BAND_P else 0


def _version_tuple(text: str) -> tuple[int, ...]:
    """(3, 6, 0) from "3.6.0", "3.6.0+git1a2b" or "3.10.0rc1": the leading digits of each dotted part."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d*", piece).group()
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


TRITON_VERSION = _version_tuple(triton.__version__)
# Triton 3.6's software pipeliner aborts on these kernels for sm_90 ("PassManager::run failed" in
# TritonGPUPipeline, every num_stages=2 tile of the forward and dQ; sm_80 compiles). 3.9 compiles them.
# Versions in between are untested, so below 3.9 the tiles run unpipelined on sm_90+.
PIPELINING_SM90_MIN_TRITON = (3, 9)


def stages_for(num_stages: int, arch_major: int) -> int:
    """num_stages a tile can use on a device of compute capability ``arch_major`` with this triton."""
    if num_stages > 1 and arch_major >= 9 and TRITON_VERSION < PIPELINING_SM90_MIN_TRITON:
        return 1
    return num_stages


def make_config(block_m: int, block_n: int, num_warps: int, num_stages: int) -> triton.Config:
    kwargs = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_P": block_p(block_m, block_n)}
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


def _fits(kind: str, block_m: int, block_n: int, head_dim: int, elem_bytes: int) -> bool:
    # fp32 inputs run FMA dots whose operands live in registers: only small tiles avoid spills.
    # Wider heads double the accumulator and the operand tiles: halve the tile (the forward from D = 256 on).
    if elem_bytes == 4:
        return block_m * block_n <= 32 * 16
    if head_dim > (128 if kind == "fwd" else 64):
        return block_m * block_n <= 64 * 32
    return True


def _wide_only(kind: str) -> set[tuple[int, int, int, int]]:
    """Tiles listed for wide heads only (not in the kernel's general list)."""
    return {t for (k, _), t in WIDE_HEAD_TILES.items() if k == kind} - set(TILES[kind])


def candidates(kind: str, tiles, head_dim: int, elem_bytes: int) -> list:
    """The tiles of ``tiles`` a (kernel, head dim, input size) may run, best first; never empty."""
    wide = WIDE_HEAD_TILES.get((kind, elem_bytes)) if head_dim > 64 else None
    skip = _wide_only(kind)
    kept = [t for t in tiles if t not in skip and _fits(kind, t[0], t[1], head_dim, elem_bytes)]
    if wide is not None and wide in tiles:
        kept = [wide] + [t for t in kept if t != wide]
    return kept or [t for t in tiles if t not in skip][-1:]


def _tile(c) -> tuple[int, int, int, int]:
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def prune(configs, named_args, kind: str = "fwd", **kwargs):
    args = {**named_args, **kwargs}
    head_dim = args["HEAD_DIM"]
    q = args["Q"]
    by_tile = {_tile(c): c for c in configs}
    kept = [by_tile[t] for t in candidates(kind, list(by_tile), head_dim, q.element_size())]
    if q.is_cuda:
        major = torch.cuda.get_device_capability(q.device)[0]
        adjusted, seen = [], set()
        for c in kept:
            stages = stages_for(c.num_stages, major)
            key = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, stages)
            if key not in seen:
                seen.add(key)
                adjusted.append(c if stages == c.num_stages else make_config(*key))
        kept = adjusted
    if os.environ.get(AUTOTUNE_ENV, "1") == "0":
        kept = kept[:1]  # the main tile that fits: nothing to time
    return kept


def tiles(kind: str) -> list[tuple[int, int, int, int]]:
    """The tile list of a kernel ("fwd", "bwd_dkdv" or "bwd_dq") for this process: its general tiles
    plus its wide-head tiles. One small tile under the interpreter. prune() keeps those a call may run
    (one only with NEZHA_KERNELS_TRITON_AUTOTUNE=0), and only kept configs are compiled.
    """
    if interpreted() and os.environ.get(INTERPRETER_TILES_ENV) != "gpu":
        return [INTERPRETER_TILE]
    return gpu_tiles(kind)


def gpu_tiles(kind: str) -> list[tuple[int, int, int, int]]:
    """Every tile a kernel may run on a GPU: its general tiles, then its wide-head-only tiles."""
    return TILES[kind] + sorted(_wide_only(kind))


def autotune(kind: str):
    """Decorator: triton.autotune over ``tiles(kind)`` keyed on AUTOTUNE_KEY."""
    configs = [make_config(*t) for t in tiles(kind)]
    return triton.autotune(
        configs=configs, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": functools.partial(prune, kind=kind)}
    )
