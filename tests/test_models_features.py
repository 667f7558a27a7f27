"""Model features: gradient checkpointing, resize, prune, long inputs, backend switch, KV cache, bad input."""

from __future__ import annotations

import time

import pytest
import torch
from _nezha_helpers import SMALL, batch, hf_module, max_diff, randomize_, twin_models

import nezha_kernels.models as ours

TOL = 1e-5  # float32 max abs difference


def _model(name="NezhaModel", seed=0, **overrides):
    torch.manual_seed(seed)
    model = getattr(ours, name)(ours.NezhaConfig(**{**SMALL, **overrides}))
    randomize_(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


# ---- gradient checkpointing ---------------------------------------------------------------------


def _train_step(model, ids, mask, labels):
    model.zero_grad()
    torch.manual_seed(1234)  # dropout (attention and hidden) draws from the default generator
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradient_checkpointing_same_loss_and_grads_with_dropout():
    model = _model("NezhaForSequenceClassification", seed=1, num_labels=3, attention_probs_dropout_prob=0.2)
    model.train()
    ids, mask, _ = batch(seed=2, length=21, fully_masked=False)
    labels = torch.tensor([0, 2, 1])
    loss_plain, grads_plain = _train_step(model, ids, mask, labels)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    loss_ckpt, grads_ckpt = _train_step(model, ids, mask, labels)
    assert torch.equal(loss_plain, loss_ckpt)
    for name, g in grads_plain.items():
        assert max_diff(grads_ckpt[name], g) <= 1e-6 * max(1.0, g.abs().max().item()), name
    # Dropout really is active: another seed gives another loss.
    torch.manual_seed(99)
    assert model(ids, attention_mask=mask, labels=labels).loss.item() != loss_plain.item()
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


# ---- resize / prune -----------------------------------------------------------------------------


def test_resize_token_embeddings_grow_and_shrink():
    model = _model("NezhaForMaskedLM", seed=3)
    old_weight = model.get_input_embeddings().weight.detach().clone()
    old_bias = model.cls.predictions.bias.detach().clone()
    emb = model.resize_token_embeddings(120, pad_to_multiple_of=8)
    assert emb.num_embeddings == 120 and model.config.vocab_size == 120
    assert torch.equal(emb.weight[:97], old_weight)
    assert torch.allclose(emb.weight[97:], old_weight.mean(0).expand(23, -1))
    assert model.cls.predictions.decoder.weight is emb.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    assert torch.equal(model.cls.predictions.bias[:97], old_bias)
    ids = torch.tensor([[1, 5, 119, 100, 3]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 5, 120)
    # Tied decoder: scores of the new tokens follow from the new embedding rows (not zero, not random).
    model.resize_token_embeddings(50)
    assert model.get_input_embeddings().weight.shape == (50, SMALL["hidden_size"])
    assert torch.equal(model.get_input_embeddings().weight, old_weight[:50])
    assert model.cls.predictions.bias.shape == (50,)
    with pytest.raises(ValueError, match="new_num_tokens"):
        model.resize_token_embeddings(0)


def test_prune_heads_matches_hf_and_head_mask():
    hf_module()
    hf, model = twin_models("NezhaModel", seed=4, padding_free=False)  # HF values at padded positions too
    ids, mask, types = batch(seed=5, length=17)
    with torch.no_grad():
        masked = model(
            ids,
            attention_mask=mask,
            token_type_ids=types,
            head_mask=torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]]),
        ).last_hidden_state
    model.prune_heads({0: [1, 3], 1: [0]})
    hf.prune_heads({0: [1, 3], 1: [0]})
    assert model.encoder.layer[0].attention.self.query.out_features == 2 * SMALL["hidden_size"] // 4
    assert model.config.pruned_heads == {0: [1, 3], 1: [0]}
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(got, want) <= TOL
    assert max_diff(got, masked) <= TOL  # pruning a head == masking it out
    model.prune_heads({0: [1]})  # already pruned: no-op
    assert model.encoder.layer[0].attention.self.num_attention_heads == 2
    model.prune_heads({0: [0]})  # original numbering, after earlier pruning
    assert model.encoder.layer[0].attention.self.num_attention_heads == 1
    with pytest.raises(ValueError, match="every head"):
        model.prune_heads({0: [2]})
    with pytest.raises(ValueError, match="layer 5"):
        model.prune_heads({5: [0]})


# ---- long inputs, backends --------------------------------------------------------------------


