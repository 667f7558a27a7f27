"""The shared dropout keep mask on CPU tensors, from a compiled C loop: the same bits, 10-50x faster.

The Philox-4x32-10 mask (nezha_kernels/dropout.py) in PyTorch integer ops runs ~100 elementwise kernels over
int64 temporaries; fused by torch.compile it still costs ~28 ns per element on the 2-core CPU, so a training
step with dropout spent more time drawing masks than on attention. This loop keeps the counters in 32-bit
lanes (the 32x32 -> 64-bit products vectorize: one vpmuludq per 4 or 8 lanes) and writes the bool mask
directly.

Built on first use with the C compiler (``$CC``, else cc / gcc), about a second, and cached like the
other builds (``$NEZHA_KERNELS_BUILD_DIR`` or ~/.cache/nezha_kernels), keyed by the compiler, the flags
and the source. No compiler, or a failed build: ``keep_mask_cpu`` returns None and the caller uses the
PyTorch path (a warning says why, once). ``NEZHA_KERNELS_NATIVE_DROPOUT=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import warnings

import torch

__all__ = ["keep_mask_cpu", "native_library"]

ENV = "NEZHA_KERNELS_NATIVE_DROPOUT"

_SOURCE = r"""
#include <stdint.h>

/* One implementation per instruction set, picked at load time (GCC's ifunc): the same bits on every CPU. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NEZHA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NEZHA_CLONES
#endif

/* First output word of Philox-4x32-10 at counter (c0, c1, c2, 0), key (k0, k1): dropout.py's _philox_word0. */
static inline uint32_t philox_word0(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t k0, uint32_t k1) {
    uint32_t c3 = 0;
    for (int r = 0; r < 10; ++r) {
        const uint64_t pb = (uint64_t)c2 * 0xCD9E8D57u;
        const uint64_t pa = (uint64_t)c0 * 0xD2511F53u;
        const uint32_t n0 = (uint32_t)(pb >> 32) ^ c1 ^ k0;
        const uint32_t n2 = (uint32_t)(pa >> 32) ^ c3 ^ k1;
        c0 = n0; c1 = (uint32_t)pb; c2 = n2; c3 = (uint32_t)pa;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    return c0;
}

/* out[j] = keep(j, row, bh) for j < lk: the top 24 bits of the word against the threshold. */
NEZHA_CLONES
static void keep_row(uint8_t* out, int64_t lk, uint32_t row, uint32_t bh, uint32_t k0, uint32_t k1,
                     uint32_t threshold) {
    for (int64_t j = 0; j < lk; ++j)
        out[j] = (uint8_t)((philox_word0((uint32_t)j, row, bh, k0, k1) >> 8) >= threshold);
}

/* out: uint8 [batch_heads, n_rows, lk] contiguous; row r of head slot bh has counters (j, row0 + r, bh_offset + bh). */
int nezha_philox_keep(uint8_t* out, int64_t batch_heads, int64_t bh_offset, int64_t row0, int64_t n_rows,
                      int64_t lk, uint32_t k0, uint32_t k1, uint32_t threshold, int threads) {
    const int64_t total = batch_heads * n_rows;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(threads) schedule(static) if (total * lk >= 32768)
#endif
    for (int64_t t = 0; t < total; ++t) {
        const int64_t bh = t / n_rows, r = t % n_rows;
        keep_row(out + t * lk, lk, (uint32_t)(row0 + r), (uint32_t)(bh_offset + bh), k0, k1, threshold);
    }
    (void)threads;
    return 0;
}
"""

_FLAG_SETS = (["-O3", "-fPIC", "-shared", "-fopenmp"], ["-O3", "-fPIC", "-shared"])  # OpenMP when the compiler has it
_warned = {"done": False}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str) -> str:
    """Path of the shared library, compiled into the build cache unless there already."""
    from .cuda_ext.build import cache_root

    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    errors = []
    for flags in _FLAG_SETS:
        key = hashlib.sha256("\0".join([cc, version, *flags, _SOURCE]).encode()).hexdigest()[:16]
        out_dir = cache_root() / f"dropout_cpu_{key}"
        lib = out_dir / "libnezha_dropout.so"
        if lib.is_file():
            return str(lib)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:  # build aside, then rename: safe for parallel builds
            src, tmp_lib = os.path.join(tmp, "philox_keep.c"), os.path.join(tmp, "lib.so")
            with open(src, "w") as f:
                f.write(_SOURCE)
            proc = subprocess.run([cc, *flags, src, "-o", tmp_lib], capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(tmp_lib, lib)
                return str(lib)
            errors.append(proc.stderr.strip()[-500:])
    raise RuntimeError("; ".join(errors))


@functools.cache
def native_library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library or None, why not)."""
    if os.environ.get(ENV, "1") == "0":
        return None, f"{ENV}=0"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler (set $CC)"
    try:
        lib = ctypes.CDLL(_build(cc))
    except (OSError, RuntimeError) as exc:
        return None, f"build failed: {exc}"
    fn = lib.nezha_philox_keep
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        *([ctypes.c_int64] * 5),
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_int,
    ]
    return lib, ""


def threshold(dropout_p: float) -> int:
    """Smallest 24-bit m kept: the PyTorch path keeps u = m / 2**24 (exact in float32) when u >= float32(p)."""
    p32 = torch.tensor(dropout_p, dtype=torch.float32).item()  # the comparison's rounding of p
    return min(max(math.ceil(p32 * (1 << 24)), 0), 1 << 24)


def keep_mask_cpu(
    seed: int, dropout_p: float, batch: int, heads: int, row0: int, n_rows: int, key_length: int, bh_offset: int = 0
) -> torch.Tensor | None:
    """Bool keep mask [batch, heads, n_rows, key_length] for query rows row0 .. row0 + n_rows, or None when the
    native loop is unavailable. Counters and bits as dropout.keep_mask."""
    lib, why = native_library()
    if lib is None:
        if not _warned["done"] and os.environ.get(ENV, "1") != "0":
            _warned["done"] = True
            warnings.warn(
                f"native CPU dropout mask unavailable ({why}); using the PyTorch path (slower, same bits)", stacklevel=3
            )
        return None
    out = torch.empty((batch, heads, n_rows, key_length), dtype=torch.uint8)
    if out.numel():
        lib.nezha_philox_keep(
            out.data_ptr(),
            batch * heads,
            bh_offset,
            row0,
            n_rows,
            key_length,
            seed & 0xFFFFFFFF,
            (seed >> 32) & 0xFFFFFFFF,
            threshold(dropout_p),
            torch.get_num_threads(),
        )
    return out.view(torch.bool)
