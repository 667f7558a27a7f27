"""One answer from every path of a padding-free model (issue 18 item 6).

A padding-free NezhaModel runs a right-padded batch packed in eager mode and dense under torch.compile,
torch.export, jit.trace, output_attentions=True and KV-cache calls. Every path must return the same
tensors: equal at real tokens and zero at padded positions (last_hidden_state and every hidden_states entry).
"""

from __future__ import annotations

import pytest
import torch
from _nezha_helpers import SMALL, randomize_

import nezha_kernels.models as ours

LENGTHS = (7, 3, 5)  # right padded, first token real: the eager forward runs packed
TOL = 1e-5  # fp32, packed and dense paths differ in summation order only


def _model(**overrides) -> ours.NezhaModel:
    torch.manual_seed(0)
    model = ours.NezhaModel(ours.NezhaConfig(**SMALL, attn_backend="torch", **overrides)).eval()
    randomize_(model, torch.Generator().manual_seed(1))
    return model


def _batch():
    g = torch.Generator().manual_seed(2)
    length = max(LENGTHS)
    ids = torch.randint(1, SMALL["vocab_size"], (len(LENGTHS), length), generator=g)
    mask = (torch.arange(length)[None] < torch.tensor(LENGTHS)[:, None]).long()
    types = torch.randint(0, SMALL["type_vocab_size"], ids.shape, generator=g)
    return ids, mask, types


def _check(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    assert got[mask == 0].abs().max().item() == 0.0, f"{what}: padded positions are not zero"
    assert (got - want).abs().max().item() <= TOL, what


class _Positional(torch.nn.Module):
    """Tensors in, last_hidden_state out: what torch.jit.trace takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, mask, types):
        return self.model(ids, attention_mask=mask, token_type_ids=types, return_dict=False)[0]


def test_every_path_returns_the_eager_tensors_with_zeros_at_padding():
    model = _model()
    ids, mask, types = _batch()
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        eager = model(**kw, output_hidden_states=True)
        assert eager.last_hidden_state[mask == 0].abs().max() == 0  # the packed path's scatter
        dense_calls = {
            "output_attentions": model(**kw, output_hidden_states=True, output_attentions=True),
            "compile": torch.compile(model, backend="eager", fullgraph=True)(**kw, output_hidden_states=True),
            "export": torch.export.export(model, (), dict(kw, output_hidden_states=True)).module()(
                **kw, output_hidden_states=True
            ),
        }
        traced = torch.jit.trace(_Positional(model), (ids, mask, types), check_trace=False)
        _check(traced(ids, mask, types), eager.last_hidden_state, mask, "jit.trace")
    for path, out in dense_calls.items():
        _check(out.last_hidden_state, eager.last_hidden_state, mask, path)
        assert len(out.hidden_states) == len(eager.hidden_states)
        for i, (got, want) in enumerate(zip(out.hidden_states, eager.hidden_states, strict=True)):
            _check(got, want, mask, f"{path} hidden_states[{i}]")
        assert (out.pooler_output - eager.pooler_output).abs().max() <= TOL, path


def test_cached_decoding_returns_the_eager_tensors_with_zeros_at_padding():
    """A decoder: use_cache=False runs packed, use_cache=True and a past_key_values step run dense."""
    model = _model(is_decoder=True)
    ids, mask, types = _batch()
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    split = 4
    with torch.no_grad():
        packed = model(**kw, use_cache=False).last_hidden_state
        cached = model(**kw, use_cache=True)
        _check(cached.last_hidden_state, packed, mask, "use_cache=True")
        prefix = model(ids[:, :split], attention_mask=mask[:, :split], token_type_ids=types[:, :split], use_cache=True)
        step = model(
            ids[:, split:],
            attention_mask=mask,
            token_type_ids=types[:, split:],
            past_key_values=prefix.past_key_values,
            use_cache=True,
        )
    _check(prefix.last_hidden_state, packed[:, :split], mask[:, :split], "prefix")
    _check(step.last_hidden_state, packed[:, split:], mask[:, split:], "past_key_values step")


@pytest.mark.parametrize("layout", ["left_padding", "hole"])
def test_masks_that_run_dense_in_eager_are_zero_at_padding_too(layout):
    """Masks packing cannot take run dense everywhere; their padded positions are zero as well, and the
    pooler still reads token 0 as computed (transformers' value, even when token 0 is padding)."""
    model = _model()
    ids, mask, types = _batch()
    mask = torch.ones_like(mask)
    if layout == "left_padding":
        mask[1, :3] = 0
    else:
        mask[2, 4] = 0
    reference = _model(padding_free=False)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types)
        compiled = torch.compile(model, backend="eager")(ids, attention_mask=mask, token_type_ids=types)
        want = reference(ids, attention_mask=mask, token_type_ids=types)
    expected = want.last_hidden_state.masked_fill(mask[..., None] == 0, 0.0)
    _check(got.last_hidden_state, expected, mask, layout)
    _check(compiled.last_hidden_state, expected, mask, f"compiled {layout}")
    assert (got.pooler_output - want.pooler_output).abs().max() <= TOL
