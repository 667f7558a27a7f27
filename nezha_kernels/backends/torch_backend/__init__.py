"""The "torch" backend: pure PyTorch that never builds the [Lq, Lk, D] table (except for small calls).

Its interface is that of every backend (nezha_kernels/backends/__init__.py): NAME, availability, forward and
forward_varlen, plus forward_with_probs (the output and the attention weights, for output_attentions).

Modules, each importing only those below it:
    dense.py   dense calls: the chunked autograd.Function, or the reference's materialized math for small calls
    varlen.py  padding-free calls: custom ops under torch.compile, an autograd.Function in eager mode
    packed.py  the padding-free computation: sequences in runs and groups through the chunks
    chunks.py  the chunked math both share: the banded table maps, per-chunk forward and backward
"""

from __future__ import annotations

import torch

from .dense import forward, forward_with_probs
from .varlen import forward_varlen

__all__ = ["NAME", "availability", "forward", "forward_varlen", "forward_with_probs"]

NAME = "torch"


def availability(device: torch.device) -> tuple[bool, str]:
    return True, "pure PyTorch, any device"
