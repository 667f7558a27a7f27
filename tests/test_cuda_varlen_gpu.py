"""GPU parity of the CUDA padding-free (varlen) kernels: the launcher pair (nezha_kernels/cuda_ext/launch.py) on
packed [T, H, D] batches against the float64 formula per sequence (q_offset = Lk_b - Lq_b), and against the dense
kernels on the padded batch (same dropout bits), forward and dq / dk / dv, both kernel families, fp32 / fp16 /
bf16, head dims 32 / 64 / 128, with lengths that span several blocks and lengths 0 and 1.

Skipped without a CUDA device (and when the extension cannot be built there, with the reason).
"""

from __future__ import annotations

import formula
import pytest
import torch

from nezha_kernels.backends import available_backends
from nezha_kernels.cuda_ext import launch
from nezha_kernels.dropout import keep_mask
from nezha_kernels.table import sinusoidal_table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
SEED = 0x2468_ACE0_1357
# (atol, rtol) for the output and the gradients (divided by max(1, max |grad|)), as tests/test_cuda_gpu.py.
TOLERANCES = {
    F32: ((2e-4, 2e-4), (5e-4, 5e-4)),
    F16: ((3e-3, 3e-3), (1e-2, 1e-2)),
    BF16: ((2e-2, 2e-2), (6e-2, 6e-2)),
}
LENS_Q = (1, 0, 130, 77, 300, 5)
LENS_K = (1, 0, 150, 77, 211, 9)


@pytest.fixture(scope="module", autouse=True)
def cuda_backend_available():
    status = available_backends("cuda")["cuda"]
    if not status.available:
        pytest.skip(f"cuda backend unavailable: {status.reason}")


def _cu(lens):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def _call(dtype, d, r, *, causal, dropout_p, heads=2, lens_q=LENS_Q, lens_k=LENS_K, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (
        torch.randn(n, heads, d, device="cuda", generator=g).to(dtype) for n in (sum(lens_q), sum(lens_k), sum(lens_k))
    )
    head_mask = torch.rand(len(lens_q), heads, device="cuda", generator=g)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(dtype)
    table = sinusoidal_table(r, d).to(device="cuda", dtype=dtype)
    tail = (
        None,
        None,
        head_mask,
        _cu(lens_q),
        _cu(lens_k),
        max(lens_q),
        max(lens_k),
        r,
        causal,
        0,
        d**-0.5,
        dropout_p,
        SEED if dropout_p else 0,
    )
    return q, k, v, table, grad_out, tail


def _run(q, k, v, table, grad_out, tail, family):
    out, lse = launch.relattn_fwd(q, k, v, table, *tail, family=family)
    grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, family=family)
    torch.cuda.synchronize()
    return out, lse, grads


def _pad(t, cu, lmax):
    """[T, H, D] -> [B, H, lmax, D] zero-padded."""
    b = cu.numel() - 1
    out = t.new_zeros(b, t.shape[1], lmax, t.shape[2])
    for i in range(b):
        s, e = int(cu[i]), int(cu[i + 1])
        out[i, :, : e - s] = t[s:e].transpose(0, 1)
    return out


def _families(dtype):
    return ["simt"] if dtype == F32 else ["tc", "simt"]


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("d", [32, 64, 128])
def test_varlen_matches_formula_per_sequence(dtype, d):
    r = {32: 1, 64: 7, 128: 64}[d]
    q, k, v, table, grad_out, tail = _call(dtype, d, r, causal=d == 64, dropout_p=0.2 if d == 32 else 0.0, seed=d)
    head_mask, cu_q, cu_k, causal, scale, p = tail[2], tail[3], tail[4], tail[8], tail[10], tail[11]
    keep = (
        keep_mask(SEED, p, len(LENS_Q), q.shape[1], torch.arange(max(LENS_Q)), max(LENS_K), torch.device("cpu"))
        if p
        else None
    )
    (oa, orr), (ga, gr) = TOLERANCES[dtype]
    for family in _families(dtype):
        out, _, grads = _run(q, k, v, table, grad_out, tail, family)
        for b in range(len(LENS_Q)):
            qs, qe, ks, ke = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
            if qe == qs:
                continue
            seq = [
                t.detach().cpu().double()[s:e].transpose(0, 1).unsqueeze(0).requires_grad_()
                for t, (s, e) in zip((q, k, v), ((qs, qe), (ks, ke), (ks, ke)), strict=True)
            ]
            want = formula.attention(
                *seq,
                table.cpu().double(),
                r=r,
                causal=causal,
                q_offset=(ke - ks) - (qe - qs),
                scale=scale,
                keep=None if keep is None else keep[b : b + 1, :, : qe - qs, : ke - ks],
                dropout_p=p,
                head_mask=head_mask[b : b + 1].cpu(),
            )
            got = out[qs:qe].transpose(0, 1).unsqueeze(0).cpu().double()
            torch.testing.assert_close(got, want.detach(), atol=oa, rtol=orr, msg=lambda m: f"{family} seq {b}: {m}")  # noqa: B023 (called at once)
            if ke == ks:
                continue
            go = grad_out[qs:qe].transpose(0, 1).unsqueeze(0).cpu().double()
            ref = torch.autograd.grad(want, seq, go)
            for name, g_all, w, (s, e) in zip("qkv", grads, ref, ((qs, qe), (ks, ke), (ks, ke)), strict=True):
                gb = g_all[s:e].transpose(0, 1).unsqueeze(0).cpu().double()
                sc = max(1.0, w.abs().max().item())
                torch.testing.assert_close(
                    gb / sc,
                    w / sc,
                    atol=ga,
                    rtol=gr,
                    msg=lambda m: f"{family} seq {b} d{name}: {m}",  # noqa: B023 (called at once)
                )


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_varlen_equals_dense_kernels_on_the_padded_batch(dtype):
    """Equal lengths per sequence (offset 0 both ways), key padding on the padded batch, same seed: the dense
    kernels drop the same entries and give the same rows and gradients."""
    lens = (1, 130, 0, 77, 33)
    q, k, v, table, grad_out, tail = _call(dtype, 64, 7, causal=True, dropout_p=0.3, lens_q=lens, lens_k=lens)
    cu = tail[3]
    lmax = max(lens)
    dense = [_pad(t, cu, lmax) for t in (q, k, v, grad_out)]
    padding = torch.zeros(len(lens), lmax, dtype=torch.bool, device="cuda")
    for i, n in enumerate(lens):
        padding[i, :n] = True
    dense_tail = (padding, None, tail[2], None, None, lmax, lmax, *tail[7:])
    for family in _families(dtype):
        out, _, grads = _run(q, k, v, table, grad_out, tail, family)
        out_d, lse_d = launch.relattn_fwd(*dense[:3], table, *dense_tail, family=family)
        grads_d = launch.relattn_bwd(dense[3], *dense[:3], table, out_d, lse_d, *dense_tail, family=family)
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == F32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(_pad(out, cu, lmax).float(), (out_d * padding[:, None, :, None]).float(), **tol)
        for got, want in zip(grads, grads_d, strict=True):
            torch.testing.assert_close(_pad(got, cu, lmax).float(), (want * padding[:, None, :, None]).float(), **tol)
