"""Train a small NEZHA sentence classifier for a few steps on synthetic data (CPU, seconds).

The task: does the sequence contain token 7? A 2-layer model learns it in ~40 steps. Shows the
training loop, padding masks, dropout through the attention op, gradient checkpointing, and
save_pretrained / from_pretrained of the result.

    python python/train_classifier.py [--steps 60] [--backend torch] [--checkpointing] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nezha_kernels.models import NezhaConfig, NezhaForSequenceClassification  # noqa: E402

VOCAB, SIGNAL = 64, 7


def synthetic_batch(batch: int, generator: torch.Generator):
    """Random sequences (lengths 8..32, right-padded with 0); label 1 iff token SIGNAL occurs."""
    lengths = torch.randint(8, 33, (batch,), generator=generator)
    width = int(lengths.max())
    ids = torch.randint(8, VOCAB, (batch, width), generator=generator)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    for i in range(batch):
        if labels[i]:
            ids[i, torch.randint(1, int(lengths[i]), (1,), generator=generator)] = SIGNAL
    ids[mask == 0] = 0
    return ids, mask, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--out", default=None, help="save the trained model here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = NezhaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_relative_position=16, num_labels=2, attn_backend=args.backend)
    model = NezhaForSequenceClassification(config).train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, mask, labels = synthetic_batch(args.batch, data)
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")

    model.eval()
    ids, mask, labels = synthetic_batch(256, torch.Generator().manual_seed(2))
    with torch.no_grad():
        accuracy = (model(ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean().item()
    print(f"held-out accuracy: {accuracy:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        model.save_pretrained(out)
        again = NezhaForSequenceClassification.from_pretrained(out)
        with torch.no_grad():
            same = torch.equal(again(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
        print(f"saved to {out} and reloaded: identical logits = {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
