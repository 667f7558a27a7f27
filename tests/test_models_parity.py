"""Numerical parity of nezha_kernels.models with Hugging Face transformers 4.57.6 NEZHA (random weights).

The models here are built with ``padding_free=False``: transformers' values at every position, padded ones
too. The padding-free default (zero hidden states at padded positions) is compared with transformers at
real tokens in test_models_padding_free.py.
"""

from __future__ import annotations

import _nezha_helpers
import pytest
import torch
from _nezha_helpers import CLASS_NAMES, SMALL, batch, hf_module, max_diff

hf_module()

# One tolerance table (max abs difference vs transformers). float32: both compute the same math in
# fp32 with a different operation order. bfloat16: see test_bfloat16_close_to_hf.
TOL = {torch.float32: 1e-5}
BACKENDS = ("reference", "torch")


def twin_models(name: str, seed: int = 0, backend: str = "torch", **overrides):
    """_nezha_helpers.twin_models with padding_free=False (see the module docstring)."""
    return _nezha_helpers.twin_models(name, seed, backend, **{"padding_free": False, **overrides})


def _kwargs_for(name: str, ids, mask, types, seed: int = 0):
    """Model inputs plus labels of the right kind for each class."""
    g = torch.Generator().manual_seed(seed + 100)
    b, length = ids.shape
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if name in ("NezhaForPreTraining", "NezhaForMaskedLM"):
        labels = torch.randint(0, SMALL["vocab_size"], (b, length), generator=g)
        labels[:, ::3] = -100
        kw["labels"] = labels
    if name == "NezhaForPreTraining":
        kw["next_sentence_label"] = torch.randint(0, 2, (b,), generator=g)
    if name == "NezhaForNextSentencePrediction":
        kw["labels"] = torch.randint(0, 2, (b,), generator=g)
    if name == "NezhaForSequenceClassification":
        kw["labels"] = torch.randint(0, 2, (b,), generator=g)
    if name == "NezhaForTokenClassification":
        labels = torch.randint(0, 2, (b, length), generator=g)
        labels[mask == 0] = -100
        kw["labels"] = labels
    if name == "NezhaForQuestionAnswering":
        # One position beyond L (clamped to L and ignored), one valid.
        kw["start_positions"] = torch.tensor([3, length + 5, 0][:b])
        kw["end_positions"] = torch.tensor([7, 2, length + 9][:b])
    if name == "NezhaForMultipleChoice":
        choices = 2
        kw = {k: v.unsqueeze(1).expand(b, choices, length).contiguous() for k, v in kw.items()}
        kw["input_ids"] = torch.randint(1, SMALL["vocab_size"], (b, choices, length), generator=g)
        kw["labels"] = torch.randint(0, choices, (b,), generator=g)
    return kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", CLASS_NAMES)
def test_every_class_matches_hf(name, backend):
    """Outputs, losses, hidden states and attention weights, with padding (a fully masked row too)."""
    hf, model = twin_models(name, seed=3, backend=backend)
    ids, mask, types = batch(seed=5, length=29)
    kw = _kwargs_for(name, ids, mask, types)
    with torch.no_grad():
        want = hf(**kw, output_attentions=True, output_hidden_states=True)
        got = model(**kw, output_attentions=True, output_hidden_states=True)
    assert list(got.keys()) == [k for k in want.keys() if k not in ("past_key_values", "cross_attentions")]
    for key in got.keys():
        assert max_diff(got[key], want[key]) <= TOL[torch.float32], key
    if "loss" in want:
        assert got.loss.item() > 0 and abs(got.loss.item() - want.loss.item()) <= TOL[torch.float32]
    # The plain path (no weights requested) uses the backend's own kernel.
    with torch.no_grad():
        fast = model(**kw)
    first = next(k for k in fast.keys() if k != "loss")
    assert max_diff(fast[first], want[first]) <= TOL[torch.float32]


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_strict_state_dict_both_ways(name):
    """Our state dict has exactly HF's keys and shapes, and loads into HF strictly (no position buffer)."""
    transformers = hf_module()
    import nezha_kernels.models as ours

    model = getattr(ours, name)(ours.NezhaConfig(**SMALL))
    hf = getattr(transformers, name)(transformers.NezhaConfig(**SMALL))
    ours_sd, hf_sd = model.state_dict(), hf.state_dict()
    assert sorted(ours_sd) == sorted(hf_sd)
    assert all(ours_sd[k].shape == hf_sd[k].shape for k in ours_sd)
    assert not any("relative_positions" in k for k in ours_sd)
    assert not [n for n, _ in model.named_buffers()]
    hf.load_state_dict(ours_sd, strict=True)
    assert all(torch.equal(hf.state_dict()[k], v) for k, v in ours_sd.items())


