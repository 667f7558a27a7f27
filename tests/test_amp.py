"""torch.autocast through the op: inputs are cast to the autocast dtype, the op keeps its fp32 accumulation."""

import formula
import pytest
import torch

import nezha_kernels as nk


def _project(x, lin, heads):
    b, length, _ = x.shape
    qkv = lin(x).view(b, length, 3, heads, -1)
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]


def _amp_case(device, backend, amp_dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 29, 64, device=device)
    lin = torch.nn.Linear(64, 384).to(device)  # 4 heads of D = 32: a head dim every backend supports
    mask = torch.ones(2, 29, dtype=torch.bool, device=device)
    mask[1, 20:] = False
    table = nk.sinusoidal_table(8, 32, device=device)  # float32: cast like the rest under autocast
    with torch.autocast(device.type if isinstance(device, torch.device) else device, dtype=amp_dtype):
        q, k, v = _project(x, lin, 4)
        assert q.dtype == amp_dtype
        out = nk.relative_attention(
            q, k, v, attention_mask=mask, max_relative_position=8, rel_table=table, backend=backend
        )
    assert out.dtype == amp_dtype
    out.float().square().sum().backward()
    grad = lin.weight.grad.clone()
    # float64 oracle on CPU with the same weights
    lin64 = torch.nn.Linear(64, 384).double()
    lin64.load_state_dict({n: t.double().cpu() for n, t in lin.state_dict().items()})
    q, k, v = _project(x.double().cpu(), lin64, 4)
    expected = formula.attention(q, k, v, table.double().cpu(), r=8, key_padding=mask.cpu())
    expected.square().sum().backward()
    # bf16/fp16 rounding of the projections dominates the error.
    torch.testing.assert_close(out.double().cpu(), expected, atol=5e-2, rtol=5e-2)
    ref_grad = lin64.weight.grad
    torch.testing.assert_close(grad.double().cpu(), ref_grad, atol=0.1 * ref_grad.abs().max().item(), rtol=0.1)


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
