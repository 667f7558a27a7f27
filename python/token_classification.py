"""Fine-tune NEZHA for named-entity recognition (CLUENER / People's Daily style); entity-level F1 on dev.

    python python/token_classification.py                     # tiny model, shipped person/place/org data
    python python/token_classification.py --model-dir nezha-cn-base --train train.jsonl --dev dev.jsonl

Data: JSONL, one sentence per line, either CLUENER's
    {"text": "...", "label": {"name": {"张三": [[0, 1]]}, "address": {...}}}   (character spans, end inclusive)
or BIO over characters (People's Daily):
    {"tokens": ["张", "三", ...], "tags": ["B-PER", "I-PER", "O", ...]}       ("ner_tags" also accepted)
Entities are character spans; they are mapped to word pieces through the tokenizer's offsets (a piece
that starts an entity is B-, one inside it I-, the rest O) and predictions back to characters, so the
score is entity-level F1 on the original text. Last line: ``dev entity_f1: F precision: P recall: R``.
"""

from __future__ import annotations

import sys

import _common as common
from _metrics import bio_to_spans, span_f1

from nezha_kernels.models import NezhaForTokenClassification

SCRATCH = dict(epochs=10, batch_size=32, lr=2e-3, max_length=64)
PRETRAINED = dict(epochs=3, batch_size=32, lr=3e-5, max_length=256)

Span = tuple[int, int, str]  # (start, end_exclusive, type) in characters


def read(path: str) -> list[dict]:
    """Records as {"text", "spans": sorted [(start, end_exclusive, type)]}."""
    out = []
    for number, row in enumerate(common.read_jsonl(path), 1):
        where = f"{path}:{number}"
        if "text" in row:
            common.require(row, ["label"], where)
            spans = []
            for kind, entities in (row["label"] or {}).items():
                for entity, positions in entities.items():
                    for start, end in positions:
                        if row["text"][start : end + 1] != entity:
                            raise ValueError(
                                f"{where}: span [{start}, {end}] of {kind} is "
                                f"{row['text'][start : end + 1]!r}, not {entity!r}"
                            )
                        spans.append((start, end + 1, kind))
            out.append({"text": row["text"], "spans": sorted(spans)})
        else:
            tags = row.get("tags", row.get("ner_tags"))
            if "tokens" not in row or tags is None or len(tags) != len(row["tokens"]):
                raise ValueError(
                    f'{where}: needs "text" + "label" (CLUENER) or "tokens" + "tags" of equal '
                    f"length (BIO), has {sorted(row)}"
                )
            starts = [0]
            for token in row["tokens"]:
                starts.append(starts[-1] + len(token))
            spans = [(starts[s], starts[e], kind) for s, e, kind in bio_to_spans(tags)]
            out.append({"text": "".join(row["tokens"]), "spans": spans})
    return out


def piece_tags(offsets: list[tuple[int, int]], spans: list[Span]) -> list[str]:
    """The BIO tag of each word piece: B- if it starts an entity, I- if it starts inside one, else O."""
    tags = []
    for start, _ in offsets:
        tag = "O"
        for s, e, kind in spans:
            if s <= start < e:
                tag = ("B-" if start == s else "I-") + kind
                break
        tags.append(tag)
    return tags


def pieces_to_chars(tags: list[str], offsets: list[tuple[int, int]]) -> list[Span]:
    """Entities of predicted piece tags as character spans (first piece's start, last piece's end)."""
    return [(offsets[s][0], offsets[e - 1][1], kind) for s, e, kind in bio_to_spans(tags)]


def featurize(
    records: list[dict], tokenizer: common.Tokenizer, max_length: int, label2id: dict[str, int]
) -> list[dict]:
    features = []
    for r in records:
        ids, offsets = tokenizer.encode(r["text"])
        ids, offsets = ids[: max_length - 2], offsets[: max_length - 2]  # longer texts: the tail is not tagged
        tags = piece_tags(offsets, r["spans"])
        unknown = sorted({t for t in tags if t not in label2id})
        if unknown:
            raise ValueError(f"entity tags {unknown} are not among the training tags")
        features.append(
            {
                "input_ids": [tokenizer.cls_id] + ids + [tokenizer.sep_id],
                "labels": [-100] + [label2id[t] for t in tags] + [-100],
                "offsets": offsets,
            }
        )
    return features


def predict_spans(
    model, features: list[dict], tokenizer, id2label: dict[int, str], batch_size: int, device
) -> list[list[Span]]:
    out_spans: list[list[Span]] = [[] for _ in features]
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id)  # noqa: E731
    for indices, _, out in common.batched_eval(model, features, collate, batch_size, device):
        best = out.logits.argmax(-1).tolist()
        for row, i in enumerate(indices):
            n = len(features[i]["offsets"])
            tags = [id2label[t] for t in best[row][1 : n + 1]]
            out_spans[i] = pieces_to_chars(tags, features[i]["offsets"])
    return out_spans


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], "token_classification")
    args = common.resolve(p.parse_args(argv), SCRATCH, PRETRAINED)
    tokenizer = common.load_tokenizer(args)
    train, dev = read(args.train), read(args.dev)
    kinds = sorted({kind for r in train for _, _, kind in r["spans"]})
    labels = ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in ("B", "I")]
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))
    train_features = featurize(train, tokenizer, args.max_length, label2id)
    dev_features = featurize(dev, tokenizer, args.max_length, label2id)
    gold = [r["spans"] for r in dev]

    def evaluate(model) -> dict[str, float]:
        return span_f1(gold, predict_spans(model, dev_features, tokenizer, id2label, args.batch_size, args.device))

    model = common.build_model(
        NezhaForTokenClassification, args, tokenizer, num_labels=len(labels), id2label=id2label, label2id=label2id
    )
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id, ["labels"])  # noqa: E731
    common.fit(model, train_features, collate, evaluate, args)

    keep: list = []
    reloaded = common.save_and_reload(model, tokenizer, args, keep)
    predicted = predict_spans(reloaded, dev_features[:5], tokenizer, id2label, args.batch_size, args.device)
    for r, spans in zip(dev[:5], predicted, strict=True):
        found = ", ".join(f"{r['text'][s:e]}/{kind}" for s, e, kind in spans) or "-"
        print(f"  {r['text']}  -> {found}")
    print(common.final_line(evaluate(reloaded), "entity_f1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
