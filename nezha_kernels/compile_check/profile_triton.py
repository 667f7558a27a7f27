"""Triton rows of ``compile-check --profile``: each kernel's main config compiled as the JIT compiles it.

Jobs: forward, dQ and dK/dV at their main tile for (head dim, dtype) (configs.candidates(...)[0], num_stages
as configs.stages_for gives it on the arch with this triton), the common case's constexprs (no masks,
causal, dropout or head mask; R = 64 so BAND_P = 128), the launcher's specialization (triton_aot.launch_signature:
unit strides constexpr, pointers and 16-divisible integers with tt.divisibility 16); plus the plain flash
reference (plain_flash.py, 128 x 64, 4 warps, 3 stages). Cubins are cached under
<cache>/profile/triton-<version>/ by a digest of the kernel sources, the compile-check rules and the job.

Per kernel, ``TILE_GEOMETRY`` says what one loop iteration covers (program rows x loop columns: the
forward and dQ loop over key tiles of a BLOCK_M-row query block, dK/dV over query tiles of a BLOCK_N-key
block), how many times each "other" loop runs (the forward / dQ band epilogue: BAND_P / 32 chunks) and the
columns of one band-loop iteration (16 at the main tiles: the band loops run narrower tiles than the far loops).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

__all__ = ["jobs", "compile_jobs", "TILE_GEOMETRY", "PLAIN_FLASH"]

PLAIN_FLASH = "plain_flash_fwd"
# The forward, dQ and dK/dV with NEZHA's own sinusoid table (rel_table=None): the band by rotation (SINUSOID,
# triton_kernels/rotation.py), profiled where configs.rotation_band runs it; the same kernel functions.
SINUSOID_KERNELS = {"fwd_sinusoid": "fwd", "bwd_dq_sinusoid": "bwd_dq", "bwd_dkdv_sinusoid": "bwd_dkdv"}
KERNELS = ("fwd", "bwd_dq", "bwd_dkdv", *SINUSOID_KERNELS)


# The module of each kernel (delta lives in backward.py).
TRITON_MODULES = {
    "fwd": "nezha_kernels.triton_kernels.forward",
    "bwd_dq": "nezha_kernels.triton_kernels.backward_dq",
    "bwd_dkdv": "nezha_kernels.triton_kernels.backward_dkdv",
}


def _band_chunks(constexprs: dict, dq: bool = False) -> int:
    """Trips of the forward's / dQ's block-band prologue and epilogue loops: BAND_P / BAND_CHUNK (32 rows a chunk;
    dQ's 128-row tile at wide heads takes 16, backward_dq.py)."""
    band_p = constexprs.get("BAND_P", 0)
    if not band_p:
        return 1
    wide = dq and constexprs["BLOCK_D"] > 64 and constexprs["BLOCK_M"] >= 128
    return band_p // min(16 if wide else 32, band_p)


def _band_key_tile(c: dict) -> int:
    """Key columns of an iteration of the forward's / dQ's general band loop: BLOCK_NB of forward.py, backward_dq.py."""
    return max(16, min(c["BLOCK_N"], 2048 // c["BLOCK_M"]))


def _rotation_key_tile(c: dict) -> int:
    """Key columns of the forward's and dQ's rotation band loops (softmax.rotation_band_loop,
    backward_dq.dq_rotation_band_loop): BLOCK_NR of forward.py and backward_dq.py."""
    from ..triton_kernels import configs

    return min(c["BLOCK_N"], configs.ROTATION_LOOP_KEYS)


def _band_query_tile(c: dict) -> int:
    """Query rows of one iteration of dK/dV's band loops: BLOCK_MB of backward_dkdv.py."""
    return max(16, min(c["BLOCK_M"], 1024 // c["BLOCK_N"]))


def _fwd_band(c: dict) -> dict:
    # In order of preference for the model's band tile: the rotation loop runs the band's full tiles where the
    # kernel has it, the general loop then only the partial tail.
    return {"rotation_band_loop": _rotation_key_tile(c), "band_loop": _band_key_tile(c)}


def _dq_band(c: dict) -> dict:
    # As _fwd_band: dQ's rotation band loop (BLOCK_NR of backward_dq.py) before its general loop.
    return {"dq_rotation_band_loop": _rotation_key_tile(c), "dq_band_loop": _band_key_tile(c)}


def _rotation_query_tile(c: dict) -> int:
    """Query rows of one iteration of dK/dV's rotation band loop (backward_dkdv.dkdv_rotation_band_loop): BLOCK_MR."""
    from ..triton_kernels import configs

    return min(c["BLOCK_M"], configs.ROTATION_LOOP_QUERIES)


def _dkdv_band(c: dict) -> dict:
    # As _fwd_band: the rotation band loop (the band's full query tiles where the kernel has it) before the general
    # band loop (then only the partial tail).
    return {
        "dkdv_rotation_band_loop": _rotation_query_tile(c),
        "dkdv_band_tile_loop": _band_query_tile(c),
        "dkdv_general_loop": _band_query_tile(c),
    }


# kernel -> (program rows, loop columns, other-loop trips, band-loop columns) from the job's constexprs. The band
# loops iterate over narrower tiles than the far loops (their per-pair state must stay in registers), so their
# scores per iteration, and the model's cost of a band tile of the far loops' width, use their own columns: a
# {function name: columns} map, mirroring each loop function's tile (profile_analyze finds a loop's function).
TILE_GEOMETRY = {
    "fwd": lambda c: (c["BLOCK_M"], c["BLOCK_N"], _band_chunks(c), _fwd_band(c)),
    "bwd_dq": lambda c: (c["BLOCK_M"], c["BLOCK_N"], _band_chunks(c, dq=True), _dq_band(c)),
    "bwd_dkdv": lambda c: (c["BLOCK_N"], c["BLOCK_M"], 1, _dkdv_band(c)),
    "fwd_sinusoid": lambda c: (c["BLOCK_M"], c["BLOCK_N"], 1, _fwd_band(c)),
    "bwd_dq_sinusoid": lambda c: (c["BLOCK_M"], c["BLOCK_N"], 1, _dq_band(c)),
    "bwd_dkdv_sinusoid": lambda c: (c["BLOCK_N"], c["BLOCK_M"], 1, _dkdv_band(c)),
    PLAIN_FLASH: lambda c: (c["BLOCK_M"], c["BLOCK_N"], 1, {}),
}


def jobs(archs, dtypes, head_dims, kernels=KERNELS, plain: bool = True, listed_stages: bool = False) -> list[dict]:
    """One job dict per (kernel, arch, dtype, head dim), plus the plain flash reference's if ``plain``.
    ``listed_stages``: compile each tile's num_stages as configs lists it, not as configs.stages_for lowers it
    for this triton and arch (to see whether the pipeliner accepts it)."""
    from ..triton_kernels import configs
    from . import plain_flash, triton_aot

    out = []
    for arch in archs:
        for dtype in dtypes:
            for d in head_dims:
                for kernel in kernels:
                    plain_features = triton_aot.PLAIN_FEATURES
                    elem_bytes = 2 if dtype != "fp32" else 4
                    base = SINUSOID_KERNELS.get(kernel, kernel)
                    variant = "plain"
                    if kernel in SINUSOID_KERNELS:
                        if not configs.rotation_band(base, d, elem_bytes, plain_features, arch // 10):
                            continue  # that call runs the scratch path: the base kernel's row
                        variant += triton_aot.SINUSOID_SUFFIX
                    tiles = configs.gpu_tiles(base)
                    tile = configs.candidates(base, tiles, d, elem_bytes, plain_features, arch // 10)[0]
                    job = triton_aot.make_job(base, d, dtype, tile, plain_features, variant, arch)
                    _, fn_name, label, _, _, constexprs, warps, stages = job
                    if listed_stages:
                        stages = tile[3]
                    out.append(
                        dict(
                            kernel=kernel,
                            module=TRITON_MODULES.get(base, "nezha_kernels.triton_kernels.backward"),
                            fn=fn_name,
                            arch=arch,
                            dtype=dtype,
                            head_dim=d,
                            tile=[tile[0], tile[1]],
                            warps=warps,
                            stages=stages,
                            constexprs=constexprs,
                        )
                    )
                if not plain:
                    continue
                bm, bn, warps, stages = plain_flash.TILE
                out.append(
                    dict(
                        kernel=PLAIN_FLASH,
                        module="nezha_kernels.compile_check.plain_flash",
                        fn="plain_flash_fwd_kernel",
                        arch=arch,
                        dtype=dtype,
                        head_dim=d,
                        tile=[bm, bn],
                        warps=warps,
                        stages=stages,
                        constexprs=dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn),
                    )
                )
    return out


def _plain_signature(fn, dtype: str, constexprs: dict):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name in ("Q", "K", "V", "OUT"):
            sig[name] = "*" + dtype
        elif name == "qk_scale":
            sig[name] = "fp32"
            continue
        else:
            sig[name] = "i32"
        attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, dict(constexprs), attrs


def _worker_environment() -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _compile(job: dict) -> dict:
    """In a worker: {"cubin": bytes, "shared": int} or {"error": text}."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import triton_aot

    fn = getattr(importlib.import_module(job["module"]), job["fn"])
    try:
        if job["kernel"] == PLAIN_FLASH:
            sig, consts, attrs = _plain_signature(fn, job["dtype"], job["constexprs"])
        else:
            sig, consts, attrs = triton_aot.launch_signature(fn, job["dtype"], job["constexprs"])
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", job["arch"], 32),
            options={"num_warps": job["warps"], "num_stages": job["stages"]},
        )
    except Exception as exc:  # reported in the row, not raised: one failing kernel must not hide the others
        return {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    return {"cubin": compiled.asm["cubin"], "shared": compiled.metadata.shared, "name": compiled.metadata.name}


def _source_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted((root / "triton_kernels").glob("*.py")) + [
        root / "compile_check" / "plain_flash.py",
        root / "compile_check" / "triton_aot.py",
        root / "compile_check" / "profile_triton.py",
    ]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _cache_dir() -> Path:
    import triton

    from ..cuda_ext.build import cache_root

    return cache_root() / "profile" / f"triton-{triton.__version__}"


def _key(job: dict, digest: str) -> str:
    return hashlib.sha256((digest + json.dumps(job, sort_keys=True)).encode()).hexdigest()[:20]


def compile_jobs(job_list: list[dict], workers: int | None = None, progress=None) -> list[dict]:
    """{"cubin", "shared", "name"} or {"error"} per job, from the cache or spawned compile workers."""
    digest = _source_digest()
    cache = _cache_dir()
    results: list[dict | None] = [None] * len(job_list)
    todo = []
    for i, job in enumerate(job_list):
        key = _key(job, digest)
        cubin, meta = cache / f"{key}.cubin", cache / f"{key}.json"
        if cubin.exists() and meta.exists():
            results[i] = {**json.loads(meta.read_text()), "cubin": cubin.read_bytes()}
        else:
            todo.append((i, key))
    if todo:
        workers = workers or max(1, min(2, os.cpu_count() or 1, len(todo)))
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_worker_environment
        ) as pool:
            futures = {pool.submit(_compile, job_list[i]): (i, key) for i, key in todo}
            for fut in concurrent.futures.as_completed(futures):
                i, key = futures[fut]
                res = fut.result()
                results[i] = res
                if "cubin" in res:
                    cache.mkdir(parents=True, exist_ok=True)
                    tmp = cache / f"{key}.{os.getpid()}.tmp"
                    tmp.write_bytes(res["cubin"])
                    os.replace(tmp, cache / f"{key}.cubin")
                    (cache / f"{key}.json").write_text(json.dumps({"shared": res["shared"], "name": res["name"]}))
                if progress is not None:
                    progress(job_list[i], res)
    return results  # type: ignore[return-value]
