"""Checkpoint IO: Hugging Face-saved directories load here, ours load in transformers 4.57.6."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from _nezha_helpers import SMALL, batch, hf_module, max_diff, randomize_, twin_models

import nezha_kernels.models as ours

transformers = hf_module()
TOL = 1e-5  # float32 max abs difference of outputs


def _outputs(model, seed=7, length=19):
    """The first output on a padded batch; ours with padding_free=False: transformers' values at padding too."""
    ids, mask, types = batch(seed=seed, length=length)
    extra = {"padding_free": False} if isinstance(model, ours.NezhaPreTrainedModel) else {}
    with torch.no_grad():
        return model(ids, attention_mask=mask, token_type_ids=types, **extra)[0]


def _hf(name, seed=0, **overrides):
    torch.manual_seed(seed)
    model = getattr(transformers, name)(transformers.NezhaConfig(**{**SMALL, **overrides})).eval()
    randomize_(model, torch.Generator().manual_seed(seed + 1))
    return model


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("name", ["NezhaForSequenceClassification", "NezhaForMaskedLM"])
def test_hf_saved_directory_loads(tmp_path, name, safe, caplog):
    hf = _hf(name, seed=1, num_labels=3)
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = getattr(ours, name).from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == [] and info.mismatched_keys == []
    assert "newly initialized" not in caplog.text
    assert not model.training
    assert model.config.num_labels == 3 and model.config.id2label[2] == "LABEL_2"
    assert max_diff(_outputs(model), _outputs(hf)) <= TOL
    if name == "NezhaForMaskedLM":
        assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_hf_checkpoint_loads(tmp_path, safe):
    hf = _hf("NezhaForPreTraining", seed=2)
    hf.save_pretrained(tmp_path, safe_serialization=safe, max_shard_size="40KB")
    index = tmp_path / ("model.safetensors.index.json" if safe else "pytorch_model.bin.index.json")
    assert index.is_file()
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    model = ours.NezhaForPreTraining.from_pretrained(tmp_path)
    assert max_diff(_outputs(model), _outputs(hf)) <= TOL


def _write_old_style_checkpoint(directory, hf_model):
    """A pytorch_model.bin as early transformers NEZHA versions wrote it, position buffers included."""
    hf_model.config.save_pretrained(directory)
    state = dict(hf_model.state_dict())
    g = torch.Generator().manual_seed(9)
    head = SMALL["hidden_size"] // SMALL["num_attention_heads"]
    for layer in range(SMALL["num_hidden_layers"]):
        key = f"nezha.encoder.layer.{layer}.attention.self.relative_positions_encoding.positions_encoding"
        state[key] = torch.randn(SMALL["max_position_embeddings"], SMALL["max_position_embeddings"], head, generator=g)
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    return state


def test_old_relative_positions_encoding_keys_are_dropped(tmp_path):
    hf = _hf("NezhaForTokenClassification", seed=3)
    _write_old_style_checkpoint(tmp_path, hf)
    model, info = ours.NezhaForTokenClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert len(info.dropped_keys) == SMALL["num_hidden_layers"]
    assert all("relative_positions_encoding" in k for k in info.dropped_keys)
    assert info.unexpected_keys == [] and info.missing_keys == []
    assert max_diff(_outputs(model), _outputs(hf)) <= TOL


def test_base_checkpoint_into_task_model_reports_new_head(tmp_path, caplog):
    """No ``nezha.`` prefix in a base checkpoint: added; the classifier is reported as newly initialized."""
    hf_base = _hf("NezhaModel", seed=4)
    hf_base.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = ours.NezhaForSequenceClassification.from_pretrained(
            tmp_path, output_loading_info=True, num_labels=5
        )
    assert info.missing_keys == ["classifier.bias", "classifier.weight"]
    assert "newly initialized" in caplog.text and "classifier.weight" in caplog.text
    assert model.classifier.out_features == 5
    base_state = hf_base.state_dict()
    for key, value in model.nezha.state_dict().items():
        assert torch.equal(value, base_state[key]), key
    # The new head follows the init rule: N(0, initializer_range) weights, zero bias.
    assert model.classifier.bias.abs().max() == 0
    assert 0.005 < model.classifier.weight.std().item() < 0.05


