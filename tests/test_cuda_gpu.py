"""GPU parity of backend="cuda" against the float64 formula (tests/formula.py), forward and backward, for every
feature, fp16 / bf16 / fp32 and head dims 32 / 64 / 128, for both kernel families: tensor-core ("tc", fp16 / bf16)
and SIMT ("simt"), chosen by NEZHA_KERNELS_CUDA_IMPL (fp32 always runs SIMT). The formula reads the op's arguments as
the user passes them; the bound is tests/tolerance.py's (k times PyTorch's own error in the kernels' dtype).

Skipped without a CUDA device (and when the extension cannot be built there, with the reason).
"""

from __future__ import annotations

import formula
import pytest
import torch
import triton_parity
from tolerance import assert_all_within

from nezha_kernels import relative_attention, sinusoidal_table
from nezha_kernels.backends import available_backends
from nezha_kernels.backends.cuda_backend import IMPL_ENV
from nezha_kernels.dropout import keep_mask

IMPLS = ["tc", "simt"]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# k per dtype and output (tests/tolerance.py): the kernels' error against the float64 formula is at most k times the
# error of the formula computed by PyTorch in the kernels' dtype on the GPU, both from the same rounded inputs.
# The same kernels on the CUDA emulator (tests/test_cuda_emulated.py) reach ratios up to 1.2.
K = {
    torch.float32: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    torch.float16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    torch.bfloat16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
}
DROPOUT_SEED = 11  # the op's generator for dropout: torch.Generator().manual_seed(DROPOUT_SEED)


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
    return out.detach(), [t.grad for t in leaves]


