"""Peak memory: CUDA's allocator counter on GPU; on CPU, the rise of peak RSS in a fresh subprocess.

CPU method (as in benchmarks/op_memory_cpu.py): each measurement runs in its own process (so
peaks of different cells never mix and freed-but-cached heap pages of an earlier cell cannot hide a
later cell's allocations) under an address-space limit (so a cell that would exhaust the machine fails
cleanly and is reported as OOM). The peak is the resident high-water mark after the work minus the
resident set once the inputs exist (see RssProbe): every temporary of the measured work is counted. The
mark only grows, so one probe measures nested phases in order (forward, then forward+backward).
The process is forked from a fork server (torch already imported) where that exists, else a new interpreter.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["is_oom", "cuda_peak_mib", "RssProbe", "run_child", "call_target", "default_limit_gib"]

_RESULT_TAG = "__NEZHA_BENCH_RESULT__"

# The child: limit the address space BEFORE importing torch, run module:function(spec), print its JSON.
_CHILD = r"""
import json, resource, sys
limit = int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from nezha_kernels.bench.memory import call_target
print(sys.argv[4], json.dumps(call_target(sys.argv[1], json.loads(sys.argv[2]))), flush=True)
"""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory failure (CUDA OOM, MemoryError, CPU allocator refusal)."""
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text
    )


def cuda_peak_mib(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before it (MiB)."""
    device = torch.device(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _release_free_heap() -> None:
    """Return glibc's free heap pages to the OS, so the measured work must fault in its own pages
    (freed-but-resident memory from model set-up would otherwise absorb small allocations unseen)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the rise may read slightly low for small work
        pass


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class RssProbe:
    """In a fresh process: ``probe = RssProbe()`` once the inputs exist, then ``probe.rise_mib()``
    after each phase gives the peak resident-set rise over the level at the probe's creation.

    On Linux the high-water mark is reset first (``5`` into /proc/self/clear_refs): otherwise a
    transient peak from before (imports, set-up) would hide the first part of the rise. Elsewhere
    ru_maxrss, which cannot be reset, is the fallback.
    """

    def __init__(self) -> None:
        _release_free_heap()
        self._proc = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._proc = _status_kib("VmHWM") is not None
        except OSError:
            pass
        self.base_kib = self._peak_kib() if not self._proc else _status_kib("VmRSS")

    def _peak_kib(self) -> int:
        if self._proc:
            return _status_kib("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    def rise_mib(self) -> float:
        return (self._peak_kib() - self.base_kib) / 1024


def default_limit_gib() -> float:
    """Address-space cap for CPU children: 16 GiB, or 75% of physical memory when that is less."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        physical = 16.0
    return min(16.0, 0.75 * physical)


def _child_env() -> dict[str, str]:
    """The child must import this very copy of nezha_kernels, installed or not."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def call_target(target: str, spec: dict):
    """Run ``module:function`` on spec (the child's job; also the in-process fallback)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(spec)


def _forked_child(conn, target: str, spec: dict, limit_bytes: int) -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
        conn.send({"status": "ok", "result": call_target(target, spec)})
    except BaseException as exc:  # report, never hang the parent
        conn.send({"status": "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc)[:140]}"})
    finally:
        conn.close()


_PRELOAD = ["torch", "nezha_kernels", "nezha_kernels.bench.op_bench", "nezha_kernels.bench.model_bench"]


def _run_forked(target: str, spec: dict, limit_gib: float, timeout_s: float) -> dict:
    """Run the cell in a child forked from a fork server that imported torch but never ran an op.

    Why a fork server and not a plain fork of this process: once a process has run an OpenMP parallel
    region, a forked child that uses OpenMP hangs (libgomp is not fork-safe). The server (started once,
    from a new interpreter) saves the ~2-6 s interpreter and torch start-up per cell.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the server starts (first call)
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_child, args=(sender, target, spec, int(limit_gib * 2**30)), daemon=True)
    proc.start()
    sender.close()
    result = None
    if receiver.poll(timeout_s):
        try:
            result = receiver.recv()
        except EOFError:  # the child died without reporting (killed)
            result = None
    proc.join(5 if result is not None else 0.1)
    if proc.is_alive():
        proc.kill()
        proc.join()
        if result is None:
            return {"status": "timeout"}
    if result is None:
        return {"status": "OOM" if proc.exitcode == -9 else f"error: child exit code {proc.exitcode}"}
    return result


def _run_spawned(target: str, spec: dict, limit_gib: float, timeout_s: float) -> dict:
    """A fresh interpreter (where fork is unavailable): slower start-up, same result."""
    cmd = [sys.executable, "-c", _CHILD, target, json.dumps(spec), str(limit_gib), _RESULT_TAG]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=_child_env())
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return {"status": "ok", "result": json.loads(line[len(_RESULT_TAG) :])}
    err = proc.stderr.strip()
    lowered = err.lower()
    # -9: SIGKILL, what the kernel's OOM killer sends.
    if (
        proc.returncode == -9
        or "memoryerror" in lowered
        or "can't allocate memory" in lowered
        or "out of memory" in lowered
    ):
        return {"status": "OOM"}
    last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
    return {"status": "error: " + last[:160]}


def run_child(target: str, spec: dict, *, limit_gib: float, timeout_s: float, method: str | None = None) -> dict:
    """Run ``target`` ("module:function", called with the JSON-able ``spec``) in a fresh process under an
    address-space cap of ``limit_gib``.

    method: "fork" (from a fork server; default where available) or "spawn" (a new interpreter each time).
    Returns {"status": "ok", "result": <the function's JSON-able result>} or {"status": "OOM" | "timeout" |
    "error: ..."} when the process failed as a whole.
    """
    method = method or ("fork" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
    if method == "fork":
        return _run_forked(target, spec, limit_gib, timeout_s)
    if method == "spawn":
        return _run_spawned(target, spec, limit_gib, timeout_s)
    raise ValueError(f"method must be 'fork' or 'spawn', got {method!r}")


def measure_in_place_or_child(
    target: str, spec: dict, modes, *, on_gpu: bool, limit_gib: float, timeout_s: float
) -> dict:
    """Run a cell measurement ``target`` ("module:function") on ``spec``.

    On a GPU in this process (peak memory comes from the CUDA allocator; the cache is emptied after);
    on the CPU in a fresh capped process (run_child), where a failed process becomes
    {"note": "", "modes": {mode: {"status": <why>}}} so that every mode still gets a row.
    """
    if on_gpu:
        try:
            return call_target(target, spec)
        finally:
            torch.cuda.empty_cache()
    child = run_child(target, spec, limit_gib=limit_gib, timeout_s=timeout_s)
    if child["status"] == "ok":
        return child["result"]
    return {"note": "", "modes": {m: {"status": child["status"]} for m in modes}}
