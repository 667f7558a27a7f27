"""The CUDA kernels of csrc/ executed on the CPU, for parity tests without a GPU.

g++ compiles the unchanged kernel sources with ``-DNEZHA_CUDA_EMULATE`` against the CUDA emulator of
csrc/emu/ (one OS thread per CUDA thread, real barriers, warp shuffles and mma.sync m16n8k16 emulated
from the PTX fragment layouts). Layers:

- ``build_emulator()``: the shared library, cached like the JIT extension build (``$NEZHA_KERNELS_BUILD_DIR``
  or ``~/.cache/nezha_kernels``, keyed by the compiler, the flags and every source), optionally with
  sanitizers (``$NEZHA_EMU_SANITIZE`` = ``address``, ``thread``, ``undefined`` or a comma list; loading a
  sanitized library into python needs the runtime in ``LD_PRELOAD``, see ``sanitizer_runtime``).
- ``EmulatedExtension``: ``forward`` / ``backward`` with the signatures of csrc/binding.cpp, on CPU tensors,
  through the binding's own argument handling (csrc/relattn_args.h, fed plain tensor views); outputs are
  NaN-poisoned so an element the kernels do not write shows up.
- ``emulated_cuda_backend()``: while active, the CUDA launchers (``nezha_kernels.cuda_ext.launch``: layouts,
  mask / head_mask / delta preparation), and with them the op and ``backend="cuda"``, run on CPU tensors
  against the emulated kernels instead of the built extension.

Slow (every CUDA thread is an OS thread): keep shapes to a few hundred rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from .build import CSRC, cache_root, sources_digest
from .sources import EMU_SOURCES, EMULATOR_FILES

__all__ = [
    "EmulatorBuildError",
    "SANITIZE_ENV",
    "find_cxx",
    "build_emulator",
    "load_emulator",
    "sanitizer_runtime",
    "EmulatedExtension",
    "emulated_extension",
    "emulated_cuda_backend",
    "run_selftest",
]

SANITIZE_ENV = "NEZHA_EMU_SANITIZE"
CXX_ENV = "NEZHA_EMU_CXX"
_SANITIZERS = ("address", "thread", "undefined")
_BASE_FLAGS = (
    "-std=c++20",
    "-pthread",
    "-fPIC",
    "-DNEZHA_CUDA_EMULATE",
    "-fno-strict-aliasing",
    "-Wall",
    "-Wno-unknown-pragmas",
)


class EmulatorBuildError(RuntimeError):
    """The emulated kernels cannot be built or loaded; the message says why."""


def find_cxx() -> str | None:
    """g++ from $NEZHA_EMU_CXX or PATH, else None."""
    return os.environ.get(CXX_ENV) or shutil.which("g++")


def _sanitizers(sanitize: str | None) -> tuple[str, ...]:
    text = os.environ.get(SANITIZE_ENV, "") if sanitize is None else sanitize
    names = tuple(sorted({s.strip() for s in text.split(",") if s.strip()}))
    bad = [s for s in names if s not in _SANITIZERS]
    if bad:
        raise ValueError(f"{SANITIZE_ENV} / sanitize must name sanitizers from {_SANITIZERS}, got {bad}")
    if "thread" in names and "address" in names:
        raise ValueError("sanitize: address and thread sanitizers cannot be combined")
    return names


def _flags(sanitizers: tuple[str, ...]) -> list[str]:
    flags = [*_BASE_FLAGS, f"-I{CSRC}"]
    if sanitizers:
        # -O1 -g1 (line tables, no variable info): reports with file and line at a bearable speed; full -g made the
        # ASan build ~35% slower (CI time) for variable info no report prints.
        flags += ["-O1", "-g1", "-fno-omit-frame-pointer", f"-fsanitize={','.join(sanitizers)}"]
        if "undefined" in sanitizers:
            flags.append("-fno-sanitize-recover=undefined")  # a UB finding fails the launch's process
    else:
        flags.append("-O2")
    return flags


def _digest(cxx: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h.update(version.encode())
    h.update(" ".join(flags).encode())
    h.update(sources_digest(EMULATOR_FILES).encode())
    return h.hexdigest()[:16]


def build_emulator(sanitize: str | None = None, build_dir: str | os.PathLike | None = None) -> Path:
    """Path of the emulated kernels' shared library, compiled with g++ unless cached.

    ``sanitize``: comma list of ``address`` / ``thread`` / ``undefined`` (default ``$NEZHA_EMU_SANITIZE``).
    """
    cxx = find_cxx()
    if cxx is None:
        raise EmulatorBuildError(f"the CUDA emulator needs g++ (C++20): none on PATH; set ${CXX_ENV}")
    sanitizers = _sanitizers(sanitize)
    flags = _flags(sanitizers)
    out_dir = cache_root(build_dir) / f"emu_{'_'.join(sanitizers) or 'plain'}_{_digest(cxx, flags)}"
    lib = out_dir / "libnezha_emu.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # Processes building the same library (parallel test workers) wait for the first instead of compiling it again.
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists():
            return lib
        _compile_and_link(cxx, flags, out_dir, lib)
    return lib


def _compile_and_link(cxx: str, flags: list[str], out_dir: Path, lib: Path) -> None:
    """Compile the emulator's translation units in parallel and link them into ``lib`` (atomically)."""
    tag = f"{os.getpid()}"
    procs = []
    for src in EMU_SOURCES:  # translation units, compiled in parallel
        obj = out_dir / f"{Path(src).stem}.{tag}.o"
        cmd = [cxx, *flags, "-c", str(CSRC / src), "-o", str(obj)]
        procs.append((obj, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for _, cmd, proc in procs:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            raise EmulatorBuildError(f"g++ failed ({' '.join(cmd)}):\n{log[-4000:]}")
    tmp = lib.with_suffix(f".{tag}.tmp")
    link = [cxx, *flags, "-shared", *(str(obj) for obj, _, _ in procs), "-o", str(tmp), "-ldl"]
    proc = subprocess.run(link, capture_output=True, text=True)
    for obj, _, _ in procs:
        obj.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise EmulatorBuildError(f"linking the emulator failed ({' '.join(link)}):\n{proc.stdout}{proc.stderr}")
    os.replace(tmp, lib)


def sanitizer_runtime(sanitizer: str) -> str:
    """Path of g++'s runtime for ``sanitizer`` (``address`` -> libasan.so, ...), to put in ``LD_PRELOAD``."""
    cxx = find_cxx()
    if cxx is None:
        raise EmulatorBuildError("no g++ found")
    name = {"address": "libasan.so", "thread": "libtsan.so", "undefined": "libubsan.so"}[sanitizer]
    path = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.isabs(path):
        raise EmulatorBuildError(f"g++ has no {name}")
    return path


class _TensorView(ctypes.Structure):
    """nezha::TensorView (csrc/relattn_args.h): a tensor as plain data; checked against the library's offsetof
    table on load. The checks of the arguments are the binding's own, in C++."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("device_type", ctypes.c_int),
        ("device_index", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("sizes", ctypes.c_int64 * 4),
        ("strides", ctypes.c_int64 * 4),
    ]


# nezha::ScalarKind and nezha::DeviceKind codes (csrc/relattn_args.h).
_SCALAR_KINDS = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.bool: 3, torch.int32: 5}
_OTHER_KIND = 4
_DEVICE_KINDS = {"cpu": 0, "cuda": 1}
_OTHER_DEVICE = 2


def _view(t: torch.Tensor | None):
    """A pointer to the TensorView of ``t`` (None for an absent tensor); ``t`` must outlive the call."""
    if t is None:
        return None
    view = _TensorView()
    view.data = t.data_ptr()
    view.dtype = _SCALAR_KINDS.get(t.dtype, _OTHER_KIND)
    view.device_type = _DEVICE_KINDS.get(t.device.type, _OTHER_DEVICE)
    view.device_index = -1 if t.device.index is None else t.device.index
    view.ndim = t.dim()
    for d in range(min(t.dim(), 4)):
        view.sizes[d], view.strides[d] = t.shape[d], t.stride(d)
    return ctypes.pointer(view)


def _check_layout(lib: ctypes.CDLL) -> None:
    out = (ctypes.c_int64 * 16)()
    n = lib.nezha_emu_view_layout(out, 16)
    want = [ctypes.sizeof(_TensorView)] + [getattr(_TensorView, name).offset for name, _ in _TensorView._fields_]
    if list(out[:n]) != want:
        raise EmulatorBuildError(f"TensorView layout mismatch: library {list(out[:n])}, ctypes {want}")


@functools.cache
def load_emulator(sanitize: str | None = None) -> ctypes.CDLL:
    """The built library, loaded with its C API typed (cached per sanitizer set)."""
    lib = ctypes.CDLL(str(build_emulator(sanitize)))
    p, i, i64, view = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.POINTER(_TensorView)
    scalars = [i64, i64, ctypes.c_bool, ctypes.c_double, ctypes.c_double, ctypes.c_uint64, i64]
    lib.nezha_emu_view_layout.argtypes = [ctypes.POINTER(ctypes.c_int64), i]
    lib.nezha_emu_view_layout.restype = i
    lib.nezha_emu_fwd.argtypes = [view] * 7 + scalars + [view, view, i, view, view]
    lib.nezha_emu_fwd.restype = ctypes.c_char_p
    lib.nezha_emu_bwd.argtypes = [view] * 10 + scalars + [ctypes.c_bool, view, view, view, i]
    lib.nezha_emu_bwd.restype = ctypes.c_char_p
    # varlen: q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k (bwd: dout first, lse and delta before cu),
    # then max_seqlen_q, max_seqlen_k and the scalars from R (no q_offset).
    varlen_scalars = [i64, i64, i64, ctypes.c_bool, ctypes.c_double, ctypes.c_double, ctypes.c_uint64, i64]
    lib.nezha_emu_fwd_varlen.argtypes = [view] * 7 + varlen_scalars + [view, view, i, view, view]
    lib.nezha_emu_fwd_varlen.restype = ctypes.c_char_p
    lib.nezha_emu_bwd_varlen.argtypes = [view] * 10 + varlen_scalars + [ctypes.c_bool, view, view, view, i]
    lib.nezha_emu_bwd_varlen.restype = ctypes.c_char_p
    lib.nezha_emu_get_device.argtypes = []
    lib.nezha_emu_get_device.restype = i
    lib.nezha_emu_set_device.argtypes = [i]
    lib.nezha_emu_set_device.restype = i
    lib.nezha_emu_round.argtypes = [i, p, p, i64]
    lib.nezha_emu_round.restype = None
    lib.nezha_emu_selftest.argtypes = [ctypes.c_char_p, p, p, p]
    lib.nezha_emu_selftest.restype = ctypes.c_char_p
    _check_layout(lib)
    return lib


def _poisoned(shape, dtype) -> torch.Tensor:
    """NaN-filled output: every element the kernels do not write stays NaN."""
    return torch.full(shape, float("nan"), dtype=dtype)


def _raise_on(err: bytes | None) -> None:
    """The binding's TORCH_CHECK: a RuntimeError with the C++ message."""
    if err is not None:
        raise RuntimeError(err.decode())


class EmulatedExtension:
    """The extension module's ``forward`` / ``backward`` (csrc/binding.cpp) on the emulated kernels, CPU tensors.

    Arguments go to the binding's own argument handling (csrc/relattn_args.h) as tensor views; outputs are
    allocated here, NaN-poisoned, with the shapes the binding allocates (the C++ checks them before the launch).
    """

    def __init__(self, lib: ctypes.CDLL, device: int = 0):
        self._lib = lib
        self.device = device  # the emulated device the launches target (the binding: q's device index)

    def current_device(self) -> int:
        """The calling thread's current emulated device (what cudaGetDevice returns)."""
        return self._lib.nezha_emu_get_device()

    def set_current_device(self, device: int) -> None:
        if self._lib.nezha_emu_set_device(device) != 0:
            raise RuntimeError(f"invalid emulated device {device}")

    def forward(
        self,
        q,
        k,
        v,
        table,
        key_padding,
        additive_mask,
        head_mask,
        R,
        q_offset,
        causal,
        scale,
        dropout_p,
        seed,
        stream,
        impl,
        rot_keys=None,
        rot_f32=None,
    ):
        """[out [B, H, Lq, D] in q's dtype, lse [2, B, H, Lq] float32 (row max, log of the row sum)].

        rot_keys / rot_f32: the extended sinusoid tables of the rotation path (both or neither; launch.py)."""
        out = _poisoned(q.shape, q.dtype)
        lse = _poisoned((2, *q.shape[:-1]), torch.float32)
        tensors = (q, k, v, table, key_padding, additive_mask, head_mask)
        _raise_on(
            self._lib.nezha_emu_fwd(
                *map(_view, tensors),
                R,
                q_offset,
                causal,
                scale,
                dropout_p,
                int(seed) & (2**64 - 1),
                impl,
                _view(out),
                _view(lse),
                self.device,
                _view(rot_keys),
                _view(rot_f32),
            )
        )
        return [out, lse]

    def backward(
        self,
        dout,
        q,
        k,
        v,
        table,
        key_padding,
        additive_mask,
        head_mask,
        lse,
        delta,
        R,
        q_offset,
        causal,
        scale,
        dropout_p,
        seed,
        stream,
        impl,
        deterministic=True,
    ):
        """[dq, dk, dv], contiguous, in q's dtype; deterministic=False runs the fused tensor-core backward."""
        dq, dk, dv = (_poisoned(t.shape, q.dtype) for t in (q, k, v))
        tensors = (dout, q, k, v, table, key_padding, additive_mask, head_mask, lse, delta)
        _raise_on(
            self._lib.nezha_emu_bwd(
                *map(_view, tensors),
                R,
                q_offset,
                causal,
                scale,
                dropout_p,
                int(seed) & (2**64 - 1),
                impl,
                deterministic,
                _view(dq),
                _view(dk),
                _view(dv),
                self.device,
            )
        )
        return [dq, dk, dv]

    def forward_varlen(
        self,
        q,
        k,
        v,
        table,
        head_mask,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        R,
        causal,
        scale,
        dropout_p,
        seed,
        stream,
        impl,
        rot_keys=None,
        rot_f32=None,
    ):
        """[out [Tq, H, D] in q's dtype, lse [2, H, Tq] float32]: a padding-free call."""
        out = _poisoned(q.shape, q.dtype)
        lse = _poisoned((2, q.shape[1], q.shape[0]) if q.dim() == 3 else (1,), torch.float32)
        tensors = (q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k)
        _raise_on(
            self._lib.nezha_emu_fwd_varlen(
                *map(_view, tensors),
                max_seqlen_q,
                max_seqlen_k,
                R,
                causal,
                scale,
                dropout_p,
                int(seed) & (2**64 - 1),
                impl,
                _view(out),
                _view(lse),
                self.device,
                _view(rot_keys),
                _view(rot_f32),
            )
        )
        return [out, lse]

    def backward_varlen(
        self,
        dout,
        q,
        k,
        v,
        table,
        head_mask,
        lse,
        delta,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        R,
        causal,
        scale,
        dropout_p,
        seed,
        stream,
        impl,
        deterministic=True,
    ):
        """[dq [Tq, H, D], dk, dv [Tk, H, D]] in q's dtype."""
        dq, dk, dv = (_poisoned(t.shape, q.dtype) for t in (q, k, v))
        tensors = (dout, q, k, v, table, head_mask, lse, delta, cu_seqlens_q, cu_seqlens_k)
        _raise_on(
            self._lib.nezha_emu_bwd_varlen(
                *map(_view, tensors),
                max_seqlen_q,
                max_seqlen_k,
                R,
                causal,
                scale,
                dropout_p,
                int(seed) & (2**64 - 1),
                impl,
                deterministic,
                _view(dq),
                _view(dk),
                _view(dv),
                self.device,
            )
        )
        return [dq, dk, dv]

    def round_to(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x (float32) rounded through the emulated __float2half_rn / __float2bfloat16_rn and back."""
        x = x.to(torch.float32).contiguous()
        out = torch.empty_like(x)
        self._lib.nezha_emu_round({torch.float16: 0, torch.bfloat16: 1}[dtype], x.data_ptr(), out.data_ptr(), x.numel())
        return out


def run_selftest(
    name: str,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    out_numel: int = 128,
    sanitize: str | None = None,
) -> tuple[str | None, torch.Tensor]:
    """(error or None, float32 outputs) of the emulator's self-test kernel ``name`` (csrc/emu/emu_selftest.cpp)."""
    lib = load_emulator(sanitize)
    a = a.to(torch.float32).contiguous() if a is not None else torch.zeros(1)
    b = b.to(torch.float32).contiguous() if b is not None else torch.zeros(1)
    out = torch.full((out_numel,), float("nan"))
    err = lib.nezha_emu_selftest(name.encode(), a.data_ptr(), b.data_ptr(), out.data_ptr())
    return (err.decode() if err is not None else None), out


def emulated_extension(sanitize: str | None = None) -> EmulatedExtension:
    return EmulatedExtension(load_emulator(sanitize))


@contextlib.contextmanager
def emulated_cuda_backend(sanitize: str | None = None):
    """Run the CUDA launchers (``nezha_kernels.cuda_ext.launch``, hence the op's "cuda-tc" / "cuda-simt"
    implementations and ``backend="cuda"``) on the emulated kernels, with CPU tensors.

    Redirects ``launch.extension()``; not thread-safe (tests). Run the backward pass inside the block too: it
    calls the extension when it runs.
    """
    from . import launch

    ext = emulated_extension(sanitize)
    with launch.use_extension(ext):
        yield ext
