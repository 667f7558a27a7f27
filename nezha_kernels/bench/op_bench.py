"""Op benchmark of relative_attention: forward, backward and forward+backward per provider.

Providers: our backends (reference = HF math, torch, triton, cuda; whichever ``available_backends``
reports usable), the Triton plain twin (our skeleton with the relative terms compiled out, bench/twin.py),
PyTorch SDPA with no relative terms (its flash kernel on GPU for half types: the speed-of-light line) and
FlexAttention with only the key-side term (q . a_ij as a score_mod; it cannot
express the value-side sum of p_ij a_ij, so it is a partial peer). Missing providers are skipped, never
faked. Sequence lengths sweep with the tokens per batch (B * L) held constant, so every point does the
same work per token except for the L-proportional attention itself. Before a provider is timed its output
and gradients must match float64 (bench/parity.py); a provider that does not is reported as an error, never timed.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from collections.abc import Callable

import torch

from .memory import RssProbe, cuda_peak_mib, is_oom, measure_in_place_or_child
from .results import OK, Row
from .timing import time_fn

__all__ = [
    "attention_flops",
    "OpGrid",
    "op_grid",
    "PROVIDERS",
    "provider_availability",
    "make_provider_fn",
    "flex_keyside_attention",
    "measure_cell",
    "run_op_bench",
]

MODES = ("fwd", "bwd", "fwd+bwd")
OP_NAME = "relative_attention"
# FlashAttention-2's convention: the backward does 2.5x the forward's matmul work (5 GEMMs vs 2).
BWD_FLOP_RATIO = 2.5


def attention_flops(
    batch: int,
    heads: int,
    lq: int,
    lk: int,
    head_dim: int,
    max_relative_position: int,
    mode: str,
    positional_sides: int = 2,
) -> float:
    """FLOPs of one call (a multiply-add counts 2).

    forward = 4*B*H*Lq*Lk*D                      QK^T and PV, 2*B*H*Lq*Lk*D each
            + positional_sides * 2*B*H*Lq*(2R+1)*D  key side: q . table^T over the 2R+1 distinct
                                                     rows; value side: bucketed p summed per row, @ table
    backward = 2.5 * forward; forward+backward = 3.5 * forward.
    positional_sides: 2 for relative attention, 1 for the key-side-only FlexAttention, 0 for plain SDPA.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if positional_sides not in (0, 1, 2):
        raise ValueError(f"positional_sides must be 0, 1 or 2, got {positional_sides!r}")
    forward = 4 * batch * heads * lq * lk * head_dim
    forward += positional_sides * 2 * batch * heads * lq * (2 * max_relative_position + 1) * head_dim
    return float(forward) * {"fwd": 1.0, "bwd": BWD_FLOP_RATIO, "fwd+bwd": 1.0 + BWD_FLOP_RATIO}[mode]


