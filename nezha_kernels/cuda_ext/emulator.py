"""The CUDA kernels of csrc/ executed on the CPU, for parity tests without a GPU.

g++ compiles the unchanged kernel sources with ``-DNEZHA_CUDA_EMULATE`` against the CUDA emulator of
csrc/emu/ (one OS thread per CUDA thread, real barriers, warp shuffles and mma.sync m16n8k16 emulated
from the PTX fragment layouts). Layers:

- ``build_emulator()``: the shared library, cached like the JIT extension build (``$NEZHA_KERNELS_BUILD_DIR``
  or ``~/.cache/nezha_kernels``, keyed by the compiler, the flags and every source), optionally with
  sanitizers (``$NEZHA_EMU_SANITIZE`` = ``address``, ``thread``, ``undefined`` or a comma list; loading a
  sanitized library into python needs the runtime in ``LD_PRELOAD``, see ``sanitizer_runtime``).
- ``EmulatedExtension``: ``forward`` / ``backward`` with the signatures of csrc/binding.cpp, mirroring its
  checks and its ``AttnArgs`` filling, on CPU tensors; outputs are NaN-poisoned so an element the kernels
  do not write shows up.
- ``emulated_cuda_backend()``: while active, the CUDA launchers (``nezha_kernels.cuda_ext.launch``: layouts,
  mask / head_mask / delta preparation), and with them the op and ``backend="cuda"``, run on CPU tensors
  against the emulated kernels instead of the built extension.

Slow (every CUDA thread is an OS thread): keep shapes to a few hundred rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from .build import CSRC, cache_root, sources_digest
from .sources import EMU_SOURCES, EMULATOR_FILES

__all__ = ["EmulatorBuildError", "SANITIZE_ENV", "find_cxx", "build_emulator", "load_emulator", "sanitizer_runtime",
           "EmulatedExtension", "emulated_extension", "emulated_cuda_backend", "run_selftest"]

SANITIZE_ENV = "NEZHA_EMU_SANITIZE"
CXX_ENV = "NEZHA_EMU_CXX"
_SANITIZERS = ("address", "thread", "undefined")
_BASE_FLAGS = ("-std=c++20", "-pthread", "-fPIC", "-DNEZHA_CUDA_EMULATE", "-fno-strict-aliasing", "-Wall",
               "-Wno-unknown-pragmas")
_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


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
        # -O1 -g: readable reports at a bearable speed.
        flags += ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={','.join(sanitizers)}"]
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
    return lib


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


class _AttnArgs(ctypes.Structure):
    """Mirror of nezha::AttnArgs (csrc/relattn.h); checked against the library's offsetof table on load."""

    _fields_ = [
        ("B", ctypes.c_int), ("H", ctypes.c_int), ("Lq", ctypes.c_int), ("Lk", ctypes.c_int), ("D", ctypes.c_int),
        ("R", ctypes.c_int), ("q_offset", ctypes.c_int), ("causal", ctypes.c_bool), ("scale", ctypes.c_float),
        ("q", ctypes.c_void_p), ("q_sb", ctypes.c_int64), ("q_sh", ctypes.c_int64), ("q_sl", ctypes.c_int64),
        ("k", ctypes.c_void_p), ("k_sb", ctypes.c_int64), ("k_sh", ctypes.c_int64), ("k_sl", ctypes.c_int64),
        ("v", ctypes.c_void_p), ("v_sb", ctypes.c_int64), ("v_sh", ctypes.c_int64), ("v_sl", ctypes.c_int64),
        ("table", ctypes.c_void_p), ("key_padding", ctypes.c_void_p), ("kp_sb", ctypes.c_int64),
        ("kp_sk", ctypes.c_int64), ("additive_mask", ctypes.c_void_p), ("am_sb", ctypes.c_int64),
        ("am_sh", ctypes.c_int64), ("am_sq", ctypes.c_int64), ("am_sk", ctypes.c_int64),
        ("dropout_p", ctypes.c_float), ("dropout_seed", ctypes.c_uint64), ("head_mask", ctypes.c_void_p),
        ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p), ("Tq", ctypes.c_int),
    ]


