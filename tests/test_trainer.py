"""Our task models under transformers' Trainer (CPU, tiny models, a few steps), and the model API it relies on:
main_input_name, label names, the loss in the outputs, checkpoints, gradient checkpointing (reentrant too),
prune_heads with negative layer indices."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from _nezha_helpers import SMALL, batch, max_diff, randomize_, twin_models

import nezha_kernels.models as ours

transformers = pytest.importorskip("transformers", reason="transformers==4.57.6 is in the test extra")
pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")

from nezha_kernels.integrations.trainer import NezhaTrainer  # noqa: E402

LENGTH, CHOICES, MASK_ID = 12, 3, 4
TASKS = (
    "NezhaForSequenceClassification",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
    "NezhaForMaskedLM",
    "NezhaForMultipleChoice",
)


@pytest.fixture(autouse=True)
def _eager_dropout_mask(monkeypatch):
    # The fused CPU dropout mask is compiled on first use (tens of seconds); the same bits come eagerly.
    monkeypatch.setenv("NEZHA_KERNELS_COMPILE_DROPOUT", "0")


def _ids(g, n, length=LENGTH):
    """[n, length] ids in [5, vocab) with [CLS]=2 first, and padding (id 0, mask 0) in every other row."""
    ids = torch.randint(5, SMALL["vocab_size"], (n, length), generator=g)
    ids[:, 0] = 2
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1::2, length - 3 :] = 0
    ids[mask == 0] = 0
    return ids, mask


def _examples(task: str, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """A learnable synthetic dataset for ``task``: the answer follows from the tokens."""
    g = torch.Generator().manual_seed(seed)
    if task == "NezhaForMultipleChoice":
        ids, mask = _ids(g, n * CHOICES)
        ids, mask = ids.view(n, CHOICES, LENGTH), mask.view(n, CHOICES, LENGTH)
        labels = torch.randint(0, CHOICES, (n,), generator=g)
        ids[:, :, 1] = 6
        ids[torch.arange(n), labels, 1] = 5  # the right choice has token 5 after [CLS], the others 6
        return [dict(input_ids=i, attention_mask=m, labels=y) for i, m, y in zip(ids, mask, labels, strict=True)]
    ids, mask = _ids(g, n)
    rows = []
    for i in range(n):
        row = dict(input_ids=ids[i], attention_mask=mask[i])
        if task == "NezhaForSequenceClassification":
            row["labels"] = torch.randint(0, 3, (), generator=g)
            row["input_ids"] = ids[i].clone()
            row["input_ids"][1:6] = 5 + row["labels"]  # tokens 5, 6 or 7 after [CLS] name the class
        elif task == "NezhaForTokenClassification":
            row["labels"] = torch.where(mask[i] == 1, torch.bucketize(ids[i], torch.tensor([35, 65])), -100)
        elif task == "NezhaForQuestionAnswering":
            start = int(torch.randint(1, LENGTH - 4, (), generator=g))
            row["input_ids"] = ids[i].clone()
            row["input_ids"][start] = 7
            row["start_positions"], row["end_positions"] = torch.tensor(start), torch.tensor(start + 1)
        elif task == "NezhaForMaskedLM":
            words = torch.where(mask[i] == 1, 5 + ids[i] % 8, 0)  # text from 8 words only
            words[0] = 2
            masked = (torch.rand(LENGTH, generator=g) < 0.3) & (mask[i] == 1)
            masked[1] = True
            row["labels"] = torch.where(masked, words, -100)
            row["input_ids"] = torch.where(masked, MASK_ID, words)
        rows.append(row)
    return rows


def _model(task: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = ours.NezhaConfig(
        **{
            **SMALL,
            "num_labels": 2 if task == "NezhaForQuestionAnswering" else 3,
            "attention_probs_dropout_prob": 0.0,
            **overrides,
        }
    )
    return getattr(ours, task)(config)


def _args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-2,
        warmup_steps=0,
        max_steps=12,
        logging_steps=4,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return transformers.TrainingArguments(**kwargs)


@pytest.mark.parametrize("task", TASKS)
def test_plain_trainer_trains_and_evaluates(tmp_path, task):
    model = _model(task)
    assert model.main_input_name == "input_ids"
    train, dev = _examples(task, 96, seed=1), _examples(task, 32, seed=2)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, include_num_input_tokens_seen=True), train_dataset=train, eval_dataset=dev
    )
    expected_labels = ["start_positions", "end_positions"] if task == "NezhaForQuestionAnswering" else ["labels"]
    assert trainer.label_names == expected_labels
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert result.global_step == 12 and torch.isfinite(torch.tensor(result.training_loss))
    assert after < before - 0.02, (before, after)  # it learned something of the synthetic rule
    per_row = CHOICES * LENGTH if task == "NezhaForMultipleChoice" else LENGTH
    assert trainer.state.num_input_tokens_seen == 12 * 8 * per_row  # counted from main_input_name
    prediction = trainer.predict(dev[:5])
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    assert logits.shape[0] == 5 and prediction.metrics["test_loss"] > 0


@pytest.mark.parametrize("task", ["NezhaForMaskedLM", "NezhaForSequenceClassification"])
def test_nezha_trainer_checkpoints_load_back_and_resume(tmp_path, task, caplog):
    model = _model(task, hidden_dropout_prob=0.0)
    train, dev = _examples(task, 64, seed=3), _examples(task, 16, seed=4)
    args = _args(
        tmp_path,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    trainer = NezhaTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
    trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-4"
    assert {"config.json", "model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(ckpt))
    ids, mask = torch.stack([r["input_ids"] for r in dev]), torch.stack([r["attention_mask"] for r in dev])
    model.eval()
    with torch.no_grad():
        want = model(ids, attention_mask=mask).logits
    best = trainer.state.best_model_checkpoint
    reloaded = getattr(ours, task).from_pretrained(best)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, attention_mask=mask).logits, want)  # the best one is what it kept
    trainer.save_model(str(tmp_path / "final"))
    final = getattr(ours, task).from_pretrained(tmp_path / "final")
    with torch.no_grad():
        assert torch.equal(final(ids, attention_mask=mask).logits, want)
    if task == "NezhaForMaskedLM":
        assert final.cls.predictions.decoder.weight is final.nezha.embeddings.word_embeddings.weight
    # Resuming reads the checkpoint back into a fresh model (the tied keys it lacks are re-tied, no warning).
    fresh = _model(task, seed=5, hidden_dropout_prob=0.0)
    resumed = NezhaTrainer(
        model=fresh, args=_args(tmp_path, max_steps=6, save_strategy="no"), train_dataset=train, eval_dataset=dev
    )
    with caplog.at_level(logging.WARNING, logger="transformers.trainer"):
        assert resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2")).global_step == 6
    assert "missing keys" not in caplog.text
    if task == "NezhaForMaskedLM":
        assert fresh.cls.predictions.decoder.weight is fresh.nezha.embeddings.word_embeddings.weight


def test_gradient_accumulation_scales_the_mean_loss(tmp_path):
    """Our losses are batch means (accepts_loss_kwargs = False): Trainer divides them by the accumulation steps,
    so 2 x 4 accumulated rows make the same SGD step as 8 rows at once."""
    task = "NezhaForSequenceClassification"
    train = _examples(task, 8, seed=12)
    updates = []
    for rows, steps in ((8, 1), (4, 2)):
        model = _model(task, seed=13, hidden_dropout_prob=0.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        args = _args(
            tmp_path,
            max_steps=1,
            optim="sgd",
            learning_rate=0.5,
            per_device_train_batch_size=rows,
            gradient_accumulation_steps=steps,
            max_grad_norm=0.0,
            logging_steps=1,
        )
        transformers.Trainer(model=model, args=args, train_dataset=train).train()
        updates.append({n: p.detach() - before[n] for n, p in model.named_parameters()})
    whole, accumulated = updates
    size = max(u.abs().max().item() for u in whole.values())
    assert size > 1e-3
    for name, u in whole.items():
        assert max_diff(accumulated[name], u) <= 1e-5 * size, name


# ---- gradient checkpointing and pruning, as transformers offers them ------------------------------------


def _grads(model, ids, mask, labels):
    model.zero_grad()
    torch.manual_seed(1234)  # dropout (attention and hidden) draws from the default generator
    loss = model(ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("frozen_embeddings", [False, True])
def test_reentrant_gradient_checkpointing_same_gradients(frozen_embeddings):
    model = _model("NezhaForSequenceClassification", seed=6, attention_probs_dropout_prob=0.2)
    randomize_(model, torch.Generator().manual_seed(7))
    model.train()
    if frozen_embeddings:  # the first layer's input then needs no grad: reentrant checkpointing must cope
        model.nezha.embeddings.requires_grad_(False)
    ids, mask, _ = batch(seed=8, length=19, fully_masked=False)
    labels = torch.tensor([0, 2, 1])
    loss_plain, grads_plain = _grads(model, ids, mask, labels)
    model.gradient_checkpointing_enable({"use_reentrant": True})
    assert model.is_gradient_checkpointing and model.nezha.encoder.checkpoint_kwargs == {"use_reentrant": True}
    loss_ckpt, grads_ckpt = _grads(model, ids, mask, labels)
    assert torch.equal(loss_plain, loss_ckpt)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 10
    for name, g in grads_plain.items():
        assert max_diff(grads_ckpt[name], g) <= 1e-6 * max(1.0, g.abs().max().item()), name
    model.gradient_checkpointing_enable()  # the default stays non-reentrant
    assert model.nezha.encoder.checkpoint_kwargs == {"use_reentrant": False}


def test_trainer_passes_reentrant_checkpointing(tmp_path):
    model = _model("NezhaForSequenceClassification")
    if "activation_checkpointing" in transformers.TrainingArguments.__dataclass_fields__:  # transformers 5
        args = _args(
            tmp_path,
            max_steps=2,
            activation_checkpointing=True,
            activation_checkpointing_kwargs={"use_reentrant": True, "every_n_layers": 2},
        )
    else:
        args = _args(
            tmp_path, max_steps=2, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}
        )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_examples(model.__class__.__name__, 16, 9))
    trainer.train()
    assert model.is_gradient_checkpointing and model.nezha.encoder.checkpoint_kwargs == {"use_reentrant": True}
    assert model.nezha.encoder.checkpoint_every == (2 if args.__dict__.get("activation_checkpointing") else 1)


def test_checkpointing_every_n_layers_and_offload_same_gradients(monkeypatch):
    """transformers 5's options: every_n_layers recomputes only layers 0, n, ...; offload saves to the host."""
    model = _model("NezhaForTokenClassification", seed=14, num_hidden_layers=3, attention_probs_dropout_prob=0.2)
    randomize_(model, torch.Generator().manual_seed(15))
    model.train()
    ids, mask, _ = batch(seed=16, length=17, fully_masked=False)
    labels = torch.randint(0, 3, ids.shape, generator=torch.Generator().manual_seed(17))
    loss_plain, grads_plain = _grads(model, ids, mask, labels)
    calls = [0] * 3
    for i, layer in enumerate(model.nezha.encoder.layer):
        layer.register_forward_pre_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    offloads = []
    save_on_cpu = torch.autograd.graph.save_on_cpu
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", lambda **kw: offloads.append(kw) or save_on_cpu(**kw))
    model.activation_checkpointing_enable(every_n_layers=2, offload=True)
    assert model.is_activation_checkpointing
    loss_ckpt, grads_ckpt = _grads(model, ids, mask, labels)
    assert calls == [2, 1, 2]  # layers 0 and 2 ran again in the backward pass
    assert offloads == [{"pin_memory": False}] * 2
    assert torch.equal(loss_plain, loss_ckpt) and grads_ckpt.keys() == grads_plain.keys()
    for name, g in grads_plain.items():
        assert max_diff(grads_ckpt[name], g) <= 1e-6 * max(1.0, g.abs().max().item()), name
    model.activation_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    with pytest.raises(ValueError, match="every_n_layers must be a positive int, got 0"):
        model.gradient_checkpointing_enable(every_n_layers=0)


