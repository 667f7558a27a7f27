"""Tile configurations and autotuning.

Each config fixes (BLOCK_M, BLOCK_N) and derives BLOCK_P = next_pow2(BLOCK_M + BLOCK_N - 1), the
rows of the table slice a band tile can touch. Autotuning is keyed on (HEAD_DIM, LQ_KEY, LK_KEY, the
per-pair features) plus the tensors' dtypes (triton adds those), where the *_KEY are the lengths rounded up to a
power of two so that every new length does not re-tune. Under TRITON_INTERPRET=1 one small fixed config is used:
small tiles put both band and far-field tiles in tests of a few dozen rows.
"""

from __future__ import annotations

import functools
import os
import re

import torch
import triton

# The features skeleton_choice reads are in the key: they choose the tile, and the autotuner prunes only on a miss.
AUTOTUNE_KEY = ["HEAD_DIM", "LQ_KEY", "LK_KEY", "HAS_KPAD", "HAS_AMASK", "HAS_DROPOUT", "VARLEN", "HAS_HMASK", "CAUSAL"]
# "0": run the main tile that fits instead of autotuning (correctness runs such as the GPU tests).
AUTOTUNE_ENV = "NEZHA_KERNELS_TRITON_AUTOTUNE"

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the first entry of each list is the "main" config of the common case.
# Forward and dQ (the flash skeleton, benchmarks/NOTES.md "Triton flash skeleton"): 128 x 64 with 8 warps is two
# warpgroups of 64 rows, so every far-loop GEMM is wgmma on sm_90 (HGMMA 64x64x16), K/V pipelined 2 deep. Which
# tile and loop structure a call runs depends on its features and the arch: skeleton_choice (one table, below).
# fp32 uses FMA (ieee) dots that hold operands in registers: 32x16 w8 s1 (16x16 for D > 64) is spill-free.
FWD_TILES = [(128, 64, 8, 2), (64, 32, 8, 2), (32, 16, 8, 1), (128, 64, 8, 1), (64, 16, 8, 2)]
# dK/dV (BLOCK_M query rows per loop step, BLOCK_N keys per program): 64 x 64, 4 warps: one warpgroup whose far-loop
# GEMMs (K Q^T, V dO^T, P^T dO, dS^T Q) have the 64 keys as rows, HGMMA 64x64x16, Q/dO pipelined 2 deep; the band and
# the partial tile run key-major 16-query tiles (backward_dkdv.py). 8 warps on 64 keys split the queries between the
# warpgroups and recompute S^T and dP^T in both (EX2 2 per score); 64 x 128 w8 is as fast in the far loops (0.32 per
# score), heavier in the band. sm_80 (mma.sync, operands in registers): 32 x 32 w4 s2, 249-255 registers (8 warps
# compute every exponential twice; 64 x 64 w4 spills). 32x32 w8 s1 is the general loop's tile (FAR_LOOPS 0), which
# every other case runs (skeleton_choice); fp32 32x16. Head dim 128 on sm_90: 64 x 64 with 8 warps (DKDV_WIDE_SM90:
# the two warpgroups split the queries and both compute S^T and dP^T, EX2 2 per score, but it is the one far-loop tile
# that compiled spill-free at D = 128; one warpgroup per 64 keys spilled 200-360 B, benchmarks/NOTES.md "Triton
# D = 128 backward on wgmma").
DKDV_TILES = [(64, 64, 4, 2), (32, 32, 8, 1), (32, 32, 4, 2), (32, 16, 8, 1), (64, 64, 8, 2)]
# dQ at head dim 128 on sm_90: 128 x 32 w8 s2 (DQ_WIDE_SM90; 128 x 64 spilled 72 B there), far loops HGMMA 64x32x16.
DQ_TILES = [(128, 64, 8, 2), (64, 32, 8, 2), (32, 16, 8, 1), (128, 32, 8, 2)]
TILES = {"fwd": FWD_TILES, "bwd_dkdv": DKDV_TILES, "bwd_dq": DQ_TILES}
# Head dim 128 (fp32: forward too), the general loop's tiles (sm_80, per-pair features, varlen; the wgmma far-loop
# tiles of sm_90 are DQ_WIDE_SM90 / DKDV_WIDE_SM90): every general tile that fits spills (dK/dV fp16 112-136 B, fp32
# 584-704 B; dQ fp16 144-400 B, fp32 352-376 B; forward fp32 32x16 32 B on sm_90). These tiles are spill-free on
# sm_80 and sm_90, from sweeps of the AOT report (benchmarks/NOTES.md). They run first for D > 64 (the main tile when
# autotuning is off) unless skeleton_choice names another. Keyed on (kernel, input bytes).
WIDE_HEAD_TILES = {
    ("bwd_dkdv", 2): (16, 32, 8, 1),
    ("bwd_dkdv", 4): (16, 16, 8, 1),
    ("bwd_dq", 2): (32, 32, 8, 1),
    ("bwd_dq", 4): (16, 16, 8, 1),
    ("fwd", 4): (16, 16, 8, 1),
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
# Below this triton (3.6 on the GPU machines; 3.7 and 3.8 untested, treated alike) sm_90 pipelines only the kernels
# and features of pipelines_on_old_triton. Triton 3.6's software pipeliner fails ("PassManager::run failed" in
# TritonGPUPipeline, after its loop expansion, with no diagnostic) on dQ's band loop when a runtime branch guards
# the block-band scratch loads; the split loops' band and tail now run that path unbranched on sm_90 (dq_tile,
# BRANCHLESS_BAND) and compile. dQ's general loop (FAR_LOOPS 0: key padding, dropout) and its varlen variant still
# fail; the forward compiles in every variant checked but spills 200 B at D = 128 with key padding and dropout.
# benchmarks/NOTES.md "Triton 3.6 pipelining on sm_90".
PIPELINING_SM90_MIN_TRITON = (3, 9)


def pipelines_on_old_triton(kind: str, features=None) -> bool:
    """Whether a ``kind`` call with these feature constexprs runs its listed num_stages on sm_90 under triton below
    PIPELINING_SM90_MIN_TRITON: the forward and dQ without key padding, additive mask, dropout or varlen (their
    split loops at full width: every such row compiled spill-free pipelined under 3.6, D = 16 to 128, plain,
    causal-skip, sinusoid); dK/dV never (it keeps num_stages 1 there, as before)."""
    features = features or {}
    if kind not in ("fwd", "bwd_dq"):
        return False
    return not any(features.get(name, False) for name in (*PER_PAIR_FEATURES, "VARLEN"))


def dq_branchless_band(arch_major: int) -> bool:
    """BRANCHLESS_BAND of the dQ kernel: its split loops' band and tail run the table path without a runtime branch
    on the tile's position. Only on sm_90 below PIPELINING_SM90_MIN_TRITON, where 3.6's pipeliner fails on the
    branch. sm_80 keeps it (branchless, its 128 x 32 tile spilled 8 B plain, 40 B causal-skip); so does triton 3.9
    on sm_90, whose profile it leaves unchanged (branchless there: far loop 0.281 per score instead of 0.279 at
    D = 64, band 0.589 instead of 0.762; benchmarks/NOTES.md "Triton 3.6 pipelining on sm_90")."""
    return arch_major >= 9 and TRITON_VERSION < PIPELINING_SM90_MIN_TRITON


def stages_for(num_stages: int, arch_major: int, kind: str = "", features=None) -> int:
    """num_stages a ``kind`` tile (features: the call's feature constexprs) can use on a device of compute
    capability ``arch_major`` with this triton."""
    old = TRITON_VERSION < PIPELINING_SM90_MIN_TRITON
    if num_stages > 1 and arch_major >= 9 and old and not pipelines_on_old_triton(kind, features):
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


# Features that add per-pair work (mask loads, Philox) to the far loops: with them the 128 x 64 far tile spills.
PER_PAIR_FEATURES = ("HAS_KPAD", "HAS_AMASK", "HAS_DROPOUT")
# FAR_LOOPS, the key loop's structure in the forward and dQ kernels: FAR_NONE one general loop over every key tile
# (the structure before the flash skeleton), FAR_NARROW far loops at the general loop's key width (2048 scores per
# program), FAR_FULL far loops at the tile's BLOCK_N.
FAR_NONE, FAR_NARROW, FAR_FULL = 0, 1, 2
# The feature constexprs skeleton_choice reads.
CHOICE_FEATURES = (*PER_PAIR_FEATURES, "VARLEN", "HAS_HMASK", "CAUSAL")
SKELETON_KERNELS = ("fwd", "bwd_dq", "bwd_dkdv")
# dK/dV's tiles by loop structure (backward_dkdv.py): far loops on sm_90 / sm_80, the general loop.
DKDV_FAR_SM90, DKDV_GENERAL, DKDV_FAR_SM80 = DKDV_TILES[:3]
# Head dim 128 (64 < D <= 128) far-loop tiles, sm_90 under triton >= 3.9 without per-pair features or varlen
# (wide_head_far_loops): every far-loop GEMM wgmma, pipelined 2 deep.
DQ_WIDE_SM90 = DQ_TILES[3]
DKDV_WIDE_SM90 = DKDV_TILES[4]


def wide_head_far_loops(kind: str, head_dim: int, features: dict, arch_major: int) -> bool:
    """Whether a dQ or dK/dV call at 64 < D <= 128 (fp16 / bf16) runs its far loops on the sm_90 wide-head tile.

    Spill-free only there (AOT compiles, benchmarks/NOTES.md "Triton D = 128 backward on wgmma"): dQ 128 x 32 w8 at
    s2 under triton 3.9 and 3.6 (3.6: 242 registers; s1 there 255); dK/dV 64 x 64 w8 only at s2 (s1: 72 B
    under 3.9, 208 B under 3.6) and not with head mask and causal together (8 B). Varlen dQ spilled 208 B; sm_80
    (mma.sync) dQ 128 x 32 32 B, dK/dV 64 x 64 w8 2,312 B.
    """
    per_pair = any(features.get(name, False) for name in PER_PAIR_FEATURES)
    if not 64 < head_dim <= 128 or per_pair or features.get("VARLEN", False) or arch_major < 9:
        return False
    if kind == "bwd_dq":
        return True
    if TRITON_VERSION < PIPELINING_SM90_MIN_TRITON:
        return False
    return not (features.get("HAS_HMASK", False) and features.get("CAUSAL", False))


def skeleton_choice(kind: str, head_dim: int, elem_bytes: int, features=None, arch_major: int = 9):
    """(main tile, or None for the general lists' first that fits; FAR_LOOPS) of a forward, dQ or dK/dV call.

    The one table of what runs where, each entry spill-free on sm_80 and sm_90 under triton 3.9 (the compile check's
    rows and the sweeps in benchmarks/NOTES.md "Triton flash skeleton, re-landed"). fp32 FMA tiles keep one general
    loop. sm_90: far loops at 128 x 64, narrowed to the general loop's width with key padding or dropout (one
    general loop with an additive mask, and for dQ with either under triton < 3.9). sm_80 (mma.sync operands in
    registers: 249 registers already in the plain case): far loops only without per-pair features, padding-free
    layout and wide heads; one general loop else. dQ and dK/dV at 64 < D <= 128 on sm_90: far loops on the wgmma
    tiles DQ_WIDE_SM90 / DKDV_WIDE_SM90 where wide_head_far_loops allows, the wide-head tiles else.
    ``features``: constexpr name -> bool (PER_PAIR_FEATURES and VARLEN are read; None: the common case).
    """
    features = features or {}
    per_pair = any(features.get(name, False) for name in PER_PAIR_FEATURES)
    varlen = features.get("VARLEN", False)
    if elem_bytes == 4 or (kind == "fwd" and head_dim > 128):
        return None, FAR_NONE
    if kind == "bwd_dkdv":
        if wide_head_far_loops(kind, head_dim, features, arch_major):
            return DKDV_WIDE_SM90, FAR_FULL
        return _dkdv_choice(head_dim, per_pair, varlen, arch_major)
    if kind == "bwd_dq" and head_dim > 64:
        if wide_head_far_loops(kind, head_dim, features, arch_major):
            return DQ_WIDE_SM90, FAR_FULL
        # The wide-head tile, 32 x 32 (mma.sync).
        return None, FAR_NONE if per_pair or (varlen and arch_major < 9) else FAR_FULL
    old_triton = TRITON_VERSION < PIPELINING_SM90_MIN_TRITON
    # The forward's one general loop at D = 128: 128 x 64 at s1 (s2 spills 48 B on sm_80, 8 B on sm_90 with every
    # feature). An additive mask on sm_80 spills even there (8-24 B): 64 x 16, spill-free but slow (~6 instructions
    # per score: 8 warps on a 64 x 16 tile replicate work); triton 3.6 spills at 64 x 16 on sm_80 (56-96 B).
    slow_amask = features.get("HAS_AMASK", False) and arch_major < 9 and not old_triton
    wide_fwd = (64, 16, 8, 2) if slow_amask else (128, 64, 8, 1)
    general = (wide_fwd if kind == "fwd" and head_dim > 64 else None), FAR_NONE
    if arch_major < 9:
        if per_pair or varlen or head_dim > 64:
            return general
        return ((128, 32, 8, 2) if kind == "bwd_dq" else None), FAR_FULL
    if not per_pair:
        return None, FAR_FULL
    # An additive mask's [BLOCK_M, BLOCK_N] loads: even the narrow far loops spill with one (dQ with dropout 64 B;
    # the forward under triton 3.6, 8-128 B). dQ under triton 3.6 (unpipelined on sm_90): key padding + dropout +
    # head mask spills 8 B narrow.
    if features.get("HAS_AMASK", False) or (kind == "bwd_dq" and old_triton):
        return general
    return None, FAR_NARROW


# Which sinusoid calls run the band by rotation: unset, configs.rotation_band's table; "all": every one (the tests
# run the path under every feature and dtype in the interpreter; compiled, some spill); "off": none.
ROTATION_ENV = "NEZHA_KERNELS_TRITON_ROTATION"
# The kernels with a rotation band. dK/dV follows the forward (rotation_band): it rebuilds P from the forward's row
# statistics, so its scores must be the forward's, rotated operands rounded alike (backward_dkdv.py).
ROTATION_KERNELS = ("fwd", "bwd_dq", "bwd_dkdv")


def rotation_band(kind: str, head_dim: int, elem_bytes: int, features=None, arch_major: int = 9) -> bool:
    """Whether a forward, dQ or dK/dV call whose table is NEZHA's sinusoid runs the band by rotation (rotation.py, the
    SINUSOID constexpr; no block-band scratch) rather than reading the table. Part of the table above: spill-free
    on sm_80 and sm_90 under triton 3.9 (compile-check rows "*-sinusoid", benchmarks/NOTES.md "Triton band on
    tensor cores: rotation"). The path holds Q_rot (and dO_rot) and the value-side sum u next to the loop's state:
    sm_90, fp16 / bf16, D <= 64, dense, with the full far loops (no key padding, additive mask or dropout: plain,
    causal, head mask) and for the forward with the narrow ones too (key padding, dropout; triton >= 3.9). Spills
    elsewhere (bytes per thread, sm_90): one general loop (additive mask, fp32) 16-24, varlen 8, dQ with key padding
    and dropout 16, D = 128 (forward) 872; sm_80 (mma.sync operands in registers) 88-128 even plain.
    dK/dV ("bwd_dkdv") takes the path exactly where the forward does: it recomputes P from the forward's row
    statistics, so it must compute the forward's scores (spill-free there too: compile-check rows
    "bwd_dkdv ... -sinusoid").
    """
    setting = os.environ.get(ROTATION_ENV, "")
    if kind not in ROTATION_KERNELS or setting == "off":
        return False
    if setting == "all":
        return True
    if kind == "bwd_dkdv":
        return rotation_band("fwd", head_dim, elem_bytes, features, arch_major)
    features = features or {}
    if elem_bytes == 4 or arch_major < 9 or head_dim > 64 or features.get("VARLEN", False):
        return False
    far = skeleton_choice(kind, head_dim, elem_bytes, features, arch_major)[1]
    # The forward with narrow far loops spills 24 B under triton 3.6 (sm_90 unpipelined), 0 under 3.9.
    narrow_ok = kind == "fwd" and TRITON_VERSION >= PIPELINING_SM90_MIN_TRITON
    return far == FAR_FULL or (far == FAR_NARROW and narrow_ok)


# The forward's and dQ's rotation band loops (softmax.rotation_band_loop, backward_dq.dq_rotation_band_loop: the band's
# full tiles on the plain rotation path) run key tiles of min(BLOCK_N, ROTATION_LOOP_KEYS) keys (128 x 64 spilled on
# sm_90: forward 8 B plain under triton 3.9, 56 B under 3.6; dQ 256 B; benchmarks/NOTES.md "Triton rotation band loop",
# "Triton dQ rotation band loop"). They give each row's out-of-band mass (dQ: dS row sum) of a tile to one side, exact
# for tiles of at most 2R keys.
ROTATION_LOOP_KEYS = 32
# dK/dV's rotation band loop (backward_dkdv.dkdv_rotation_band_loop) runs query tiles of min(BLOCK_M,
# ROTATION_LOOP_QUERIES) rows against the program's whole key block (benchmarks/NOTES.md "Triton dK/dV rotation band
# loop"): its one-side rule needs 2R >= the key block (BLOCK_N), so the launcher passes that block to rotation_loop.
ROTATION_LOOP_QUERIES = 32
# Its Q_rot / dO_rot come from the delta kernel (two extra [B*H, Lq, D] writes, ~10 us at L = 512, B*H = 256, D = 64
# on an H100's bandwidth): worth it where dK/dV is issue-bound (the model: L <= 1k, 87.5 -> 49.6 us at 512); at 4k and
# 16k the model has dK/dV tensor-bound before and after, so the loop saves nothing there and the copies would cost
# ~3% / ~1%. Longer calls keep the general band loop. From the static model only: a GPU timing should set it.
DKDV_ROTATION_LOOP_MAX_LQ = 2048


def rotation_loop(r: int, keys: int = ROTATION_LOOP_KEYS) -> bool:
    """ROTATION_LOOP of the forward and dQ (with SINUSOID; ``keys`` their key tile) and of dK/dV (``keys`` its key
    block, BLOCK_N): max_relative_position r is wide enough for the rotation band loop (2r >= the keys a tile holds
    per query); else the band runs the general loop. Checked here, not in the kernel: a runtime branch between the
    two loops cost registers (forward, triton 3.6: 8 B of spill)."""
    return 2 * r >= keys


def main_tile(kind: str, head_dim: int, elem_bytes: int, features=None, arch_major: int = 9, kind_tiles=None):
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) a forward, dQ or dK/dV call runs: its one candidate tile among
    ``kind_tiles`` (default this process's tiles(kind))."""
    kind_tiles = tiles(kind) if kind_tiles is None else kind_tiles
    return candidates(kind, kind_tiles, head_dim, elem_bytes, features, arch_major)[0]


def rotation_block_m(head_dim: int, elem_bytes: int, features=None, arch_major: int = 9, fwd_tiles=None) -> int:
    """BLOCK_M of the forward a call runs (its one candidate tile among ``fwd_tiles``, default this process's
    tiles("fwd")): the query blocks whose starts the rotation path measures angles from, which dK/dV's query tiles
    follow (its ROT_BLOCK_M)."""
    return main_tile("fwd", head_dim, elem_bytes, features, arch_major, fwd_tiles)[0]


def _dkdv_choice(head_dim: int, per_pair: bool, varlen: bool, arch_major: int):
    """skeleton_choice for dK/dV (fp16 / bf16), from the AOT sweeps in benchmarks/NOTES.md ("Triton dK/dV on the
    flash skeleton"): far loops only without per-pair features and the padding-free layout at D <= 64 (at 64 x 64 w4
    on sm_90 key padding + dropout spills 208 B, varlen 576, every feature 696, D = 128 even plain 360); one general
    loop at the old kernel's tiles else (32 x 32 w8 s1; D > 64 the wide-head tile, except where
    wide_head_far_loops runs DKDV_WIDE_SM90)."""
    if head_dim > 64:
        return None, FAR_NONE
    if per_pair or varlen:
        return DKDV_GENERAL, FAR_NONE
    return (DKDV_FAR_SM90 if arch_major >= 9 else DKDV_FAR_SM80), FAR_FULL


def far_loops(kind: str, head_dim: int, elem_bytes: int, features: dict, arch_major: int) -> int:
    """The FAR_LOOPS constexpr the launcher passes a forward, dQ or dK/dV kernel (skeleton_choice)."""
    return skeleton_choice(kind, head_dim, elem_bytes, features, arch_major)[1]


def arch_major(t: torch.Tensor) -> int:
    """Compute capability major of t's device; 9 (the sm_90 rules) off the GPU (the interpreter)."""
    return torch.cuda.get_device_capability(t.device)[0] if t.is_cuda else 9


def candidates(kind: str, tiles, head_dim: int, elem_bytes: int, features=None, arch_major: int = 9) -> list:
    """The tiles of ``tiles`` a (kernel, head dim, input size, features, arch) may run, best first; never empty.

    The one tile of skeleton_choice (no autotuning among unchecked tiles). ``features``: the launch's feature
    constexprs (None: the common case, no masks nor dropout).
    """
    wide = WIDE_HEAD_TILES.get((kind, elem_bytes)) if head_dim > 64 else None
    skip = _wide_only(kind)
    kept = [t for t in tiles if t not in skip and _fits(kind, t[0], t[1], head_dim, elem_bytes)]
    if wide is not None and wide in tiles:
        kept = [wide] + [t for t in kept if t != wide]
    kept = kept or [t for t in tiles if t not in skip][-1:]
    if kind in SKELETON_KERNELS:
        main, _ = skeleton_choice(kind, head_dim, elem_bytes, features, arch_major)
        kept = [main if main is not None and main in tiles else kept[0]]
    return kept


def _tile(c) -> tuple[int, int, int, int]:
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def prune(configs, named_args, kind: str = "fwd", **kwargs):
    args = {**named_args, **kwargs}
    head_dim = args["HEAD_DIM"]
    q = args["Q"]
    by_tile = {_tile(c): c for c in configs}
    features = {name: args.get(name, False) for name in CHOICE_FEATURES}
    kept = [by_tile[t] for t in candidates(kind, list(by_tile), head_dim, q.element_size(), features, arch_major(q))]
    if q.is_cuda:
        major = arch_major(q)
        adjusted, seen = [], set()
        for c in kept:
            stages = stages_for(c.num_stages, major, kind, features)
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