def _check_layout(lib: ctypes.CDLL) -> None:
    out = (ctypes.c_int64 * 64)()
    n = lib.nezha_emu_args_layout(out, 64)
    want = [ctypes.sizeof(_AttnArgs)] + [getattr(_AttnArgs, name).offset for name, _ in _AttnArgs._fields_]
    if list(out[:n]) != want:
        raise EmulatorBuildError(f"AttnArgs layout mismatch: library {list(out[:n])}, ctypes {want}")


@functools.lru_cache(maxsize=None)
def load_emulator(sanitize: str | None = None) -> ctypes.CDLL:
    """The built library, loaded with its C API typed (cached per sanitizer set)."""
    lib = ctypes.CDLL(str(build_emulator(sanitize)))
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.nezha_emu_args_layout.argtypes = [ctypes.POINTER(ctypes.c_int64), i]
    lib.nezha_emu_args_layout.restype = i
    lib.nezha_emu_fwd.argtypes = [ctypes.POINTER(_AttnArgs), i, i, p, p, i]
    lib.nezha_emu_fwd.restype = ctypes.c_char_p
    lib.nezha_emu_bwd.argtypes = [ctypes.POINTER(_AttnArgs), i, i, p, p, p, p, p, p, i]
    lib.nezha_emu_bwd.restype = ctypes.c_char_p
    lib.nezha_emu_get_device.argtypes = []
    lib.nezha_emu_get_device.restype = i
    lib.nezha_emu_set_device.argtypes = [i]
    lib.nezha_emu_set_device.restype = i
    lib.nezha_emu_round.argtypes = [i, p, p, ctypes.c_int64]
    lib.nezha_emu_round.restype = None
    lib.nezha_emu_selftest.argtypes = [ctypes.c_char_p, p, p, p]
    lib.nezha_emu_selftest.restype = ctypes.c_char_p
    _check_layout(lib)
    return lib


def _check(cond: bool, *message) -> None:
    """TORCH_CHECK: a RuntimeError with the binding's message."""
    if not cond:
        raise RuntimeError("".join(str(m) for m in message))


_PREFIX = "nezha_kernels cuda backend: "


def _dtype_code(t: torch.Tensor) -> int:
    _check(t.dtype in _DTYPE_CODES, _PREFIX, "dtype must be float16, bfloat16 or float32, got ", t.dtype)
    return _DTYPE_CODES[t.dtype]


