"""relative_attention runs under torch.compile(fullgraph=True) on CPU, forward and backward, matching eager."""

import torch

import nezha_kernels as nk


def test_compiled_op_matches_eager_fwd_and_bwd():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g, requires_grad=True) for n in (13, 21, 21))
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, 15:] = False

    def fn(q, k, v, mask):
        return nk.relative_attention(
            q, k, v, attention_mask=mask, max_relative_position=5, causal=True, q_offset=8, backend="torch"
        )

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v, mask)
    grads = torch.autograd.grad((out * out).sum(), (q, k, v))
    ref = fn(q, k, v, mask)
    ref_grads = torch.autograd.grad((ref * ref).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
