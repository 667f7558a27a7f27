"""CUDA rows of ``compile-check --profile``: each csrc kernel source compiled to a cubin per arch.

``nvcc -cubin -lineinfo`` with the extension's own flags (cuda_ext.build.nvcc_flags: -O3, sm_80 / sm_90a),
so the instantiations are the ones the extension builds; the cubins are read by triton's nvdisasm and
cuobjdump (the local toolkit has no disassembler). Cached under <cache>/profile/nvcc-<version>/ by a digest
of the sources, the flags and nvcc's version. One row per dense instantiation (kernel, feature set, dtype, head
dim) and arch; the padding-free (PACKED) instantiations are left out (same loops, other addressing). The
tensor-core kernels' GENERAL feature set (masks, causal, dropout: csrc/relattn_flash.h) is reported as
<kernel>_general, the PLAIN one (the common case) under the kernel's name, the forward's rotation set (PLAIN with
NEZHA's sinusoid) as <kernel>_rotation.

``GEOMETRY`` says, per kernel, the program's rows, the rows one loop iteration streams, and the warps: the
score tile of an iteration is rows x columns over the block's warps (TileConfig / TcConfig / TcFwdConfig in csrc/).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..cuda_ext.build import CSRC, cache_root, find_nvcc, nvcc_flags, nvcc_version, sources_digest
from ..cuda_ext.sources import HEADERS, KERNEL_SOURCES
from . import nvcc as nvcc_check
from . import sass
from .profile_row import analyze_row, occupancy

__all__ = ["GEOMETRY", "STAGES", "rows", "cubins"]


def _tc_dq_cols(d: int) -> int:
    return 32 if d >= 128 else 64  # TcConfig::BN_DQ


# kernel -> head dim -> (program rows, loop columns, warps)
GEOMETRY = {
    "relattn_fwd_kernel": lambda d: (32, 32, 4),
    "relattn_bwd_dq_kernel": lambda d: (32, 32, 4),
    "relattn_bwd_dkdv_kernel": lambda d: (32, 32, 4),
    # dense rows only (both feature sets): 128 query rows at D <= 64 (TcFwdConfig, fwd_row_tiles), 64 at D = 128
    "relattn_fwd_tc_kernel": lambda d: (64 * nvcc_check.fwd_row_tiles(d, varlen=False, general=False), 64, 4),
    "relattn_bwd_dq_tc_kernel": lambda d: (64, _tc_dq_cols(d), 4),
    "relattn_bwd_dkdv_tc_kernel": lambda d: (64, 32, 4),
    "relattn_bwd_fused_tc_kernel": lambda d: (64, 32, 4),  # 64 keys own, 32-query tiles (dK dV's geometry)
}


# kernel -> shared-memory pipeline stages of its streamed tiles (the TC forward: cp.async, 2 stages).
STAGES = {"relattn_fwd_tc_kernel": 2}


def _nvcc_version(nvcc: str) -> str:
    m = re.search(r"release ([\d.]+)", nvcc_version(nvcc))
    return m.group(1) if m else "unknown"


def _compile(nvcc: str, source: str, arch: int, cache: Path) -> tuple[bytes | None, str]:
    flags = [*nvcc_flags((arch,)), "-lineinfo"]
    flags = [f for f in flags if f not in ("-Xcompiler", "-fPIC")]
    h = hashlib.sha256(" ".join(flags).encode())
    h.update(sources_digest((source, *HEADERS)).encode())
    path = cache / f"{Path(source).stem}.sm{arch}.{h.hexdigest()[:16]}.cubin"
    if path.exists():
        return path.read_bytes(), ""
    with tempfile.TemporaryDirectory(prefix="nezha_profile_") as tmp:
        out = Path(tmp) / "k.cubin"
        proc = subprocess.run(
            [nvcc, "-cubin", str(CSRC / source), "-o", str(out), *flags], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return None, (proc.stdout + proc.stderr).strip()[-400:]
        data = out.read_bytes()
    cache.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(f".{os.getpid()}.tmp")
    tmp_path.write_bytes(data)
    os.replace(tmp_path, path)
    return data, ""


def cubins(archs, say=None) -> list[tuple[str, int, bytes | None, str]]:
    """(source, arch, cubin or None, error) for every kernel source and arch; [] without nvcc."""
    nvcc = find_nvcc()
    if nvcc is None:
        return []
    cache = cache_root() / "profile" / f"nvcc-{_nvcc_version(nvcc)}"
    jobs = [(s, a) for s in KERNEL_SOURCES for a in archs]
    if say:
        say(f"profile: {len(jobs)} nvcc -cubin compiles (cached ones are instant) ...")
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _compile(nvcc, job[0], job[1], cache), jobs))
    return [(s, a, c, e) for (s, a), (c, e) in zip(jobs, results, strict=True)]


def _function_names(cubin: bytes) -> list[str]:
    from .profile_analyze import resources

    return list(resources(cubin))


def rows(archs, dtypes, head_dims, out_dir, say=None) -> list[dict]:
    """Profile rows of the dense CUDA kernel instantiations matching ``dtypes`` x ``head_dims``."""
    from .profile_analyze import disassemble

    nvcc = find_nvcc()
    if nvcc is None:
        return []
    version = f"nvcc {_nvcc_version(nvcc)}"
    out = []
    for source, arch, cubin, error in cubins(archs, say):
        if cubin is None:
            out.append(
                {
                    "kernel": source,
                    "backend": "cuda",
                    "arch": arch,
                    "compiler": version,
                    "dtype": "all",
                    "head_dim": 0,
                    "tile": [0, 0],
                    "warps": 0,
                    "stages": 1,
                    "status": "error",
                    "message": error,
                }
            )
            continue
        text = disassemble(cubin)
        functions = sass.parse(text)
        for mangled in _function_names(cubin):
            m = nvcc_check.MANGLED.search(mangled)
            if not m or m.group(5) == "1":
                continue  # not a kernel instantiation, or the padding-free layout
            n, rest = int(m.group(1)), m.group(2)
            base = rest[:n]
            # the TC kernels' GENERAL feature set: <kernel>_general
            kernel = base + nvcc_check.FEATURE_SUFFIXES[m.group(6)]
            dtype, d = nvcc_check.MANGLED_DTYPES[m.group(3)], int(m.group(4))
            if base not in GEOMETRY or dtype not in dtypes or d not in head_dims:
                continue
            rows_, cols, warps = GEOMETRY[base](d)  # the rotation kernels: the PLAIN kernel's block height
            meta = {
                "kernel": kernel,
                "backend": "cuda",
                "arch": arch,
                "compiler": version,
                "dtype": dtype,
                "head_dim": d,
                "tile": [rows_, cols],
                "warps": warps,
                "stages": STAGES.get(base, 1),
                "rows": rows_,
                "cols": cols,
                "other_trips": 1,
                "dynamic_shared_bytes": nvcc_check.dynamic_smem_bytes(kernel, d),
            }
            row = analyze_row(meta, cubin, mangled, out_dir, sass_text=text, functions=functions)
            if row.get("status") == "ok":
                row["shared_bytes"] = (row.get("shared_bytes") or 0) + meta["dynamic_shared_bytes"]
                row["occupancy_blocks_per_sm"] = occupancy(row["registers"], row["shared_bytes"], warps, arch)
            out.append(row)
            if say:
                say(f"  analysed {kernel} sm_{arch} {dtype} d{d}")
    return out