def _check_qkv(name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    # The binding requires CUDA tensors; the emulated device reads host memory.
    _check(t.device.type == "cpu", _PREFIX, name, " must be a CPU tensor for the emulator, got device ", t.device)
    _check(t.dim() == 4, _PREFIX, name, " must be 4-D [B, H, L, D], got ", t.dim(), "-D")
    _check(t.dtype == q.dtype, _PREFIX, name, " dtype ", t.dtype, " differs from q's ", q.dtype)
    _check(t.device == q.device, _PREFIX, name, " is on ", t.device, " but q is on ", q.device)
    _check(t.stride(3) == 1, _PREFIX, name, " must have unit stride on the head dim")


def _check_aux(name: str, t: torch.Tensor, q: torch.Tensor, dtype: torch.dtype) -> None:
    _check(t.device == q.device, _PREFIX, name, " must be a tensor on q's device, got ", t.device)
    _check(t.dtype == dtype, _PREFIX, name, " must be ", dtype, ", got ", t.dtype)


def _impl_code(impl: int) -> int:
    _check(impl in (0, 1), _PREFIX, "impl must be 0 (simt) or 1 (tc), got ", impl)
    return int(impl)


def _make_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale, dropout_p,
               seed) -> _AttnArgs:
    """csrc/binding.cpp's make_args, check for check and field for field."""
    _check_qkv("q", q, q)
    _check_qkv("k", k, q)
    _check_qkv("v", v, q)
    _dtype_code(q)
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    _check(k.shape[0] == B and k.shape[1] == H and k.shape[3] == D and v.shape == k.shape,
           _PREFIX, "k and v must be [B, H, Lk, D] matching q")
    _check(D in (32, 64, 128), _PREFIX, "head dim must be 32, 64 or 128, got ", D)
    _check(R >= 1, _PREFIX, "max_relative_position must be >= 1")
    _check_aux("rel_table", table, q, q.dtype)
    _check(table.dim() == 2 and table.shape[0] == 2 * R + 1 and table.shape[1] == D and table.is_contiguous(),
           _PREFIX, "rel_table must be a contiguous [2R+1, D] tensor")
    _check(Lq < 2**31 and Lk < 2**31 and q_offset + Lq < 2**31 and B * H < 65536,
           _PREFIX, "sizes exceed the kernel's 32-bit index range / grid")

    a = _AttnArgs()
    a.B, a.H, a.Lq, a.Lk, a.D, a.R, a.q_offset = B, H, Lq, Lk, D, R, q_offset
    a.causal = bool(causal)
    a.scale = float(scale)
    a.q, (a.q_sb, a.q_sh, a.q_sl) = q.data_ptr(), q.stride()[:3]
    a.k, (a.k_sb, a.k_sh, a.k_sl) = k.data_ptr(), k.stride()[:3]
    a.v, (a.v_sb, a.v_sh, a.v_sl) = v.data_ptr(), v.stride()[:3]
    a.table = table.data_ptr()
    if key_padding is not None:
        _check_aux("key_padding", key_padding, q, torch.bool)
        _check(key_padding.dim() == 2 and key_padding.shape[0] == B and key_padding.shape[1] == Lk,
               "key_padding must be bool [B, Lk]")
        a.key_padding = key_padding.data_ptr()
        a.kp_sb, a.kp_sk = key_padding.stride()
    if additive_mask is not None:
        m = additive_mask
        _check_aux("additive_mask", m, q, torch.float32)
        _check(m.dim() == 4 and tuple(m.shape) == (B, H, Lq, Lk),
               "additive_mask must be a float32 view of shape [B, H, Lq, Lk] (stride 0 on broadcast dims)")
        a.additive_mask = m.data_ptr()
        a.am_sb, a.am_sh, a.am_sq, a.am_sk = m.stride()
    if head_mask is not None:
        _check_aux("head_mask", head_mask, q, torch.float32)
        _check(head_mask.dim() == 2 and tuple(head_mask.shape) == (B, H) and head_mask.is_contiguous(),
               "head_mask must be a contiguous float32 [B, H] tensor")
        a.head_mask = head_mask.data_ptr()
    _check(0.0 <= dropout_p < 1.0, "dropout_p must be in [0, 1)")
    a.dropout_p = float(dropout_p)
    a.dropout_seed = int(seed) & (2**64 - 1)
    return a


