"""patch_transformers_nezha: transformers' own NEZHA models on our op, same outputs, no position buffers."""

import pytest
import torch

nezha = pytest.importorskip("transformers.models.deprecated.nezha.modeling_nezha")
import transformers  # noqa: E402

from nezha_kernels.integrations.transformers_nezha import (  # noqa: E402
    is_patched,
    patch_transformers_nezha,
    unpatch_transformers_nezha,
)

HEADS = [
    "NezhaModel",
    "NezhaForPreTraining",
    "NezhaForMaskedLM",
    "NezhaForNextSentencePrediction",
    "NezhaForSequenceClassification",
    "NezhaForMultipleChoice",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
]


def _config(**kw):
    base = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        max_relative_position=8,
        num_labels=3,
    )
    base.update(kw)
    return transformers.NezhaConfig(**base)


def _inputs(b=2, length=13, choices=None):
    g = torch.Generator().manual_seed(0)
    shape = (b, choices, length) if choices else (b, length)
    ids = torch.randint(1, 99, shape, generator=g)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., 0, 9:] = 0 if not choices else 1
    mask[1, ..., 10:] = 0
    types = torch.randint(0, 2, shape, generator=g)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _logits(out):
    return [t for t in out.to_tuple() if isinstance(t, torch.Tensor)]


@pytest.fixture(autouse=True)
def _no_class_patch():
    yield
    unpatch_transformers_nezha()


@pytest.mark.parametrize("head", HEADS)
def test_patched_instance_matches_original(head):
    torch.manual_seed(0)
    model = getattr(transformers, head)(_config(num_labels=2 if head == "NezhaForQuestionAnswering" else 3)).eval()
    inputs = _inputs(choices=3 if head == "NezhaForMultipleChoice" else None)
    with torch.no_grad():
        before = _logits(model(**inputs, output_hidden_states=True))
    assert patch_transformers_nezha(model) is model and is_patched(model)
    assert not any("relative_positions_encoding" in n for n, _ in model.named_modules())
    with torch.no_grad():
        after = _logits(model(**inputs, output_hidden_states=True))
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    unpatch_transformers_nezha(model)
    assert not is_patched(model)
    with torch.no_grad():
        again = _logits(model(**inputs, output_hidden_states=True))
    for a, b in zip(before, again, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_head_mask_output_attentions_and_gradients():
    torch.manual_seed(1)
    model = transformers.NezhaModel(_config()).eval()
    inputs = _inputs()
    head_mask = torch.tensor([[1.0, 0.0, 1.0, 0.5], [1.0, 1.0, 0.0, 1.0]])
    out = model(**inputs, head_mask=head_mask, output_attentions=True)
    out.last_hidden_state.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    patch_transformers_nezha(model)
    patch_transformers_nezha(model)  # idempotent
    fast = model(**inputs, head_mask=head_mask, output_attentions=True)
    fast.last_hidden_state.square().sum().backward()
    torch.testing.assert_close(fast.last_hidden_state, out.last_hidden_state, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.attentions, out.attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # float32 rounding, propagated through LayerNorm backward, scales with the largest gradient in the
    # model (~150 here); in float64 the two agree to 2e-15.
    tol = 1e-6 * max(g.abs().max().item() for g in ref_grads.values())
    for n, p in model.named_parameters():
        if n in ref_grads:
            torch.testing.assert_close(p.grad, ref_grads[n], atol=tol, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_class_patch_builds_without_buffers_and_runs_past_512():
    torch.manual_seed(2)
    reference = transformers.NezhaForSequenceClassification(_config()).eval()
    patch_transformers_nezha()
    patch_transformers_nezha()
    assert is_patched()
    fast = transformers.NezhaForSequenceClassification(_config()).eval()
    assert is_patched(fast)
    assert not any("relative_positions_encoding" in n for n, _ in fast.named_modules())
    fast.load_state_dict(reference.state_dict(), strict=True)
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(fast(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)
        # Past max_position_embeddings = 64. transformers' embeddings keep a [1, 64] token-type buffer,
        # so token_type_ids must be passed explicitly at such lengths.
        long_inputs = dict(
            input_ids=torch.randint(1, 99, (1, 100)), token_type_ids=torch.zeros(1, 100, dtype=torch.long)
        )
        assert torch.isfinite(fast(**long_inputs).logits).all()
        with pytest.raises(RuntimeError):
            reference(**long_inputs)
    unpatch_transformers_nezha()
    assert not is_patched()
    assert is_patched(fast)  # built while patched: stays fast
    unpatch_transformers_nezha(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_patched_layer_decodes_with_a_kv_cache():
    """The original layer assumes Lq == Lk; a patched one places queries at q_offset = Lk - Lq."""
    torch.manual_seed(3)
    model = transformers.NezhaModel(_config(is_decoder=True)).eval()
    patch_transformers_nezha(model)
    layer = model.encoder.layer[0].attention.self
    hidden = torch.randn(2, 11, 32)
    causal = torch.triu(torch.full((11, 11), torch.finfo(torch.float32).min), diagonal=1)[None, None]
    with torch.no_grad():
        full, (k, v) = layer(hidden, attention_mask=causal)
        step, _ = layer(hidden[:, 7:], attention_mask=causal[:, :, 7:], past_key_values=(k[:, :, :7], v[:, :, :7]))
    torch.testing.assert_close(step, full[:, 7:], atol=1e-5, rtol=1e-5)


def test_refusals(monkeypatch):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        patch_transformers_nezha("bert")
    with pytest.raises(ValueError, match="not a transformers NEZHA model"):
        patch_transformers_nezha(torch.nn.Linear(2, 2))
    model = transformers.NezhaModel(_config())
    del model.encoder.layer[0].attention.self.query
    with pytest.raises(RuntimeError, match="unexpected NezhaSelfAttention layout"):
        patch_transformers_nezha(model)
    import nezha_kernels.integrations.transformers_nezha as patch_module

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(patch_module.importlib, "import_module", missing)
    with pytest.raises(ImportError, match="has no NEZHA"):
        patch_transformers_nezha()
