"""relative_attention_varlen (padding-free batches) against the float64 formula applied per sequence."""

import math

import pytest
import torch
from formula import attention as formula

import nezha_kernels as nk

BACKENDS = ("reference", "torch")


def _cu(lengths):
    return torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(len(lengths))], dtype=torch.int32)


def _packed(lengths_q, lengths_k, h, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(lengths_q), sum(lengths_k)
    q = torch.randn(tq, h, d, generator=g).to(dtype)
    k = torch.randn(tk, h, d, generator=g).to(dtype)
    v = torch.randn(tk, h, d, generator=g).to(dtype)
    return q, k, v


def _expected(q, k, v, table, lengths_q, lengths_k, r, head_mask=None, **kwargs):
    """Per sequence: the formula on [1, H, L, D] with q_offset = Lk_b - Lq_b; zero rows without keys."""
    cq, ck = _cu(lengths_q).tolist(), _cu(lengths_k).tolist()
    h, d = q.shape[1:]
    outs = []
    for b, (lq, lk) in enumerate(zip(lengths_q, lengths_k, strict=True)):
        if lq == 0:
            continue
        if lk == 0:
            outs.append(torch.zeros(lq, h, d, dtype=torch.float64) + 0 * q[:1].double().sum())
            continue

        def seq(t, c, b=b):
            return t[c[b] : c[b + 1]].transpose(0, 1).unsqueeze(0)

        hm = None if head_mask is None else (head_mask if head_mask.dim() == 1 else head_mask[b])
        o = formula(seq(q, cq), seq(k, ck), seq(v, ck), table, r=r, q_offset=lk - lq, head_mask=hm, **kwargs)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs) if outs else torch.zeros(0, h, d, dtype=torch.float64)


def _tol(dtype):
    return {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2}[dtype]


def _close(actual, expected, dtype, what):
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tol = _tol(dtype) * scale
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol, rtol=_tol(dtype), msg=what)


