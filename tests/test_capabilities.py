"""One capability table decides what each backend runs; one fallback policy; the README shows the table."""

from pathlib import Path

import pytest
import torch

import nezha_kernels as nk
from nezha_kernels import backends
from nezha_kernels.capabilities import CAPABILITIES, markdown_table, unsupported_reason
from nezha_kernels.inputs import AttentionInputs, prepare_inputs, prepare_varlen_inputs


def _inputs(dtype=torch.float32, d=64, table_grad=False, head_mask_grad=False, b=2, h=3):
    q = torch.randn(b, h, 5, d, dtype=dtype)
    table = nk.sinusoidal_table(4, d, dtype=dtype).requires_grad_(table_grad)
    head_mask = torch.rand(h, dtype=dtype).requires_grad_(head_mask_grad)
    return prepare_inputs(q, q, q, max_relative_position=4, rel_table=table, head_mask=head_mask)


def test_readme_backend_table_is_the_capability_table():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown_table() in readme


def test_reasons_come_from_the_table():
    assert unsupported_reason("torch", _inputs(table_grad=True, head_mask_grad=True)) is None
    assert unsupported_reason("reference", _inputs(torch.float64)) is None
    assert "table gradient" in unsupported_reason("triton", _inputs(table_grad=True))
    assert "head_mask gradient" in unsupported_reason("cuda", _inputs(head_mask_grad=True))
    assert "float64" in unsupported_reason("triton", _inputs(torch.float64))
    assert "head dim 48" in unsupported_reason("cuda", _inputs(d=48))
    assert unsupported_reason("triton", _inputs(d=48)) is None
    assert "exceeds the maximum 256" in unsupported_reason("triton", _inputs(d=264))
    assert "B * H" in unsupported_reason("cuda", _inputs(d=32, b=65536, h=1))
    assert unsupported_reason("cuda", _inputs(d=32, b=65535, h=1)) is None


def _varlen(lengths, h=3, d=32, **kwargs):
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q = torch.randn(int(cu[-1]), h, d)
    return prepare_varlen_inputs(q, q, q, cu, max_relative_position=4, **kwargs)


def test_one_description_for_dense_and_padding_free_calls():
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8)
    dense = prepare_inputs(q, k, k, max_relative_position=4, q_offset=2)
    assert not dense.varlen and (dense.batch, dense.heads, dense.lengths) == (2, 3, (5, 7))
    assert dense.shape == (2, 3, 5, 7, 8) and dense.cu_seqlens_q is None and dense.max_seqlen_q is None
    packed = _varlen([4, 0, 6], d=8)
    assert packed.varlen and (packed.batch, packed.heads, packed.lengths) == (3, 3, (6, 6))
    assert packed.cu_seqlens_k is packed.cu_seqlens_q and packed.q_offset == 0 and packed.key_padding is None
    part = packed.dense_part(q, k, k, q_offset=-1, head_mask=None)
    assert not part.varlen and part.lengths == (5, 7) and part.q_offset == -1 and part.table is packed.table
    # A description is dense or padding-free, never a mix.
    with pytest.raises(ValueError, match="key_padding"):
        AttentionInputs(**{**vars(packed), "key_padding": torch.ones(3, 6, dtype=torch.bool)})
    with pytest.raises(ValueError, match="together"):
        AttentionInputs(**{**vars(dense), "cu_seqlens_q": packed.cu_seqlens_q})


def test_padding_free_calls_meet_the_limits_by_sequences_and_longest_length():
    assert unsupported_reason("cuda", _varlen([3, 5])) is None
    # B counts sequences (zero-length ones too), the length is max_seqlen (an upper bound the caller may give).
    assert "B * H" in unsupported_reason("cuda", _varlen([0] * 65535 + [1], h=1))
    assert unsupported_reason("triton", _varlen([3, 5], max_seqlen_q=65535 * 16)) is None
    assert "grid limit" in unsupported_reason("triton", _varlen([3, 5], max_seqlen_q=65535 * 16 + 1))


def test_available_backends_carry_their_capability():
    status = nk.available_backends("cpu")
    for name, s in status.items():
        assert s.capability is CAPABILITIES[name]


def _fake_gpu_backend(monkeypatch, seen):
    """Pretend the triton backend is available on CPU tensors and record the calls it gets."""
    module = backends._load("triton")[0]
    if module is None:
        pytest.skip("triton backend not importable")
    monkeypatch.setattr(module, "availability", lambda device: (True, "faked for the test"))
    torch_module = backends._load("torch")[0]
    original = torch_module.forward
    monkeypatch.setattr(module, "forward", lambda inputs: (seen.append("triton"), original(inputs))[1])
    monkeypatch.setattr(torch_module, "forward", lambda inputs: (seen.append("torch"), original(inputs))[1])
    monkeypatch.setitem(backends._AUTO_ORDER, "other", ("triton", "torch"))


def test_auto_takes_the_first_backend_that_supports_the_call(monkeypatch):
    seen = []
    _fake_gpu_backend(monkeypatch, seen)
    q = torch.randn(1, 2, 6, 16)
    nk.relative_attention(q, q, q, max_relative_position=3)
    table = nk.sinusoidal_table(3, 16).requires_grad_()
    nk.relative_attention(q, q, q, max_relative_position=3, rel_table=table)
    assert seen == ["triton", "torch"]


def test_a_named_backend_runs_the_call_or_says_why(monkeypatch):
    seen = []
    _fake_gpu_backend(monkeypatch, seen)
    q = torch.randn(1, 2, 6, 16)
    table = nk.sinusoidal_table(3, 16).requires_grad_()
    with pytest.raises(ValueError, match="backend 'triton' cannot run this call: rel_table requires grad"):
        nk.relative_attention(q, q, q, max_relative_position=3, rel_table=table, backend="triton")
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable"):
        nk.relative_attention(q, q, q, max_relative_position=3, backend="cuda")
    assert seen == []  # no backend handed the call to another
