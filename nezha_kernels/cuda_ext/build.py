"""Build and load the CUDA extension: nvcc compiles csrc/*.cu, torch's ninja JIT builds the binding.

The kernels include only CUDA headers, so they are compiled here with the machine's nvcc (any arch,
no GPU needed); the pybind11 binding is built with ``torch.utils.cpp_extension.load`` and linked
against those objects and the static CUDA runtime. Everything is cached in a directory keyed by the
torch version, its CUDA version and the source contents, named with the target archs (``jit_build_dir``).

Which module ``load_extension`` returns: the ahead-of-time build ``nezha_kernels._cuda_aot``
(``NEZHA_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation .``) when installed (one that fails to import
is an error, never replaced by a JIT build), else a cached JIT build covering the GPU's arch (imported from
its file, no compiler run), else a JIT build, announced on stderr (minutes; ``nezha-kernels build`` does it
ahead of time). ``extension_status`` says which of these applies without building anything.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .sources import BINDING_SOURCE, EXTENSION_FILES, KERNEL_SOURCES, source_dir

__all__ = [
    "CudaBuildError",
    "CSRC",
    "KERNEL_SOURCES",
    "find_nvcc",
    "gencode_flags",
    "nvcc_flags",
    "load_extension",
    "build_extension",
    "extension_status",
    "cached_build",
    "aot_extension",
    "object_cache_path",
    "nvcc_version",
]

CSRC = source_dir()  # the checkout's csrc/, or the copy a wheel ships (nezha_kernels/_csrc)
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
    candidates = [
        os.environ.get("CUDA_HOME"),
        os.environ.get("CUDA_PATH"),
        str(Path(os.path.realpath(nvcc)).parent.parent),
        "/usr/local/cuda",
    ]
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
    return Path(
        build_dir
        or os.environ.get(BUILD_DIR_ENV)
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nezha_kernels"
    )


def default_archs() -> tuple[int, ...]:
    """The current GPU's arch when there is one, else sm_80 (enough for a build check)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return (major * 10 + minor,)
    return (80,)


def parse_archs(text: str) -> tuple[int, ...]:
    """SM archs from "80,90", "8.0;9.0" or "sm_80 sm_90" (ValueError naming the bad entry)."""
    archs = []
    for item in text.replace(";", ",").replace(" ", ",").split(","):
        item = item.strip().lower().removeprefix("sm_").removesuffix("a")
        if not item:
            continue
        digits = item.replace(".", "")
        if not digits.isdigit() or ("." in item and len(item.split(".")) != 2):
            raise ValueError(f"archs: {item!r} is not an SM arch (expected e.g. 80, 9.0 or sm_90)")
        archs.append(int(digits))
    if not archs:
        raise ValueError(f"archs: no SM arch in {text!r}")
    return tuple(sorted(set(archs)))


@functools.cache
def nvcc_version(nvcc: str) -> str:
    """``nvcc --version``'s output (run once per process): part of every compile cache key."""
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout


def object_cache_path(nvcc: str, source: str, archs: tuple[int, ...]) -> Path:
    """Where the object of kernel ``source`` for ``archs`` is shared between the compile check and the JIT build.

    Both run nvcc with ``nvcc_flags(archs)`` (the compile check adds ``-Xptxas -v``, which changes only what is
    printed), so one compile serves both: keyed by nvcc's version, the flags and the source and every header.
    """
    from .sources import HEADERS

    h = hashlib.sha256()
    h.update(nvcc_version(nvcc).encode())
    h.update(" ".join(nvcc_flags(archs)).encode())
    h.update(sources_digest((source, *HEADERS)).encode())
    return cache_root() / "objects" / f"{Path(source).stem}.{_arch_tag(archs)}.{h.hexdigest()[:16]}.o"


