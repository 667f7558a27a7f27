"""from_pretrained's report of newly initialized weights: each name once, resized ones with both shapes."""

from __future__ import annotations

import logging

import torch
from _nezha_helpers import SMALL

import nezha_kernels.models as ours


def test_mismatched_weights_are_named_once_with_their_shapes(tmp_path, caplog):
    torch.manual_seed(0)
    ours.NezhaForSequenceClassification(ours.NezhaConfig(**SMALL, num_labels=3)).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = ours.NezhaForSequenceClassification.from_pretrained(
            tmp_path, num_labels=7, ignore_mismatched_sizes=True, output_loading_info=True
        )
    assert model.classifier.out_features == 7
    assert sorted(k for k, _, _ in info.mismatched_keys) == ["classifier.bias", "classifier.weight"]
    text = caplog.text
    hidden = SMALL["hidden_size"]
    for key in ("classifier.weight", "classifier.bias"):
        assert text.count(key) == 1, text
    assert f"- classifier.weight: found shape [3, {hidden}] in the checkpoint and [7, {hidden}] in the model" in text
    assert "because the shapes did not match" in text
    # nothing else is missing, so the plain "newly initialized: [...]" list is not printed at all
    assert "newly initialized: [" not in text


def test_missing_and_mismatched_weights_are_reported_apart(tmp_path, caplog):
    """A base checkpoint into a task head with another vocab size: the head is missing, the embedding resized."""
    torch.manual_seed(1)
    ours.NezhaModel(ours.NezhaConfig(**SMALL)).save_pretrained(tmp_path)
    vocab = SMALL["vocab_size"] + 5
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        ours.NezhaForSequenceClassification.from_pretrained(tmp_path, vocab_size=vocab, ignore_mismatched_sizes=True)
    missing, resized = [r.getMessage() for r in caplog.records if "newly initialized" in r.getMessage()]
    assert "classifier.weight" in missing and "word_embeddings" not in missing
    assert "nezha.embeddings.word_embeddings.weight: found shape" in resized and "classifier" not in resized
    assert caplog.text.count("nezha.embeddings.word_embeddings.weight") == 1
