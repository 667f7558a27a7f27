"""What the five task programs share: arguments, the tokenizer, batching, the training loop, save and reload.

Each program (text_classification.py, ...) turns its JSONL records into features (dicts of lists), gives
a collate function and an evaluation function, and calls :func:`fit`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a clone without installing

from nezha_kernels.models import NezhaConfig  # noqa: E402

DATA_DIR = os.path.join(HERE, "data")
VOCAB_FILE = "vocab.txt"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ---- tokenizer -----------------------------------------------------------------------------
class Tokenizer:
    """BERT's WordPiece over a checkpoint's vocab.txt, through Hugging Face ``tokenizers``.

    BertWordPieceTokenizer normalizes as BERT does (lower-case, accents stripped, a space around every
    CJK character, punctuation split off) and returns each piece's character offsets into the original
    text, which the NER and QA programs need to map labels and answers between characters and pieces.
    """

    def __init__(self, vocab_file: str, lowercase: bool = True):
        from tokenizers import BertWordPieceTokenizer

        if not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"vocab_file: no such file {vocab_file!r}")
        self.vocab_file = vocab_file
        self._tok = BertWordPieceTokenizer.from_file(vocab_file, lowercase=lowercase)
        missing = [t for t in SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
        if missing:
            raise ValueError(f"{vocab_file} lacks the special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            self._tok.token_to_id(t) for t in SPECIAL_TOKENS
        )
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_directory(cls, directory: str) -> Tokenizer:
        """The vocab.txt of a checkpoint directory or of a Hub id ("org/name", from the Hub cache or downloaded)."""
        from nezha_kernels.hub import cached_file

        path = cached_file(directory, VOCAB_FILE, required=False)
        if path is None:
            raise FileNotFoundError(f"--model-dir {directory!r} has no {VOCAB_FILE}: the tokenizer needs it")
        return cls(path)

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Piece ids and their (start, end) character offsets in ``text``, without [CLS]/[SEP]."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def ids(self, text: str) -> list[int]:
        return self.encode(text)[0]

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def save(self, directory: str) -> None:
        shutil.copyfile(self.vocab_file, os.path.join(directory, VOCAB_FILE))


def pair_inputs(
    tokenizer: Tokenizer, first: list[int], second: list[int] | None, max_length: int
) -> tuple[list[int], list[int]]:
    """[CLS] first [SEP] (second [SEP]) and the token types, truncating the longer side first to max_length."""
    first, second = list(first), list(second) if second is not None else None
    budget = max_length - (3 if second is not None else 2)
    if budget < 2:
        raise ValueError(f"max_length must leave room for the text after [CLS]/[SEP], got {max_length}")
    while len(first) + len(second or []) > budget:
        if second is not None and len(second) > len(first):
            second.pop()
        else:
            first.pop()
    ids = [tokenizer.cls_id] + first + [tokenizer.sep_id]
    types = [0] * len(ids)
    if second is not None:
        ids += second + [tokenizer.sep_id]
        types += [1] * (len(second) + 1)
    return ids, types


# ---- data ----------------------------------------------------------------------------------
def read_jsonl(path: str) -> list[dict]:
    """One JSON object per line (blank lines skipped); ValueError naming the file and line otherwise."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def require(row: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing {missing} (has {sorted(row)})")


def pad_to(rows: Sequence[Sequence[int]], value: int, width: int | None = None) -> torch.Tensor:
    width = max(len(r) for r in rows) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate_padded(features: Sequence[dict], pad_id: int, labels: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """input_ids / token_type_ids right-padded, attention_mask (1 = token), and the label keys: lists are
    padded with -100 (ignored by the losses), scalars stacked."""
    batch = {"input_ids": pad_to([f["input_ids"] for f in features], pad_id)}
    width = batch["input_ids"].shape[1]
    batch["attention_mask"] = pad_to([[1] * len(f["input_ids"]) for f in features], 0)
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = pad_to([f["token_type_ids"] for f in features], 0)
    for key in labels:
        if isinstance(features[0][key], list):
            batch[key] = pad_to([f[key] for f in features], -100, width)
        else:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random | None) -> list[list[int]]:
    """Index batches of similar lengths (less padding): shuffled, cut into chunks of 50 batches, each chunk
    sorted by length and split, then the batches shuffled. rng None: in order of length (evaluation)."""
    order = list(range(len(lengths)))
    if rng is None:
        order.sort(key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(order)
    chunk = 50 * batch_size
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


# ---- arguments -----------------------------------------------------------------------------
def parser(description: str, task: str) -> argparse.ArgumentParser:
    """The options every program takes. Defaults left None are filled by :func:`resolve` (they depend on
    whether a real checkpoint is fine-tuned or a tiny model is trained from scratch on the shipped data)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-dir",
        help="a NEZHA checkpoint directory (config.json, weights, vocab.txt); "
        "default: a tiny model from scratch on the shipped vocab",
    )
    p.add_argument("--train", default=os.path.join(DATA_DIR, task, "train.jsonl"), help="training JSONL")
    p.add_argument("--dev", default=os.path.join(DATA_DIR, task, "dev.jsonl"), help="evaluation JSONL")
    p.add_argument("--output-dir", help="where the fine-tuned model is saved (default: a temporary directory)")
    p.add_argument("--epochs", type=int, help="passes over the training data")
    p.add_argument(
        "--max-steps",
        type=int,
        help="stop after this many optimizer steps (overrides --epochs; the schedule spans them)",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate of AdamW")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="share of the steps with linear warm-up")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    p.add_argument("--max-length", type=int, help="tokens per sequence, [CLS] and [SEP] included")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", help="attention backend (auto, reference, torch, triton, cuda)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads of torch (default: 1 for the tiny model, whose "
        "small matrices gain nothing from more; else torch's default)",
    )
    return p


def resolve(args: argparse.Namespace, scratch: dict[str, Any], pretrained: dict[str, Any]) -> argparse.Namespace:
    """Fill the unset options with the program's defaults for its mode, and check the values."""
    for key, default in (pretrained if args.model_dir else scratch).items():
        if getattr(args, key, None) is None:
            setattr(args, key, default)
    for key in ("epochs", "batch_size", "max_length"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ValueError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    for path in (args.train, args.dev):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such data file {path!r}")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) is a CPU-only build"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise ValueError(f"--device {args.device}: {why}; use --device cpu (the default here)")
    threads = args.threads if args.threads is not None else (None if args.model_dir else 1)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return args


# ---- model ---------------------------------------------------------------------------------
# The model trained from scratch when no --model-dir is given. No attention dropout: on a CPU its
# counter-based mask costs more than the rest of so small a model (hidden dropout stays at 0.1).
TINY = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=512,
    max_relative_position=32,
    attention_probs_dropout_prob=0.0,
)


def load_tokenizer(args: argparse.Namespace) -> Tokenizer:
    return Tokenizer.from_directory(args.model_dir) if args.model_dir else Tokenizer(os.path.join(DATA_DIR, VOCAB_FILE))


def build_model(model_class, args: argparse.Namespace, tokenizer: Tokenizer, **config: Any):
    """``model_class.from_pretrained(--model-dir)``, or a tiny randomly initialized model (``TINY``)."""
    torch.manual_seed(args.seed)
    if args.model_dir:
        model = model_class.from_pretrained(args.model_dir, attn_backend=args.backend, **config)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"{args.model_dir}: vocab.txt has {tokenizer.vocab_size} tokens, the model {model.config.vocab_size}"
            )
    else:
        backend = {"attn_backend": args.backend} if args.backend else {}
        model = model_class(NezhaConfig(vocab_size=tokenizer.vocab_size, **TINY, **backend, **config))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(args.device)


