"""One rank of the DDP test (launched by tests/test_distributed.py through torchrun, gloo, CPU).

Trains NezhaForSequenceClassification for 2 AdamW steps on this rank's half of a fixed global batch and
writes its gradients (after the first backward) and final weights to OUT_DIR/rank{R}.pt.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nezha_kernels.models import NezhaConfig, NezhaForSequenceClassification  # noqa: E402


def make_model_and_batch():
    """Identical on every rank and in the single-process run: seeded weights and a global batch of 8."""
    torch.manual_seed(0)
    config = NezhaConfig(
        vocab_size=101,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_relative_position=8,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        attn_backend="torch",
    )
    model = NezhaForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 101, (8, 19), generator=g)
    mask = torch.ones(8, 19, dtype=torch.long)
    mask[::3, 12:] = 0
    labels = torch.randint(0, 3, (8,), generator=g)
    return model, ids, mask, labels


def train(model, ids, mask, labels, steps=2):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first_grads = None
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        if first_grads is None:
            first_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        opt.step()
    return first_grads


def main(out_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, ids, mask, labels = make_model_and_batch()
    ddp = DistributedDataParallel(model)
    shard = slice(rank * len(ids) // world, (rank + 1) * len(ids) // world)
    grads = train(ddp, ids[shard], mask[shard], labels[shard])
    grads = {n.removeprefix("module."): g for n, g in grads.items()}
    torch.save({"grads": grads, "weights": model.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
