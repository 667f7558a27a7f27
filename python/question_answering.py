"""Fine-tune NEZHA for extractive question answering (CMRC 2018 style); EM and F1 on dev.

    python python/question_answering.py                       # tiny model, shipped synthetic contexts
    python python/question_answering.py --model-dir nezha-cn-base --train train.jsonl --dev dev.jsonl

Data: CMRC 2018's SQuAD-format JSON flattened to one question per line:
    {"id": "...", "context": "...", "question": "...", "answers": {"text": ["..."], "answer_start": [17]}}
(answer_start counts characters of the context; ``"answers": [{"text", "answer_start"}, ...]`` is accepted
too). Training uses the first answer; EM and F1 take the best over all answers, with CMRC 2018's F1
(longest common substring of characters, punctuation dropped).

A context longer than the window is split into windows that overlap by --doc-stride tokens (as
transformers' run_qa.py); a window without the answer is trained to point at [CLS]. The prediction is
the best-scoring span (start logit + end logit, start <= end, at most --max-answer-tokens pieces) over
all windows of the question. Last line: ``dev f1: F em: E``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as common
from _metrics import qa_metrics

from nezha_kernels.models import NezhaForQuestionAnswering

SCRATCH = dict(epochs=20, batch_size=32, lr=2e-3, max_length=48, doc_stride=12, max_query_length=16)
PRETRAINED = dict(epochs=2, batch_size=16, lr=3e-5, max_length=384, doc_stride=128, max_query_length=64)

Offset = tuple[int, int] | None  # a piece's characters in the context; None outside the context


def doc_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, end_exclusive) windows of at most ``window`` tokens over ``n_tokens`` context tokens;
    consecutive windows overlap by ``stride`` tokens and the last one ends at ``n_tokens``."""
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window} (raise --max-length or lower --max-query-length)")
    if not 0 <= stride < window:
        raise ValueError(f"--doc-stride must be in [0, {window}) for a window of {window} tokens, got {stride}")
    windows, start = [], 0
    while True:
        end = min(start + window, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            return windows
        start += window - stride


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The first and last context piece (inclusive) covering characters [start, end); None if none does."""
    inside = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def best_span(
    windows: Sequence[tuple[Sequence[float], Sequence[float], Sequence[Offset]]],
    max_answer_tokens: int = 30,
    top_k: int = 20,
) -> tuple[int, int, float] | None:
    """The best answer over a question's windows: (char_start, char_end_exclusive, score).

    windows: (start_logits, end_logits, offsets) per window, one entry per input position; only
    positions with an offset (context pieces) can start or end the answer. Among the top_k starts and
    ends of each window, the highest start + end logit with start <= end and at most max_answer_tokens
    pieces wins. None when no window has a valid span.
    """
    best = None
    for start_logits, end_logits, offsets in windows:
        starts = sorted(range(len(start_logits)), key=lambda i: -start_logits[i])[:top_k]
        ends = sorted(range(len(end_logits)), key=lambda i: -end_logits[i])[:top_k]
        for s in starts:
            for e in ends:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = start_logits[s] + end_logits[e]
                if best is None or score > best[2]:
                    best = (offsets[s][0], offsets[e][1], float(score))
    return best


def read(path: str) -> list[dict]:
    """Records as {"id", "context", "question", "answers": [(text, start)]}; answers must match the context."""
    out = []
    for number, row in enumerate(common.read_jsonl(path), 1):
        where = f"{path}:{number}"
        common.require(row, ["context", "question", "answers"], where)
        answers = row["answers"]
        if isinstance(answers, dict):
            pairs = list(zip(answers.get("text", []), answers.get("answer_start", []), strict=True))
        else:
            pairs = [(a["text"], a["answer_start"]) for a in answers]
        if not pairs:
            raise ValueError(f"{where}: no answer")
        for text, start in pairs:
            if row["context"][start : start + len(text)] != text:
                raise ValueError(f"{where}: answer {text!r} is not at character {start} of the context")
        out.append(
            {"id": row.get("id", str(number)), "context": row["context"], "question": row["question"], "answers": pairs}
        )
    return out


def featurize(records: list[dict], tokenizer: common.Tokenizer, args, training: bool) -> list[dict]:
    """One feature per window: [CLS] question [SEP] context window [SEP], its offsets and (training) labels."""
    features = []
    for index, r in enumerate(records):
        question = tokenizer.ids(r["question"])[: args.max_query_length]
        context, offsets = tokenizer.encode(r["context"])
        window = args.max_length - len(question) - 3
        answer = None
        if training:
            text, start = r["answers"][0]
            answer = char_to_token_span(offsets, start, start + len(text))
        for ws, we in doc_windows(len(context), window, args.doc_stride):
            ids, types = common.pair_inputs(tokenizer, question, context[ws:we], args.max_length)
            first = len(question) + 2  # input position of context piece ws
            feature = {
                "input_ids": ids,
                "token_type_ids": types,
                "example": index,
                "offsets": [None] * first + list(offsets[ws:we]) + [None],
            }
            if training:
                if answer is None:
                    continue
                inside = ws <= answer[0] and answer[1] < we
                feature["start_positions"] = first + answer[0] - ws if inside else 0
                feature["end_positions"] = first + answer[1] - ws if inside else 0
            features.append(feature)
    return features


def predict(model, records: list[dict], features: list[dict], tokenizer, args) -> list[str]:
    per_example: list[list] = [[] for _ in records]
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id)  # noqa: E731
    for indices, _, out in common.batched_eval(model, features, collate, args.batch_size, args.device):
        starts, ends = out.start_logits.tolist(), out.end_logits.tolist()
        for row, i in enumerate(indices):
            n = len(features[i]["input_ids"])
            per_example[features[i]["example"]].append((starts[row][:n], ends[row][:n], features[i]["offsets"]))
    answers = []
    for r, windows in zip(records, per_example, strict=True):
        span = best_span(windows, args.max_answer_tokens)
        answers.append(r["context"][span[0] : span[1]] if span else "")
    return answers


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.split("\n\n")[0], "question_answering")
    p.add_argument("--doc-stride", type=int, help="tokens shared by consecutive windows of a long context")
    p.add_argument("--max-query-length", type=int, help="question pieces kept")
    p.add_argument("--max-answer-tokens", type=int, default=30, help="longest answer predicted, in pieces")
    args = common.resolve(p.parse_args(argv), SCRATCH, PRETRAINED)
    tokenizer = common.load_tokenizer(args)
    train, dev = read(args.train), read(args.dev)
    train_features = featurize(train, tokenizer, args, training=True)
    dev_features = featurize(dev, tokenizer, args, training=False)
    gold = [[text for text, _ in r["answers"]] for r in dev]
    print(f"{len(dev)} dev questions in {len(dev_features)} windows")

    def evaluate(model) -> dict[str, float]:
        return qa_metrics(predict(model, dev, dev_features, tokenizer, args), gold)

    model = common.build_model(NezhaForQuestionAnswering, args, tokenizer, num_labels=2)
    collate = lambda fs: common.collate_padded(fs, tokenizer.pad_id, ["start_positions", "end_positions"])  # noqa
    common.fit(model, train_features, collate, evaluate, args)

    keep: list = []
    reloaded = common.save_and_reload(model, tokenizer, args, keep)
    shown = dev[:5]
    for r, answer in zip(
        shown, predict(reloaded, shown, featurize(shown, tokenizer, args, False), tokenizer, args), strict=True
    ):
        print(f"  {r['question']}  -> {answer or '-'}  (gold {r['answers'][0][0]})")
    print(common.final_line(evaluate(reloaded), "f1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
