"""Counter-based dropout shared by every backend.

The keep decision for probability p[b, h, i, j] is a pure function of (seed, b*H + h, i, j):
Philox-4x32 with 10 rounds, key = (seed_lo, seed_hi), counter = (j, i, b*H + h, 0); the first
output word's top 24 bits give u in [0, 1) and the entry is kept when u >= dropout_p.
Because it needs no state, the reference, torch, Triton and CUDA backends drop exactly the same
entries for the same seed, the backward pass regenerates the forward mask, and a chunked
backend produces the same mask as a whole-matrix one.
"""

from __future__ import annotations

import torch

__all__ = ["philox_uniform", "keep_mask"]

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
N_ROUNDS = 10


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # b holds uint32 values in int64; the 64-bit product may wrap, but two's complement
    # keeps all 64 low bits, so both 32-bit halves are exact.
    prod = b * a
    return (prod >> 32) & _MASK32, prod & _MASK32


def philox_uniform(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 from Philox-4x32-10 at counters (c0, c1, c2, 0), broadcast together."""
    c0, c1, c2 = torch.broadcast_tensors(c0.long() & _MASK32, c1.long() & _MASK32, c2.long() & _MASK32)
    c3 = torch.zeros_like(c0)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return (c0 >> 8).to(torch.float32) * (1.0 / (1 << 24))


def keep_mask(
    seed: int,
    dropout_p: float,
    batch: int,
    heads: int,
    query_rows: torch.Tensor,
    key_length: int,
    device: torch.device,
) -> torch.Tensor:
    """Bool keep mask [B, H, len(query_rows), Lk] for query rows ``query_rows`` (indices within the call)."""
    bh = torch.arange(batch * heads, device=device, dtype=torch.int64).view(batch, heads, 1, 1)
    rows = query_rows.to(device=device, dtype=torch.int64).view(1, 1, -1, 1)
    cols = torch.arange(key_length, device=device, dtype=torch.int64).view(1, 1, 1, -1)
    return philox_uniform(seed, cols, rows, bh) >= dropout_p