def save_and_reload(model, tokenizer: Tokenizer, args: argparse.Namespace, keep: list) -> Any:
    """save_pretrained (and vocab.txt) to --output-dir or a temporary directory, then from_pretrained."""
    if args.output_dir:
        out = args.output_dir
        os.makedirs(out, exist_ok=True)
    else:
        keep.append(tempfile.TemporaryDirectory())  # removed at exit
        out = keep[-1].name
    model.save_pretrained(out)
    tokenizer.save(out)
    reloaded = type(model).from_pretrained(out, attn_backend=args.backend, device=args.device).eval()
    print(f"saved to {out} and reloaded")
    return reloaded


# ---- training ------------------------------------------------------------------------------
def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights, as BERT fine-tuning does."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )


def fit(
    model: torch.nn.Module,
    features: list[dict],
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    evaluate: Callable[[torch.nn.Module], dict[str, float]],
    args: argparse.Namespace,
    lengths: Sequence[int] | None = None,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> dict[str, float]:
    """AdamW, linear warm-up and decay, gradient clipping; evaluate after every epoch (and at --max-steps).

    Returns the last evaluation. ``loss_fn(model, batch)`` defaults to ``model(**batch).loss``.
    """
    lengths = lengths if lengths is not None else [len(f["input_ids"]) for f in features]
    steps_per_epoch = math.ceil(len(features) / args.batch_size)
    total = args.epochs * steps_per_epoch if args.max_steps is None else args.max_steps
    optimizer = adamw(model, args.lr, args.weight_decay)
    scheduler = linear_schedule(optimizer, int(args.warmup_ratio * total), total)
    rng = random.Random(args.seed)
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    print(
        f"{len(features)} training features, {total} steps of batch {args.batch_size}, lr {args.lr:g}, "
        f"device {args.device}"
    )
    step, metrics, start = 0, {}, time.perf_counter()
    for epoch in range(1, math.ceil(total / steps_per_epoch) + 1):
        model.train()
        running, seen = 0.0, 0
        for indices in length_batches(lengths, args.batch_size, rng):
            loss = loss_fn(model, to_device(collate([features[i] for i in indices]), args.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running, seen, step = running + loss.item(), seen + 1, step + 1
            if step == total:
                break
        model.eval()
        metrics = evaluate(model)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(
            f"epoch {epoch}  step {step}  train loss {running / seen:.4f}  dev {shown}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        if step == total:
            break
    return metrics


def batched_eval(
    model, features: list[dict], collate, batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], dict[str, torch.Tensor], Any]]:
    """(indices, batch, model output) over ``features`` sorted by length, without gradients."""
    lengths = [
        len(f["input_ids"]) if not isinstance(f["input_ids"][0], list) else max(map(len, f["input_ids"]))
        for f in features
    ]
    with torch.no_grad():
        for indices in length_batches(lengths, batch_size, None):
            batch = to_device(collate([features[i] for i in indices]), device)
            yield indices, batch, model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS})


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def final_line(metrics: dict[str, float], primary: str) -> str:
    """The program's last line: ``dev <primary>: <value>`` then the other metrics, e.g.
    ``dev accuracy: 0.8700 macro_f1: 0.8650``."""
    rest = " ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k != primary)
    return f"dev {primary}: {metrics[primary]:.4f}" + (f" {rest}" if rest else "")
