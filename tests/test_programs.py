"""The five task programs in python/: end to end on the shipped data (subprocess, CPU), and their pieces.

Each program runs with no data arguments but fewer epochs than its default, and its dev metric, parsed
from the last line, must beat the task's chance level by the margin stated next to it. The metric
functions, doc-stride windows, best-span decoding, label alignment and whole-word masking are checked
on hand-computed examples.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ROOT / "python"
DATA = PROGRAMS / "data"
sys.path.insert(0, str(PROGRAMS))

import _common as common  # noqa: E402
import masked_lm  # noqa: E402
import multiple_choice  # noqa: E402
import question_answering as qa  # noqa: E402
import token_classification as ner  # noqa: E402
from _metrics import (  # noqa: E402
    answer_units,
    bio_to_spans,
    classification_metrics,
    qa_exact_match,
    qa_f1,
    qa_metrics,
    span_f1,
)

LAST_LINE = re.compile(r"^dev (\w+): (-?[0-9.]+)(?: \w+: -?[0-9.]+)*$")


def dev_rows(task: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / task / "dev.jsonl").read_text(encoding="utf-8").splitlines()]


def run_program(script: str, *args: str) -> tuple[str, float, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(PROGRAMS / script), "--device", "cpu", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    last = proc.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, f"{script}: last line {last!r} is not 'dev <metric>: <value> ...'"
    return match.group(1), float(match.group(2)), proc.stdout


# ---- chance levels -------------------------------------------------------------------------
def chance_text_classification() -> float:
    """Always the most frequent dev label."""
    counts = Counter(r["label"] for r in dev_rows("text_classification"))
    return max(counts.values()) / sum(counts.values())


def chance_question_answering() -> float:
    """F1 of a span of the gold answer's length at a uniformly random place in the context (exact mean)."""
    scores = []
    for r in dev_rows("question_answering"):
        gold, context = r["answers"]["text"][0], r["context"]
        spans = [context[i : i + len(gold)] for i in range(len(context) - len(gold) + 1)]
        scores.append(sum(qa_f1(s, [gold]) for s in spans) / len(spans))
    return sum(scores) / len(scores)


def chance_masked_lm() -> float:
    """Always the most frequent character of the dev texts."""
    counts = Counter(ch for r in dev_rows("masked_lm") for ch in r["text"])
    return max(counts.values()) / sum(counts.values())


def chance_multiple_choice() -> float:
    """A uniformly random choice."""
    rows = dev_rows("multiple_choice")
    return sum(1 / len(r["choice"]) for r in rows) / len(rows)