def test_task_checkpoint_into_base_model_strips_prefix(tmp_path, caplog):
    hf = _hf("NezhaForPreTraining", seed=5)
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = ours.NezhaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info.missing_keys == []
    assert info.unexpected_keys and all(k.startswith("cls.") for k in info.unexpected_keys)
    assert "were not used" in caplog.text
    with torch.no_grad():
        ids, mask, types = batch(seed=6, length=12)
        want = hf.nezha(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = model(ids, attention_mask=mask, token_type_ids=types, padding_free=False).last_hidden_state
    assert max_diff(got, want) <= TOL


@pytest.mark.parametrize("shard", [None, "30KB"])
@pytest.mark.parametrize("name", ["NezhaForMaskedLM", "NezhaForQuestionAnswering", "NezhaModel"])
def test_our_save_loads_in_transformers(tmp_path, name, shard):
    _, model = twin_models(name, seed=7)
    model.save_pretrained(tmp_path, max_shard_size=shard)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "nezha" and config["architectures"] == [name]
    assert (tmp_path / ("model.safetensors" if shard is None else "model.safetensors.index.json")).is_file()
    hf, info = getattr(transformers, name).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert max_diff(_outputs(hf.eval()), _outputs(model)) <= TOL
    again = getattr(ours, name).from_pretrained(tmp_path)
    assert max_diff(_outputs(again), _outputs(model)) <= TOL
    assert again.config.attn_backend == model.config.attn_backend


def test_pickle_save_and_pruned_model_round_trip(tmp_path):
    _, model = twin_models("NezhaForSequenceClassification", seed=8)
    model.prune_heads({0: [1, 3], 1: [0]})
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "pytorch_model.bin").is_file() and not (tmp_path / "model.safetensors").exists()
    again = ours.NezhaForSequenceClassification.from_pretrained(tmp_path)
    assert again.config.pruned_heads == {0: [1, 3], 1: [0]}
    assert again.nezha.encoder.layer[0].attention.self.num_attention_heads == 2
    assert max_diff(_outputs(again), _outputs(model)) <= TOL


def test_from_pretrained_options(tmp_path):
    hf = _hf("NezhaModel", seed=10)
    hf.save_pretrained(tmp_path)
    model = ours.NezhaModel.from_pretrained(
        tmp_path, attn_backend="reference", torch_dtype=torch.bfloat16, device="cpu", layer_norm_eps=1e-7
    )
    assert model.config.attn_backend == "reference" and model.config.layer_norm_eps == 1e-7
    assert model.dtype == torch.bfloat16
    out = _outputs(model)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert max_diff(out.float(), _outputs(hf)) < 0.1


def test_config_round_trip_keeps_unknown_keys(tmp_path):
    hf_config = transformers.NezhaConfig(**SMALL, num_labels=4, my_custom_key={"a": [1, 2]})
    hf_config.save_pretrained(tmp_path)
    config = ours.NezhaConfig.from_pretrained(tmp_path)
    assert config.my_custom_key == {"a": [1, 2]}
    assert config.num_labels == 4 and config.id2label == {i: f"LABEL_{i}" for i in range(4)}
    assert config.max_relative_position == SMALL["max_relative_position"] and config.attn_backend == "auto"
    config.save_pretrained(tmp_path / "again")
    back = ours.NezhaConfig.from_pretrained(tmp_path / "again")
    assert back == config
    assert transformers.NezhaConfig.from_pretrained(tmp_path / "again").my_custom_key == {"a": [1, 2]}
    defaults = ours.NezhaConfig()
    assert (
        defaults.vocab_size,
        defaults.hidden_size,
        defaults.max_relative_position,
        defaults.hidden_act,
        defaults.classifier_dropout,
        defaults.bos_token_id,
        defaults.eos_token_id,
    ) == (21128, 768, 64, "gelu", 0.1, 2, 3)


# ---- errors -----------------------------------------------------------------------------------------


def test_missing_directory_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ours.NezhaModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ours.NezhaModel.from_pretrained(tmp_path)
    ours.NezhaConfig(**SMALL).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights.*model.safetensors"):
        ours.NezhaModel.from_pretrained(tmp_path)


def test_missing_shard_is_named(tmp_path):
    _hf("NezhaModel", seed=11).save_pretrained(tmp_path, max_shard_size="40KB")
    shard = sorted(p for p in os.listdir(tmp_path) if p.startswith("model-"))[0]
    os.remove(tmp_path / shard)
    with pytest.raises(FileNotFoundError, match=shard):
        ours.NezhaModel.from_pretrained(tmp_path)


def test_shape_mismatch_is_a_clear_error(tmp_path):
    _hf("NezhaForSequenceClassification", seed=12).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"word_embeddings.weight: checkpoint \[97, 48\] vs model \[120, 48\]"):
        ours.NezhaForSequenceClassification.from_pretrained(tmp_path, vocab_size=120)
    model, info = ours.NezhaForSequenceClassification.from_pretrained(
        tmp_path, num_labels=7, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert [k for k, _, _ in info.mismatched_keys] == ["classifier.bias", "classifier.weight"]
    assert model.classifier.out_features == 7


def test_unsafe_pickle_is_refused(tmp_path):
    ours.NezhaConfig(**SMALL).save_pretrained(tmp_path)
    torch.save({"weights": torch.ones(2), "evil": object.__new__(_NotATensor)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        ours.NezhaModel.from_pretrained(tmp_path)


class _NotATensor:
    pass
