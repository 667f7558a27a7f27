"""Padding-free models: padded batches run on their real tokens, flattened batches, masks, compile.

The oracle is transformers 4.57.6's NEZHA on the padded batch (random weights) and our own dense path
(``config.padding_free=False``). At real tokens the outputs agree to fp32 rounding; at padded positions
the padding-free hidden states are zero.
"""

from __future__ import annotations

import pytest
import torch
from _nezha_helpers import CLASS_NAMES, SMALL, hf_module, max_diff, randomize_, twin_models

import nezha_kernels.models as ours

TOL = {torch.float32: 1e-5}  # max abs difference, fp32, against transformers or our dense path
LENGTHS = (23, 1, 16, 9)  # ragged, with a one-token sequence; the longest sets L


def _right_padded(seed: int, lengths=LENGTHS):
    """input_ids, 1/0 attention_mask (right padding), token_type_ids: [B, max(lengths)]."""
    g = torch.Generator().manual_seed(seed)
    b, length = len(lengths), max(lengths)
    ids = torch.randint(1, SMALL["vocab_size"], (b, length), generator=g)
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    types = torch.randint(0, SMALL["type_vocab_size"], (b, length), generator=g)
    return ids, mask, types


def _task_kwargs(name: str, ids, mask, types, seed: int = 0):
    """Inputs and labels of each class; token-level labels are -100 at padded positions."""
    g = torch.Generator().manual_seed(seed)
    b, length = ids.shape
    kw = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if name in ("NezhaForPreTraining", "NezhaForMaskedLM", "NezhaForTokenClassification"):
        high = SMALL["vocab_size"] if name != "NezhaForTokenClassification" else 2
        labels = torch.randint(0, high, (b, length), generator=g)
        labels[mask == 0] = -100
        kw["labels"] = labels
    if name == "NezhaForPreTraining":
        kw["next_sentence_label"] = torch.randint(0, 2, (b,), generator=g)
    if name in ("NezhaForNextSentencePrediction", "NezhaForSequenceClassification"):
        kw["labels"] = torch.randint(0, 2, (b,), generator=g)
    if name == "NezhaForQuestionAnswering":
        lengths = mask.sum(1)
        kw["start_positions"] = torch.randint(0, 1000, (b,), generator=g) % lengths
        kw["end_positions"] = torch.randint(0, 1000, (b,), generator=g) % lengths
    if name == "NezhaForMultipleChoice":
        kw = {k: v.unsqueeze(1).expand(b, 2, length).contiguous() for k, v in kw.items()}
        kw["input_ids"] = torch.randint(1, SMALL["vocab_size"], (b, 2, length), generator=g)
        kw["labels"] = torch.randint(0, 2, (b,), generator=g)
    return kw


def _at_real_tokens(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level outputs [B, L, ...] at the real tokens; sequence-level ones unchanged."""
    if value.dim() >= 2 and tuple(value.shape[:2]) == tuple(mask.shape):
        return value[mask.bool()]
    return value


def _assert_hf_at_real_tokens_zero_at_padding(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor) -> None:
    """Hidden states [B, L, hidden] of a padding-free model on any path: transformers' at real tokens, 0 at padding."""
    keep = mask.bool()
    assert max_diff(got[keep], want[keep]) <= TOL[torch.float32]
    if not keep.all():
        assert got[~keep].abs().max() == 0


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_padded_batch_matches_hf_and_dense_path_at_real_tokens(name):
    """All 8 classes: outputs and losses equal transformers' and our dense path's; padded states are zero."""
    hf, model = twin_models(name, seed=3)
    ids, mask, types = _right_padded(seed=4)
    kw = _task_kwargs(name, ids, mask, types, seed=5)
    flat_mask = kw["attention_mask"].reshape(-1, ids.shape[1])
    with torch.no_grad():
        want = hf(**kw, output_hidden_states=True)
        got = model(**kw, output_hidden_states=True)
        model.config.padding_free = False
        dense = model(**kw, output_hidden_states=True)
    assert got.keys() == dense.keys()
    for key in got.keys():
        for reference in (want[key], dense[key]):
            pairs = zip(got[key], reference, strict=True) if key == "hidden_states" else [(got[key], reference)]
            for a, b in pairs:
                mask_here = flat_mask if a.dim() and a.shape[0] == flat_mask.shape[0] else mask
                assert max_diff(_at_real_tokens(a, mask_here), _at_real_tokens(b, mask_here)) <= TOL[torch.float32], key
    hidden = got.hidden_states[-1]
    if name != "NezhaForQuestionAnswering":
        assert hidden[flat_mask == 0].abs().max() == 0  # zeros at padded positions, as FlashAttention-2's path
    else:
        # A QA loss runs the dense path (its span softmax sees the padded positions' logits): transformers'
        # values everywhere, and its loss (checked above); without positions the batch runs padding-free.
        assert max_diff(got.start_logits, want.start_logits) <= TOL[torch.float32]
        with torch.no_grad():
            model.config.padding_free = True
            inference = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        assert inference.hidden_states[-1][mask == 0].abs().max() == 0
        assert max_diff(inference.start_logits[mask.bool()], want.start_logits[mask.bool()]) <= TOL[torch.float32]


def test_padding_free_gradients_equal_dense_path():
    """A training step (MLM loss, head_mask) gives the dense path's loss and every parameter gradient."""
    _, model = twin_models("NezhaForMaskedLM", seed=7)
    ids, mask, types = _right_padded(seed=8)
    kw = _task_kwargs("NezhaForMaskedLM", ids, mask, types, seed=9)
    head_mask = torch.tensor([1.0, 0.5, 0.0, 1.0])
    results = []
    for padding_free in (True, False):
        model.config.padding_free = padding_free
        model.zero_grad()
        loss = model(**kw, head_mask=head_mask).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_free, grads_free), (loss_dense, grads_dense) = results
    assert abs(loss_free - loss_dense) <= TOL[torch.float32]
    for n, g in grads_dense.items():
        assert max_diff(grads_free[n], g) <= TOL[torch.float32] * max(1.0, g.abs().max().item()), n
    assert grads_dense["nezha.encoder.layer.0.attention.self.key.weight"].abs().max() > 1e-4


