"""GPU parity of backend="cuda" against the reference backend (fp32 math on the same inputs) and against
backend="triton", forward and backward, for every feature, fp16 / bf16 / fp32 and head dims 32 / 64 / 128,
for both kernel families: tensor-core ("tc", fp16 / bf16) and SIMT ("simt"), chosen by
NEZHA_KERNELS_CUDA_IMPL (fp32 always runs SIMT).

Skipped without a CUDA device (and when the extension cannot be built there, with the reason).
"""

from __future__ import annotations

import pytest
import torch

from nezha_kernels import relative_attention
from nezha_kernels.backends import available_backends
from nezha_kernels.backends.cuda_backend import IMPL_ENV

IMPLS = ["tc", "simt"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# (atol, rtol) per dtype for the output and for the gradients: the kernels read low-precision inputs and
# accumulate in fp32; the reference computes in fp32 from the same (rounded) inputs.
TOLERANCES = {
    torch.float32: ((2e-4, 2e-4), (5e-4, 5e-4)),
    torch.float16: ((3e-3, 3e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((2e-2, 2e-2), (6e-2, 6e-2)),
}


@pytest.fixture(scope="module", autouse=True)
def cuda_backend_available():
    status = available_backends("cuda")["cuda"]
    if not status.available:
        pytest.skip(f"cuda backend unavailable: {status.reason}")


def _inputs(dtype, b, h, lq, lk, d, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.float32, generator=g).to(dtype) for n in (lq, lk, lk))
    return q, k, v, g


def _run(backend, q, k, v, grad_out, kwargs):
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = relative_attention(*leaves, backend=backend, **kwargs)
    out.backward(grad_out)
    return out.detach().float(), [t.grad.float() for t in leaves]


def _features(b, h, lq, lk, d, dtype, g):
    """Named kwargs of the op exercising each feature (fresh random tensors)."""
    pad = torch.rand(b, lk, device="cuda", generator=g) > 0.3
    pad[:, 0] = True
    all_padded = pad.clone()
    all_padded[-1] = False  # the last batch attends uniformly to every key
    additive_hf = torch.where(pad, 0.0, torch.finfo(torch.float32).min).view(b, 1, 1, lk)
    additive_full = torch.randn(b, h, lq, lk, device="cuda", generator=g)
    table = torch.randn(2 * 5 + 1, d, device="cuda", generator=g).to(dtype)
    return {
        "plain": {},
        "key_padding": {"attention_mask": pad},
        "all_masked_rows": {"attention_mask": all_padded},
        "additive_hf": {"attention_mask": additive_hf},
        "additive_full_fp16": {"attention_mask": additive_full.half()},
        "causal": {"causal": True},
        "causal_q_offset_padding": {"causal": True, "q_offset": max(0, lk - lq), "attention_mask": pad},
        "custom_table_small_r": {"rel_table": table, "max_relative_position": 5},
        "r1": {"max_relative_position": 1},
        "dropout": {"dropout_p": 0.3, "generator": torch.Generator().manual_seed(11)},
        "head_mask": {"head_mask": torch.rand(b, h, device="cuda", generator=g).to(dtype)},
        "scale": {"scale": 0.37},
    }


FEATURES = [
    "plain",
    "key_padding",
    "all_masked_rows",
    "additive_hf",
    "additive_full_fp16",
    "causal",
    "causal_q_offset_padding",
    "custom_table_small_r",
    "r1",
    "dropout",
    "head_mask",
    "scale",
]


def _compare(dtype, shape, feature, other="reference"):
    b, h, lq, lk, d = shape
    q, k, v, g = _inputs(dtype, b, h, lq, lk, d, seed=1000 * FEATURES.index(feature) + d + lq)
    kwargs = _features(b, h, lq, lk, d, dtype, g)[feature]
    grad_out = torch.randn(b, h, lq, d, device="cuda", generator=g).to(dtype)

    def seeded():
        return {**kwargs, **({"generator": torch.Generator().manual_seed(11)} if "generator" in kwargs else {})}

    out, grads = _run("cuda", q, k, v, grad_out, seeded())
    ref_out, ref_grads = _run(other, q, k, v, grad_out, seeded())
    (oa, orr), (ga, gr) = TOLERANCES[dtype]
    if other != "reference":  # both sides rounded: allow twice the error
        oa, orr, ga, gr = 2 * oa, 2 * orr, 2 * ga, 2 * gr
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, atol=oa, rtol=orr, msg=lambda m: f"output ({feature}): {m}")
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            got / scale,
            want / scale,
            atol=ga,
            rtol=gr,
            msg=lambda m: f"d{name} ({feature}): {m}",  # noqa: B023 (called at once)
        )


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    monkeypatch.setenv(IMPL_ENV, request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("feature", FEATURES)
def test_cuda_matches_reference(impl, dtype, d, feature):
    if dtype == torch.float32 and impl == "tc":
        pytest.skip("float32 has no tensor-core kernels (runs SIMT)")
    _compare(dtype, (2, 3, 97, 203, d), feature)


@pytest.mark.parametrize("shape", [(1, 2, 257, 257, 64), (2, 1, 1, 77, 64), (1, 1, 300, 33, 32), (3, 2, 113, 130, 128)])
def test_cuda_odd_shapes(impl, shape):
    _compare(torch.float16, shape, "causal_q_offset_padding")
    _compare(torch.bfloat16, shape, "plain")


def test_cuda_long_sequence_band_and_far_field(impl):
    # L = 1100 with R = 64: most key tiles are far field, a few touch the band.
    _compare(torch.float16, (1, 2, 1100, 1100, 64), "key_padding")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
def test_tc_matches_simt(monkeypatch, dtype, d):
    """Both kernel families on the same inputs (dropout, mask, causal offset): outputs and gradients agree."""
    b, h, lq, lk = 2, 2, 150, 170
    q, k, v, g = _inputs(dtype, b, h, lq, lk, d, seed=77 + d)
    grad_out = torch.randn(b, h, lq, d, device="cuda", generator=g).to(dtype)
    pad = torch.rand(b, lk, device="cuda", generator=g) > 0.2

    def kwargs():
        return {
            "attention_mask": pad,
            "causal": True,
            "q_offset": 9,
            "dropout_p": 0.2,
            "generator": torch.Generator().manual_seed(5),
            "max_relative_position": 7,
        }

    results = {}
    for name in IMPLS:
        monkeypatch.setenv(IMPL_ENV, name)
        results[name] = _run("cuda", q, k, v, grad_out, kwargs())
    (oa, orr), (ga, gr) = TOLERANCES[dtype]
    torch.testing.assert_close(results["tc"][0], results["simt"][0], atol=2 * oa, rtol=2 * orr)
    for got, want in zip(results["tc"][1], results["simt"][1], strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got / scale, want / scale, atol=2 * ga, rtol=2 * gr)


def test_cuda_noncontiguous_inputs_and_determinism(impl):
    q, k, v, g = _inputs(torch.float16, 2, 3, 64, 80, 64, seed=5)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, L, H, D] memory, HF layout
    out1 = relative_attention(qt, k, v, backend="cuda")
    out2 = relative_attention(q, k, v, backend="cuda")
    assert torch.equal(out1, out2)
    ref = relative_attention(q, k, v, backend="reference")
    torch.testing.assert_close(out1.float(), ref.float(), atol=3e-3, rtol=3e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("feature", ["plain", "causal_q_offset_padding", "dropout", "additive_hf"])
def test_cuda_matches_triton(impl, dtype, feature):
    status = available_backends("cuda")["triton"]
    if not status.available:
        pytest.skip(f"triton backend unavailable: {status.reason}")
    _compare(dtype, (2, 3, 129, 150, 64), feature, other="triton")


def test_cuda_runs_on_the_current_stream(impl):
    """The op's inputs are written on a busy side stream and the op is called there without a sync: a kernel
    launched on any other stream runs before its inputs exist (they hold NaN until then) and fails the check."""
    q, k, v, g = _inputs(torch.float16, 2, 2, 256, 256, 64, seed=3)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(torch.float16)
    ref_out, ref_grads = _run("reference", q, k, v, grad_out, {})
    late = [torch.full_like(t, float("nan")) for t in (q, k, v)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # q, k, v, grad_out and the NaN fill are done
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream before the inputs are written
        for dst, src in zip(late, (q, k, v), strict=True):
            dst.copy_(src)
        leaves = [t.requires_grad_() for t in late]
        out = relative_attention(*leaves, backend="cuda")
        grads = torch.autograd.grad(out, leaves, grad_out)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), ref_out, atol=3e-3, rtol=3e-3)
    for got, want in zip(grads, ref_grads, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.float() / scale, want / scale, atol=1e-2, rtol=1e-2)


def test_cuda_keeps_the_current_device(impl):
    """Tensors on cuda:1 while cuda:0 is current: the launch runs on cuda:1 and cuda:0 stays current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    g = torch.Generator(device="cuda:1").manual_seed(8)
    q, k, v = (torch.randn(1, 2, n, 64, device="cuda:1", generator=g).to(torch.float16) for n in (70, 90, 90))
    grad_out = torch.randn(1, 2, 70, 64, device="cuda:1", generator=g).to(torch.float16)
    with torch.cuda.device(0):
        out, grads = _run("cuda", q, k, v, grad_out, {"causal": True, "q_offset": 20})
        assert torch.cuda.current_device() == 0
        ref_out, ref_grads = _run("reference", q, k, v, grad_out, {"causal": True, "q_offset": 20})
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out, ref_out, atol=3e-3, rtol=3e-3)
    for got, want in zip(grads, ref_grads, strict=True):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got / scale, want / scale, atol=1e-2, rtol=1e-2)