@dataclasses.dataclass(frozen=True)
class OpGrid:
    lengths: tuple[int, ...]
    tokens: int  # B * L, held constant over lengths (B = max(1, tokens // L))
    dtypes: tuple[str, ...]
    modes: tuple[str, ...] = MODES
    heads: int = 12
    head_dim: int = 64
    max_relative_position: int = 64  # NEZHA's

    def batch(self, length: int) -> int:
        return max(1, self.tokens // length)


def op_grid(device: str, *, full: bool = False, dry_run: bool = False) -> OpGrid:
    """The sweep for ``device``: tiny (dry run), default (quick), or full (128 .. 16384)."""
    on_gpu = torch.device(device).type == "cuda"
    if dry_run:
        return OpGrid(lengths=(32, 64), tokens=64, dtypes=("float32",))
    if full:
        lengths = tuple(128 * 2**i for i in range(8))  # 128 .. 16384
        return OpGrid(lengths=lengths, tokens=16384, dtypes=("bfloat16", "float32") if on_gpu else ("float32",))
    if on_gpu:
        return OpGrid(lengths=(512, 1024, 2048, 4096), tokens=16384, dtypes=("bfloat16",))
    # 2 shared cores: small enough that the reference's O(L^2 D) table stays cheap.
    return OpGrid(lengths=(128, 256, 512), tokens=512, dtypes=("float32",))


# name -> (positional sides computed, legend label)
PROVIDERS: dict[str, tuple[int, str]] = {
    "reference": (2, "reference (HF math)"),
    "torch": (2, "torch (banded; L <= 181: materialized)"),
    "triton": (2, "triton"),
    "cuda": (2, "cuda"),
    "twin": (0, "triton plain twin, no relative terms"),
    "sdpa": (0, "SDPA, no relative terms"),
    "flex": (1, "FlexAttention, key side only"),
}


def provider_availability(name: str, device: str) -> tuple[bool, str]:
    """(usable, reason) for provider ``name`` on ``device``."""
    on_gpu = torch.device(device).type == "cuda"
    if name == "triton" and not on_gpu:
        # TRITON_INTERPRET=1 makes it run on CPU tensors: a correctness tool whose times mean nothing
        return False, "CPU runs only under the Triton interpreter, which is never timed"
    if name in ("reference", "torch", "triton", "cuda"):
        from ..backends import available_backends

        status = available_backends(device)[name]
        return status.available, status.reason
    if name == "twin":
        if not on_gpu:
            return False, "GPU only (the Triton plain twin; on CPU only the interpreter, never timed)"
        from ..backends import available_backends

        status = available_backends(device)["triton"]
        return status.available, status.reason
    if name == "sdpa":
        if not on_gpu:
            return True, "PyTorch's CPU kernel"
        flash = getattr(torch.backends.cuda, "is_flash_attention_available", None)
        if flash is not None and not flash():
            return False, "SDPA's flash kernel is not built into this torch"
        return True, "flash backend for half types"
    if name == "flex":
        try:
            importlib.import_module("torch.nn.attention.flex_attention")
        except Exception as exc:
            return False, f"torch.nn.attention.flex_attention not importable ({type(exc).__name__})"
        if not on_gpu:
            return False, "GPU only: on CPU FlexAttention has no backward and its eager path is unoptimized"
        return True, "torch.compile'd flex_attention"
    raise ValueError(f"provider: unknown {name!r}; expected one of {tuple(PROVIDERS)}")


def _flex_keyside(q, k, v, qa, max_relative_position: int):
    """flex_attention with score += qa[b, h, i, clamp(j - i, -R, R) + R] (qa already scaled)."""
    from torch.nn.attention.flex_attention import flex_attention

    r = max_relative_position

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + qa[b, h, q_idx, torch.clamp(kv_idx - q_idx, -r, r) + r]

    return flex_attention(q, k, v, score_mod=score_mod)


_compiled_flex: Callable | None = None


def flex_keyside_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    max_relative_position: int,
    *,
    compiled: bool = True,
) -> torch.Tensor:
    """softmax((q.k + q.a_ij) / sqrt(D)) @ v: NEZHA's key-side term only (no value-side term).

    q, k, v: [B, H, L, D]; table: [2R+1, D]. qa = q @ table^T is [B, H, Lq, 2R+1]: the 2R+1 distinct
    positional scores per query, gathered by the score_mod.
    """
    global _compiled_flex
    qa = torch.matmul(q, table.t()) * (1.0 / math.sqrt(q.shape[-1]))
    if not compiled:
        return _flex_keyside(q, k, v, qa, max_relative_position)
    if _compiled_flex is None:
        import torch._dynamo as dynamo

        # Dynamo's default (static first, dynamic once a shape changes) keeps compiles to ~2 per dtype;
        # the raised recompile cap is insurance so a long sweep never falls back to eager flex.
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 64)
        _compiled_flex = torch.compile(_flex_keyside)
    return _compiled_flex(q, k, v, qa, max_relative_position)


def make_provider_fn(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_relative_position: int
) -> tuple[Callable[[], torch.Tensor], str]:
    """A zero-argument call of provider ``name`` on (q, k, v) [B, H, L, D], and a note for the row."""
    if name in ("reference", "torch", "triton", "cuda"):
        from ..attention import relative_attention

        return (lambda: relative_attention(q, k, v, max_relative_position=max_relative_position, backend=name)), ""
    if name == "twin":
        from .twin import plain_twin_attention

        return (lambda: plain_twin_attention(q, k, v)), "no relative terms"
    if name == "sdpa":
        import torch.nn.functional as F

        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def flash():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v)

            return flash, "flash"
        return (lambda: F.scaled_dot_product_attention(q, k, v)), "default dispatch"
    if name == "flex":
        from ..table import sinusoidal_table

        table = sinusoidal_table(max_relative_position, q.shape[-1]).to(q.device, q.dtype)
        return (lambda: flex_keyside_attention(q, k, v, table, max_relative_position)), "key side only"
    raise ValueError(f"provider: unknown {name!r}")


