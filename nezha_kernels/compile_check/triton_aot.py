"""Ahead-of-time compilation of every Triton kernel for real GPU architectures, without a GPU.

``run(archs)`` compiles each kernel with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
and reads registers / shared memory / spills from the cubin with triton's bundled cuobjdump. The grid is cut
to keep the runtime to a few minutes on 2 cores (each compile takes ~5 s): see _jobs. Status "error" on a
compile failure or shared memory over the arch limit (sm_80: 163 KiB, sm_90: 227 KiB).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import tempfile
from pathlib import Path

from .rows import CompileRow

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
HEAD_DIMS = (16, 32, 64, 128)
FULL_GRID_HEAD_DIM = 64
DTYPES = {"fp16": 2, "bf16": 2, "fp32": 4}
MAIN_R = 64  # max_relative_position of every public NEZHA checkpoint: block-band mode, BAND_P = 128
BLOCK_BAND_KERNELS = ("fwd", "bwd_dq")
VARLEN_HEAD_DIMS = (64, 128)  # the padding-free rows: main configs (dtypes: varlen_dtypes)


def varlen_dtypes(arch: int, grid: str) -> tuple[str, ...]:
    """The padding-free rows' dtypes: fp16 and bf16 in the full grid; in the main grid (CI's time) one per arch, bf16
    on sm_90 and fp16 on sm_80 (the same code but the dot type: registers within 2 of each other in every row)."""
    if grid == "full":
        return ("fp16", "bf16")
    return ("bf16",) if arch >= 90 else ("fp16",)


# Pointer arguments and their element types (None: the input dtype).
_POINTERS = {
    "Q": None,
    "K": None,
    "V": None,
    "T": None,
    "OUT": None,
    "DOUT": None,
    "DQ": None,
    "DK": None,
    "DV": None,
    "QROT": None,
    "GROT": None,
    "ROTQ": None,
    "ROW_MAX": "fp32",
    "ROW_LOGSUM": "fp32",
    "WS": "fp32",
    "ROT": "fp32",
    "DELTA": "fp32",
    "STATS": "fp32",
    "KPAD": "u8",
    "AMASK": "fp32",
    "HMASK": "fp32",
    "CU_Q": "i32",
    "CU_K": "i32",
}
_FLOATS = {"scale", "dropout_p", "dropout_scale"}


# What the JIT specializes on a contiguous launch (q/k/v/table/outputs contiguous, D = 64, R = 64,
# masks as attention.py builds them): integer arguments equal to 1 become constants, pointers and
# integers divisible by 16 get tt.divisibility = 16. Compiling without these (every stride a generic
# i32) builds a 64-bit address per element and over-reports registers: it is not the code a GPU runs.
_UNIT_STRIDES = {"stride_qd", "stride_kd", "stride_vd", "stride_td", "stride_od", "stride_gd", "stride_pn", "stride_an"}
_DIVISIBLE_INTS = {
    "stride_qb",
    "stride_qh",
    "stride_qm",
    "stride_kb",
    "stride_kh",
    "stride_kn",
    "stride_vb",
    "stride_vh",
    "stride_vn",
    "stride_tr",
    "stride_ob",
    "stride_oh",
    "stride_om",
    "stride_gb",
    "stride_gh",
    "stride_gm",
    "R",
    "LQ_KEY",
    "LK_KEY",
}


def launch_signature(fn, dtype: str, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs with the unit strides added, divisibility attrs) of a contiguous launch."""
    sig, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in _UNIT_STRIDES and name not in consts:
            consts[name] = 1
        if name in consts:
            sig[name] = "constexpr"
            continue
        if name in _POINTERS:
            sig[name] = "*" + (_POINTERS[name] or dtype)
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
        if name in _POINTERS or name in _DIVISIBLE_INTS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, spill bytes = stack + local) from triton's bundled cuobjdump."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    reg = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    local = re.search(r"LOCAL:(\d+)", text)
    spill = (int(stack.group(1)) if stack else 0) + (int(local.group(1)) if local else 0)
    return (int(reg.group(1)) if reg else None), spill


KERNEL_FUNCTIONS = {
    "fwd": "_relattn_fwd_kernel",
    "bwd_dkdv": "_relattn_bwd_dkdv_kernel",
    "bwd_dq": "_relattn_bwd_dq_kernel",
}
# The common case of a call: no masks, no causal, no dropout, no head mask, dense layout.
PLAIN_FEATURES = dict(
    HAS_KPAD=False, HAS_AMASK=False, HAS_HMASK=False, CAUSAL=False, CAUSAL_SKIP=False, HAS_DROPOUT=False, VARLEN=False
)