def copy_atomically(src: Path, dst: Path) -> None:
    """Copy src to dst through a temporary name, so a reader never sees half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _compile_kernels(nvcc: str, archs: tuple[int, ...], out_dir: Path) -> list[Path]:
    """nvcc each kernel source to an object (in parallel), reusing objects already in out_dir or in the shared
    object cache (``object_cache_path``: what the compile check compiled for the same archs)."""
    objects, procs = [], []
    for name in KERNEL_SOURCES:
        obj = out_dir / (Path(name).stem + ".o")
        objects.append(obj)
        if obj.exists():
            continue
        shared = object_cache_path(nvcc, name, archs)
        if shared.is_file():
            copy_atomically(shared, obj)
            continue
        tmp = obj.with_suffix(".o.tmp")
        cmd = [nvcc, "-c", str(CSRC / name), "-o", str(tmp), *nvcc_flags(archs)]
        procs.append(
            (obj, tmp, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        )
    for obj, tmp, cmd, proc in procs:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise CudaBuildError(f"nvcc failed ({' '.join(cmd)}):\n{log[-4000:]}")
        os.replace(tmp, obj)
    return objects


def jit_key() -> str:
    """Cache key of a JIT build: torch's version and CUDA version (the binding's ABI) and every source."""
    import torch

    text = "|".join([torch.__version__, str(torch.version.cuda), sources_digest(EXTENSION_FILES)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _arch_tag(archs: tuple[int, ...]) -> str:
    return "sm" + "-".join(map(str, archs))


def jit_build_dir(archs: tuple[int, ...], build_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the JIT build for ``archs`` (sorted) of the current sources."""
    return cache_root(build_dir) / f"cuda_{jit_key()}_{_arch_tag(archs)}"


def _module_name(out_dir: Path) -> str:
    return "nezha_kernels_" + out_dir.name  # cuda_<key>_sm80-90: one module name per build


def cached_build(arch: int, build_dir: str | os.PathLike | None = None) -> Path | None:
    """The built library of a cached JIT build of the current sources whose archs include ``arch``, else None.

    Looks only at files: no compiler is run (``nezha-kernels build --archs 80,90`` serves sm_80 and sm_90).
    """
    root = cache_root(build_dir)
    for out_dir in sorted(root.glob(f"cuda_{jit_key()}_sm*")):
        archs = out_dir.name.rsplit("_sm", 1)[1].split("-")
        lib = out_dir / f"{_module_name(out_dir)}.so"
        if str(arch) in archs and lib.is_file():
            return lib
    return None


def _import_library(lib: Path):
    """Import a built pybind11 module from its file (torch is imported first: the module links against it)."""
    import importlib.util

    import torch  # noqa: F401

    spec = importlib.util.spec_from_file_location(lib.stem, lib)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile_binding(objects: list[Path], out_dir: Path, nvcc: str, verbose: bool):
    from torch.utils import cpp_extension

    lib = cuda_root(nvcc) / "lib64"
    if (lib / "libcudart_static.a").exists():
        # A static runtime: the binding does not depend on which libcudart torch ships (or none, CPU torch).
        runtime = [str(lib / "libcudart_static.a"), "-ldl", "-lpthread", "-lrt"]
    else:
        runtime = [f"-L{lib}", "-lcudart"]
    try:
        return cpp_extension.load(
            name=_module_name(out_dir),
            sources=[str(CSRC / BINDING_SOURCE)],
            extra_include_paths=[str(CSRC)],
            extra_cflags=["-O2"],
            extra_ldflags=[*map(str, objects), *runtime],
            build_directory=str(out_dir),
            verbose=verbose,
        )
    except Exception as exc:  # compiler output is in the message
        raise CudaBuildError(f"building the CUDA extension's binding failed: {exc}") from exc


def _toolchain() -> str:
    """nvcc's path once nvcc and ninja are there (CudaBuildError saying what is missing otherwise)."""
    from torch.utils import cpp_extension

    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildError(
            "the CUDA backend needs nvcc (CUDA toolkit 12+): none found on PATH, $CUDA_HOME or /usr/local/cuda; "
            f"set ${NVCC_ENV} or CUDA_HOME, or use backend='triton'/'torch'"
        )
    if not cpp_extension.is_ninja_available():
        raise CudaBuildError("the CUDA backend's JIT build needs ninja: pip install ninja")
    missing = [name for name in EXTENSION_FILES if not (CSRC / name).is_file()]
    if missing:
        raise CudaBuildError(
            f"CUDA sources missing from {CSRC}: {', '.join(missing)} (a broken install: "
            "reinstall nezha_kernels, or use a source checkout)"
        )
    return nvcc