def test_attention_dropout_drops_the_same_entries_padded_or_not():
    """Same seed, attention dropout on: padding-free training reproduces padded training (shared Philox)."""
    _, model = twin_models(
        "NezhaForTokenClassification",
        seed=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.3,
        classifier_dropout=0.0,
    )
    ids, mask, types = _right_padded(seed=11)
    kw = _task_kwargs("NezhaForTokenClassification", ids, mask, types, seed=12)
    model.train()
    losses = []
    for padding_free in (True, False, True):
        model.config.padding_free = padding_free
        torch.manual_seed(13)
        losses.append(model(**kw).loss.item())
    model.eval()
    assert abs(losses[0] - losses[1]) <= TOL[torch.float32]
    assert losses[0] == losses[2] and abs(losses[0] - model(**kw).loss.item()) > 1e-4


def test_gradient_checkpointing_padding_free():
    _, model = twin_models("NezhaForSequenceClassification", seed=14)
    ids, mask, types = _right_padded(seed=15)
    kw = _task_kwargs("NezhaForSequenceClassification", ids, mask, types, seed=16)
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.config.attention_probs_dropout_prob = 0.0
    grads = []
    for checkpointing in (False, True):
        model.gradient_checkpointing_enable() if checkpointing else model.gradient_checkpointing_disable()
        model.zero_grad()
        model(**kw).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert torch.allclose(grads[1][n], g, atol=1e-6, rtol=1e-5), n


@pytest.mark.parametrize("layout", ["left_padding", "hole", "fully_masked_row"])
def test_masks_that_are_not_right_padded_run_dense_and_match_hf(layout):
    """Packing would move the pooler's token 0 or change distances around a hole: those stay dense."""
    hf, model = twin_models("NezhaModel", seed=17)
    ids, mask, types = _right_padded(seed=18, lengths=(11, 11, 11))
    if layout == "left_padding":
        mask[1, :4] = 0
    elif layout == "hole":
        mask[2, 5] = 0
    else:
        mask[0] = 0
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types)
        got = model(ids, attention_mask=mask, token_type_ids=types)
    _assert_hf_at_real_tokens_zero_at_padding(got.last_hidden_state, want.last_hidden_state, mask)
    # The pooler reads token 0 as computed, even where it is padding (as transformers).
    assert max_diff(got.pooler_output, want.pooler_output) <= TOL[torch.float32]


def test_output_attentions_falls_back_to_dense():
    hf, model = twin_models("NezhaModel", seed=19)
    ids, mask, types = _right_padded(seed=20)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
        got = model(ids, attention_mask=mask, token_type_ids=types, output_attentions=True)
    assert max_diff(got.attentions, want.attentions) <= TOL[torch.float32]
    _assert_hf_at_real_tokens_zero_at_padding(got.last_hidden_state, want.last_hidden_state, mask)


def test_padding_free_config_round_trip(tmp_path):
    """Saved and loaded in config.json; a transformers config.json (no such key) loads with True."""
    transformers = hf_module()
    transformers.NezhaConfig(**SMALL).save_pretrained(tmp_path / "hf")
    assert ours.NezhaConfig.from_pretrained(tmp_path / "hf").padding_free is True
    config = ours.NezhaConfig(**SMALL, padding_free=False)
    config.save_pretrained(tmp_path / "ours")
    assert ours.NezhaConfig.from_pretrained(tmp_path / "ours").padding_free is False
    with pytest.raises(ValueError, match="padding_free must be a bool"):
        ours.NezhaConfig(padding_free="yes")