def test_longer_than_max_position_embeddings():
    """No absolute positions: 3x max_position_embeddings works and matches HF built with a larger buffer."""
    transformers = hf_module()
    length = 3 * SMALL["max_position_embeddings"] + 7
    model = _model(seed=6, attn_backend="torch", padding_free=False)
    big = {**SMALL, "max_position_embeddings": length}
    hf = transformers.NezhaModel(transformers.NezhaConfig(**big)).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    ids, mask, types = batch(seed=7, length=length, b=2)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert got.shape == (2, length, SMALL["hidden_size"])
    assert max_diff(got, want) <= TOL


def test_backend_switch_on_live_model():
    from nezha_kernels import use_backend

    model = _model(seed=8, attn_backend="reference")
    ids, mask, types = batch(seed=9, length=15)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        model.set_attn_backend("torch")
        fast = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        model.set_attn_backend("auto")
        with use_backend("reference"):
            auto = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert model.config.attn_backend == "auto"
    assert max_diff(fast, ref) <= TOL and max_diff(auto, ref) == 0.0
    with pytest.raises(ValueError, match="attn_backend"):
        model.set_attn_backend("fastest")
    if not torch.cuda.is_available():
        model.config.attn_backend = "cuda"
        with pytest.raises(ValueError, match="cuda"):
            model(ids)


def test_kv_cache_decoding_equals_full_forward():
    """Decoder with past_key_values: feeding tokens one by one gives the full causal forward (HF's is broken)."""
    model = _model(seed=10, is_decoder=True)
    ids, _, types = batch(seed=11, length=14, b=2, fully_masked=False)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding in the second sequence
    with torch.no_grad():
        full = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        prefix = 9
        out = model(ids[:, :prefix], attention_mask=mask[:, :prefix], token_type_ids=types[:, :prefix])
        steps, past = [out.last_hidden_state], out.past_key_values
        for t in range(prefix, ids.shape[1]):
            out = model(
                ids[:, t : t + 1],
                attention_mask=mask[:, : t + 1],
                token_type_ids=types[:, t : t + 1],
                past_key_values=past,
            )
            steps.append(out.last_hidden_state)
            past = out.past_key_values
    assert past[0][0].shape[2] == ids.shape[1]
    # A padded query with every visible key masked attends uniformly to all keys of its call, so the
    # padded positions differ between the two ways by design; every real token must agree.
    real = mask.bool()
    assert max_diff(torch.cat(steps, dim=1)[real], full[real]) <= TOL
    assert max_diff(torch.cat(steps, dim=1)[0], full[0]) <= TOL


def test_cross_attention_matches_hf_at_equal_lengths():
    """add_cross_attention: HF only runs when decoder and encoder lengths agree; there we must match."""
    hf, model = twin_models(
        "NezhaModel", seed=12, is_decoder=True, add_cross_attention=True, padding_free=False
    )  # HF values at padded positions too
    ids, mask, types = batch(seed=13, length=11, fully_masked=False)
    g = torch.Generator().manual_seed(14)
    enc = torch.randn(3, 11, SMALL["hidden_size"], generator=g)
    enc_mask = torch.ones(3, 11, dtype=torch.long)
    enc_mask[0, 7:] = 0
    with torch.no_grad():
        want = hf(
            ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, output_attentions=True
        )
        got = model(
            ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, output_attentions=True
        )
        other_len = model(ids, encoder_hidden_states=enc[:, :5]).last_hidden_state
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL
    assert max_diff(got.cross_attentions, want.cross_attentions) <= TOL
    assert other_len.shape == (3, 11, SMALL["hidden_size"])


