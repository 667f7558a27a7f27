"""Classify sentences with a NEZHA sequence-classification checkpoint directory.

    python python/classify.py CHECKPOINT_DIR "今天天气很好" "这部电影太差了"
    python python/classify.py CHECKPOINT_DIR --ids "101 791 1921 102" --ids "101 6821 102"

The directory is a Hugging Face one (config.json + model.safetensors or pytorch_model.bin); text
needs its vocab.txt, or pass token ids. A base checkpoint (no classifier) loads too, with a warning
that the classifier is newly initialized. Without arguments, a tiny random checkpoint is written to
a temporary directory and used, so the script always runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nezha_kernels.models import NezhaConfig, NezhaForSequenceClassification  # noqa: E402
from tokenizer import WordPieceTokenizer  # noqa: E402


def _demo_checkpoint(directory: str) -> list[str]:
    """A random 2-layer checkpoint with a toy vocabulary, for a run without a real model."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("今天气很好这部电影太差了的是不我") + \
        ["good", "bad", "movie", "the", "is", "very", "weather"]
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    config = NezhaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, id2label={0: "negative", 1: "positive"})
    torch.manual_seed(0)
    NezhaForSequenceClassification(config).save_pretrained(directory)
    return ["今天天气很好", "这部电影太差了", "the movie is very good"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="checkpoint directory (default: a random demo model)")
    parser.add_argument("sentences", nargs="*", help="sentences to classify")
    parser.add_argument("--ids", action="append", default=[], help="space-separated token ids (repeatable)")
    parser.add_argument("--backend", default=None, help="attention backend (auto, reference, torch, triton, cuda)")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        directory, sentences = args.checkpoint, args.sentences
        if directory is None:
            directory = tmp
            sentences = _demo_checkpoint(tmp)
            print(f"no checkpoint given: using a random demo model in {tmp}")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = NezhaForSequenceClassification.from_pretrained(directory, attn_backend=args.backend, device=device)
        if args.ids:
            rows = [[int(t) for t in s.split()] for s in args.ids]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [model.config.pad_token_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            labels_for = [" ".join(map(str, r)) for r in rows]
        else:
            if not sentences:
                parser.error("give sentences or --ids")
            ids, mask = WordPieceTokenizer.from_directory(directory).batch(sentences, args.max_length)
            labels_for = sentences
        with torch.no_grad():
            logits = model(ids.to(device), attention_mask=mask.to(device)).logits
        probs = logits.float().softmax(-1).cpu()
        for text, p in zip(labels_for, probs):
            best = int(p.argmax())
            print(f"{model.config.id2label[best]:>12s}  p={p[best]:.3f}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