# ---- transformers' flattened batches (DataCollatorWithFlattening) -------------------------------------


def _features(seed: int, lengths=(7, 12, 1, 5)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, SMALL["vocab_size"], (n,), generator=g).tolist()
        labels = torch.randint(0, SMALL["vocab_size"], (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": labels})
    return out


def _padded_from_features(features):
    """The same sequences as a right-padded batch; labels as the collator marks them (first token -100)."""
    length = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = torch.tensor(f["input_ids"])
        mask[i, :n] = 1
        labels[i, 1:n] = torch.tensor(f["labels"][1:])
    return ids, mask, labels


@pytest.mark.parametrize("keywords", ["position_ids", "cu_seq_lens"])
def test_flattened_batch_from_the_real_collator_equals_padded_batch(keywords):
    transformers = hf_module()
    _, model = twin_models("NezhaForMaskedLM", seed=21)
    features = _features(seed=22)
    collator = transformers.DataCollatorWithFlattening(
        return_position_ids=keywords == "position_ids", return_flash_attn_kwargs=keywords == "cu_seq_lens"
    )
    flat = collator(features)
    assert flat["input_ids"].shape[0] == 1 and ("position_ids" in flat) == (keywords == "position_ids")
    ids, mask, labels = _padded_from_features(features)
    with torch.no_grad():
        padded = model(ids, attention_mask=mask, labels=labels)
        packed = model(**flat)
        model.config.padding_free = False
        dense = model(ids, attention_mask=mask, labels=labels)
        with_weights = model(**flat, output_attentions=True)  # the dense path: a block-diagonal mask
    real = mask.bool()
    assert max_diff(packed.logits[0], padded.logits[real]) <= TOL[torch.float32]
    assert max_diff(packed.logits[0], dense.logits[real]) <= TOL[torch.float32]
    assert max_diff(with_weights.logits, packed.logits) <= TOL[torch.float32]
    assert abs(packed.loss.item() - padded.loss.item()) <= TOL[torch.float32]
    # Tokens of one sequence never attend to another one's.
    weights = with_weights.attentions[0][0, 0]
    assert weights[:7, 7:].abs().max() == 0 and weights[7:19, :7].abs().max() == 0


def test_flattened_batch_bad_inputs():
    _, model = twin_models("NezhaModel", seed=23)
    ids = torch.randint(1, SMALL["vocab_size"], (1, 6))
    with pytest.raises(ValueError, match="restarting at 0"):
        model(ids, position_ids=torch.tensor([[0, 1, 3, 0, 1, 2]]))
    with pytest.raises(ValueError, match=r"is \[1, T\]"):
        model(ids.expand(2, 6), position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]] * 2))
    with pytest.raises(ValueError, match="ends at 5"):
        model(ids, cu_seq_lens_q=torch.tensor([0, 2, 5], dtype=torch.int32), max_length_q=3)
    with pytest.raises(ValueError, match="cu_seq_lens_k must equal"):
        model(
            ids,
            cu_seq_lens_q=torch.tensor([0, 2, 6], dtype=torch.int32),
            cu_seq_lens_k=torch.tensor([0, 3, 6], dtype=torch.int32),
        )
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(ids, cu_seqlens=torch.tensor([0, 6], dtype=torch.int32))
    with torch.no_grad():  # position_ids without a restart mark one sequence: nothing changes
        torch.testing.assert_close(
            model(ids, position_ids=torch.arange(6)[None]).last_hidden_state,
            model(ids).last_hidden_state,
            atol=0,
            rtol=0,
        )


@pytest.mark.slow
def test_compiled_flattened_batch_no_recompile_per_length():
    """fullgraph=True; T marked dynamic: two flattened batches of different T compile once, equal eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    _, model = twin_models("NezhaForTokenClassification", seed=24, backend="reference")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for lengths in ((5, 9, 3), (4, 13, 2, 6)):
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        ids = torch.randint(1, SMALL["vocab_size"], position_ids.shape, generator=torch.Generator().manual_seed(25))
        torch._dynamo.mark_dynamic(ids, 1)
        torch._dynamo.mark_dynamic(position_ids, 1)
        with torch.no_grad():
            got = compiled(input_ids=ids, position_ids=position_ids).logits
            want = model(input_ids=ids, position_ids=position_ids).logits
        assert max_diff(got, want) <= TOL[torch.float32]
    assert counter.frame_count == 1


@pytest.mark.slow
def test_compiled_flattened_cu_seq_lens_stays_packed_without_a_recompile_per_length():
    """cu_seq_lens_q needs no gather: compiled, it runs the varlen op (default backend) with a dynamic T."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    transformers = hf_module()
    _, model = twin_models("NezhaForMaskedLM", seed=30)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    collator = transformers.DataCollatorWithFlattening(return_position_ids=False, return_flash_attn_kwargs=True)
    for seed, lengths in ((31, (5, 9, 3)), (32, (4, 13, 2, 6)), (33, (8, 11))):
        flat = collator(_features(seed, lengths))
        for key in ("input_ids", "labels"):
            torch._dynamo.mark_dynamic(flat[key], 1)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            torch._dynamo.mark_dynamic(flat[key], 0)
        with torch.no_grad():
            got = compiled(**flat)
            want = model(**flat)
        assert max_diff(got.logits, want.logits) <= TOL[torch.float32]
        assert abs(got.loss.item() - want.loss.item()) <= TOL[torch.float32]
    # max_length_q is a Python int: its first change makes it symbolic (one recompile), never again.
    assert counter.frame_count <= 2