def test_num_parameters_exclude_embeddings():
    model = _model("NezhaForMaskedLM")  # the decoder weight is the word embedding: counted once, then excluded
    named = dict(model.named_parameters())
    assert model.num_parameters() == sum(p.numel() for p in named.values())
    without = sum(p.numel() for n, p in named.items() if not n.endswith("_embeddings.weight"))
    assert model.num_parameters(exclude_embeddings=True) == without
    assert without == model.num_parameters() - (SMALL["vocab_size"] + SMALL["type_vocab_size"]) * SMALL["hidden_size"]


@pytest.mark.skipif(not hasattr(transformers, "NezhaModel"), reason="transformers 5 has no NEZHA (the oracle)")
def test_prune_heads_negative_layer_index_as_transformers():
    hf, model = twin_models("NezhaModel", seed=10, padding_free=False)  # HF values at padded positions too
    model.prune_heads({-1: [0, 2], 0: [1]})
    hf.prune_heads({-1: [0, 2], 0: [1]})
    assert model.config.pruned_heads == {1: [0, 2], 0: [1]}  # stored under the real index (saved, reloaded)
    assert model.encoder.layer[1].attention.self.num_attention_heads == 2
    ids, mask, types = batch(seed=11, length=15)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        want = hf(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    assert max_diff(got, want) <= 1e-5
    with pytest.raises(ValueError, match=r"layer -3 out of range \[-2, 2\)"):
        model.prune_heads({-3: [0]})