def test_tuple_outputs_match_hf_layout():
    """return_dict=False: the same tuple entries, in the same order, as transformers."""
    for name in ("NezhaModel", "NezhaForMaskedLM", "NezhaForQuestionAnswering", "NezhaForPreTraining"):
        hf, model = twin_models(name, seed=11)
        ids, mask, types = batch(seed=12, length=17)
        kw = _kwargs_for(name, ids, mask, types)
        with torch.no_grad():
            want = hf(**kw, output_hidden_states=True, output_attentions=True, return_dict=False)
            got = model(**kw, output_hidden_states=True, output_attentions=True, return_dict=False)
        assert isinstance(got, tuple) and len(got) == len(want), name
        assert max_diff(got, want) <= TOL[torch.float32], name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", ["per_head", "per_layer"])
def test_head_mask(backend, shape):
    hf, model = twin_models("NezhaModel", seed=21, backend=backend)
    ids, mask, types = batch(seed=22, length=19)
    g = torch.Generator().manual_seed(23)
    if shape == "per_head":
        head_mask = torch.tensor([1.0, 0.0, 0.5, 1.0])
    else:
        head_mask = torch.rand(SMALL["num_hidden_layers"], SMALL["num_attention_heads"], generator=g)
        head_mask[0, 2] = 0.0
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, head_mask=head_mask, output_attentions=True)
        got = model(ids, attention_mask=mask, token_type_ids=types, head_mask=head_mask, output_attentions=True)
        plain = model(ids, attention_mask=mask, token_type_ids=types, head_mask=head_mask)
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL[torch.float32]
    assert max_diff(got.attentions, want.attentions) <= TOL[torch.float32]
    assert max_diff(plain.last_hidden_state, want.last_hidden_state) <= TOL[torch.float32]
    # The masked head's weights really are zero (post-head-mask weights are reported).
    layer = 0
    assert got.attentions[layer][:, 2 if shape == "per_layer" else 1].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_embeds_and_default_token_types(backend):
    hf, model = twin_models("NezhaModel", seed=31, backend=backend)
    g = torch.Generator().manual_seed(32)
    embeds = torch.randn(2, 13, SMALL["hidden_size"], generator=g)
    with torch.no_grad():
        want = hf(inputs_embeds=embeds)
        got = model(inputs_embeds=embeds)
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL[torch.float32]
    assert max_diff(got.pooler_output, want.pooler_output) <= TOL[torch.float32]


@pytest.mark.parametrize(
    "num_labels, labels, problem_type",
    [
        (1, torch.tensor([0.3, -1.2, 2.0]), "regression"),
        (3, torch.tensor([0, 2, 1]), "single_label_classification"),
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]), "multi_label_classification"),
        (3, torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 0.0]]), "regression"),
    ],
)
def test_sequence_classification_problem_types(num_labels, labels, problem_type):
    """problem_type picked on first use from num_labels / label dtype (or forced), loss as in HF."""
    forced = problem_type if labels.dim() == 2 and problem_type == "regression" else None
    hf, model = twin_models("NezhaForSequenceClassification", seed=41, num_labels=num_labels, problem_type=forced)
    ids, mask, types = batch(seed=42, length=11)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, labels=labels)
        got = model(ids, attention_mask=mask, token_type_ids=types, labels=labels)
    assert model.config.problem_type == hf.config.problem_type == problem_type
    assert abs(got.loss.item() - want.loss.item()) <= TOL[torch.float32]
    assert max_diff(got.logits, want.logits) <= TOL[torch.float32]