# (script, reduced run, metric, chance level, margin the metric must clear it by)
CASES = [
    # chance 0.435 (majority label); 0.25 above it needs the polarity, not only neutral vs opinion (<= 0.72)
    pytest.param(
        "text_classification.py",
        ["--epochs", "8"],
        "accuracy",
        chance_text_classification,
        0.25,
        id="text_classification",
    ),
    # chance 0: a tagger that finds no entity, or random tags, scores ~0 entity-level F1
    pytest.param(
        "token_classification.py", ["--epochs", "4"], "entity_f1", lambda: 0.0, 0.6, id="token_classification"
    ),
    # chance 0.137 (a random span of the right length)
    pytest.param(
        "question_answering.py",
        ["--epochs", "5"],
        "f1",
        chance_question_answering,
        0.25,
        id="question_answering",
        marks=pytest.mark.slow,
    ),
    # chance 0.060 (the most frequent character)
    pytest.param("masked_lm.py", ["--epochs", "5"], "masked_accuracy", chance_masked_lm, 0.15, id="masked_lm"),
    # chance 0.25 (4 choices); 150 dev questions: 0.1 above it is ~3 standard deviations of a guesser
    pytest.param(
        "multiple_choice.py",
        ["--epochs", "6"],
        "accuracy",
        chance_multiple_choice,
        0.1,
        id="multiple_choice",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, metric, chance, margin", CASES)
def test_program_beats_chance(script, args, metric, chance, margin, tmp_path):
    name, value, output = run_program(script, *args, "--output-dir", str(tmp_path / "model"))
    assert name == metric
    level = chance()
    assert value > level + margin, f"{script}: dev {metric} {value:.4f} <= chance {level:.4f} + {margin}\n{output}"
    assert "saved to" in output and (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "model" / "vocab.txt").is_file()


@pytest.mark.slow
def test_model_dir_fine_tunes_and_predicts(tmp_path):
    """A checkpoint directory written by one run is fine-tuned by --model-dir (on explicit --train / --dev), and
    --predict classifies with the result: one line per sentence."""
    run_program("text_classification.py", "--max-steps", "3", "--output-dir", str(tmp_path / "a"))
    train, dev = DATA / "text_classification" / "train.jsonl", DATA / "text_classification" / "dev.jsonl"
    name, value, output = run_program(
        "text_classification.py",
        "--model-dir",
        str(tmp_path / "a"),
        "--train",
        str(train),
        "--dev",
        str(dev),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--max-length",
        "48",
        "--output-dir",
        str(tmp_path / "b"),
    )
    assert name == "accuracy" and 0.0 <= value <= 1.0 and "2 steps of batch 8" in output
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [
            sys.executable,
            str(PROGRAMS / "text_classification.py"),
            "--model-dir",
            str(tmp_path / "b"),
            "--predict",
            "这家酒店很干净。",
            "--predict",
            "菜不好吃。",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("这家酒店很干净。") and lines[0].split()[0] in {"正面", "负面", "中性"}


# ---- metrics -------------------------------------------------------------------------------
def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    # F1: a = 2*1/(2+1+1) = 0.5, b = 2/(2+1) = 2/3, c = 0
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="same length"):
        classification_metrics([1], [1, 2])


def test_bio_to_spans():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "B-ORG", "I-PER"]
    assert bio_to_spans(tags) == [(0, 2, "PER"), (3, 5, "LOC"), (5, 6, "ORG"), (6, 7, "ORG"), (7, 8, "PER")]
    assert bio_to_spans(["O", "O"]) == []
    with pytest.raises(ValueError, match="X-PER"):
        bio_to_spans(["X-PER"])


def test_span_f1():
    gold = [[(0, 2, "P"), (3, 5, "L")], [(1, 3, "O")]]
    pred = [[(0, 2, "P"), (3, 4, "L")], [(1, 3, "O"), (4, 5, "P")]]
    m = span_f1(gold, pred)  # tp 2, 4 predicted, 3 gold
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert span_f1([[(0, 1, "P")]], [[(0, 1, "L")]])["entity_f1"] == 0.0  # the type must match too


def test_qa_em_f1():
    assert answer_units("NEZHA模型 v2。") == ["nezha", "模", "型", "v2"]
    assert qa_exact_match("北京。", ["北京"]) == 1.0 and qa_exact_match("北京大学", ["北京"]) == 0.0
    assert qa_f1("北京大学", ["北京"]) == pytest.approx(2 * 0.5 * 1.0 / 1.5)  # common 2: P 2/4, R 2/2
    assert qa_f1("上海", ["北京"]) == 0.0
    assert qa_f1("在北京工作", ["上海", "北京工作"]) == pytest.approx(2 * 0.8 * 1.0 / 1.8)  # best answer: P 4/5, R 1
    m = qa_metrics(["北京", "北京大学"], [["北京"], ["北京"]])
    assert m["em"] == pytest.approx(0.5) and m["f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_doc_windows():
    assert qa.doc_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert qa.doc_windows(4, 4, 1) == [(0, 4)]
    assert qa.doc_windows(0, 4, 1) == [(0, 0)]
    assert qa.doc_windows(11, 5, 2) == [(0, 5), (3, 8), (6, 11)]
    for n, window, stride in [(97, 13, 5), (200, 50, 0), (51, 50, 49)]:
        windows = qa.doc_windows(n, window, stride)
        assert windows[0][0] == 0 and windows[-1][1] == n
        assert all(e - s <= window for s, e in windows)
        assert all(a[1] - b[0] == stride for a, b in zip(windows, windows[1:-1], strict=False))  # all but the last step
    with pytest.raises(ValueError, match="doc-stride"):
        qa.doc_windows(10, 4, 4)


def test_best_span_over_windows():
    none2 = [None, None]
    # window 1: positions 2..4 are context characters 0..2; window 2: positions 2..4 are characters 2..4
    w1 = ([0, 0, 1.0, 3.0, 0], [0, 0, 0, 2.0, 1.0], none2 + [(0, 1), (1, 2), (2, 3)])
    w2 = ([9.0, 0, 0, 2.5, 0], [9.0, 0, 0, 0, 3.0], none2 + [(2, 3), (3, 4), (4, 5)])
    # w1 best: start 3 + end 3 = 5.0 (chars 1..2); w2: [CLS] scores 18 but is not context; start 3 + end 4
    # = 5.5 (chars 3..5) wins
    assert qa.best_span([w1, w2]) == (3, 5, 5.5)
    assert qa.best_span([w1]) == (1, 2, 5.0)
    assert qa.best_span([w1], max_answer_tokens=1) == (1, 2, 5.0)
    w3 = ([0, 0, 0, 0, 5.0], [0, 0, 4.0, 0, 0], none2 + [(0, 1), (1, 2), (2, 3)])  # end before start is refused
    assert qa.best_span([w3]) == (2, 3, 5.0)
    assert qa.best_span([([1.0, 2.0], [1.0, 2.0], none2)]) is None


def test_qa_features_point_at_the_answer():
    """A long context in several windows: the windows holding the answer label its pieces exactly."""
    tokenizer = common.Tokenizer(str(DATA / "vocab.txt"))
    context = "那天天气很好。" * 6 + "王伟在星海银行工作。" + "大家都很开心。" * 4
    record = {
        "id": "x",
        "context": context,
        "question": "王伟在哪里工作？",
        "answers": [("星海银行", context.index("星海银行"))],
    }
    args = type("Args", (), dict(max_length=32, doc_stride=8, max_query_length=16))
    features = qa.featurize([record], tokenizer, args, training=True)
    assert len(features) > 3
    positive = [f for f in features if f["start_positions"] > 0]
    assert positive and len(positive) < len(features)
    for f in positive:
        pieces = f["input_ids"][f["start_positions"] : f["end_positions"] + 1]
        assert "".join(tokenizer.tokens(pieces)) == "星海银行"
        s, e = f["offsets"][f["start_positions"]], f["offsets"][f["end_positions"]]
        assert context[s[0] : e[1]] == "星海银行"
    assert all(len(f["input_ids"]) <= 32 for f in features)


# ---- alignment and masking -----------------------------------------------------------------
def test_ner_alignment_through_offsets():
    offsets = [(0, 1), (1, 3), (3, 4), (4, 5)]  # the second piece covers two characters
    spans = [(1, 4, "LOC"), (4, 5, "PER")]
    tags = ner.piece_tags(offsets, spans)
    assert tags == ["O", "B-LOC", "I-LOC", "B-PER"]
    assert ner.pieces_to_chars(tags, offsets) == spans


def test_ner_formats_agree(tmp_path):
    cluener = tmp_path / "c.jsonl"
    cluener.write_text(
        json.dumps({"text": "王伟去了上海。", "label": {"name": {"王伟": [[0, 1]]}, "address": {"上海": [[4, 5]]}}})
        + "\n"
    )
    bio = tmp_path / "b.jsonl"
    bio.write_text(
        json.dumps(
            {"tokens": list("王伟去了上海。"), "tags": ["B-name", "I-name", "O", "O", "B-address", "I-address", "O"]}
        )
        + "\n"
    )
    assert (
        ner.read(str(cluener))
        == ner.read(str(bio))
        == [{"text": "王伟去了上海。", "spans": [(0, 2, "name"), (4, 6, "address")]}]
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "王伟去了上海。", "label": {"name": {"王伟": [[1, 2]]}}}) + "\n")
    with pytest.raises(ValueError, match="not '王伟'"):
        ner.read(str(bad))


