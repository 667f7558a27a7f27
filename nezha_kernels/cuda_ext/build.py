"""Build and load the CUDA extension: nvcc compiles csrc/*.cu, torch's ninja JIT builds the binding.

The kernels include only CUDA headers, so they are compiled here with the machine's nvcc (any arch,
no GPU needed); the pybind11 binding is built with ``torch.utils.cpp_extension.load`` and linked
against those objects and the static CUDA runtime. Everything is cached in a directory keyed by the
torch version, its CUDA version, nvcc's version, the target archs and the source contents.
An ahead-of-time build (``NEZHA_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation -e .``)
installs ``nezha_kernels._cuda_aot``, which is used in preference to a JIT build.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["CudaBuildError", "CSRC", "KERNEL_SOURCES", "find_nvcc", "gencode_flags", "nvcc_flags",
           "load_extension", "build_extension"]

CSRC = Path(__file__).resolve().parents[2] / "csrc"
KERNEL_SOURCES = ("relattn_fwd.cu", "relattn_bwd.cu", "relattn_fwd_tc.cu", "relattn_bwd_tc.cu")
BINDING_SOURCE = "binding.cpp"
HEADERS = ("relattn.h", "relattn_helpers.h", "relattn_tile.cuh", "relattn_mma.h", "relattn_tc.cuh")
BUILD_DIR_ENV = "NEZHA_KERNELS_BUILD_DIR"
NVCC_ENV = "NEZHA_KERNELS_NVCC"


class CudaBuildError(RuntimeError):
    """The CUDA extension cannot be built or loaded; the message says why."""


def find_nvcc() -> str | None:
    """nvcc from $NEZHA_KERNELS_NVCC, $CUDA_HOME, PATH or /usr/local/cuda, else None."""
    candidates = [os.environ.get(NVCC_ENV)]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def cuda_root(nvcc: str) -> Path:
    """Toolkit root holding lib64/libcudart*: $CUDA_HOME, nvcc's parent or /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(os.path.realpath(nvcc)).parent.parent), "/usr/local/cuda"]
    for c in candidates:
        if c and any((Path(c) / "lib64").glob("libcudart*")):
            return Path(c)
    raise CudaBuildError(f"no CUDA runtime library (lib64/libcudart*) found next to {nvcc} or in /usr/local/cuda")


def gencode_flags(arch: int) -> list[str]:
    """-gencode for one SM arch; 90 builds sm_90a (the Hopper-specific target)."""
    suffix = "a" if arch == 90 else ""
    return ["-gencode", f"arch=compute_{arch}{suffix},code=sm_{arch}{suffix}"]


def nvcc_flags(archs: tuple[int, ...]) -> list[str]:
    flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", f"-I{CSRC}"]
    for arch in archs:
        flags += gencode_flags(arch)
    return flags


def sources_digest(names) -> str:
    """sha256 over the names and contents of csrc/ files ``names``: a cache key that changes with any source."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    return h.hexdigest()


def cache_root(build_dir: str | os.PathLike | None = None) -> Path:
    """Where builds are cached: ``build_dir``, else $NEZHA_KERNELS_BUILD_DIR, else ~/.cache/nezha_kernels."""
    return Path(build_dir or os.environ.get(BUILD_DIR_ENV)
                or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nezha_kernels")


def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout.strip()


def default_archs() -> tuple[int, ...]:
    """The current GPU's arch when there is one, else sm_80 (enough for a build check)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return (major * 10 + minor,)
    return (80,)


def _compile_kernels(nvcc: str, archs: tuple[int, ...], out_dir: Path) -> list[Path]:
    """nvcc each kernel source to an object (in parallel), reusing objects already in out_dir."""
    objects, procs = [], []
    for name in KERNEL_SOURCES:
        obj = out_dir / (Path(name).stem + ".o")
        objects.append(obj)
        if obj.exists():
            continue
        tmp = obj.with_suffix(".o.tmp")
        cmd = [nvcc, "-c", str(CSRC / name), "-o", str(tmp), *nvcc_flags(archs)]
        procs.append((obj, tmp, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True)))
    for obj, tmp, cmd, proc in procs:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise CudaBuildError(f"nvcc failed ({' '.join(cmd)}):\n{log[-4000:]}")
        os.replace(tmp, obj)
    return objects


def build_extension(archs: tuple[int, ...] | None = None, build_dir: str | os.PathLike | None = None,
                    verbose: bool = False):
    """JIT-build (or reuse the cached build of) the extension module for ``archs``; returns the module."""
    import torch
    from torch.utils import cpp_extension

    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildError(
            "the CUDA backend needs nvcc (CUDA toolkit 12+): none found on PATH, $CUDA_HOME or /usr/local/cuda; "
            f"set ${NVCC_ENV} or CUDA_HOME, or use backend='triton'/'torch'")
    if not cpp_extension.is_ninja_available():
        raise CudaBuildError("the CUDA backend's JIT build needs ninja: pip install ninja")
    if not (CSRC / BINDING_SOURCE).exists():
        raise CudaBuildError(f"CUDA sources not found at {CSRC}: use a source checkout (pip install -e .)")
    archs = tuple(sorted(set(archs or default_archs())))
    key_text = "|".join([torch.__version__, str(torch.version.cuda), _nvcc_version(nvcc),
                         ",".join(map(str, archs)), sources_digest((*KERNEL_SOURCES, BINDING_SOURCE, *HEADERS))])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    out_dir = cache_root(build_dir) / f"cuda_{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = _compile_kernels(nvcc, archs, out_dir)
    lib = cuda_root(nvcc) / "lib64"
    if (lib / "libcudart_static.a").exists():
        # A static runtime: the binding does not depend on which libcudart torch ships (or none, CPU torch).
        runtime = [str(lib / "libcudart_static.a"), "-ldl", "-lpthread", "-lrt"]
    else:
        runtime = [f"-L{lib}", "-lcudart"]
    try:
        return cpp_extension.load(
            name=f"nezha_kernels_cuda_{key}", sources=[str(CSRC / BINDING_SOURCE)],
            extra_include_paths=[str(CSRC)], extra_cflags=["-O2"],
            extra_ldflags=[*map(str, objects), *runtime], build_directory=str(out_dir), verbose=verbose,
        )
    except Exception as exc:  # compiler output is in the message
        raise CudaBuildError(f"building the CUDA extension's binding failed: {exc}") from exc


@functools.lru_cache(maxsize=1)
def load_extension():
    """The extension module: the ahead-of-time build if installed, else a cached JIT build."""
    try:
        from .. import _cuda_aot  # type: ignore[attr-defined]

        return _cuda_aot
    except ImportError:
        pass
    return build_extension()