def test_outputs_read_like_transformers_model_outputs():
    """Indexing by position or name skips None fields; iteration yields the names, as transformers' ModelOutput."""
    model = _model("NezhaForQuestionAnswering", seed=15)
    ids, mask, _ = batch(seed=16, length=9)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True)
    assert list(out) == ["start_logits", "end_logits", "hidden_states"]
    start, end, hidden = out.to_tuple()
    assert out[0] is out.start_logits and out["end_logits"] is end and len(out) == 3
    assert len(hidden) == SMALL["num_hidden_layers"] + 1 and "loss" not in out


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input_ids=torch.tensor([[1, 2, 97]])), ValueError, r"input_ids has values in \[1, 97\].*vocab_size = 97"),
        (dict(input_ids=torch.tensor([[1, -1, 3]])), ValueError, "input_ids"),
        (dict(input_ids=torch.tensor([[1.0, 2.0]])), TypeError, "input_ids must be an integer"),
        (dict(input_ids=torch.tensor([1, 2, 3])), ValueError, r"input_ids must be a \[batch, seq_len\]"),
        (
            dict(input_ids=torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 3, 1]])),
            ValueError,
            r"token_type_ids has values in \[0, 3\].*type_vocab_size = 3",
        ),
        (
            dict(input_ids=torch.tensor([[1, 2, 3]]), token_type_ids=torch.tensor([[0, 1]])),
            ValueError,
            "token_type_ids must have shape",
        ),
        (
            dict(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4)),
            ValueError,
            r"attention_mask must have shape \[batch, key length\] = \[1, 3\]",
        ),
        (
            dict(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 1, 1, 3)),
            ValueError,
            "attention_mask must have shape",
        ),
        (dict(input_ids=torch.tensor([[1, 2]]), inputs_embeds=torch.randn(1, 2, 48)), ValueError, "not both"),
        (dict(), ValueError, "neither"),
        (dict(inputs_embeds=torch.randn(1, 2, 47)), ValueError, "hidden_size=48"),
        (dict(input_ids=torch.tensor([[1, 2]]), head_mask=torch.ones(3)), ValueError, "head_mask must have shape"),
        (dict(input_ids=torch.tensor([[1, 2]]), past_key_values=((torch.ones(1),),)), ValueError, "is_decoder"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, error, match):
    model = _model(seed=17)
    with pytest.raises(error, match=match):
        model(**kwargs)


def test_bad_config_and_multiple_choice_shape():
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        ours.NezhaModel(ours.NezhaConfig(hidden_size=50, num_attention_heads=4))  # checked at build, as transformers
    with pytest.raises(ValueError, match="hidden_act"):
        ours.NezhaModel(ours.NezhaConfig(**{**SMALL, "hidden_act": "nope"}))
    with pytest.raises(TypeError, match="NezhaConfig"):
        ours.NezhaModel({"hidden_size": 48})
    model = _model("NezhaForMultipleChoice", seed=18)
    with pytest.raises(ValueError, match="num_choices"):
        model(torch.tensor([[1, 2, 3]]))


# ---- nezha-base at 2048 tokens ------------------------------------------------------------------


@pytest.mark.slow
def test_nezha_base_2048_tokens_forward_backward_cpu():
    """nezha-base's layer shape (768, 12 heads) at 4x max_position_embeddings, forward + backward on CPU.

    The last 100 tokens are padding drawn from ids that occur nowhere else, and the loss ignores
    their outputs: masked keys must receive exactly zero gradient, so those embedding rows stay 0
    while every real token's row does not. Three of the twelve layers: every layer is the same
    computation, and the gradient still crosses layers on its way to the embeddings (CI time).
    """
    torch.manual_seed(19)
    config = ours.NezhaConfig(
        attn_backend="torch", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_hidden_layers=3
    )
    model = ours.NezhaModel(config, add_pooling_layer=False).train()
    length, pad, reserved = 2048, 100, 50
    g = torch.Generator().manual_seed(20)
    ids = torch.randint(1, config.vocab_size - reserved, (1, length), generator=g)
    ids[0, -pad:] = torch.randint(config.vocab_size - reserved, config.vocab_size, (pad,), generator=g)
    mask = torch.ones(1, length, dtype=torch.long)
    mask[0, -pad:] = 0
    target = torch.randn(1, length, config.hidden_size, generator=g)
    target[0, -pad:] = 0
    start = time.perf_counter()
    hidden = model(ids, attention_mask=mask).last_hidden_state
    (hidden * target).mean().backward()
    elapsed = time.perf_counter() - start
    assert hidden.shape == (1, length, 768) and torch.isfinite(hidden).all()
    params = list(model.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    rows = model.embeddings.word_embeddings.weight.grad.abs().amax(dim=1)
    assert rows[ids[0, -pad:]].max() == 0
    assert (rows[ids[0, :-pad]] > 0).all()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().max() > 0
    print(f"nezha-base (3 layers) 2048-token forward+backward on CPU: {elapsed:.1f} s")


def test_top_level_exports_are_lazy():
    import subprocess
    import sys

    code = (
        "import sys, nezha_kernels as nk; assert 'nezha_kernels.models' not in sys.modules; "
        "assert nk.NezhaForQuestionAnswering is __import__('nezha_kernels.models').models.NezhaForQuestionAnswering"
    )
    from pathlib import Path

    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
