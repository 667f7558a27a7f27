"""transformers API parity of the NEZHA models and config (issue 21 items 1-11), each against transformers
4.57.6's own NEZHA: what works there works here, with the same results and exception types."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from _nezha_helpers import SMALL, batch, hf_module, max_diff, twin_models

import nezha_kernels.models as ours

transformers = hf_module()
TOL = 1e-5  # fp32 max abs difference against transformers


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---- 1: config.torchscript and torch.jit.trace ---------------------------------------------------------


def test_torchscript_config_traces_like_transformers():
    """torchscript=True: tuple outputs, untied (copied) MLM decoder, and jit.trace passes its own check."""
    hf, model = twin_models("NezhaForMaskedLM", seed=1, torchscript=True)
    ids, mask, _ = batch(seed=2, length=9, fully_masked=False)
    fresh = ours.NezhaForMaskedLM(ours.NezhaConfig(**SMALL, torchscript=True))
    decoder, embeddings = fresh.cls.predictions.decoder.weight, fresh.nezha.embeddings.word_embeddings.weight
    assert decoder is not embeddings and torch.equal(decoder, embeddings)  # copied, as transformers does
    with torch.no_grad():
        want = hf(ids, mask)
        assert isinstance(model(ids, mask), tuple) and isinstance(want, tuple)
    traced = _quiet(torch.jit.trace, model, (ids, mask))  # check_trace=True: the tracer's own check
    ids2, mask2, _ = batch(seed=3, length=9, fully_masked=False)
    with torch.no_grad():
        got, eager = traced(ids2, mask2), model(ids2, mask2)
        keep = mask2.bool()
        assert max_diff(got[0], eager[0]) <= TOL
        assert max_diff(model(ids, mask)[0][mask.bool()], want[0][mask.bool()]) <= TOL
    assert keep.sum() < keep.numel()  # padded, so the dense and packed paths both ran


# ---- 2: PretrainedConfig attributes ---------------------------------------------------------------------


def test_config_has_the_generic_attributes(tmp_path):
    ours_config, hf_config = ours.NezhaConfig(**SMALL), transformers.NezhaConfig(**SMALL)
    for key in ("is_encoder_decoder", "torchscript", "name_or_path"):
        assert getattr(ours_config, key) == getattr(hf_config, key), key
    half = ours.NezhaConfig(torch_dtype="float16")
    assert half.torch_dtype is torch.float16 is _quiet(transformers.NezhaConfig, torch_dtype="float16").torch_dtype
    assert half.dtype is torch.float16 and ours.NezhaConfig(dtype="bfloat16").torch_dtype is torch.bfloat16
    assert json.loads(half.to_json_string(use_diff=False))["torch_dtype"] == "float16"
    with pytest.raises(ValueError, match="torch_dtype must name a torch dtype"):
        ours.NezhaConfig(torch_dtype="float17")
    ours_config.save_pretrained(tmp_path)
    assert ours.NezhaConfig.from_pretrained(tmp_path).name_or_path == str(tmp_path)
    assert "name_or_path" not in json.loads((tmp_path / "config.json").read_text())


# ---- 3: outputs iterate like transformers' ModelOutput ------------------------------------------------


def test_outputs_iterate_over_their_keys():
    hf, model = twin_models("NezhaForSequenceClassification", seed=4)
    ids, mask, types = batch(seed=5, length=7, fully_masked=False)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
        got = model(ids, attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    assert list(got) == list(want) == ["loss", "logits"]
    assert list(got.keys()) == list(want.keys())
    assert dict(got).keys() == dict(want).keys() and torch.equal(dict(got)["logits"], got.logits)
    assert [k for k in got] == ["loss", "logits"] and len(got) == len(want) == 2
    assert max_diff(got.to_tuple(), want.to_tuple()) <= TOL and max_diff(got[1], want[1]) <= TOL


# ---- 4, 8, 9: from_pretrained --------------------------------------------------------------------------


def test_loading_info_is_a_dict_like_transformers(tmp_path):
    hf, model = twin_models("NezhaModel", seed=6)
    hf.save_pretrained(tmp_path)
    _, want = transformers.NezhaModel.from_pretrained(tmp_path, output_loading_info=True)
    _, got = ours.NezhaModel.from_pretrained(tmp_path, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert list(got[key]) == list(want[key]), key
    assert set(want) <= set(got) and got.missing_keys == got["missing_keys"]


def test_from_pretrained_none_with_config_and_state_dict():
    hf, model = twin_models("NezhaModel", seed=7)
    ids, mask, types = batch(seed=8, length=11)
    state = hf.state_dict()
    want = transformers.NezhaModel.from_pretrained(None, config=hf.config, state_dict=state)
    got = ours.NezhaModel.from_pretrained(None, config=ours.NezhaConfig(**SMALL), state_dict=state)
    with torch.no_grad():
        a = got(ids, attention_mask=mask, token_type_ids=types, padding_free=False).last_hidden_state
        b = want(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(a, b) <= TOL
    with pytest.raises(ValueError, match="needs both config= and state_dict="):
        ours.NezhaModel.from_pretrained(None, config=ours.NezhaConfig(**SMALL))


def test_config_subfolder_and_diff_json(tmp_path):
    transformers.NezhaConfig(**SMALL, num_labels=3).save_pretrained(tmp_path / "sub")
    want = transformers.NezhaConfig.from_pretrained(tmp_path, subfolder="sub")
    got = ours.NezhaConfig.from_pretrained(tmp_path, subfolder="sub")
    assert got.hidden_size == want.hidden_size == SMALL["hidden_size"] and got.num_labels == want.num_labels == 3
    hf, _ = twin_models("NezhaForSequenceClassification", seed=16, num_labels=3)
    hf.save_pretrained(tmp_path / "model")
    model = ours.NezhaForSequenceClassification.from_pretrained(tmp_path, subfolder="model")
    hf_again = transformers.NezhaForSequenceClassification.from_pretrained(tmp_path, subfolder="model")
    assert torch.equal(model.classifier.weight, hf_again.classifier.weight)
    config = ours.NezhaConfig(**SMALL, is_decoder=True)
    full, diff = json.loads(config.to_json_string(use_diff=False)), json.loads(config.to_json_string(use_diff=True))
    hf_diff = json.loads(transformers.NezhaConfig(**SMALL, is_decoder=True).to_json_string(use_diff=True))
    assert diff["is_decoder"] is True and "output_attentions" in full and "output_attentions" not in diff
    assert "output_attentions" not in hf_diff and "is_decoder" in hf_diff
    assert set(SMALL) <= set(diff) and ours.NezhaConfig(**diff) == config


def test_mismatched_sizes_raise_runtime_error_unless_ignored(tmp_path):
    hf, _ = twin_models("NezhaModel", seed=9)
    hf.save_pretrained(tmp_path)
    vocab = SMALL["vocab_size"] + 4
    with pytest.raises(RuntimeError):
        transformers.NezhaModel.from_pretrained(tmp_path, vocab_size=vocab)
    with pytest.raises(RuntimeError, match="word_embeddings.weight"):
        ours.NezhaModel.from_pretrained(tmp_path, vocab_size=vocab)
    model, info = ours.NezhaModel.from_pretrained(
        tmp_path, vocab_size=vocab, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert [k for k, _, _ in info["mismatched_keys"]] == ["embeddings.word_embeddings.weight"]
    assert model.embeddings.word_embeddings.num_embeddings == vocab


# ---- 5, 6: where configs are validated ----------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, exc",
    [(dict(hidden_size=37), ValueError), (dict(pruned_heads={"a": 1}), TypeError), (dict(hidden_size=0), None)],
    ids=["bad_head_split", "bad_pruned_heads", "zero_hidden"],
)
def test_configs_validate_when_the_model_is_built(overrides, exc):
    """transformers accepts these configs and refuses the model: so do we, with its exception type (for
    hidden_size=0 transformers fails with a ZeroDivisionError deep in its code; ours says ValueError)."""
    kw = {**SMALL, **overrides}
    hf_config, config = transformers.NezhaConfig(**kw), ours.NezhaConfig(**kw)  # both accept the config
    assert config.to_json_string()  # and can print it
    with pytest.raises(exc or ZeroDivisionError):
        transformers.NezhaModel(hf_config)
    with pytest.raises(exc or ValueError, match="hidden_size|pruned_heads"):
        ours.NezhaModel(config)


def test_pruned_heads_with_negative_layer_key_builds_like_transformers():
    kw = {**SMALL, "pruned_heads": {-1: [0, 2]}}
    torch.manual_seed(0)
    hf = transformers.NezhaModel(transformers.NezhaConfig(**kw)).eval()
    model = ours.NezhaModel(ours.NezhaConfig(**kw)).eval()
    last = SMALL["num_hidden_layers"] - 1
    assert hf.encoder.layer[last].attention.self.num_attention_heads == 2
    assert model.encoder.layer[last].attention.self.num_attention_heads == 2
    assert model.encoder.layer[0].attention.self.num_attention_heads == SMALL["num_attention_heads"]
    assert model.config.pruned_heads == {last: [0, 2]}
    model.load_state_dict(hf.state_dict(), strict=True)
    ids, mask, types = batch(seed=10, length=9)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types, padding_free=False).last_hidden_state
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(got, want) <= TOL


# ---- 7: negative head indices ---------------------------------------------------------------------------


def test_prune_negative_head_index_prunes_the_last_head():
    hf, model = twin_models("NezhaModel", seed=11, padding_free=False)
    hf.prune_heads({0: [-1]})
    model.prune_heads({0: [-1]})
    assert model.encoder.layer[0].attention.self.num_attention_heads == 3
    assert model.config.pruned_heads == {0: [SMALL["num_attention_heads"] - 1]}
    ids, mask, types = batch(seed=12, length=9)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(got, want) <= TOL
    with pytest.raises(ValueError, match=r"out of range \[-4, 4\)"):
        model.prune_heads({1: [-5]})


# ---- 10: gradient_checkpointing in old configs ---------------------------------------------------------


def test_gradient_checkpointing_config_flag_is_honoured(tmp_path):
    kw = {**SMALL, "gradient_checkpointing": True}
    hf = _quiet(transformers.NezhaModel, _quiet(transformers.NezhaConfig, **kw))
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        model = ours.NezhaModel(ours.NezhaConfig(**kw))
    assert model.is_gradient_checkpointing and hf.is_gradient_checkpointing
    assert not hasattr(model.config, "gradient_checkpointing")
    assert "gradient_checkpointing" not in json.loads(model.config.to_json_string(use_diff=False))
    assert not ours.NezhaModel(ours.NezhaConfig(**SMALL)).is_gradient_checkpointing


# ---- 11: resize_token_embeddings -----------------------------------------------------------------------


def test_resize_updates_vocab_size_and_pad_to_multiple_of_error():
    hf, model = twin_models("NezhaForMaskedLM", seed=13)
    _quiet(hf.resize_token_embeddings, 121, pad_to_multiple_of=8)
    model.resize_token_embeddings(121, pad_to_multiple_of=8)
    assert model.config.vocab_size == hf.config.vocab_size == 128
    assert model.vocab_size == hf.vocab_size == 128
    assert model.get_output_embeddings().weight.shape == hf.get_output_embeddings().weight.shape
    for target in (hf, model):
        with pytest.raises(ValueError, match="which is not an?d? integer"):
            target.resize_token_embeddings(130, pad_to_multiple_of=2.5)
