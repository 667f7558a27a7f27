"""On a GPU: a call of the op makes no host-device synchronization once warm (default table cached per device)."""

import pytest
import torch

import nezha_kernels as nk

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("backend", ["triton", "cuda", "torch"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_warm_call_makes_no_sync(backend, dropout_p):
    if not nk.available_backends("cuda")[backend].available:
        pytest.skip(nk.available_backends("cuda")[backend].reason)
    q, k, v = (torch.randn(2, 4, 80, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 80, dtype=torch.bool, device="cuda")
    mask[1, 50:] = False

    def step():
        out = nk.relative_attention(q, k, v, attention_mask=mask, dropout_p=dropout_p, backend=backend)
        out.float().sum().backward()

    step()  # warm: builds / autotunes / caches the default table on this device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
