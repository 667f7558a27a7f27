"""Train or adapt NEZHA's masked language model with whole-word masking; masked accuracy and perplexity on dev.

    python python/masked_lm.py                                # tiny model from scratch, shipped sentences
    python python/masked_lm.py --model-dir nezha-cn-base --train corpus.jsonl --dev held_out.jsonl

Data: JSONL, one {"text": "..."} per line; a text longer than --max-length is cut into consecutive pieces.
Whole-word masking as NEZHA's pretraining: words come from ``jieba`` when it is installed (else every
character is a word; the first line printed says which); words are picked at random until 15% of the pieces
are covered, and all pieces of a picked word are replaced together (80% [MASK], 10% a random piece, 10% kept),
drawn anew every epoch.
Dev is masked once, with a fixed seed and always with [MASK]: masked accuracy is the share of those
pieces predicted exactly, perplexity exp(mean cross-entropy) over them.
Last line: ``dev masked_accuracy: A perplexity: P``.
"""

from __future__ import annotations

import logging
import math
import random
import sys

import _common as common
import torch

from nezha_kernels.models import NezhaForMaskedLM

SCRATCH = dict(epochs=12, batch_size=32, lr=2e-3, max_length=64)
PRETRAINED = dict(epochs=3, batch_size=32, lr=3e-5, max_length=128)
MASK_RATIO = 0.15


def masking_mode() -> str:
    """Which masking runs, printed first: without jieba the words are single characters, a different task that
    scores differently (0.43 vs 0.56 masked accuracy on the shipped data), so a run says which it was."""
    try:
        import jieba
    except ImportError:
        return "masking: single characters (jieba not installed; pip install jieba for whole-word masking)"
    return f"masking: whole words (jieba {getattr(jieba, '__version__', '?')})"


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``: jieba's segmentation when installed, else one per character."""
    try:
        import jieba
    except ImportError:
        return [(i, i + 1) for i in range(len(text))]
    jieba.setLogLevel(logging.WARNING)
    return [(start, end) for _, start, end in jieba.tokenize(text)]


def word_groups(offsets: list[tuple[int, int]], words: list[tuple[int, int]]) -> list[list[int]]:
    """Piece indices grouped by word: a piece belongs to the word holding its first character."""
    groups: dict[int, list[int]] = {}
    for piece, (start, _) in enumerate(offsets):
        word = next((w for w, (a, b) in enumerate(words) if a <= start < b), len(words) + piece)
        groups.setdefault(word, []).append(piece)
    return list(groups.values())


def whole_word_mask(
    ids: list[int],
    groups: list[list[int]],
    rng: random.Random,
    tokenizer: common.Tokenizer,
    ratio: float = MASK_RATIO,
    always_mask: bool = False,
) -> tuple[list[int], list[int]]:
    """(inputs, labels): whole words picked until ratio of the pieces is covered; labels -100 elsewhere."""
    target = max(1, round(ratio * sum(len(g) for g in groups)))
    inputs, labels = list(ids), [-100] * len(ids)
    covered = 0
    for group in rng.sample(groups, len(groups)):
        if covered >= target:
            break
        if covered and covered + len(group) > target:
            continue
        covered += len(group)
        choice = rng.random()
        for piece in group:
            labels[piece] = ids[piece]
            if always_mask or choice < 0.8:
                inputs[piece] = tokenizer.mask_id
            elif choice < 0.9:
                inputs[piece] = rng.randrange(tokenizer.vocab_size)
    return inputs, labels


def featurize(texts: list[str], tokenizer: common.Tokenizer, max_length: int) -> list[dict]:
    """{"ids": pieces without [CLS]/[SEP], "groups": word groups}, long texts cut into max_length - 2 pieces."""
    features = []
    window = max_length - 2
    for text in texts:
        ids, offsets = tokenizer.encode(text)
        groups = word_groups(offsets, word_spans(text))
        for start in range(0, max(len(ids), 1), window):
            chunk = [[p - start for p in g if start <= p < start + window] for g in groups]
            features.append({"ids": ids[start : start + window], "groups": [g for g in chunk if g]})
    return [f for f in features if f["ids"]]


def masked(feature: dict, rng: random.Random, tokenizer: common.Tokenizer, always_mask: bool = False) -> dict:
    inputs, labels = whole_word_mask(feature["ids"], feature["groups"], rng, tokenizer, always_mask=always_mask)
    return {"input_ids": [tokenizer.cls_id] + inputs + [tokenizer.sep_id], "labels": [-100] + labels + [-100]}


def evaluate(model, dev: list[dict], tokenizer, args) -> dict[str, float]:
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id, ["labels"])  # noqa: E731
    correct = count = 0
    loss_sum = 0.0
    for _, batch, out in common.batched_eval(model, dev, collate, args.batch_size, args.device):
        labels = batch["labels"]
        keep = labels != -100
        logits = out.logits[keep].float()
        loss_sum += torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum").item()
        correct += (logits.argmax(-1) == labels[keep]).sum().item()
        count += int(keep.sum())
    return {"masked_accuracy": correct / count, "perplexity": math.exp(loss_sum / count)}


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], "masked_lm")
    args = common.resolve(p.parse_args(argv), SCRATCH, PRETRAINED)
    print(masking_mode(), flush=True)
    tokenizer = common.load_tokenizer(args)
    texts = {}
    for split, path in (("train", args.train), ("dev", args.dev)):
        rows = common.read_jsonl(path)
        for number, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise ValueError(f'{path}:{number}: needs a string "text", has {sorted(row)}')
        texts[split] = [row["text"] for row in rows]
    train_features = featurize(texts["train"], tokenizer, args.max_length)
    dev_rng = random.Random(args.seed + 1)
    dev = [masked(f, dev_rng, tokenizer, always_mask=True) for f in featurize(texts["dev"], tokenizer, args.max_length)]

    model = common.build_model(NezhaForMaskedLM, args, tokenizer)
    train_rng = random.Random(args.seed + 2)  # fresh masks every time a feature is batched

    def collate(fs):
        return common.collate_padded([masked(f, train_rng, tokenizer) for f in fs], tokenizer.pad_id, ["labels"])

    common.fit(
        model,
        train_features,
        collate,
        lambda m: evaluate(m, dev, tokenizer, args),
        args,
        lengths=[len(f["ids"]) + 2 for f in train_features],
    )

    keep: list = []
    reloaded = common.save_and_reload(model, tokenizer, args, keep)
    with torch.no_grad():
        for feature in dev[:5]:
            batch = common.to_device(common.collate_padded([feature], tokenizer.pad_id), args.device)
            best = reloaded(**batch).logits[0].argmax(-1).tolist()
            ids = feature["input_ids"]
            shown = "".join(tokenizer.tokens(ids[1:-1]))
            filled = "".join(
                tokenizer.tokens(
                    [
                        best[i] if lab != -100 else t
                        for i, (t, lab) in enumerate(zip(ids, feature["labels"], strict=True))
                    ][1:-1]
                )
            )
            print(f"  {shown}  -> {filled}")
    print(common.final_line(evaluate(reloaded, dev, tokenizer, args), "masked_accuracy"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