_CAUSAL_SKIP = dict(PLAIN_FEATURES, CAUSAL=True, CAUSAL_SKIP=True)
# The compile check's feature sets by variant name (the last word of a row's label).
VARIANT_FEATURES = {
    "plain": PLAIN_FEATURES,
    "all-features": dict(
        HAS_KPAD=True, HAS_AMASK=True, HAS_HMASK=True, CAUSAL=True, CAUSAL_SKIP=False, HAS_DROPOUT=True, VARLEN=False
    ),
    # Causal without masks: the key loops end at a runtime bound (skipping future tiles).
    "causal-skip": _CAUSAL_SKIP,
    # Padding-free (cu_seqlens): every feature such a call can have (it takes no key padding nor additive mask,
    # so causal skips future tiles).
    "varlen": dict(_CAUSAL_SKIP, HAS_HMASK=True, HAS_DROPOUT=True, VARLEN=True),
    # Padded training batches: key padding, dropout, head mask (the forward's and dQ's narrow far loops on sm_90).
    "padding-dropout": dict(PLAIN_FEATURES, HAS_KPAD=True, HAS_HMASK=True, HAS_DROPOUT=True),
}
# The same feature sets with NEZHA's own sinusoid table (rel_table=None): the forward's and dQ's rotation path
# (SINUSOID, triton_kernels/rotation.py) where configs.rotation_band runs it.
SINUSOID_SUFFIX = "-sinusoid"
VARIANT_FEATURES.update({name + SINUSOID_SUFFIX: features for name, features in list(VARIANT_FEATURES.items())})


