"""Shared helpers of the model tests: small configs and Hugging Face twins with random weights."""

from __future__ import annotations

import torch

import nezha_kernels.models as ours

# Small enough that the three model test files run in well under two minutes on 2 cores. HF builds a
# [max_position_embeddings, max_position_embeddings, head_dim] buffer per layer, so keep that small too.
SMALL = dict(
    vocab_size=97,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=72,
    max_position_embeddings=40,
    max_relative_position=6,
    type_vocab_size=3,
)

CLASS_NAMES = (
    "NezhaModel",
    "NezhaForPreTraining",
    "NezhaForMaskedLM",
    "NezhaForNextSentencePrediction",
    "NezhaForSequenceClassification",
    "NezhaForMultipleChoice",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
)


def hf_module():
    import pytest

    return pytest.importorskip("transformers", reason="transformers==4.57.6 is the parity oracle")


def randomize_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Perturb every parameter so LayerNorm weights, biases and the padding row are not 1 / 0."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.05)


def twin_models(name: str, seed: int = 0, backend: str = "torch", **overrides):
    """(hf_model, our_model) in eval mode with identical random weights (loaded strictly)."""
    transformers = hf_module()
    kw = {**SMALL, **overrides}
    torch.manual_seed(seed)
    hf = getattr(transformers, name)(transformers.NezhaConfig(**kw)).eval()
    randomize_(hf, torch.Generator().manual_seed(seed + 1))
    model = getattr(ours, name)(ours.NezhaConfig(**kw, attn_backend=backend)).eval()
    model.load_state_dict(hf.state_dict(), strict=True)
    return hf, model


def batch(seed: int = 0, b: int = 3, length: int = 23, vocab: int = SMALL["vocab_size"], fully_masked: bool = True):
    """input_ids, attention_mask (ragged padding, one fully masked row), token_type_ids: [B, L] each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for i in range(b):
        mask[i, length - 1 - 2 * i * (length // 7) :] = 0
        mask[i, 0] = 1
    if fully_masked and b > 1:
        mask[-1] = 0
    types = torch.randint(0, SMALL["type_vocab_size"], (b, length), generator=g)
    return ids, mask, types


def max_diff(a, b) -> float:
    """Largest |a - b| over (nested tuples of) tensors; structures must match."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape, (getattr(a, "shape", a), getattr(b, "shape", b))
        return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0
    if a is None:
        assert b is None
        return 0.0
    assert isinstance(b, (tuple, list)) and len(a) == len(b), (type(a), type(b), len(a), len(b))
    return max((max_diff(x, y) for x, y in zip(a, b, strict=True)), default=0.0)
