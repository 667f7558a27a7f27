"""Fine-tune NEZHA for multiple-choice reading comprehension (C3 style); accuracy on dev.

    python python/multiple_choice.py                          # tiny model, shipped synthetic questions
    python python/multiple_choice.py --model-dir nezha-cn-base --train train.jsonl --dev dev.jsonl

Data: JSONL, one question per line, as CLUE's C3:
    {"context": ["...", "..."], "question": "...", "choice": ["A", "B", "C", "D"], "answer": "B"}
("context" may be one string; an integer "label" may stand for "answer"). Questions may have different
numbers of choices: missing ones are padded and can never be predicted. Each choice is scored as
[CLS] context [SEP] question choice [SEP] (the context is truncated first). Last line: ``dev accuracy: A``.
"""

from __future__ import annotations

import sys

import _common as common
import torch

from nezha_kernels.models import NezhaForMultipleChoice

SCRATCH = dict(epochs=15, batch_size=16, lr=2e-3, max_length=64)
PRETRAINED = dict(epochs=3, batch_size=8, lr=2e-5, max_length=256)


def read(path: str) -> list[dict]:
    """Records as {"context" (str), "question", "choices", "label" (int)}."""
    out = []
    for number, row in enumerate(common.read_jsonl(path), 1):
        where = f"{path}:{number}"
        common.require(row, ["context", "question", "choice"], where)
        context = row["context"] if isinstance(row["context"], str) else "".join(row["context"])
        choices = row["choice"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f'{where}: "choice" must be a list of at least 2 strings, got {choices!r}')
        if "answer" in row:
            if row["answer"] not in choices:
                raise ValueError(f"{where}: answer {row['answer']!r} is not one of the choices {choices}")
            label = choices.index(row["answer"])
        elif isinstance(row.get("label"), int) and 0 <= row["label"] < len(choices):
            label = row["label"]
        else:
            raise ValueError(f'{where}: needs "answer" (one of the choices) or an integer "label" index')
        out.append({"context": context, "question": row["question"], "choices": choices, "label": label})
    return out


def featurize(records: list[dict], tokenizer: common.Tokenizer, max_length: int) -> list[dict]:
    features = []
    for r in records:
        context, question = tokenizer.ids(r["context"]), tokenizer.ids(r["question"])
        ids, types = [], []
        for choice in r["choices"]:
            i, t = common.pair_inputs(tokenizer, context, question + tokenizer.ids(choice), max_length)
            ids.append(i)
            types.append(t)
        features.append({"input_ids": ids, "token_type_ids": types, "labels": r["label"]})
    return features


def collate(features: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """[B, C, L] inputs; a question with fewer choices gets [CLS] [SEP] ones, off in ``choice_mask`` [B, C]."""
    n_choices = max(len(f["input_ids"]) for f in features)
    width = max(len(ids) for f in features for ids in f["input_ids"])
    ids, types, masks, choice_mask = [], [], [], []
    for f in features:
        rows = f["input_ids"] + [f["input_ids"][0][:1] + f["input_ids"][0][-1:]] * (n_choices - len(f["input_ids"]))
        type_rows = f["token_type_ids"] + [[0, 0]] * (n_choices - len(f["input_ids"]))
        ids.append(common.pad_to(rows, pad_id, width))
        types.append(common.pad_to(type_rows, 0, width))
        masks.append(common.pad_to([[1] * len(r) for r in rows], 0, width))
        choice_mask.append([1] * len(f["input_ids"]) + [0] * (n_choices - len(f["input_ids"])))
    return {
        "input_ids": torch.stack(ids),
        "token_type_ids": torch.stack(types),
        "attention_mask": torch.stack(masks),
        "choice_mask": torch.tensor(choice_mask, dtype=torch.bool),
        "labels": torch.tensor([f["labels"] for f in features], dtype=torch.long),
    }


def choice_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**{k: batch[k] for k in common.MODEL_INPUTS}).logits
    return logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)


def predict(model, features: list[dict], tokenizer, args) -> list[int]:
    predictions = [0] * len(features)
    with torch.no_grad():
        lengths = [max(map(len, f["input_ids"])) for f in features]
        for indices in common.length_batches(lengths, args.batch_size, None):
            batch = common.to_device(collate([features[i] for i in indices], tokenizer.pad_id), args.device)
            for i, p in zip(indices, choice_logits(model, batch).argmax(-1).tolist(), strict=True):
                predictions[i] = p
    return predictions


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], "multiple_choice")
    args = common.resolve(p.parse_args(argv), SCRATCH, PRETRAINED)
    tokenizer = common.load_tokenizer(args)
    train, dev = read(args.train), read(args.dev)
    train_features = featurize(train, tokenizer, args.max_length)
    dev_features = featurize(dev, tokenizer, args.max_length)

    def evaluate(model) -> dict[str, float]:
        predictions = predict(model, dev_features, tokenizer, args)
        return {"accuracy": sum(p == r["label"] for p, r in zip(predictions, dev, strict=True)) / len(dev)}

    def loss_fn(model, batch) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(choice_logits(model, batch), batch["labels"])

    model = common.build_model(NezhaForMultipleChoice, args, tokenizer)
    common.fit(
        model,
        train_features,
        lambda fs: collate(fs, tokenizer.pad_id),
        evaluate,
        args,
        lengths=[max(map(len, f["input_ids"])) for f in train_features],
        loss_fn=loss_fn,
    )

    keep: list = []
    reloaded = common.save_and_reload(model, tokenizer, args, keep)
    for r, p in zip(dev[:5], predict(reloaded, dev_features[:5], tokenizer, args), strict=True):
        print(f"  {r['question']} {r['choices']}  -> {r['choices'][p]}  (gold {r['choices'][r['label']]})")
    print(common.final_line(evaluate(reloaded), "accuracy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
