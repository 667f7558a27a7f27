"""torch.autocast through the op: inputs are cast to the autocast dtype, the op keeps its fp32 accumulation."""

import copy

import formula
import pytest
import torch
from tolerance import assert_all_within

import nezha_kernels as nk


def _project(x, lin, heads):
    b, length, _ = x.shape
    qkv = lin(x).view(b, length, 3, heads, -1)
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]


# k per autocast dtype for the output and the projection weight's gradient (tests/tolerance.py): the op's error
# against the float64 pipeline is at most k times the error of the same pipeline computed by PyTorch under autocast
# (the projection under autocast, the formula in the autocast dtype). The projections' rounding is common to both.
K = {
    torch.bfloat16: dict(out=2.0, grad=2.0),
    torch.float16: dict(out=2.0, grad=2.0),
}


def _pipeline(device, amp_dtype, lin, x, attention):
    """Autocast projection, then ``attention(q, k, v)``; returns (output, gradient of lin.weight)."""
    with torch.autocast(torch.device(device).type, dtype=amp_dtype):
        q, k, v = _project(x, lin, 4)
        assert q.dtype == amp_dtype
        out = attention(q, k, v)
    out.float().square().sum().backward()
    return out, lin.weight.grad.clone()


def _amp_case(device, backend, amp_dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 29, 64, device=device)
    lin = torch.nn.Linear(64, 384).to(device)  # 4 heads of D = 32: a head dim every backend supports
    lin_pt = copy.deepcopy(lin)
    mask = torch.ones(2, 29, dtype=torch.bool, device=device)
    mask[1, 20:] = False
    table = nk.sinusoidal_table(8, 32, device=device)  # float32: cast like the rest under autocast

    def op(q, k, v):
        return nk.relative_attention(
            q, k, v, attention_mask=mask, max_relative_position=8, rel_table=table, backend=backend
        )

    def pytorch(q, k, v):  # the formula at the autocast precision, outside autocast's own casts
        with torch.autocast(torch.device(device).type, enabled=False):
            return formula.attention(q, k, v, table.to(amp_dtype), r=8, attention_mask=mask, dtype=amp_dtype)

    out, grad = _pipeline(device, amp_dtype, lin, x, op)
    assert out.dtype == amp_dtype
    same_out, same_grad = _pipeline(device, amp_dtype, lin_pt, x, pytorch)
    assert same_out.dtype == amp_dtype
    # float64 oracle on CPU with the same weights
    lin64 = torch.nn.Linear(64, 384).double()
    lin64.load_state_dict({n: t.double().cpu() for n, t in lin.state_dict().items()})
    q, k, v = _project(x.double().cpu(), lin64, 4)
    expected = formula.attention(q, k, v, table.double().cpu(), r=8, attention_mask=mask.cpu())
    expected.square().sum().backward()
    assert_all_within(
        {"out": out.cpu(), "grad": grad.cpu()},
        {"out": expected.detach(), "grad": lin64.weight.grad},
        {"out": same_out.cpu(), "grad": same_grad.cpu()},
        K[amp_dtype],
        label=f"{backend} {amp_dtype}",
    )


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_autocast_bf16_cpu(backend):
    _amp_case("cpu", backend, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "triton", "cuda"])
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_autocast_gpu(backend, amp_dtype):
    if not nk.available_backends("cuda")[backend].available:
        pytest.skip(f"{backend}: {nk.available_backends('cuda')[backend].reason}")
    _amp_case("cuda", backend, amp_dtype)