def test_length_mix_distribution():
    """The bench's length mix: fixed seed, log-normal around a median of 48, clipped to [8, 512]."""
    from nezha_kernels.bench.length_mix import sample_lengths

    lengths = sample_lengths(4000)
    assert lengths == sample_lengths(4000) and lengths != sample_lengths(4000, seed=7)
    assert min(lengths) == 8 and max(lengths) <= 512
    assert 44 <= sorted(lengths)[2000] <= 52
    small = sample_lengths(16)
    assert 0.2 < sum(small) / (16 * max(small)) < 0.6  # mostly padding once padded to the longest


# ---- attention_mask values and shapes (issue 14) -------------------------------------------------------


@pytest.mark.parametrize("values", [(0.0, -10000.0), (1.0, 0.5), (0.0, 2.0)])
def test_mask_values_other_than_0_and_1_raise(values):
    _, model = twin_models("NezhaModel", seed=26)
    ids = torch.randint(1, SMALL["vocab_size"], (2, 5))
    mask = torch.full((2, 5), values[0])
    mask[1, 3:] = values[1]
    with pytest.raises(ValueError, match="keep mask of 1 \\(attend\\) and 0 \\(masked\\)"):
        model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="keep mask"):
        model(ids, attention_mask=mask[:, None, :].expand(2, 5, 5))


@pytest.mark.parametrize("is_decoder", [False, True])
def test_3d_mask_matches_hf(is_decoder):
    """A [B, Lq, Lk] mask (transformers' get_extended_attention_mask form) runs the dense path."""
    hf, model = twin_models("NezhaModel", seed=27, is_decoder=is_decoder)
    ids, _, types = _right_padded(seed=28, lengths=(9, 9, 9))
    g = torch.Generator().manual_seed(29)
    mask = (torch.rand(3, 9, 9, generator=g) > 0.3).float()
    mask[:, :, 0] = 1
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, token_type_ids=types, use_cache=False)
        got = model(ids, attention_mask=mask, token_type_ids=types, use_cache=False)
    assert max_diff(got.last_hidden_state, want.last_hidden_state) <= TOL[torch.float32]
    with pytest.raises(ValueError, match=r"3-D attention_mask must have shape \[batch, seq_len, key length\]"):
        model(ids, attention_mask=mask[:, :5])


# ---- no host-device sync in a CUDA forward (issue 11) ------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("padding_free", [False, True])
def test_cuda_forward_makes_no_host_device_sync(padding_free, monkeypatch):
    """Id range and mask value checks are skipped on CUDA (no NEZHA_KERNELS_CHECK_INPUTS): no sync.

    Packing a padded batch reads its token count back (one sync, as flash-attention's unpad_input), so the
    padded forward is checked with padding_free=False; a batch without a mask has nothing to pack.
    """
    monkeypatch.delenv("NEZHA_KERNELS_CHECK_INPUTS", raising=False)
    torch.manual_seed(0)
    model = ours.NezhaForSequenceClassification(ours.NezhaConfig(**SMALL, padding_free=padding_free)).cuda().eval()
    randomize_(model, torch.Generator().manual_seed(1))
    ids = torch.randint(1, SMALL["vocab_size"], (2, 17), device="cuda")
    types = torch.randint(0, SMALL["type_vocab_size"], (2, 17), device="cuda")
    mask = torch.ones(2, 17, dtype=torch.long, device="cuda")
    mask[1, 11:] = 0
    with torch.no_grad():
        model(ids, attention_mask=mask, token_type_ids=types)  # warm-up: tables, kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            if padding_free:
                model(ids, token_type_ids=types)
            else:
                model(ids, attention_mask=mask, token_type_ids=types)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    monkeypatch.setenv("NEZHA_KERNELS_CHECK_INPUTS", "1")
    with pytest.raises(ValueError, match="input_ids has values"):
        model(torch.full((1, 3), SMALL["vocab_size"], device="cuda"))
