"""Fine-tune NEZHA for text classification (ChnSentiCorp / TNEWS style); accuracy and macro-F1 on dev.

    python python/text_classification.py                      # tiny model, shipped sentiment data (~1 min CPU)
    python python/text_classification.py --model-dir nezha-cn-base --train train.jsonl --dev dev.jsonl
    python python/text_classification.py --model-dir OUT --predict "这家酒店很干净。" --predict "菜不好吃。"

Data: JSONL, one {"sentence": "...", "label": "..."} per line (CLUE's TNEWS / ChnSentiCorp layout;
"text" is accepted for "sentence", an optional "sentence2" makes it a sentence-pair task, labels may be
strings or integers). The label set is read from --train. Last line: ``dev accuracy: A macro_f1: F``.
"""

from __future__ import annotations

import sys

import _common as common
import torch
from _metrics import classification_metrics

from nezha_kernels.models import NezhaForSequenceClassification

SCRATCH = dict(epochs=12, batch_size=32, lr=2e-3, max_length=64)
PRETRAINED = dict(epochs=3, batch_size=32, lr=3e-5, max_length=128)


def read(path: str) -> list[dict]:
    """Records as {"sentence", "sentence2" or None, "label" (str)}."""
    out = []
    for number, row in enumerate(common.read_jsonl(path), 1):
        text = row.get("sentence", row.get("text"))
        if not isinstance(text, str):
            raise ValueError(f'{path}:{number}: needs a string "sentence" (or "text"), has {sorted(row)}')
        common.require(row, ["label"], f"{path}:{number}")
        out.append({"sentence": text, "sentence2": row.get("sentence2"), "label": str(row["label"])})
    return out


def featurize(
    records: list[dict], tokenizer: common.Tokenizer, max_length: int, label2id: dict[str, int] | None
) -> list[dict]:
    features = []
    for r in records:
        second = tokenizer.ids(r["sentence2"]) if r["sentence2"] is not None else None
        ids, types = common.pair_inputs(tokenizer, tokenizer.ids(r["sentence"]), second, max_length)
        feature = {"input_ids": ids, "token_type_ids": types}
        if label2id is not None:
            if r["label"] not in label2id:
                raise ValueError(f"label {r['label']!r} is not among the training labels {sorted(label2id)}")
            feature["labels"] = label2id[r["label"]]
        features.append(feature)
    return features


def predict(model, features: list[dict], tokenizer: common.Tokenizer, batch_size: int, device) -> list[int]:
    predictions = [0] * len(features)
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id)  # noqa: E731
    for indices, _, out in common.batched_eval(model, features, collate, batch_size, device):
        for i, p in zip(indices, out.logits.argmax(-1).tolist(), strict=True):
            predictions[i] = p
    return predictions


def evaluate(model, features: list[dict], tokenizer, batch_size: int, device) -> dict[str, float]:
    predictions = predict(model, features, tokenizer, batch_size, device)
    return classification_metrics([f["labels"] for f in features], predictions)


def predict_only(args) -> int:
    """--predict: classify the given sentences with --model-dir, no training."""
    tokenizer = common.Tokenizer.from_directory(args.model_dir)
    model = NezhaForSequenceClassification.from_pretrained(
        args.model_dir, attn_backend=args.backend, device=args.device
    ).eval()
    records = [{"sentence": s, "sentence2": None, "label": ""} for s in args.predict]
    features = featurize(records, tokenizer, args.max_length, None)
    with torch.no_grad():
        for text, feature in zip(args.predict, features, strict=True):
            batch = common.to_device(common.collate_padded([feature], tokenizer.pad_id), args.device)
            probs = model(**batch).logits.float().softmax(-1)[0]
            best = int(probs.argmax())
            print(f"{model.config.id2label[best]}  p={probs[best]:.3f}  {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], "text_classification")
    p.add_argument("--predict", action="append", help="with --model-dir: only classify this sentence (repeatable)")
    args = common.resolve(p.parse_args(argv), SCRATCH, PRETRAINED)
    if args.predict:
        if not args.model_dir:
            p.error("--predict needs --model-dir")
        return predict_only(args)

    tokenizer = common.load_tokenizer(args)
    train, dev = read(args.train), read(args.dev)
    labels = sorted({r["label"] for r in train})
    label2id = {label: i for i, label in enumerate(labels)}
    train_features = featurize(train, tokenizer, args.max_length, label2id)
    dev_features = featurize(dev, tokenizer, args.max_length, label2id)

    model = common.build_model(
        NezhaForSequenceClassification,
        args,
        tokenizer,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label2id,
    )
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id, ["labels"])  # noqa: E731
    common.fit(
        model,
        train_features,
        collate,
        lambda m: evaluate(m, dev_features, tokenizer, args.batch_size, args.device),
        args,
    )

    keep: list = []
    reloaded = common.save_and_reload(model, tokenizer, args, keep)
    shown = dev[:5]
    for r, p in zip(shown, predict(reloaded, dev_features[:5], tokenizer, args.batch_size, args.device), strict=True):
        print(f"  {r['sentence']}  -> {labels[p]}  (gold {r['label']})")
    print(common.final_line(evaluate(reloaded, dev_features, tokenizer, args.batch_size, args.device), "accuracy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