def _expected(q, k, v, grad_out, kwargs):
    """The formula on the op's arguments as passed: ({out, dq, dk, dv} in float64 on the CPU, the same computed by
    PyTorch in q's dtype on q's device), both on the CPU."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    r = kwargs.get("max_relative_position", 64)
    table = kwargs.get("rel_table")
    if table is None:
        table = sinusoidal_table(r, d, dtype=q.dtype, device=q.device)  # the op's default: tests/test_table.py
    keep, p = None, kwargs.get("dropout_p", 0.0)
    if p > 0.0:  # the op draws its Philox seed from its generator, as inputs.draw_dropout_seed documents
        gen = torch.Generator().manual_seed(DROPOUT_SEED)
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen, dtype=torch.int64).item())
        keep = keep_mask(seed, p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    raw = dict(
        r=r,
        attention_mask=kwargs.get("attention_mask"),
        causal=kwargs.get("causal", False),
        q_offset=kwargs.get("q_offset", 0),
        scale=kwargs.get("scale"),
        keep=keep,
        dropout_p=p,
        head_mask=kwargs.get("head_mask"),
    )
    results = []
    for precision, where in ((torch.float64, torch.device("cpu")), (q.dtype, q.device)):
        leaves = [t.detach().to(device=where, dtype=precision).requires_grad_() for t in (q, k, v)]
        placed = {n: t.to(where) if isinstance(t, torch.Tensor) else t for n, t in raw.items()}
        out = formula.attention(*leaves, table.to(where), dtype=precision, **placed)
        grads = torch.autograd.grad(out, leaves, grad_out.to(device=where, dtype=precision))
        results.append({"out": out.detach().cpu(), **{f"d{n}": g.cpu() for n, g in zip("qkv", grads, strict=True)}})
    return results


def _check(backend, q, k, v, grad_out, kwargs, label):
    """backend's output and dq, dk, dv against the formula, by tests/tolerance.py's rule."""
    out, grads = _run(backend, q, k, v, grad_out, kwargs)
    assert out.dtype == q.dtype and torch.isfinite(out).all()
    got = {"out": out.cpu(), **{f"d{n}": g.cpu() for n, g in zip("qkv", grads, strict=True)}}
    expected, same_precision = _expected(q, k, v, grad_out, kwargs)
    k = triton_parity.K if backend == "triton" else K  # the Triton kernels' own table
    assert_all_within(got, expected, same_precision, k[q.dtype], label=label)
    return out, grads


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
        "dropout": {"dropout_p": 0.3, "generator": torch.Generator().manual_seed(DROPOUT_SEED)},
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


def _compare(dtype, shape, feature, backend="cuda"):
    b, h, lq, lk, d = shape
    q, k, v, g = _inputs(dtype, b, h, lq, lk, d, seed=1000 * FEATURES.index(feature) + d + lq)
    kwargs = _features(b, h, lq, lk, d, dtype, g)[feature]
    grad_out = torch.randn(b, h, lq, d, device="cuda", generator=g).to(dtype)
    _check(backend, q, k, v, grad_out, kwargs, f"{backend} {feature} {dtype} {list(shape)}")


@pytest.fixture(params=IMPLS)
def impl(request, monkeypatch):
    monkeypatch.setenv(IMPL_ENV, request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("feature", FEATURES)
def test_cuda_matches_formula(impl, dtype, d, feature):
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
def test_tc_and_simt_on_the_same_inputs(monkeypatch, dtype, d):
    """Both kernel families on the same inputs (dropout, mask, causal offset), each against the formula."""
    b, h, lq, lk = 2, 2, 150, 170
    q, k, v, g = _inputs(dtype, b, h, lq, lk, d, seed=77 + d)
    grad_out = torch.randn(b, h, lq, d, device="cuda", generator=g).to(dtype)
    pad = torch.rand(b, lk, device="cuda", generator=g) > 0.2
    for name in IMPLS:
        monkeypatch.setenv(IMPL_ENV, name)
        kwargs = {
            "attention_mask": pad,
            "causal": True,
            "q_offset": 9,
            "dropout_p": 0.2,
            "generator": torch.Generator().manual_seed(DROPOUT_SEED),
            "max_relative_position": 7,
        }
        _check("cuda", q, k, v, grad_out, kwargs, f"{name} {dtype} D={d}")


def test_cuda_noncontiguous_inputs_and_determinism(impl):
    q, k, v, g = _inputs(torch.float16, 2, 3, 64, 80, 64, seed=5)
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)  # [B, L, H, D] memory, HF layout
    out1 = relative_attention(qt, k, v, backend="cuda")
    out2 = relative_attention(q, k, v, backend="cuda")
    assert torch.equal(out1, out2)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(torch.float16)
    _check("cuda", qt, k, v, grad_out, {}, "[B, L, H, D] q")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("feature", ["plain", "causal_q_offset_padding", "dropout", "additive_hf"])
def test_cuda_and_triton_on_the_same_inputs(impl, dtype, feature):
    status = available_backends("cuda")["triton"]
    if not status.available:
        pytest.skip(f"triton backend unavailable: {status.reason}")
    for backend in ("cuda", "triton"):
        _compare(dtype, (2, 3, 129, 150, 64), feature, backend=backend)


def test_cuda_runs_on_the_current_stream(impl):
    """The op's inputs are written on a busy side stream and the op is called there without a sync: a kernel
    launched on any other stream runs before its inputs exist (they hold NaN until then) and fails the check."""
    q, k, v, g = _inputs(torch.float16, 2, 2, 256, 256, 64, seed=3)
    grad_out = torch.randn(q.shape, device="cuda", generator=g).to(torch.float16)
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
    expected, same_precision = _expected(q, k, v, grad_out, {})
    got = {"out": out.detach().cpu(), **{f"d{n}": t.cpu() for n, t in zip("qkv", grads, strict=True)}}
    assert_all_within(got, expected, same_precision, K[torch.float16], label="side stream")


def test_cuda_keeps_the_current_device(impl):
    """Tensors on cuda:1 while cuda:0 is current: the launch runs on cuda:1 and cuda:0 stays current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    g = torch.Generator(device="cuda:1").manual_seed(8)
    q, k, v = (torch.randn(1, 2, n, 64, device="cuda:1", generator=g).to(torch.float16) for n in (70, 90, 90))
    grad_out = torch.randn(1, 2, 70, 64, device="cuda:1", generator=g).to(torch.float16)
    with torch.cuda.device(0):
        out, _ = _check("cuda", q, k, v, grad_out, {"causal": True, "q_offset": 20}, "cuda:1")
        assert torch.cuda.current_device() == 0
    assert out.device == torch.device("cuda:1")