def test_whole_word_mask():
    tokenizer = common.Tokenizer(str(DATA / "vocab.txt"))
    text = "王伟毕业于清华大学，清华大学在北京。"
    ids, offsets = tokenizer.encode(text)
    groups = masked_lm.word_groups(offsets, masked_lm.word_spans(text))
    assert sorted(p for g in groups for p in g) == list(range(len(ids)))
    rng = random.Random(3)
    for _ in range(50):
        inputs, labels = masked_lm.whole_word_mask(ids, groups, rng, tokenizer, always_mask=True)
        picked = {p for p, lab in enumerate(labels) if lab != -100}
        assert picked and len(picked) <= max(max(map(len, groups)), round(0.15 * len(ids)))
        for g in groups:  # a word is masked whole or not at all
            assert set(g) <= picked or not set(g) & picked
        assert all(inputs[p] == tokenizer.mask_id and labels[p] == ids[p] for p in picked)
        assert all(inputs[p] == ids[p] for p in range(len(ids)) if p not in picked)


def test_word_groups_without_jieba():
    offsets = [(0, 1), (1, 3), (3, 4)]
    assert masked_lm.word_groups(offsets, [(0, 3), (3, 4)]) == [[0, 1], [2]]
    assert masked_lm.word_groups(offsets, [(i, i + 1) for i in range(4)]) == [[0], [1], [2]]


