"""Every PyTorch backend against the independent float64 formula: forward and all gradients."""

from __future__ import annotations

import formula
import pytest
import torch

import nezha_kernels as nk
from nezha_kernels.backends.torch_backend import chunks
from nezha_kernels.dropout import keep_mask

BACKENDS = ["reference", "torch"]
# Absolute tolerances by dtype, relative to values of order 1 (inputs ~ N(0, 1)).
# bfloat16 has an 8-bit mantissa: inputs themselves are rounded by ~4e-3 relative.
TOL = {
    torch.float32: dict(fwd=2e-5, grad=5e-5),
    torch.bfloat16: dict(fwd=3e-2, grad=6e-2),
    torch.float16: dict(fwd=4e-3, grad=8e-3),
    torch.float64: dict(fwd=1e-10, grad=1e-9),
}


def _inputs(b, h, lq, lk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype) for n in (lq, lk, lk))
    return q, k, v


def _check(
    backend,
    dtype,
    b,
    h,
    lq,
    lk,
    d,
    r,
    *,
    custom_table=False,
    learn_table=False,
    key_padding=None,
    additive=None,
    causal=False,
    q_offset=0,
    head_mask=None,
    scale=None,
):
    q, k, v = _inputs(b, h, lq, lk, d, dtype)
    if custom_table:
        table = torch.randn(2 * r + 1, d, generator=torch.Generator().manual_seed(5)).to(dtype)
    else:
        table = nk.sinusoidal_table(r, d, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    table_leaf = table.clone().requires_grad_(learn_table)
    hm_leaf = head_mask.clone().requires_grad_() if head_mask is not None else None
    out = nk.relative_attention(
        *leaves,
        rel_table=table_leaf,
        max_relative_position=r,
        attention_mask=key_padding if key_padding is not None else additive,
        causal=causal,
        q_offset=q_offset,
        head_mask=hm_leaf,
        scale=scale,
        backend=backend,
    )
    assert out.dtype == dtype and out.shape == (b, h, lq, d)

    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_table = table.detach().double().requires_grad_(learn_table)
    ref_hm = head_mask.double().requires_grad_() if head_mask is not None else None
    expected = formula.attention(
        *ref_leaves,
        ref_table,
        r=r,
        key_padding=key_padding,
        additive=additive,
        causal=causal,
        q_offset=q_offset,
        scale=scale,
        head_mask=ref_hm,
    )
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), expected, atol=tol["fwd"], rtol=tol["fwd"])

    grad_out = torch.randn(b, h, lq, d, generator=torch.Generator().manual_seed(9))
    got = [x for x in leaves + [table_leaf, hm_leaf] if x is not None and x.requires_grad]
    want = [x for x in ref_leaves + [ref_table, ref_hm] if x is not None and x.requires_grad]
    grads = torch.autograd.grad(out, got, grad_out.to(dtype))
    ref_grads = torch.autograd.grad(expected, want, grad_out.double())
    for name, g, rg in zip(["q", "k", "v", "table", "head_mask"], grads, ref_grads, strict=False):
        scale_ref = max(1.0, rg.abs().max().item())  # table/head_mask gradients sum over many terms
        torch.testing.assert_close(
            g.double() / scale_ref,
            rg / scale_ref,
            atol=tol["grad"],
            rtol=tol["grad"],
            msg=lambda m: f"grad {name}: {m}",  # noqa: B023 (called at once)
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lq,lk,q_offset", [(1, 1, 0), (37, 37, 0), (13, 61, 48), (70, 45, 0)])
def test_shapes_and_offsets(backend, dtype, lq, lk, q_offset):
    _check(backend, dtype, 2, 3, lq, lk, 32, 7, q_offset=q_offset)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r", [1, 7, 64, 200])
def test_max_relative_position(backend, r):
    _check(backend, torch.float32, 1, 2, 83, 91, 16, r, learn_table=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("d", [16, 32, 64, 128])
def test_head_dims(backend, d):
    _check(backend, torch.float32, 1, 2, 29, 29, d, 7, custom_table=True, learn_table=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padding_with_fully_masked_row(backend, dtype):
    b, lk = 3, 41
    pad = torch.ones(b, lk, dtype=torch.bool)
    pad[1, 30:] = False
    pad[2, :] = False  # every key masked: uniform attention, finite output
    _check(backend, dtype, b, 2, 33, lk, 32, 7, key_padding=pad, learn_table=dtype == torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_with_offset_and_padding(backend):
    pad = torch.ones(2, 50, dtype=torch.int64)
    pad[0, 45:] = 0
    _check(backend, torch.float32, 2, 2, 19, 50, 32, 7, key_padding=pad, causal=True, q_offset=31)
    _check(backend, torch.float32, 2, 2, 40, 40, 32, 64, causal=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_additive_mask_and_head_mask_and_scale(backend):
    b, h, lq, lk = 2, 3, 21, 26
    g = torch.Generator().manual_seed(3)
    additive = torch.randn(b, 1, lq, lk, generator=g)
    additive[0, 0, :, :5] = torch.finfo(torch.float32).min
    additive[1, 0, 4, :] = float("-inf")  # a whole row at -inf: uniform, not NaN
    head_mask = torch.rand(b, h, generator=g) + 0.5
    _check(
        backend, torch.float32, b, h, lq, lk, 16, 7, additive=additive, head_mask=head_mask, scale=0.3, learn_table=True
    )
    _check(backend, torch.float32, b, h, lq, lk, 16, 7, head_mask=torch.tensor([1.0, 0.0, 0.5]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hf_extended_mask_matches_bool_mask(backend):
    q, k, v = _inputs(2, 2, 17, 17, 32, torch.float32)
    pad = torch.ones(2, 17, dtype=torch.long)
    pad[0, 9:] = 0
    pad[1, :] = 0
    extended = (1.0 - pad[:, None, None, :].float()) * torch.finfo(torch.float32).min
    a = nk.relative_attention(q, k, v, attention_mask=pad, backend=backend)
    bb = nk.relative_attention(q, k, v, attention_mask=extended, backend=backend)
    torch.testing.assert_close(a, bb, atol=1e-6, rtol=1e-6)
    assert torch.isfinite(a).all()
    # The all-padded sequence attends uniformly: o_i = mean_j v_j + mean_j a_ij.
    table = nk.sinusoidal_table(64, 32)
    idx = nk.relative_index(17, 17, 64)
    expected = v[1].mean(dim=1, keepdim=True) + table[idx].mean(dim=1)
    torch.testing.assert_close(a[1], expected.expand_as(a[1]), atol=1e-5, rtol=1e-5)


def test_torch_backend_chunking_is_invisible(monkeypatch):
    """Chunks of 3 query rows give the same forward and gradients as one chunk."""
    q, k, v = (t.double().requires_grad_() for t in _inputs(2, 2, 23, 31, 16, torch.float64))
    pad = torch.ones(2, 31, dtype=torch.bool)
    pad[1, 20:] = False
    kwargs = dict(attention_mask=pad, causal=True, q_offset=8, max_relative_position=5, dropout_p=0.2, backend="torch")
    torch.manual_seed(11)
    whole = nk.relative_attention(q, k, v, **kwargs)
    g_whole = torch.autograd.grad(whole.sum(), (q, k, v))
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", 2 * 2 * 31 * 3)
    torch.manual_seed(11)
    chunked = nk.relative_attention(q, k, v, **kwargs)
    g_chunked = torch.autograd.grad(chunked.sum(), (q, k, v))
    torch.testing.assert_close(whole, chunked, atol=1e-12, rtol=0)
    for a, b in zip(g_whole, g_chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_matches_formula_with_the_same_keep_mask(backend):
    b, h, lq, lk, d, p = 2, 3, 19, 27, 16, 0.3
    q, k, v = (t.requires_grad_() for t in _inputs(b, h, lq, lk, d, torch.float32))
    gen = torch.Generator().manual_seed(1234)
    out = nk.relative_attention(q, k, v, max_relative_position=7, dropout_p=p, generator=gen, backend=backend)
    seed = nk.inputs.draw_dropout_seed(torch.Generator().manual_seed(1234))
    keep = keep_mask(seed, p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = formula.attention(*ref_leaves, formula.nezha_table(7, d), r=7, keep=keep, dropout_p=p)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(expected.sum(), ref_leaves)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), rg, atol=5e-5, rtol=5e-5)


def test_dropout_reproducible_and_backends_agree():
    q, k, v = _inputs(2, 2, 33, 33, 32, torch.float32)
    kw = dict(dropout_p=0.25, max_relative_position=9)
    torch.manual_seed(7)
    a = nk.relative_attention(q, k, v, backend="torch", **kw)
    torch.manual_seed(7)
    b = nk.relative_attention(q, k, v, backend="reference", **kw)
    torch.manual_seed(8)
    c = nk.relative_attention(q, k, v, backend="torch", **kw)
    torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)
    assert (a - c).abs().max() > 1e-2  # another seed drops other entries
    no_drop = nk.relative_attention(q, k, v, backend="torch", max_relative_position=9)
    assert (a - no_drop).abs().max() > 1e-2


def test_dropout_expected_keep_fraction_and_unbiased():
    b, h, lq, lk, p = 2, 4, 64, 64, 0.3
    _, weights = nk.relative_attention_with_weights(
        *_inputs(b, h, lq, lk, 32, torch.float32), dropout_p=p, generator=torch.Generator().manual_seed(0)
    )
    kept = (weights != 0).float().mean().item()
    n = b * h * lq * lk
    assert abs(kept - (1 - p)) < 5 * ((p * (1 - p) / n) ** 0.5)  # 5 sigma
    # Rescaled by 1/(1-p): row sums average 1.
    assert abs(weights.sum(-1).mean().item() - 1.0) < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 2, 9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 2, 9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    hm = torch.rand(2, dtype=torch.float64, generator=g, requires_grad=True)
    pad = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)

    def fn(q, k, v, table, hm):
        return nk.relative_attention(
            q,
            k,
            v,
            rel_table=table,
            max_relative_position=3,
            attention_mask=pad,
            causal=True,
            q_offset=3,
            head_mask=hm,
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, table, hm))

    def fn_dropout(q, k, v, table):
        return nk.relative_attention(
            q,
            k,
            v,
            rel_table=table,
            max_relative_position=3,
            dropout_p=0.3,
            generator=torch.Generator().manual_seed(2),
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn_dropout, (q, k, v, table))


def test_strided_inputs():
    """q/k/v as views of a fused [B, L, 3, H, D] projection."""
    b, length, h, d = 2, 23, 3, 16
    qkv = torch.randn(b, length, 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    for backend in BACKENDS:
        out = nk.relative_attention(q, k, v, max_relative_position=7, backend=backend)
        expected = formula.attention(q, k, v, formula.nezha_table(7, d), r=7)
        torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


def test_weights_api_matches_output():
    q, k, v = _inputs(2, 3, 15, 18, 16, torch.float32)
    pad = torch.ones(2, 18, dtype=torch.bool)
    pad[0, 12:] = False
    out, w = nk.relative_attention_with_weights(q, k, v, attention_mask=pad, max_relative_position=4)
    o_ref, w_ref = formula.attention(q, k, v, formula.nezha_table(4, 16), r=4, key_padding=pad, return_weights=True)
    torch.testing.assert_close(out.double(), o_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(w.double(), w_ref, atol=2e-6, rtol=2e-6)


def test_weights_api_gradients_match_op():
    q, k, v = (t.double().requires_grad_() for t in _inputs(2, 2, 11, 14, 8, torch.float64))
    pad = torch.ones(2, 14, dtype=torch.bool)
    pad[1] = False
    out, _ = nk.relative_attention_with_weights(q, k, v, attention_mask=pad, max_relative_position=3)
    g1 = torch.autograd.grad((out * out).sum(), (q, k, v))
    out2 = nk.relative_attention(q, k, v, attention_mask=pad, max_relative_position=3, backend="torch")
    g2 = torch.autograd.grad((out2 * out2).sum(), (q, k, v))
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