def make_job(kernel: str, d: int, dtype: str, tile, features: dict, variant: str, arch: int) -> tuple:
    """One compile job (kernel, function name, label, arch, dtype, constexprs, num_warps, num_stages) with the
    constexprs the launcher passes for this tile (FAR_LOOPS as configs.far_loops gives it for the features and
    ``arch``); num_stages as the autotuner runs it on ``arch``."""
    from ..triton_kernels import configs

    bm, bn, warps, stages = tile
    stages = configs.stages_for(stages, arch // 10, kernel, features)
    sinusoid = variant.endswith(SINUSOID_SUFFIX)
    constexprs = dict(
        HEAD_DIM=d,
        BLOCK_D=max(16, d),
        FMA_DOTS=dtype == "fp32",
        RELATIVE=True,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_P=configs.block_p(bm, bn),
        **features,
    )
    if kernel in BLOCK_BAND_KERNELS:
        rotation = sinusoid and configs.rotation_band(kernel, d, DTYPES[dtype], features, arch // 10)
        if sinusoid and not rotation:
            raise ValueError(f"{kernel} {variant}: configs.rotation_band keeps the scratch path for these features")
        constexprs["SINUSOID"] = rotation
        constexprs["BAND_P"] = 0 if rotation else configs.band_p(MAIN_R)
        constexprs["ROTATION_LOOP"] = rotation and configs.rotation_loop(MAIN_R)
        if kernel == "bwd_dq":  # q_rot / dO_rot from the delta kernel where dK/dV runs its rotation band loop
            constexprs["ROT_BLOCK_M"] = _dq_rot_block_m(d, dtype, features, arch) if rotation else 0
    elif kernel == "bwd_dkdv":  # the band by rotation where the forward takes it, from the forward's query blocks
        rotation = sinusoid and configs.rotation_band(kernel, d, DTYPES[dtype], features, arch // 10)
        if sinusoid and not rotation:
            raise ValueError(f"{kernel} {variant}: configs.rotation_band keeps the table path for these features")
        constexprs["SINUSOID"] = rotation
        fwd_tiles = configs.gpu_tiles("fwd")
        block_m = configs.rotation_block_m(d, DTYPES[dtype], features, arch // 10, fwd_tiles) if rotation else 0
        constexprs["ROT_BLOCK_M"] = block_m
        constexprs["ROTATION_LOOP"] = rotation and configs.rotation_loop(MAIN_R, bn)
    if kernel in configs.SKELETON_KERNELS:
        constexprs["FAR_LOOPS"] = configs.far_loops(kernel, d, DTYPES[dtype], features, arch // 10)
    if kernel == "fwd":
        constexprs["NEGATIVE_SCALE"] = False  # the common case (a negative scale compiles its own kernel)
    if kernel == "bwd_dq":
        constexprs["BRANCHLESS_BAND"] = configs.dq_branchless_band(arch // 10)
    label = f"{dtype} D={d} {bm}x{bn} w{warps} s{stages} {variant}"
    return (kernel, KERNEL_FUNCTIONS[kernel], label, arch, dtype, constexprs, warps, stages)


def _dq_rot_block_m(d: int, dtype: str, features: dict, arch: int) -> int:
    """dQ's ROT_BLOCK_M as the launcher passes it at L <= configs.DKDV_ROTATION_LOOP_MAX_LQ (KernelCall.rotation_loop
    for dK/dV: the delta kernel writes q_rot / dO_rot then), 0 where it does not write them."""
    from ..triton_kernels import configs

    per_pair = any(features.get(name, False) for name in configs.PER_PAIR_FEATURES)
    major = arch // 10
    dkdv_far = configs.far_loops("bwd_dkdv", d, DTYPES[dtype], features, major)
    if per_pair or features.get("VARLEN", False) or dkdv_far == 0:
        return 0
    if not configs.rotation_band("bwd_dkdv", d, DTYPES[dtype], features, major):
        return 0
    block_m = configs.rotation_block_m(d, DTYPES[dtype], features, major, configs.gpu_tiles("fwd"))
    tile = configs.main_tile("bwd_dkdv", d, DTYPES[dtype], features, major, configs.gpu_tiles("bwd_dkdv"))
    inside = block_m % min(tile[0], configs.ROTATION_LOOP_QUERIES) == 0
    return block_m if inside and configs.rotation_loop(MAIN_R, tile[1]) else 0


def _jobs(archs, grid: str = "full"):
    """(kernel, function name, config label, arch, dtype, constexprs, num_warps, num_stages) to compile.

    grid "full": D = 64 x every kept config (fp16, fp32; bf16 main config only: same code as fp16 but
    the dot type) with every feature on, plus the plain variant of the main configs, and the main
    config of each kernel for D = 16, 32, 128 in fp16 (fp32 too for D = 128, the largest tiles' case).
    grid "main": the main D = 64 configs (fp16 plain and every feature, fp32 every feature, bf16 every feature for
    the forward and dQ on sm_90), the fp32 D = 128 main forward and the fp16 D = 128 main backward: what the test
    suite compiles.
    Both grids: the bf16 D = 128 dQ and dK/dV in the plain variant (full grid: causal-skip too) where
    configs.wide_head_far_loops runs sm_90's wgmma tiles; the padding-free variant (VARLEN) of each kernel's main
    config, D = 64 and 128 (varlen_dtypes), (forward, dQ) key padding with dropout in bf16, and (forward, dQ, dK/dV)
    with NEZHA's own table ("*-sinusoid": the band by rotation) in the plain, causal-skip and padding-dropout
    variants where configs.rotation_band runs it. Each row compiles the tile and FAR_LOOPS the launcher runs for its
    features on its arch (configs.candidates / configs.far_loops).
    """
    from ..triton_kernels import configs

    kernels = {k: (fn, configs.gpu_tiles(k)) for k, fn in KERNEL_FUNCTIONS.items()}
    every, plain, causal_skip, varlen = (
        VARIANT_FEATURES[v] for v in ("all-features", "plain", "causal-skip", "varlen")
    )
    jobs = []

    def main(kernel, d, elem_bytes, features):
        """The tile a launch with these features runs on ``arch`` (autotuning off: the first candidate)."""
        return configs.candidates(kernel, kernels[kernel][1], d, elem_bytes, features, arch // 10)[0]

    def add(kernel, d, dtype, tile, features, variant, arch):
        jobs.append(make_job(kernel, d, dtype, tile, features, variant, arch))

    for arch in archs:
        for kernel, (_, tiles) in kernels.items():
            for dtype in ("fp16", "bf16", "fp32"):
                kept = configs.candidates(kernel, tiles, 64, DTYPES[dtype], every, arch // 10)
                if grid == "main":  # bf16's every-feature row: the block-band kernels on sm_90
                    kept = kept[:1] if dtype != "bf16" or (kernel in BLOCK_BAND_KERNELS and arch >= 90) else []
                elif dtype == "bf16":
                    kept = kept[:1]
                for tile in kept:
                    add(kernel, 64, dtype, tile, every, "all-features", arch)
            for features, variant in ((plain, "plain"), (causal_skip, "causal-skip")):
                add(kernel, 64, "fp16", main(kernel, 64, 2, features), features, variant, arch)
            if kernel in BLOCK_BAND_KERNELS:
                features = VARIANT_FEATURES["padding-dropout"]
                add(kernel, 64, "bf16", main(kernel, 64, 2, features), features, "padding-dropout", arch)
            for d in VARLEN_HEAD_DIMS:
                for dtype in varlen_dtypes(arch, grid):
                    add(kernel, d, dtype, main(kernel, d, 2, varlen), varlen, "varlen", arch)
            if kernel in configs.ROTATION_KERNELS:  # NEZHA's own table: the band by rotation, where configs runs it
                for dtype, variant in (("bf16", "plain"), ("fp16", "causal-skip"), ("bf16", "padding-dropout")):
                    features = VARIANT_FEATURES[variant]
                    if configs.rotation_band(kernel, 64, 2, features, arch // 10):
                        add(kernel, 64, dtype, main(kernel, 64, 2, features), features, variant + SINUSOID_SUFFIX, arch)
            if grid == "full":
                for d in (16, 32, 128):
                    for dtype in ("fp16", "fp32") if d == 128 else ("fp16",):
                        add(kernel, d, dtype, main(kernel, d, DTYPES[dtype], every), every, "all-features", arch)
        if grid == "main":
            add("fwd", 128, "fp32", main("fwd", 128, 4, every), every, "all-features", arch)
            for kernel in ("bwd_dkdv", "bwd_dq"):  # head dim 128 training in fp16 / bf16: the wide-head tiles
                add(kernel, 128, "fp16", main(kernel, 128, 2, every), every, "all-features", arch)
        # Head dim 128 without per-pair features: sm_90's wgmma far-loop tiles (configs.wide_head_far_loops).
        for kernel in ("bwd_dkdv", "bwd_dq"):
            variants = ("plain",) if grid == "main" else ("plain", "causal-skip")
            for variant in variants if configs.wide_head_far_loops(kernel, 128, plain, arch // 10) else ():
                features = VARIANT_FEATURES[variant]
                add(kernel, 128, "bf16", main(kernel, 128, 2, features), features, variant, arch)
        jobs.append(
            (
                "bwd_delta",
                "_relattn_bwd_delta_kernel",
                "fp16 D=64 64 rows",
                arch,
                "fp16",
                dict(HEAD_DIM=64, BLOCK_D=64, BLOCK_M=64, RELATIVE=True, HAS_HMASK=False, ROT_BLOCK_M=0),
                4,
                1,
            )
        )
    return jobs


def _worker_environment() -> None:
    """Pool initializer: the spawned worker (never this process) compiles real kernels, not interpreted ones."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns when unset; 1 = its default


def _compile(job) -> tuple[int | None, int, int | None] | str:
    """In a worker: (registers, shared bytes, spill bytes) of one job, or the compile error as text."""
    kernel, fn_name, label, arch, dtype, constexprs, warps, stages = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..triton_kernels import backward, backward_dkdv, backward_dq, configs, forward

    if configs.interpreted():
        raise RuntimeError("triton_aot._compile runs in a worker started without TRITON_INTERPRET")
    fn = getattr({"fwd": forward, "bwd_dq": backward_dq, "bwd_dkdv": backward_dkdv}.get(kernel, backward), fn_name)
    try:
        signature, consts, attrs = launch_signature(fn, dtype, constexprs)
        src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
        compiled = triton.compile(
            src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
        )
        regs, spill = _resources(compiled.asm["cubin"])
    except Exception as exc:  # report, don't stop: the table shows every failure
        return f"{type(exc).__name__}: {exc}"
    return regs, compiled.metadata.shared, spill


def _row(job, result) -> CompileRow:
    """The table row of one job from its worker's result (the shared-memory limit is checked here)."""
    kernel, _, label, arch = job[:4]
    if isinstance(result, str):
        return CompileRow("triton", kernel, label, arch, "error", message=result)
    regs, shared, spill = result
    limit = SHARED_LIMIT.get(arch, 99 * 1024)
    status, message = "ok", ""
    if shared > limit:
        status, message = "error", f"shared memory {shared} B > {limit} B limit of sm_{arch}"
    return CompileRow("triton", kernel, label, arch, status, regs, shared, spill, message)


def run(archs=(80, 90), grid: str = "full", jobs=None) -> list[CompileRow]:
    """Compile the kernels for ``archs`` (grid "full" or "main", see _jobs; or the given ``jobs``), one row each.

    The compiles run in spawned worker processes (triton.compile is CPU bound and holds the GIL) whose
    environment drops TRITON_INTERPRET, so they compile real kernels even when this process interprets
    them; this process's os.environ is never changed.
    """
    jobs = _jobs(archs, grid) if jobs is None else list(jobs)
    workers = max(1, min(4, os.cpu_count() or 1, len(jobs)))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_environment
    ) as pool:
        results = list(pool.map(_compile, jobs))
    return [_row(job, result) for job, result in zip(jobs, results, strict=True)]