def _parity(backend, dtype, lengths_q, lengths_k, h, d, r, *, causal=False, head_mask_shape=None, seed=0):
    q, k, v = _packed(lengths_q, lengths_k, h, d, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    table = (torch.randn(2 * r + 1, d, generator=g) * 0.5).to(dtype)
    head_mask = None
    if head_mask_shape is not None:
        head_mask = (torch.rand(head_mask_shape, generator=g) + 0.5).to(dtype).requires_grad_()
    leaves = [t.requires_grad_() for t in (q, k, v, table)] + ([head_mask] if head_mask is not None else [])
    out = nk.relative_attention_varlen(
        q,
        k,
        v,
        _cu(lengths_q),
        _cu(lengths_k),
        max_relative_position=r,
        rel_table=table,
        causal=causal,
        head_mask=head_mask,
        backend=backend,
    )
    assert out.shape == q.shape and out.dtype == dtype
    grad_out = torch.randn(out.shape, generator=g).to(dtype)
    grads = torch.autograd.grad(out, leaves, grad_out)

    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rq, rk, rv, rt = ref_leaves[:4]
    expected = _expected(
        rq,
        rk,
        rv,
        rt,
        lengths_q,
        lengths_k,
        r,
        causal=causal,
        head_mask=ref_leaves[4] if head_mask is not None else None,
    )
    ref_grads = torch.autograd.grad(expected, ref_leaves, grad_out.double(), allow_unused=True)
    _close(out, expected, dtype, lambda m: f"output: {m}")
    for name, a, b in zip(("q", "k", "v", "table", "head_mask"), grads, ref_grads, strict=False):
        b = torch.zeros_like(a, dtype=torch.float64) if b is None else b
        _close(a, b, dtype, lambda m, name=name: f"d{name}: {m}")


# Odd lengths, lengths 0 and 1, and Lq_b != Lk_b (both ways, a decode step of one query, no keys at all).
LENGTHS_Q = [5, 0, 1, 13, 3, 9, 1, 4]
LENGTHS_K = [5, 0, 1, 13, 11, 4, 17, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("r, d", [(1, 32), (7, 64), (64, 128)])
def test_parity_with_formula_per_sequence(backend, dtype, r, d):
    _parity(backend, dtype, LENGTHS_Q, LENGTHS_K, 2, d, r)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_mask_shape", [(3,), (8, 3)])
def test_causal_and_head_mask(backend, head_mask_shape):
    # Lq_b > Lk_b makes causal rows with no visible key: they attend uniformly, as the dense op's do.
    _parity(backend, torch.float32, LENGTHS_Q, LENGTHS_K, 3, 32, 7, causal=True, head_mask_shape=head_mask_shape)


@pytest.mark.parametrize("group_tokens, keep_probabilities", [(1, True), (6, False), (14, True)])
def test_torch_backend_groups_of_sequences(monkeypatch, group_tokens, keep_probabilities):
    # The torch backend batches the table-side matmuls over groups of sequences: groups that split anywhere
    # (1: every sequence alone; 6 and 14: groups of several, a sequence longer than a group alone) and small
    # chunks (several per sequence) give the formula's output and gradients, table and head_mask included.
    from nezha_kernels.backends.torch_backend import chunks, packed

    monkeypatch.setattr(packed, "GROUP_TOKENS", group_tokens)
    monkeypatch.setattr(chunks, "CPU_CHUNK_ELEMENTS", 3 * 40)
    if not keep_probabilities:  # the backward recomputes them (large sequences do)
        monkeypatch.setattr(chunks, "SAVE_ELEMENTS", 0)
    _parity("torch", torch.float32, LENGTHS_Q, LENGTHS_K, 3, 32, 7, causal=True, head_mask_shape=(8, 3))
    _parity("torch", torch.float32, [7, 2, 11, 0, 6], [7, 2, 11, 0, 6], 2, 16, 3, seed=4)
    # Runs of equal lengths (one dense call of several sequences), split where a group ends; dropout and
    # head_mask rows follow each sequence's index.
    _parity(
        "torch",
        torch.float32,
        [5, 5, 5, 3, 3, 0, 4, 4],
        [5, 5, 5, 3, 3, 0, 6, 6],
        2,
        16,
        3,
        causal=True,
        head_mask_shape=(8, 2),
        seed=5,
    )


@pytest.mark.parametrize("lengths_q, lengths_k", [([9, 9, 9], [9, 9, 9]), ([4, 4], [11, 11]), ([200, 200], [200, 200])])
def test_torch_backend_equal_lengths_run_dense(lengths_q, lengths_k):
    # Every sequence of one shape: the torch backend computes the call as the dense op on [B, H, L, D] (200: the
    # banded form, shorter: the materialized one), with the formula's output and gradients, table and head_mask too.
    _parity("torch", torch.float32, lengths_q, lengths_k, 2, 16, 5, causal=True, head_mask_shape=(len(lengths_q), 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_beyond_the_distance_range(backend):
    """Distances beyond +-R in both directions, several torch chunks per sequence."""
    _parity(backend, torch.float32, [70, 2, 41], [70, 2, 41], 2, 32, 4, causal=False, seed=3)


def _padded(t, lengths):
    """[T, H, D] packed -> [B, H, Lmax, D] right-padded with random values (never read where masked)."""
    cu = _cu(lengths).tolist()
    lmax = max(lengths)
    out = torch.randn(len(lengths), t.shape[1], lmax, t.shape[2], dtype=t.dtype)
    for b, n in enumerate(lengths):
        out[b, :, :n] = t[cu[b] : cu[b + 1]].transpose(0, 1)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "causal, lengths", [(False, [7, 1, 12, 5]), (True, [7, 1, 12, 5]), (False, [6, 6, 6, 2, 2]), (True, [6, 6, 6])]
)
def test_dropout_reproduces_the_padded_dense_op(backend, causal, lengths):
    """Same seed: the same entries drop as in the dense op on the padded batch (outputs and grads agree to fp64);
    equal lengths make runs the torch backend computes as one dense call."""
    h, d, r, p = 3, 16, 4, 0.4
    q, k, v = (t.requires_grad_() for t in _packed(lengths, lengths, h, d, torch.float64, seed=4))
    hm = torch.rand(len(lengths), h, dtype=torch.float64).add_(0.5).requires_grad_()
    cu = _cu(lengths)
    out = nk.relative_attention_varlen(
        q,
        k,
        v,
        cu,
        max_relative_position=r,
        causal=causal,
        dropout_p=p,
        head_mask=hm,
        generator=torch.Generator().manual_seed(9),
        backend=backend,
    )
    pq, pk, pv = (_padded(t.detach(), lengths).requires_grad_() for t in (q, k, v))
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    dense = nk.relative_attention(
        pq,
        pk,
        pv,
        attention_mask=mask,
        max_relative_position=r,
        causal=causal,
        dropout_p=p,
        head_mask=hm,
        generator=torch.Generator().manual_seed(9),
        backend=backend,
    )
    real = _padded(out, lengths)
    torch.testing.assert_close(
        real[:, :, :][mask[:, None, :].expand(-1, h, -1)], dense[mask[:, None, :].expand(-1, h, -1)], atol=1e-12, rtol=0
    )
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    g_var = torch.autograd.grad(out, (q, k, v, hm), grad_out)
    padded_go = _padded(grad_out, lengths) * mask[:, None, :, None]
    g_dense = torch.autograd.grad(dense, (pq, pk, pv, hm), padded_go)
    for a, b in zip(g_var[:3], g_dense[:3], strict=True):
        expected = b.transpose(1, 2)[mask]  # the real rows, packed
        torch.testing.assert_close(a, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(g_var[3], g_dense[3], atol=1e-12, rtol=0)


def test_dropout_backends_agree_and_seed_reproduces():
    lengths = [6, 0, 9]
    q, k, v = _packed(lengths, lengths, 2, 16, torch.float32)
    kw = dict(max_relative_position=3, dropout_p=0.3)
    outs = []
    for backend in BACKENDS:
        torch.manual_seed(21)
        outs.append(nk.relative_attention_varlen(q, k, v, _cu(lengths), backend=backend, **kw))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.manual_seed(22)
    other = nk.relative_attention_varlen(q, k, v, _cu(lengths), backend="torch", **kw)
    assert not torch.allclose(other, outs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    lengths_q, lengths_k, h, d, r = [3, 0, 2, 1], [3, 0, 4, 0], 2, 4, 1
    q, k, v = (t.requires_grad_() for t in _packed(lengths_q, lengths_k, h, d, torch.float64, seed=5))
    table = torch.randn(2 * r + 1, d, dtype=torch.float64, requires_grad=True)
    hm = torch.rand(4, h, dtype=torch.float64, requires_grad=True)
    cq, ck = _cu(lengths_q), _cu(lengths_k)

    def fn(q, k, v, table, hm):
        return nk.relative_attention_varlen(
            q,
            k,
            v,
            cq,
            ck,
            max_relative_position=r,
            rel_table=table,
            causal=True,
            dropout_p=0.25,
            head_mask=hm,
            generator=torch.Generator().manual_seed(1),
            backend=backend,
        )

    assert torch.autograd.gradcheck(fn, (q, k, v, table, hm), eps=1e-6, atol=1e-6, fast_mode=True)


def test_all_sequences_empty_and_default_table():
    q = torch.randn(0, 2, 8)
    out = nk.relative_attention_varlen(q, q, q, torch.zeros(3, dtype=torch.int32))
    assert out.shape == (0, 2, 8)
    lengths = [4, 6]
    q, k, v = _packed(lengths, lengths, 2, 8, torch.float32)
    out = nk.relative_attention_varlen(q, k, v, _cu(lengths), max_relative_position=3)
    expected = _expected(q, k, v, nk.sinusoidal_table(3, 8).double(), lengths, lengths, 3)
    _close(out, expected, torch.float32, lambda m: m)


def test_strided_inputs_from_a_fused_projection():
    """q, k, v as views into one [T, 3, H, D] tensor, as a fused QKV linear gives them."""
    lengths = [5, 8]
    qkv = torch.randn(sum(lengths), 3, 2, 16)
    q, k, v = qkv.unbind(1)
    out = nk.relative_attention_varlen(q, k, v, _cu(lengths), max_relative_position=4, backend="torch")
    ref = nk.relative_attention_varlen(
        q.contiguous(), k.contiguous(), v.contiguous(), _cu(lengths), max_relative_position=4, backend="reference"
    )
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_opcheck_torch_varlen_ops():
    from nezha_kernels.backends.torch_backend import varlen as torch_varlen

    lengths_q, lengths_k = [3, 0, 5], [4, 0, 5]
    q, k, v = (t.requires_grad_() for t in _packed(lengths_q, lengths_k, 2, 8, torch.float32))
    table = torch.randn(5, 8, requires_grad=True)
    hm = torch.rand(3, 2, requires_grad=True)
    args = (q, k, v, table, hm, _cu(lengths_q), _cu(lengths_k), 2, True, 0.3, 0.2, torch.tensor(7))
    torch.library.opcheck(torch_varlen.varlen_fwd, args)
    # The backward without table and head_mask gradients returns two (distinct) empty tensors.
    go = torch.randn(q.shape)
    detached = [t.detach() for t in (q, k, v, table)]
    torch.library.opcheck(torch_varlen.varlen_bwd, (go, *detached, None, *args[5:], False, False))


def test_compiles_fullgraph_without_a_recompile_per_token_count():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def fn(q, k, v, cu, table):
        return nk.relative_attention_varlen(
            q, k, v, cu, max_relative_position=3, rel_table=table, causal=True, backend="torch"
        )

    compiled = torch.compile(fn, fullgraph=True, backend=counter)
    table = torch.randn(7, 16, requires_grad=True)
    for lengths in ([5, 9], [3, 11, 2], [8, 1, 6, 4]):
        q, k, v = (t.requires_grad_() for t in _packed(lengths, lengths, 2, 16, torch.float32))
        out = compiled(q, k, v, _cu(lengths), table)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v, table))
        ref = fn(q, k, v, _cu(lengths), table)
        ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v, table))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert counter.frame_count <= 2, f"{counter.frame_count} compiles for 3 token counts"
    # Dropout traces too (the seed is drawn inside the graph).
    drop = torch.compile(
        lambda q, cu: nk.relative_attention_varlen(q, q, q, cu, dropout_p=0.5, backend="torch"),
        fullgraph=True,
        backend="aot_eager",
    )
    out = drop(q.detach(), _cu(lengths))
    assert out.shape == q.shape and torch.isfinite(out).all()


# ---- bad input ----


def _good():
    lengths = [3, 4]
    q, k, v = _packed(lengths, lengths, 2, 8, torch.float32)
    return q, k, v, _cu(lengths)


@pytest.mark.parametrize(
    "cu, match",
    [
        ([1, 3, 7], "cu_seqlens_q must start at 0"),
        ([0, 5, 3, 7], "cu_seqlens_q must be non-decreasing"),
        ([0, 3, 6], r"cu_seqlens_q must end at the number of q rows \(7\)"),
        ([0, 3, 8], "cu_seqlens_q must end"),
    ],
)
def test_bad_cu_seqlens_values(cu, match):
    q, k, v, _ = _good()
    with pytest.raises(ValueError, match=match):
        nk.relative_attention_varlen(q, k, v, torch.tensor(cu, dtype=torch.int32))


def test_bad_cu_seqlens_k_values():
    q, k, v, cu = _good()
    with pytest.raises(ValueError, match="cu_seqlens_k must start at 0"):
        nk.relative_attention_varlen(q, k, v, cu, torch.tensor([2, 3, 7], dtype=torch.int32))
    with pytest.raises(ValueError, match="cu_seqlens_k must be non-decreasing"):
        nk.relative_attention_varlen(q, k, v, cu, torch.tensor([0, 4, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cu_seqlens_k must end at the number of k and v rows \(7\)"):
        nk.relative_attention_varlen(q, k, v, cu, torch.tensor([0, 4, 5], dtype=torch.int32))


def test_bad_cu_seqlens_tensors():
    q, k, v, cu = _good()
    with pytest.raises(ValueError, match="cu_seqlens_q must be an int32 tensor, got torch.int64"):
        nk.relative_attention_varlen(q, k, v, cu.long())
    with pytest.raises(ValueError, match="cu_seqlens_k must be an int32 tensor"):
        nk.relative_attention_varlen(q, k, v, cu, cu.float())
    with pytest.raises(ValueError, match="cu_seqlens_q is on meta but q is on cpu"):
        nk.relative_attention_varlen(q, k, v, cu.to("meta"))
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be 1-D \[B\+1\]"):
        nk.relative_attention_varlen(q, k, v, cu.view(1, -1))
    with pytest.raises(ValueError, match=r"cu_seqlens_q must be 1-D \[B\+1\] with B >= 1"):
        nk.relative_attention_varlen(q, k, v, cu[:1])
    with pytest.raises(ValueError, match="same length B\\+1"):
        nk.relative_attention_varlen(q, k, v, cu, torch.tensor([0, 7], dtype=torch.int32))
    with pytest.raises(TypeError, match="cu_seqlens_q must be a torch.Tensor"):
        nk.relative_attention_varlen(q, k, v, [0, 3, 7])


def test_bad_max_seqlen():
    q, k, v, cu = _good()
    with pytest.raises(ValueError, match="max_seqlen_q = 3 is below the longest sequence's length 4"):
        nk.relative_attention_varlen(q, k, v, cu, max_seqlen_q=3)
    with pytest.raises(ValueError, match="max_seqlen_k = 2 is below"):
        nk.relative_attention_varlen(q, k, v, cu, max_seqlen_k=2)
    with pytest.raises(TypeError, match="max_seqlen_q must be an int"):
        nk.relative_attention_varlen(q, k, v, cu, max_seqlen_q=4.0)
    # An upper bound is fine.
    nk.relative_attention_varlen(q, k, v, cu, max_seqlen_q=100, max_seqlen_k=4)


def test_bad_tensors_and_scalars():
    q, k, v, cu = _good()
    with pytest.raises(ValueError, match=r"q must be 3-D \[T, H, D\]"):
        nk.relative_attention_varlen(q[None], k, v, cu)
    with pytest.raises(ValueError, match="cu_seqlens_k is None, so k and v share q's sequences"):
        nk.relative_attention_varlen(q, k[:5], v[:5], cu)
    with pytest.raises(ValueError, match="k and v must have the same number of rows"):
        nk.relative_attention_varlen(q, k, v[:5], cu, cu)
    with pytest.raises(ValueError, match="heads and head dim differ"):
        nk.relative_attention_varlen(q, k[:, :1], v, cu)
    with pytest.raises(TypeError, match="share one dtype"):
        nk.relative_attention_varlen(q, k.double(), v, cu)
    with pytest.raises(ValueError, match="head_mask must have shape"):
        nk.relative_attention_varlen(q, k, v, cu, head_mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"rel_table must have shape \[2R\+1, D\]"):
        nk.relative_attention_varlen(q, k, v, cu, max_relative_position=3, rel_table=torch.randn(5, 8))
    with pytest.raises(ValueError, match="dropout_p must be in"):
        nk.relative_attention_varlen(q, k, v, cu, dropout_p=1.0)
    with pytest.raises(TypeError, match="causal must be a bool"):
        nk.relative_attention_varlen(q, k, v, cu, causal=1)
    with pytest.raises(ValueError, match="scale must be finite"):
        nk.relative_attention_varlen(q, k, v, cu, scale=math.inf)
    with pytest.raises(ValueError, match="unknown backend"):
        nk.relative_attention_varlen(q, k, v, cu, backend="nope")
