"""The torch backend never builds an [Lq, Lk, D] tensor, nor an [Lq, Lk] one per head beyond a chunk."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import nezha_kernels as nk
from nezha_kernels.backends.torch_backend import chunks, dense


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _fwd_bwd(b, h, length, d, backend):
    q, k, v = (torch.randn(b, h, length, d, requires_grad=True) for _ in range(3))
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[:, -7:] = False
    with LargestTensor() as probe:
        out = nk.relative_attention(q, k, v, attention_mask=mask, backend=backend)
        out.backward(torch.randn_like(out))
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    return probe.largest


def test_torch_backend_peak_tensor_is_one_chunk(monkeypatch):
    b, h, length, d, rows = 1, 2, 300, 16, 32
    monkeypatch.setattr(chunks, "CHUNK_ELEMENTS", b * h * length * rows)
    monkeypatch.setattr(dense, "MATERIALIZE_ELEMENTS", 0)  # the chunked form (small calls materialize)
    largest = _fwd_bwd(b, h, length, d, "torch")
    assert largest <= b * h * rows * length
    # The reference materializes the table of relative vectors: [L, L, D].
    assert _fwd_bwd(b, h, length, d, "reference") >= length * length * d


@pytest.mark.slow
def test_torch_backend_4096_tokens_without_the_table():
    """[1, 12, 4096, 64] forward+backward: the reference would need a 4 GiB [L, L, D] table."""
    b, h, length, d = 1, 12, 4096, 64
    largest = _fwd_bwd(b, h, length, d, "torch")
    assert largest <= chunks.CHUNK_ELEMENTS < length * length * d


def test_torch_backend_materializes_only_small_calls(monkeypatch):
    # Up to MATERIALIZE_ELEMENTS of [Lq, Lk, D] the torch backend runs the materialized form (faster there on a
    # CPU); above it, never a table of that size.
    b, h, d = 1, 2, 16
    small = int((dense.MATERIALIZE_ELEMENTS // d) ** 0.5)
    assert _fwd_bwd(b, h, small, d, "torch") >= small * small * d
    monkeypatch.setattr(dense, "MATERIALIZE_ELEMENTS", small * small * d - 1)
    assert _fwd_bwd(b, h, small, d, "torch") < small * small * d


def test_torch_backend_materializes_no_batch_whose_scores_exceed_the_banded_form():
    # A small table but a large batch: the scores autograd would keep (B * H * L^2) exceed SAVE_ELEMENTS, so the
    # banded form runs (its chunks bound every tensor).
    b, h, length, d = 24, 12, 128, 16
    assert b * h * length * length > chunks.SAVE_ELEMENTS
    assert _fwd_bwd(b, h, length, d, "torch") < b * h * length * length