def _check_packed(name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    _check(t.device.type == "cpu", _PREFIX, name, " must be a CPU tensor for the emulator, got device ", t.device)
    _check(t.dim() == 3, _PREFIX, name, " must be 3-D [T, H, D], got ", t.dim(), "-D")
    _check(t.dtype == q.dtype, _PREFIX, name, " dtype ", t.dtype, " differs from q's ", q.dtype)
    _check(t.stride(2) == 1, _PREFIX, name, " must have unit stride on the head dim")


def _make_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R, causal,
                      scale, dropout_p, seed) -> _AttnArgs:
    """csrc/binding.cpp's make_varlen_args, check for check and field for field."""
    _check_packed("q", q, q)
    _check_packed("k", k, q)
    _check_packed("v", v, q)
    _dtype_code(q)
    Tq, H, D = q.shape
    Tk = k.shape[0]
    _check(k.shape[1] == H and k.shape[2] == D and v.shape == k.shape,
           _PREFIX, "k and v must be [Tk, H, D] matching q")
    _check(D in (32, 64, 128), _PREFIX, "head dim must be 32, 64 or 128, got ", D)
    _check(R >= 1, _PREFIX, "max_relative_position must be >= 1")
    _check_aux("rel_table", table, q, q.dtype)
    _check(table.dim() == 2 and table.shape[0] == 2 * R + 1 and table.shape[1] == D and table.is_contiguous(),
           _PREFIX, "rel_table must be a contiguous [2R+1, D] tensor")
    _check_aux("cu_seqlens_q", cu_seqlens_q, q, torch.int32)
    _check_aux("cu_seqlens_k", cu_seqlens_k, q, torch.int32)
    _check(cu_seqlens_q.dim() == 1 and cu_seqlens_q.shape[0] >= 1 and cu_seqlens_q.is_contiguous()
           and cu_seqlens_k.shape == cu_seqlens_q.shape and cu_seqlens_k.is_contiguous(),
           _PREFIX, "cu_seqlens_q / cu_seqlens_k must be contiguous int32 [B + 1]")
    B = cu_seqlens_q.shape[0] - 1
    _check(0 <= max_seqlen_q <= Tq and 0 <= max_seqlen_k <= Tk,
           _PREFIX, "max_seqlen_q / max_seqlen_k must be in [0, T]")
    _check(Tq < 2**31 and Tk < 2**31 and Tq * H < 2**31 and B * H < 65536,
           _PREFIX, "sizes exceed the kernel's 32-bit index range / grid")

    a = _AttnArgs()
    a.B, a.H, a.D, a.R = B, H, D, R
    a.Lq, a.Lk, a.Tq = max_seqlen_q, max_seqlen_k, Tq
    a.causal = bool(causal)
    a.scale = float(scale)
    a.q, a.q_sh, a.q_sl = q.data_ptr(), q.stride(1), q.stride(0)
    a.k, a.k_sh, a.k_sl = k.data_ptr(), k.stride(1), k.stride(0)
    a.v, a.v_sh, a.v_sl = v.data_ptr(), v.stride(1), v.stride(0)
    a.table = table.data_ptr()
    a.cu_seqlens_q, a.cu_seqlens_k = cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr()
    if head_mask is not None:
        _check_aux("head_mask", head_mask, q, torch.float32)
        _check(head_mask.dim() == 2 and tuple(head_mask.shape) == (B, H) and head_mask.is_contiguous(),
               "head_mask must be a contiguous float32 [B, H] tensor")
        a.head_mask = head_mask.data_ptr()
    _check(0.0 <= dropout_p < 1.0, "dropout_p must be in [0, 1)")
    a.dropout_p = float(dropout_p)
    a.dropout_seed = int(seed) & (2**64 - 1)
    return a


def _poisoned(shape, dtype) -> torch.Tensor:
    """NaN-filled output: every element the kernels do not write stays NaN."""
    return torch.full(shape, float("nan"), dtype=dtype)


