"""The op bench's parity gate: before a provider is timed, its output and gradients must match float64.

A fast but wrong kernel must never be reported as a win. So each (provider, dtype, head dim) is checked once, on
random inputs of a small shape of its own (on a GPU: L = 700, past the band of R = 64 and not a multiple of any
tile), against an independent float64 formula written here: NEZHA's relative attention with the sinusoid table
(the default table of relative_attention) for our backends, plain softmax attention for the twin and SDPA.
The error is the relative norm ||got - want|| / ||want|| of the output and of dq, dk, dv.
"""

from __future__ import annotations

import math

import torch

__all__ = ["PARITY_TOL", "formula", "parity_error", "check_parity"]

# Relative-norm tolerances (benchmarks/NOTES.md "GPU suite"): bf16 operands land between 1e-3 and 1e-2, the
# gradients a little above; a wrong index or a missing term gives 1e-1 and more.
PARITY_TOL = {"bfloat16": 3e-2, "float16": 1e-2, "float32": 2e-3}
# Providers without a relative term (positional sides 0): compared with plain softmax attention.
PLAIN = ("sdpa", "twin")
_checked: dict[tuple, str] = {}


def formula(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_relative_position: int, relative: bool):
    """float64 attention of q, k, v [B, H, L, D]: with NEZHA's relative terms (sinusoid table) or plain.

    Relative: s_ij = (q_i . k_j + q_i . a_ij) / sqrt(D), o_i = sum_j p_ij (v_j + a_ij) with
    a_ij = table[clamp(j - i, -R, R) + R]; both terms through the [B, H, L, 2R+1] bucket tensors, never [L, L, D].
    """
    from ..table import sinusoidal_table

    q, k, v = (t.double() for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = q @ k.transpose(-1, -2)
    if relative:
        r = max_relative_position
        table = sinusoidal_table(r, q.shape[-1], dtype=torch.float64, device=q.device)
        pos_q, pos_k = torch.arange(q.shape[2], device=q.device), torch.arange(k.shape[2], device=q.device)
        idx = (pos_k[None, :] - pos_q[:, None]).clamp(-r, r) + r  # [Lq, Lk]
        idx = idx.expand(*scores.shape)
        scores = scores + torch.gather(q @ table.t(), -1, idx)
    p = torch.softmax(scores * scale, dim=-1)
    out = p @ v
    if relative:
        buckets = torch.zeros(*p.shape[:-1], table.shape[0], dtype=p.dtype, device=p.device).scatter_add(-1, idx, p)
        out = out + buckets @ table
    return out


def parity_error(fn, max_relative_position: int, relative: bool, q, k, v) -> dict[str, float]:
    """Relative-norm errors {"out", "dq", "dk", "dv"} of ``fn(q, k, v)`` (q, k, v requiring grad) against float64."""
    grad = torch.randn_like(q)
    got = fn(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = formula(*ref, max_relative_position, relative)
    want_grads = torch.autograd.grad(want, ref, grad.double())

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach(), b.detach()
        if not torch.isfinite(a).all():
            return math.inf
        return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))

    errors = {"out": err(got, want)}
    errors.update({f"d{n}": err(a, b) for n, a, b in zip("qkv", got_grads, want_grads, strict=True)})
    return errors


def check_parity(provider: str, make_fn, spec: dict) -> str:
    """ "" if ``provider`` matches the formula at spec's dtype, head dim and R, else why not (cached per process).

    make_fn(q, k, v) -> a zero-argument call (op_bench.make_provider_fn's first result); spec: device, dtype,
    head_dim, max_relative_position, and parity_len (the check's length).
    """
    key = (provider, spec["device"], spec["dtype"], spec["head_dim"], spec["max_relative_position"])
    if key in _checked:
        return _checked[key]
    g = torch.Generator(device="cpu").manual_seed(1234)
    shape = (1, 2, spec["parity_len"], spec["head_dim"])
    dtype = getattr(torch, spec["dtype"])
    q, k, v = (
        torch.randn(shape, generator=g).to(spec["device"], dtype).requires_grad_() for _ in range(3)
    )  # fresh random inputs, never zeros
    errors = parity_error(
        lambda q, k, v: make_fn(q, k, v)(), spec["max_relative_position"], provider not in PLAIN, q, k, v
    )
    tol = PARITY_TOL[spec["dtype"]]
    bad = {name: e for name, e in errors.items() if not e <= tol}
    why = ""
    if bad:
        worst = max(bad, key=lambda n: bad[n])
        why = f"parity: {worst} rel err {bad[worst]:.2g} > {tol:g} vs float64 at {list(shape)}"
    _checked[key] = why
    return why