def _error_text(exc: BaseException) -> str:
    return (
        "OOM" if is_oom(exc) else f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:140] if str(exc) else ''}"
    )


def measure_cell(spec: dict) -> dict:
    """Measure one (provider, dtype, shape) on spec["device"]: peak memory, then the time of each mode.

    spec: provider, device, dtype, batch, heads, seq_len, head_dim, max_relative_position, modes, cpu_budget_s,
    and parity_len (0: no parity gate; else the length of the gate's check, bench/parity.py).
    Returns {"note": str, "modes": {mode: {"status", "median_ms", "p20_ms", "p80_ms", "reps", "peak_mib"}}}.
    On CPU this must run in a fresh process (run_child): peaks are RSS high-water-mark rises.
    """
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    b, h, length, d, r = spec["batch"], spec["heads"], spec["seq_len"], spec["head_dim"], spec["max_relative_position"]
    modes = list(spec["modes"])
    out: dict = {"note": "", "modes": {m: {"status": OK} for m in modes}}

    def fail_all(status: str) -> dict:
        for m in modes:
            if out["modes"][m]["status"] == OK:
                out["modes"][m] = {"status": status}
        return out

    torch.manual_seed(0)
    try:
        q, k, v = (torch.randn(b, h, length, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn(b, h, length, d, device=device, dtype=dtype)
        fn, out["note"] = make_provider_fn(spec["provider"], q, k, v, r)
        if spec["provider"] != "flex":  # flex compiles per shape: its memory pass is its warm-up
            # Warm-up (lazy imports, kernel compilation) on an 8-row slice, before the probe exists.
            small = [t[:, :, :8].detach().requires_grad_() for t in (q, k, v)]
            small_fn, _ = make_provider_fn(spec["provider"], *small, r)
            small_fn().sum().backward()
        if spec.get("parity_len") and spec["provider"] != "flex":  # flex: key side only, no formula to meet
            from .parity import check_parity

            why = check_parity(
                spec["provider"], lambda q, k, v: make_provider_fn(spec["provider"], q, k, v, r)[0], spec
            )
            if why:
                return fail_all(f"error: {why}")
    except Exception as exc:
        return fail_all(_error_text(exc))

    def clear_grads():
        for t in (q, k, v):
            t.grad = None

    # Peak memory: forward alone, then forward+backward (the high-water mark only grows, so in that order).
    peaks: dict[str, float] = {}
    try:
        if device.type == "cuda":
            peaks["fwd"] = cuda_peak_mib(fn, device)
            peaks["fwd+bwd"] = cuda_peak_mib(lambda: fn().backward(grad), device)
        else:
            probe = RssProbe()
            result = fn()
            peaks["fwd"] = probe.rise_mib()
            result.backward(grad)
            del result
            peaks["fwd+bwd"] = probe.rise_mib()
    except Exception as exc:
        status = _error_text(exc)
        if "fwd" in peaks:  # the forward fit; the backward did not
            for m in modes:
                if m != "fwd":
                    out["modes"][m] = {"status": status}
        else:
            return fail_all(status)
    clear_grads()
    peaks["bwd"] = peaks.get("fwd+bwd", float("nan"))

    budget = float(spec.get("cpu_budget_s", 0.5))
    for mode in modes:
        if out["modes"][mode]["status"] != OK:
            continue
        try:
            if mode == "fwd":
                timing = time_fn(fn, device, cpu_budget_s=budget)
            elif mode == "bwd":
                result = fn()
                timing = time_fn(
                    lambda result=result: result.backward(grad, retain_graph=True),
                    device,
                    grad_to_none=[q, k, v],
                    cpu_budget_s=budget,
                )
                del result
            else:
                timing = time_fn(lambda: fn().backward(grad), device, grad_to_none=[q, k, v], cpu_budget_s=budget)
        except Exception as exc:
            out["modes"][mode] = {"status": _error_text(exc)}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        finally:
            clear_grads()
        out["modes"][mode].update(
            median_ms=timing.median_ms,
            p20_ms=timing.p20_ms,
            p80_ms=timing.p80_ms,
            reps=timing.reps,
            peak_mib=peaks[mode],
        )
    return out


def run_op_bench(
    grid: OpGrid,
    device: str,
    env: dict,
    *,
    providers: tuple[str, ...] | None = None,
    progress=None,
    limit_gib: float = 16.0,
    cell_timeout_s: float = 600.0,
    cpu_budget_s: float = 0.5,
    deadline: float | None = None,
    parity_len: int = 0,
    failed_parity: tuple[str, ...] = (),
) -> list[Row]:
    """Every (dtype, length, provider, mode) of ``grid`` as Rows; unusable providers give skipped rows.

    Lengths are the outer loop in the grid's order, so when ``deadline`` (a time.monotonic() value) passes,
    the last lengths are what is left out (marked "skipped: time budget"), for every provider alike.
    parity_len > 0: each provider is checked against float64 at that length before it is timed (bench/parity.py);
    failed_parity: providers whose GPU tests failed (gpu_suite.sh), skipped rather than timed. Rows of our kernels
    get vs_sdpa / vs_twin where those ran beside them (bench/ratios.py).
    """
    from .ratios import annotate_ratios

    providers = providers or tuple(PROVIDERS)
    status_of = {name: provider_availability(name, device) for name in providers}
    for name in failed_parity:
        if name in status_of:
            status_of[name] = (False, "its parity tests failed in the suite's tests phase (status.txt)")
    rows: list[Row] = []
    on_gpu = torch.device(device).type == "cuda"
    for dtype in grid.dtypes:
        for length in grid.lengths:
            batch = grid.batch(length)
            for name in providers:
                usable, reason = status_of[name]
                base = dict(
                    bench="op",
                    op=OP_NAME,
                    provider=name,
                    dtype=dtype,
                    batch=batch,
                    heads=grid.heads,
                    seq_len=length,
                    head_dim=grid.head_dim,
                    **env,
                )
                left = None if deadline is None else deadline - time.monotonic()
                if not usable or (left is not None and left <= 0):
                    status = f"skipped: {reason}" if not usable else "skipped: time budget"
                    rows += [Row(mode=m, status=status, **base) for m in grid.modes]
                    if progress is not None:
                        progress.advance(f"op {name} {dtype} L={length}: {status}")
                    continue
                spec = dict(
                    provider=name,
                    device=device,
                    dtype=dtype,
                    batch=batch,
                    heads=grid.heads,
                    seq_len=length,
                    head_dim=grid.head_dim,
                    max_relative_position=grid.max_relative_position,
                    modes=list(grid.modes),
                    cpu_budget_s=cpu_budget_s,
                    parity_len=parity_len,
                )
                timeout = cell_timeout_s if left is None else max(1.0, min(cell_timeout_s, left))
                if progress is not None:
                    progress.start(f"op {name} {dtype} L={length}")
                measured = measure_in_place_or_child(
                    "nezha_kernels.bench.op_bench:measure_cell",
                    spec,
                    grid.modes,
                    on_gpu=on_gpu,
                    limit_gib=limit_gib,
                    timeout_s=timeout,
                )
                for mode in grid.modes:
                    cell = dict(measured["modes"][mode])
                    if cell["status"] == "OOM" and not on_gpu:
                        cell["status"] = f"OOM (> {limit_gib:g} GiB)"
                    row = Row(mode=mode, note=measured["note"], **base, **cell)
                    if row.status == OK:
                        flops = attention_flops(
                            batch,
                            grid.heads,
                            length,
                            length,
                            grid.head_dim,
                            grid.max_relative_position,
                            mode,
                            PROVIDERS[name][0],
                        )
                        row.tflops = flops / (row.median_ms * 1e-3) / 1e12
                    rows.append(row)
                if progress is not None:
                    progress.advance()
    return annotate_ratios(rows)