class EmulatedExtension:
    """The extension module's ``forward`` / ``backward`` (csrc/binding.cpp) on the emulated kernels."""

    def __init__(self, lib: ctypes.CDLL, device: int = 0):
        self._lib = lib
        self.device = device  # the emulated device the launches target (the binding: q's device index)

    def current_device(self) -> int:
        """The calling thread's current emulated device (what cudaGetDevice returns)."""
        return self._lib.nezha_emu_get_device()

    def set_current_device(self, device: int) -> None:
        _check(self._lib.nezha_emu_set_device(device) == 0, "invalid emulated device ", device)

    def forward(self, q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale, dropout_p,
                seed, stream, impl=1):
        """[out [B, H, Lq, D] in q's dtype, lse [2, B, H, Lq] float32 (row max, log of the row sum)]."""
        a = _make_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale,
                       dropout_p, seed)
        out = _poisoned((a.B, a.H, a.Lq, a.D), q.dtype)
        lse = _poisoned((2, a.B, a.H, a.Lq), torch.float32)
        err = self._lib.nezha_emu_fwd(ctypes.byref(a), _dtype_code(q), _impl_code(impl), out.data_ptr(),
                                      lse.data_ptr(), self.device)
        _check(err is None, "nezha_kernels cuda forward failed: ", (err or b"").decode())
        return [out, lse]

    def backward(self, dout, q, k, v, table, key_padding, additive_mask, head_mask, lse, delta, R, q_offset, causal,
                 scale, dropout_p, seed, stream, impl=1):
        """[dq, dk, dv], contiguous, in q's dtype."""
        a = _make_args(q, k, v, table, key_padding, additive_mask, head_mask, R, q_offset, causal, scale,
                       dropout_p, seed)
        _check_aux("dout", dout, q, q.dtype)
        _check(dout.shape == q.shape and dout.is_contiguous(), "dout must be contiguous with q's shape")
        _check_aux("lse", lse, q, torch.float32)
        _check(tuple(lse.shape) == (2, a.B, a.H, a.Lq) and lse.is_contiguous(),
               "lse must be contiguous float32 [2, B, H, Lq]")
        _check_aux("delta", delta, q, torch.float32)
        _check(tuple(delta.shape) == (a.B, a.H, a.Lq) and delta.is_contiguous(),
               "delta must be contiguous float32 [B, H, Lq]")
        dq = _poisoned((a.B, a.H, a.Lq, a.D), q.dtype)
        dk = _poisoned((a.B, a.H, a.Lk, a.D), q.dtype)
        dv = _poisoned((a.B, a.H, a.Lk, a.D), q.dtype)
        err = self._lib.nezha_emu_bwd(ctypes.byref(a), _dtype_code(q), _impl_code(impl), dout.data_ptr(),
                                      lse.data_ptr(), delta.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                      self.device)
        _check(err is None, "nezha_kernels cuda backward failed: ", (err or b"").decode())
        return [dq, dk, dv]

    def forward_varlen(self, q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R,
                       causal, scale, dropout_p, seed, stream, impl=1):
        """[out [Tq, H, D] in q's dtype, lse [2, H, Tq] float32]: a padding-free call."""
        a = _make_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R,
                              causal, scale, dropout_p, seed)
        out = _poisoned((a.Tq, a.H, a.D), q.dtype)
        lse = _poisoned((2, a.H, a.Tq), torch.float32)
        err = self._lib.nezha_emu_fwd(ctypes.byref(a), _dtype_code(q), _impl_code(impl), out.data_ptr(),
                                      lse.data_ptr(), self.device)
        _check(err is None, "nezha_kernels cuda forward failed: ", (err or b"").decode())
        return [out, lse]

    def backward_varlen(self, dout, q, k, v, table, head_mask, lse, delta, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, R, causal, scale, dropout_p, seed, stream, impl=1):
        """[dq [Tq, H, D], dk, dv [Tk, H, D]] in q's dtype."""
        a = _make_varlen_args(q, k, v, table, head_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, R,
                              causal, scale, dropout_p, seed)
        _check_aux("dout", dout, q, q.dtype)
        _check(dout.shape == q.shape and dout.is_contiguous(), "dout must be contiguous with q's shape")
        _check_aux("lse", lse, q, torch.float32)
        _check(tuple(lse.shape) == (2, a.H, a.Tq) and lse.is_contiguous(), "lse must be contiguous float32 [2, H, Tq]")
        _check_aux("delta", delta, q, torch.float32)
        _check(tuple(delta.shape) == (a.H, a.Tq) and delta.is_contiguous(), "delta must be contiguous float32 [H, Tq]")
        dq = _poisoned(tuple(q.shape), q.dtype)
        dk, dv = _poisoned(tuple(k.shape), q.dtype), _poisoned(tuple(k.shape), q.dtype)
        err = self._lib.nezha_emu_bwd(ctypes.byref(a), _dtype_code(q), _impl_code(impl), dout.data_ptr(),
                                      lse.data_ptr(), delta.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                                      self.device)
        _check(err is None, "nezha_kernels cuda backward failed: ", (err or b"").decode())
        return [dq, dk, dv]

    def round_to(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x (float32) rounded through the emulated __float2half_rn / __float2bfloat16_rn and back."""
        x = x.to(torch.float32).contiguous()
        out = torch.empty_like(x)
        self._lib.nezha_emu_round({torch.float16: 0, torch.bfloat16: 1}[dtype], x.data_ptr(), out.data_ptr(),
                                  x.numel())
        return out


def run_selftest(name: str, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
                 out_numel: int = 128, sanitize: str | None = None) -> tuple[str | None, torch.Tensor]:
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
