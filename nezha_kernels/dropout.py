"""Counter-based dropout shared by every backend.

The keep decision for probability p[b, h, i, j] is a pure function of (seed, b*H + h, i, j):
Philox-4x32 with 10 rounds, key = (seed_lo, seed_hi), counter = (j, i, b*H + h, 0); the first
output word's top 24 bits give u in [0, 1) and the entry is kept when u >= dropout_p.
Because it needs no state, the reference, torch, Triton and CUDA backends drop exactly the same
entries for the same seed, the backward pass regenerates the forward mask, and a chunked
backend produces the same mask as a whole-matrix one.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = ["philox_uniform", "keep_mask", "seed_tensor"]

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
N_ROUNDS = 10


def _philox_word0(k0, k1, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """First output word of Philox-4x32-10 (values < 2**32 held in int64), broadcasting the counters lazily.

    The 32x32-bit products are formed in int64: they may wrap, but two's complement keeps all 64 low bits,
    so both halves are exact. The counters are not broadcast up front: the first rounds then run on
    [Lk] and [B*H, Lq] sized tensors, and in-place steps halve the temporaries of the later ones.
    """
    c3 = torch.zeros((), dtype=torch.int64, device=c0.device)
    for _ in range(N_ROUNDS):
        prod_b = c2 * _ROUND_B
        prod_a = c0 * _ROUND_A
        # Out of place where the operands broadcast to a larger shape, in place otherwise.
        new0 = torch.bitwise_xor((prod_b >> 32).bitwise_and_(_MASK32), c1).bitwise_xor_(k0)
        new2 = torch.bitwise_xor((prod_a >> 32).bitwise_and_(_MASK32), c3).bitwise_xor_(k1)
        c0, c1, c2, c3 = new0, prod_b.bitwise_and_(_MASK32), new2, prod_a.bitwise_and_(_MASK32)
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0


def philox_uniform(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 from Philox-4x32-10 at counters (c0, c1, c2, 0), broadcast together."""
    c0, c1, c2 = (c.long() & _MASK32 for c in (c0, c1, c2))
    word = _philox_word0(seed & _MASK32, (seed >> 32) & _MASK32, c0, c1, c2)
    return (word >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _keep_from_counters(k0: torch.Tensor, k1: torch.Tensor, c0, c1, c2, dropout_p: float) -> torch.Tensor:
    word = _philox_word0(k0, k1, c0, c1, c2)
    return (word >> 8).to(torch.float32) * (1.0 / (1 << 24)) >= dropout_p


# Elementwise integer Philox is about ten times faster once torch.compile fuses its ~100 steps into one loop
# (benchmarks/NOTES.md, "Measurements behind code constants"). Compiled once per process for masks of at least
# this many elements, with the seed passed as tensors so no seed or shape triggers a recompile. Identical
# bits either way; NEZHA_KERNELS_COMPILE_DROPOUT=0 turns it off, and a failed compile falls back to eager.
COMPILE_MIN_ELEMENTS = 1 << 20
_compiled = {"fn": None, "failed": False}


def _compile_enabled() -> bool:
    return os.environ.get("NEZHA_KERNELS_COMPILE_DROPOUT", "1") != "0" and not _compiled["failed"]


def _keep_fn(numel: int, device: torch.device):
    if torch.compiler.is_compiling() or numel < COMPILE_MIN_ELEMENTS or not _compile_enabled():
        return _keep_from_counters
    if _compiled["fn"] is None:
        _compiled["fn"] = torch.compile(_keep_from_counters, dynamic=True)
    return _compiled["fn"]


def keep_mask(
    seed: int | torch.Tensor,
    dropout_p: float,
    batch: int,
    heads: int,
    query_rows: torch.Tensor | range,
    key_length: int,
    device: torch.device,
    bh_offset: int = 0,
) -> torch.Tensor:
    """Bool keep mask [B, H, len(query_rows), Lk] for query rows ``query_rows`` (indices within the call).

    ``seed``: an int, or a 0-d int64 tensor (as drawn inside a torch.compile graph).
    ``query_rows``: a tensor of row indices, or a ``range`` (step 1), which on a CPU takes the native loop
    (dropout_cpu.py: same bits, 10-50x faster) when it is built.
    ``bh_offset``: counter c2 of batch 0, head 0 (b * H for sequence b of a padding-free call, whose
    masks are built one sequence at a time).
    """
    if isinstance(query_rows, range):
        if (
            torch.device(device).type == "cpu"
            and query_rows.step == 1
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
        ):
            from .dropout_cpu import keep_mask_cpu

            keep = keep_mask_cpu(
                int(seed), dropout_p, batch, heads, query_rows.start, len(query_rows), key_length, bh_offset
            )
            if keep is not None:
                return keep
        query_rows = torch.arange(query_rows.start, query_rows.stop, query_rows.step, device=device)
    bh = torch.arange(bh_offset, bh_offset + batch * heads, device=device, dtype=torch.int64).view(batch, heads, 1, 1)
    rows = query_rows.to(device=device, dtype=torch.int64).view(1, 1, -1, 1)
    cols = torch.arange(key_length, device=device, dtype=torch.int64).view(1, 1, 1, -1)
    if isinstance(seed, torch.Tensor):
        seed = seed.to(device=device, dtype=torch.int64)
        k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    else:
        k0 = torch.tensor(seed & _MASK32, dtype=torch.int64, device=device)
        k1 = torch.tensor((seed >> 32) & _MASK32, dtype=torch.int64, device=device)
    fn = _keep_fn(batch * heads * rows.numel() * key_length, device)
    try:
        keep = fn(k0, k1, cols, rows, bh, dropout_p)
    except Exception as exc:  # no C++ compiler, unsupported platform: same bits from the eager path
        if fn is _keep_from_counters:
            raise
        _compiled["failed"] = True
        warnings.warn(f"compiling the dropout mask failed ({type(exc).__name__}); using the eager path", stacklevel=2)
        keep = _keep_from_counters(k0, k1, cols, rows, bh, dropout_p)
    return keep.expand(batch, heads, rows.shape[2], key_length)


def seed_tensor(seed: int | torch.Tensor | None) -> torch.Tensor:
    """The seed as the 0-d int64 CPU tensor the kernels' custom ops take (0 without dropout).

    A tensor, not an int, so that a seed drawn inside a torch.compile graph reaches the ops without a
    graph-breaking .item(); the ops read it on the host.
    """
    if isinstance(seed, torch.Tensor):
        return seed.to(device="cpu", dtype=torch.int64)
    return torch.tensor(0 if seed is None else seed, dtype=torch.int64)