def _loss_of(out, weights):
    return (out.last_hidden_state * weights[0]).sum() + (out.pooler_output * weights[1]).sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_base_model_gradients_match_hf(backend):
    """Every parameter's gradient, for a padded batch with token types and a head_mask."""
    hf, model = twin_models("NezhaModel", seed=51, backend=backend)
    ids, mask, types = batch(seed=52, length=21)
    g = torch.Generator().manual_seed(53)
    weights = (torch.randn(3, 21, SMALL["hidden_size"], generator=g), torch.randn(3, SMALL["hidden_size"], generator=g))
    head_mask = torch.tensor([1.0, 0.7, 0.0, 1.0])
    _loss_of(hf(ids, attention_mask=mask, token_type_ids=types, head_mask=head_mask), weights).backward()
    _loss_of(model(ids, attention_mask=mask, token_type_ids=types, head_mask=head_mask), weights).backward()
    hf_grads = dict(hf.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        ref = hf_grads[name].grad
        assert p.grad is not None and ref is not None, name
        # Gradients reach ~30 here: the fp32 bound is 1e-5 per unit of the gradient's magnitude.
        assert max_diff(p.grad, ref) <= TOL[torch.float32] * max(1.0, ref.abs().max().item()), name
        checked += 1
    assert checked == len(hf_grads)
    assert hf_grads["encoder.layer.0.attention.self.query.weight"].grad.abs().max() > 1e-3


def test_head_model_gradients_match_hf():
    """Loss gradients of a task model (MLM with tied decoder) reach the tied embedding identically."""
    hf, model = twin_models("NezhaForMaskedLM", seed=61)
    ids, mask, types = batch(seed=62, length=15)
    kw = _kwargs_for("NezhaForMaskedLM", ids, mask, types)
    hf(**kw).loss.backward()
    model(**kw).loss.backward()
    name = "nezha.embeddings.word_embeddings.weight"
    ref = hf.get_parameter(name).grad
    assert max_diff(model.get_parameter(name).grad, ref) <= TOL[torch.float32] * max(1.0, ref.abs().max().item())
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight


def test_decoder_config_is_causal_like_hf():
    """is_decoder=True: causal self-attention, the same outputs and the same cache contents as HF."""
    hf, model = twin_models("NezhaModel", seed=71, is_decoder=True)
    ids, mask, types = batch(seed=72, length=16, fully_masked=False)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, use_cache=True)
        got = model(ids, attention_mask=mask, token_type_ids=types, use_cache=True)
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL[torch.float32]
    want_cache = tuple(tuple(layer) for layer in want.past_key_values)
    assert max_diff(got.past_key_values, want_cache) <= TOL[torch.float32]


def test_bfloat16_close_to_hf():
    """bfloat16: HF runs softmax in bf16, the op in fp32, so compare both to the float32 result.

    Our bf16 error must not exceed transformers' own bf16 error by more than 50% + 0.02 (absolute,
    on LayerNorm-scale outputs of magnitude ~1).
    """
    hf, model = twin_models("NezhaModel", seed=81)
    ids, mask, types = batch(seed=82, length=25)
    with torch.no_grad():
        exact = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        hf_bf16 = hf.to(torch.bfloat16)(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours_bf16 = model.to(torch.bfloat16)(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert ours_bf16.dtype == torch.bfloat16
    hf_err, our_err = max_diff(hf_bf16, exact), max_diff(ours_bf16, exact)
    assert our_err <= 1.5 * hf_err + 0.02, (our_err, hf_err)