def test_masked_lm_says_which_masking_runs(monkeypatch):
    """Without jieba the program masks single characters (and scores differently): it says so first."""
    pytest.importorskip("jieba")
    assert masked_lm.masking_mode().startswith("masking: whole words (jieba ")
    monkeypatch.setitem(sys.modules, "jieba", None)  # import fails: as if not installed
    assert masked_lm.masking_mode().startswith("masking: single characters (jieba not installed")
    assert masked_lm.word_spans("清华大学") == [(0, 1), (1, 2), (2, 3), (3, 4)]


@pytest.mark.slow  # one training step, an evaluation and a save / reload (~10 s)
def test_masked_lm_prints_its_masking_first(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "jieba", None)
    args = ["--max-steps", "1", "--epochs", "1", "--output-dir", str(tmp_path)]
    assert masked_lm.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == masked_lm.masking_mode() and lines[-1].startswith("dev masked_accuracy: ")


def test_device_cuda_on_a_cpu_torch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    args = common.parser("x", "text_classification").parse_args(["--device", "cuda"])
    with pytest.raises(ValueError, match=r"--device cuda: this torch \(.*\) is a CPU-only build; use --device cpu"):
        common.resolve(args, {"epochs": 1, "batch_size": 1, "max_length": 8}, {})
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build on a machine without a visible GPU
    with pytest.raises(ValueError, match="--device cuda:1: no CUDA device is visible"):
        common.resolve(
            common.parser("x", "text_classification").parse_args(["--device", "cuda:1"]),
            {"epochs": 1, "batch_size": 1, "max_length": 8},
            {},
        )


def test_multiple_choice_padding_never_predicted():
    tokenizer = common.Tokenizer(str(DATA / "vocab.txt"))
    records = [
        {"context": "王伟喜欢游泳。", "question": "王伟喜欢什么？", "choices": ["游泳", "唱歌"], "label": 0},
        {
            "context": "李娜在北京工作。",
            "question": "李娜在哪里工作？",
            "choices": ["上海", "北京", "天津", "西安"],
            "label": 1,
        },
    ]
    features = multiple_choice.featurize(records, tokenizer, 32)
    batch = multiple_choice.collate(features, tokenizer.pad_id)
    assert batch["input_ids"].shape[:2] == (2, 4)
    assert batch["choice_mask"].tolist() == [[True, True, False, False], [True] * 4]

    class Biased(torch.nn.Module):  # prefers the padded choices
        def forward(self, input_ids, attention_mask, token_type_ids):
            logits = torch.tensor([[0.0, 1.0, 9.0, 9.0], [0.0, 1.0, 2.0, 3.0]])
            return type("Out", (), {"logits": logits})

    assert multiple_choice.choice_logits(Biased(), batch).argmax(-1).tolist() == [1, 3]


def test_tokenizer_matches_bert_tokenizer_fast():
    """Our pieces and offsets are transformers' BertTokenizerFast's on the same vocab.txt (mixed text too)."""
    transformers = pytest.importorskip("transformers")
    ours = common.Tokenizer(str(DATA / "vocab.txt"))
    theirs = transformers.BertTokenizerFast(vocab_file=str(DATA / "vocab.txt"), do_lower_case=True)
    texts = [r["sentence"] for r in dev_rows("text_classification")[:20]] + ["NEZHA模型，Ｖ２版本！ 北京 ?", ""]
    for text in texts:
        encoding = theirs(text, add_special_tokens=False, return_offsets_mapping=True)
        assert ours.encode(text) == (encoding["input_ids"], [tuple(o) for o in encoding["offset_mapping"]])


def test_pair_inputs_truncates_the_longer_side():
    tokenizer = common.Tokenizer(str(DATA / "vocab.txt"))
    ids, types = common.pair_inputs(tokenizer, list(range(10, 20)), [30, 31], 8)
    assert ids == [tokenizer.cls_id, 10, 11, 12, tokenizer.sep_id, 30, 31, tokenizer.sep_id]
    assert types == [0] * 5 + [1] * 3


def test_linear_schedule():
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = common.linear_schedule(optimizer, warmup=3, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[3:] == pytest.approx([(10 - s) / 7 for s in range(3, 10)])


def test_bad_arguments():
    with pytest.raises(ValueError, match="--epochs"):
        common.resolve(
            common.parser("x", "text_classification").parse_args(["--epochs", "0"]),
            {"epochs": 1, "batch_size": 1, "max_length": 8},
            {},
        )
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        common.Tokenizer.from_directory(str(ROOT / "tests"))
