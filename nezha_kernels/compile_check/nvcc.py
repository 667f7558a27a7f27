"""compile-check component "cuda": nvcc-compile every csrc kernel for each arch with ``-Xptxas -v``.

One row per kernel instantiation (dtype x head dim) and arch, SIMT (relattn_fwd.cu, relattn_bwd.cu) and
tensor-core (relattn_fwd_tc.cu, relattn_bwd_tc.cu, relattn_bwd_fused.cu, fp16 / bf16 only): registers, spills (stack
frame / spill stores) from ptxas, and the dynamic shared memory the launcher requests (mirrors the *_smem_bytes
formulas of the .cu files, since ptxas only sees static shared memory).

``run(..., bf16_archs=..., simt_archs=...)`` narrows the check for CI's time budget: on the other archs the bf16
instantiations are left out (``-DNEZHA_NO_BF16``, csrc/relattn_tile.cuh dispatch_kernel; they are the fp16 code but for
conversions: registers within 2 of fp16's in every row of the full check, nvcc 13.0, 2026-12-07), and so are the SIMT
sources (SIMT_SOURCES: no tensor-core code; at most 148 registers on either arch, far from a
spill, and sm_80 within 4 of sm_90a in the 3 of 24 rows compiled for both where it is above it; checked 2026-12-07).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cuda_ext.build import (
    CSRC,
    cache_root,
    copy_atomically,
    find_nvcc,
    nvcc_flags,
    nvcc_version,
    object_cache_path,
    sources_digest,
)
from ..cuda_ext.sources import HEADERS, KERNEL_SOURCES
from .rows import CompileRow

__all__ = ["run", "parse_ptxas", "dynamic_smem_bytes", "fwd_row_tiles", "SIMT_SOURCES"]

SIMT_SOURCES = ("relattn_fwd.cu", "relattn_bwd.cu")

_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)a?'")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
# relattn_fwd_kernel<__half, 64, PACKED> mangles as ..._kernelI6__halfLi64ELb0EE...; the padding-free (PACKED =
# true, Lb1) instantiations are reported as <kernel>_varlen. The tensor-core kernels have a fourth parameter, their
# feature set (csrc/relattn_flash.h: 0 = PLAIN, 1 = GENERAL: ...Lb0ELi1EE), reported as <kernel>_general; the
# forward's rotation set (csrc/relattn_rotation.cuh FEATURES_ROTATION = 2: PLAIN, band from the sinusoid's
# rotation identity) as <kernel>_rotation.
MANGLED = re.compile(r"_ZN5nezha(\d+)(\w+?)I(f|6__half|13__nv_bfloat16)Li(\d+)E(?:Lb([01])E)?(?:Li(\d)E)?E")
_VARLEN = "_varlen"
FEATURE_SUFFIXES = {None: "", "0": "", "1": "_general", "2": "_rotation"}
MANGLED_DTYPES = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}

# Tile constants of TileConfig (csrc/relattn_tile.cuh).
_BM = _BN = 32
# TcConfig (csrc/relattn_tc.cuh, the backward): 64 x 64 tiles, 4 warps, 80-column warp slices, 128 staged table
# rows; dK dV: 32-query tiles, 96-row block slice.
_TC_BM = _TC_BN = 64
_TC_WARPS, _TC_QT_LD, _TC_TS_ROWS = 4, 84, 128
_TC_QN, _TC_TB_COLS, _TC_TB_LD = 32, 96, 100
# TcFwdConfig (the forward): row tiles of 16 per warp (fwd_row_tiles), 64 keys, 80-column row tile slices.
_TC_FWD_WCOLS = 80


def fwd_row_tiles(d: int, varlen: bool, general: bool) -> int:
    """Row tiles of 16 per warp of a forward TC instantiation (csrc/relattn_tc.cuh fwd_row_tiles): 2 (128-row blocks)
    except at D = 128 and in the GENERAL padding-free kernel at D = 64 (the rotation kernels: as PLAIN, general off)."""
    return 1 if d >= 128 or (d == 64 and varlen and general) else 2


def dynamic_smem_bytes(kernel: str, d: int) -> int:
    """Dynamic shared memory (bytes) each kernel's launcher requests for head dim d."""
    varlen, base = kernel.endswith(_VARLEN), kernel.removesuffix(_VARLEN)
    general, base = base.endswith(FEATURE_SUFFIXES["1"]), base.removesuffix(FEATURE_SUFFIXES["1"])
    rotation, kernel = base.endswith(FEATURE_SUFFIXES["2"]), base.removesuffix(FEATURE_SUFFIXES["2"])
    dp, sp, trows = d + 1, _BN + 1, _BM + _BN - 1
    if kernel == "relattn_fwd_kernel":
        return 4 * ((_BM + 2 * _BN + trows) * dp + _BM * sp)
    if kernel == "relattn_bwd_dq_kernel":
        return 4 * ((2 * _BM + 2 * _BN + trows) * dp + _BM * sp)
    if kernel == "relattn_bwd_dkdv_kernel":
        return 4 * ((2 * _BM + 2 * _BN + trows) * dp + 2 * _BM * sp + 7 * _BN)
    ld = d + 8  # 16-bit elements
    if kernel == "relattn_fwd_tc_kernel":  # Q, two pipeline stages of K and V, the table rows, per-warp scratch
        bm = _TC_WARPS * 16 * fwd_row_tiles(d, varlen, general)
        if rotation:  # ... or the 8 edge rows, two stages of S tiles, Q_rot, the edge terms and the parked row
            # statistics ((2 + 4) x 2 MT floats per thread)
            return 2 * (bm + 4 * _TC_BN + 8 + 2 * _TC_BN + bm) * ld + 4 * 6 * 2 * (bm // 64) * 128
        return 2 * (bm + 4 * _TC_BN + bm - 16 + _TC_FWD_WCOLS) * ld + 4 * _TC_WARPS * 16 * _TC_QT_LD
    if kernel == "relattn_bwd_dq_tc_kernel":
        bn_dq = 32 if d >= 128 else _TC_BN  # TcConfig::BN_DQ
        return 2 * (2 * _TC_BM + 2 * bn_dq + _TC_TS_ROWS) * ld + 4 * _TC_WARPS * 2 * 16 * _TC_QT_LD
    if kernel == "relattn_bwd_dkdv_tc_kernel":
        # the 8 edge rows, K, V, two buffers of Q, dO and the row statistics, the table rows, the fp32 projections
        return 2 * (8 + 2 * _TC_BM + 4 * _TC_QN + _TC_TB_COLS) * ld + 4 * (2 * _TC_QN * _TC_TB_LD + 2 * 3 * _TC_QN)
    if kernel == "relattn_bwd_fused_tc_kernel":  # dK dV's tiles + dS^T [BM][QN] (the bucket aliases the projections)
        tiles = (8 + 2 * _TC_BM + 4 * _TC_QN + _TC_TB_COLS) * ld + _TC_BM * _TC_QN
        return 2 * tiles + 4 * (2 * _TC_QN * _TC_TB_LD + 2 * 3 * _TC_QN)
    if kernel == "relattn_bwd_dq_convert_kernel":  # the fused backward's dq = scale * acc: no shared memory
        return 0
    raise KeyError(kernel)


def parse_ptxas(log: str) -> list[dict]:
    """[{kernel, dtype, head_dim, arch, registers, spill_bytes, static_smem}] from ``-Xptxas -v`` output."""
    rows: list[dict] = []
    current = None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            mangled = MANGLED.search(entry.group(1))
            if mangled:
                n, rest = int(mangled.group(1)), mangled.group(2)
                name = rest[:n] if len(rest) >= n else rest
                name += FEATURE_SUFFIXES[mangled.group(6)] + (_VARLEN if mangled.group(5) == "1" else "")
                current = {"kernel": name, "dtype": MANGLED_DTYPES[mangled.group(3)], "head_dim": int(mangled.group(4))}
            else:
                current = {"kernel": entry.group(1), "dtype": "?", "head_dim": 0}
            current.update(arch=int(entry.group(2)), registers=None, spill_bytes=0, static_smem=0)
            rows.append(current)
            continue
        if current is None:
            continue
        stack = _STACK.search(line)
        if stack:
            current["spill_bytes"] = max(int(stack.group(1)), int(stack.group(2)), int(stack.group(3)))
        used = _USED.search(line)
        if used:
            current["registers"] = int(used.group(1))
            smem = _SMEM.search(line)
            current["static_smem"] = int(smem.group(1)) if smem else 0
    return rows


def _cache_path(nvcc: str, source: str, arch: int, cmd_flags: list[str]) -> Path:
    """ptxas logs are cached by nvcc version, flags and the contents of the source and every header."""
    h = hashlib.sha256()
    h.update(nvcc_version(nvcc).encode())
    h.update(" ".join(cmd_flags).encode())
    h.update(sources_digest((source, *HEADERS)).encode())
    return cache_root() / "compile_check" / f"{Path(source).stem}.sm{arch}.{h.hexdigest()[:16]}.json"


def _compile(nvcc: str, source: str, arch: int, out_dir: str, bf16: bool = True) -> tuple[str, int, int, str]:
    flags = [*nvcc_flags((arch,)), "-Xptxas", "-v", *(() if bf16 else ("-DNEZHA_NO_BF16",))]
    cache = _cache_path(nvcc, source, arch, flags)
    if cache.exists():
        cached = json.loads(cache.read_text())
        return source, arch, cached["rc"], cached["log"]
    obj = Path(out_dir) / f"{source}.{arch}.o"
    cmd = [nvcc, "-c", str(CSRC / source), "-o", str(obj), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode == 0:  # only successes are cached; failures are re-run (and re-reported) every time
        if bf16:  # the same object a JIT build for this one arch needs (same flags but -v): kept for it to reuse
            copy_atomically(obj, object_cache_path(nvcc, source, (arch,)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"rc": proc.returncode, "log": log}))
        os.replace(tmp, cache)
    return source, arch, proc.returncode, log


def run(
    archs: tuple[int, ...],
    progress=None,
    bf16_archs: tuple[int, ...] | None = None,
    simt_archs: tuple[int, ...] | None = None,
) -> list[CompileRow]:
    """Compile every kernel source for every arch; one CompileRow per kernel instantiation and arch.

    Returns no rows when nvcc is missing (the aggregator then reports nothing for this component).
    progress: called with each row as its source is done (the compiles run two at a time).
    bf16_archs: the archs whose bf16 instantiations are compiled (default: all of ``archs``).
    simt_archs: the archs the SIMT sources are compiled for (default: all of ``archs``).
    """
    nvcc = find_nvcc()
    if nvcc is None:
        return []
    rows: list[CompileRow] = []
    with tempfile.TemporaryDirectory(prefix="nezha_nvcc_") as out_dir, ThreadPoolExecutor(max_workers=2) as pool:
        jobs = [
            pool.submit(_compile, nvcc, src, arch, out_dir, bf16_archs is None or arch in bf16_archs)
            for src in KERNEL_SOURCES
            for arch in archs
            if src not in SIMT_SOURCES or simt_archs is None or arch in simt_archs
        ]
        for job in jobs:
            source, arch, rc, log = job.result()
            done = len(rows)
            if rc != 0:
                rows.append(CompileRow("cuda", source, "all", arch, "error", message=log.strip()[-300:]))
            parsed = parse_ptxas(log) if rc == 0 else []
            if rc == 0 and not parsed:
                rows.append(CompileRow("cuda", source, "all", arch, "error", message="no kernels in ptxas output"))
            for p in parsed:
                smem = p["static_smem"] + dynamic_smem_bytes(p["kernel"], p["head_dim"])
                status, message = "ok", ""
                if p["spill_bytes"] > 0:
                    status, message = "error", f"register spills: {p['spill_bytes']} bytes"
                elif smem > (163 if arch < 90 else 227) * 1024:
                    status, message = "error", "shared memory above the per-block limit"
                rows.append(
                    CompileRow(
                        "cuda",
                        p["kernel"],
                        f"{p['dtype']} D={p['head_dim']}",
                        p["arch"],
                        status,
                        registers=p["registers"],
                        shared_bytes=smem,
                        spill_bytes=p["spill_bytes"],
                        message=message,
                    )
                )
            if progress is not None:
                for row in rows[done:]:
                    progress(row)
    return rows