def build_extension(
    archs: tuple[int, ...] | None = None, build_dir: str | os.PathLike | None = None, verbose: bool = False
):
    """JIT-build (or reuse the cached build of) the extension module for ``archs``; returns the module.

    Says on stderr when it compiles (minutes); ``nezha-kernels build`` runs this ahead of time.
    """
    nvcc = _toolchain()
    archs = tuple(sorted(set(archs or default_archs())))
    out_dir = jit_build_dir(archs, build_dir)
    if not (out_dir / f"{_module_name(out_dir)}.so").is_file():
        print(
            f"nezha_kernels: building the CUDA extension for {', '.join(f'sm_{a}' for a in archs)} in {out_dir} "
            "(once per source version; takes minutes; `nezha-kernels build` does it ahead of time)",
            file=sys.stderr,
            flush=True,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = _compile_kernels(nvcc, archs, out_dir)
    return _compile_binding(objects, out_dir, nvcc, verbose)


AOT_MODULE = "nezha_kernels._cuda_aot"


def _aot_spec():
    import importlib.util

    return importlib.util.find_spec(AOT_MODULE)


def _import_aot():
    import importlib

    return importlib.import_module(AOT_MODULE)


def aot_extension():
    """The ahead-of-time build (``NEZHA_KERNELS_BUILD_CUDA=1`` install) or None when none is installed.

    An installed one that fails to import (e.g. an undefined symbol) is a CudaBuildError, not a silent JIT
    build: the AOT build exists so that no nvcc is needed.
    """
    if _aot_spec() is None:
        return None
    try:
        return _import_aot()
    except ImportError as exc:
        raise CudaBuildError(
            f"the ahead-of-time CUDA extension {AOT_MODULE} is installed but does not import "
            f"({exc}); reinstall it (NEZHA_KERNELS_BUILD_CUDA=1 pip install --no-build-isolation .) "
            "or remove it to use a JIT build"
        ) from exc


_failure: dict[int, str] = {}  # arch -> why loading the extension failed in this process
_status: dict[int, tuple[bool, str]] = {}  # arch -> extension_status, probed once per process


@functools.cache
def load_extension(arch: int | None = None):
    """The extension module: the AOT build if installed, else a cached JIT build, else a JIT build (minutes).

    ``arch``: the SM arch it must run on (default: the current GPU's, see default_archs).
    """
    arch = arch if arch is not None else default_archs()[0]
    try:
        module = aot_extension()
        if module is not None:
            return module
        lib = cached_build(arch)
        if lib is not None:
            return _import_library(lib)
        return build_extension((arch,))
    except CudaBuildError as exc:
        _failure[arch] = str(exc)
        raise


def extension_status(arch: int) -> tuple[bool, str]:
    """(usable, why) for a GPU of SM ``arch``, cheaply: never compiles anything; probed once per process.

    Usable: an AOT build is installed, or a cached JIT build of the current sources covers ``arch``, or nvcc
    and ninja are there to JIT-build on first use (the reason says so). A failed load makes it unusable.
    """
    if arch in _failure:
        return False, _failure[arch]
    if arch not in _status:
        _status[arch] = _probe(arch)
    return _status[arch]


def _probe(arch: int) -> tuple[bool, str]:
    if _aot_spec() is not None:
        try:
            aot_extension()
        except CudaBuildError as exc:
            return False, str(exc)
        return True, f"ahead-of-time build {AOT_MODULE}"
    lib = cached_build(arch)
    if lib is not None:
        return True, f"cached JIT build {lib.parent}"
    try:
        _toolchain()
    except CudaBuildError as exc:
        return False, str(exc)
    return True, (
        f"JIT-builds the extension for sm_{arch} on first use (minutes), or ahead of time with `nezha-kernels build`"
    )
