"""The task metrics of the five programs: plain Python on lists, so they are easy to check by hand."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence


def classification_metrics(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of the per-label F1 over every label in gold or pred, as scikit-learn)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred must have the same length, got {len(gold)} and {len(pred)}")
    if not gold:
        raise ValueError("classification_metrics needs at least one example")
    correct = sum(g == p for g, p in zip(gold, pred, strict=True))
    f1s = []
    for label in set(gold) | set(pred):
        tp = sum(g == label and p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": correct / len(gold), "macro_f1": sum(f1s) / len(f1s)}


def bio_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """Entities of a BIO tag sequence as (start, end_exclusive, type).

    As conlleval: an I-X that does not continue an X entity starts a new one; O and B- close the open one.
    """
    spans: list[tuple[int, int, str]] = []
    start, kind = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if prefix not in ("B", "I", "O"):
            raise ValueError(f"tag {tag!r} at position {i} is not O, B-<type> or I-<type>")
        continues = prefix == "I" and kind == label
        if kind is not None and not continues:
            spans.append((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return spans


def span_f1(gold: Iterable[Iterable[tuple]], pred: Iterable[Iterable[tuple]]) -> dict[str, float]:
    """Entity-level micro precision / recall / F1: an entity counts when its start, end and type all match.

    gold, pred: one collection of (start, end, type) per sentence.
    """
    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred, strict=True):
        g, p = set(g), set(p)
        tp += len(g & p)
        n_gold += len(g)
        n_pred += len(p)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "precision": precision, "recall": recall}


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return 0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0xF900 <= cp <= 0xFAFF or 0x20000 <= cp <= 0x2FA1F


def answer_units(text: str) -> list[str]:
    """CMRC 2018's evaluation units: each CJK character alone, runs of other letters/digits as one unit,
    lower-cased; punctuation and spaces dropped."""
    units, word = [], ""
    for ch in text.lower():
        if _is_cjk(ch) or ch.isspace() or unicodedata.category(ch).startswith(("P", "S")):
            if word:
                units.append(word)
                word = ""
            if _is_cjk(ch):
                units.append(ch)
        else:
            word += ch
    if word:
        units.append(word)
    return units


def _longest_common_substring(a: list[str], b: list[str]) -> int:
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def qa_exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction equals one of the answers after normalization (answer_units), else 0.0."""
    units = answer_units(prediction)
    return float(any(units == answer_units(a) for a in answers))


def qa_f1(prediction: str, answers: Sequence[str]) -> float:
    """CMRC 2018's F1: the best over the answers of the F1 of the longest common substring of units."""
    pred = answer_units(prediction)
    best = 0.0
    for answer in answers:
        gold = answer_units(answer)
        common = _longest_common_substring(pred, gold)
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def qa_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 over the examples (each with one or more gold answers)."""
    if len(predictions) != len(answers) or not predictions:
        raise ValueError(f"need as many predictions as answer lists (> 0), got {len(predictions)} and {len(answers)}")
    em = sum(qa_exact_match(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)
    f1 = sum(qa_f1(p, a) for p, a in zip(predictions, answers, strict=True)) / len(predictions)
    return {"f1": f1, "em": em}


def most_common_rate(values: Iterable[Hashable]) -> float:
    """The share of the most frequent value: the accuracy of always guessing it."""
    counts = Counter(values)
    return max(counts.values()) / sum(counts.values())
