"""Padding-free batches: where the real tokens of a batch sit once packed into [T, hidden].

Two sources, the same result (a :class:`PackedBatch`: int32 ``cu_seqlens`` [B+1] and the longest
sequence, as flash-attention's ``unpad_input`` returns them):

- a padded [B, L] batch with a 1/0 keep mask (:func:`pack_padded`): the model gathers the real
  tokens once, runs every layer on [T, hidden] and scatters back to [B, L, hidden] at the end, with
  zeros at padded positions (as transformers' FlashAttention-2 / ModernBERT unpadded paths);
- a batch already flattened to [1, T] by transformers' ``DataCollatorWithFlattening``: position_ids
  restarting at 0 (:func:`pack_from_position_ids`) or its ``cu_seq_lens_q/k`` keywords
  (:func:`pack_from_cu_seqlens`).

Reading the token count back costs one host-device sync per forward on CUDA (as ``unpad_input``);
compiled, exported and traced models use the dense path instead (:func:`dense_only`), whose shapes
do not depend on the data.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..inputs import MASKED_SCORE

__all__ = [
    "PackedBatch",
    "dense_only",
    "pack_padded",
    "pack_from_position_ids",
    "pack_from_cu_seqlens",
    "sequence_ids_from_positions",
    "sequence_ids_from_cu_seqlens",
    "block_diagonal_mask",
    "gather_tokens",
    "scatter_tokens",
]


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """The real tokens of a batch, packed: sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``.

    indices: int64 [T], each real token's position in the flattened [B * L] input; None when the input
        is already flattened ([1, T], nothing to gather or scatter).
    cu_seqlens: int32 [B + 1] on the input's device. max_seqlen: the longest sequence (a Python int).
    batch, length: the input's [B, L] (1, T for a flattened input).
    """

    indices: torch.Tensor | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    length: int

    @property
    def num_tokens(self) -> int:
        return self.length if self.indices is None else self.indices.shape[0]


def dense_only() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace capture the model.

    Gathering the real tokens has data-dependent shapes, which a captured graph cannot hold (a graph
    break under compile, a constant baked into an exported or traced graph): those run the dense path.
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _cu_seqlens(seqlens: torch.Tensor) -> torch.Tensor:
    return F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))


def pack_padded(keep: torch.Tensor) -> PackedBatch | None:
    """The PackedBatch of a right-padded bool keep mask [B, L], or None where the dense path is right.

    None when nothing is padded (the dense path does the same work without the gather), and when a row
    is not right-padded: one whose first token is padding (the pooler reads position 0, as in
    transformers, and a left-padded or empty row would read a zero there), or with a hole (packing
    would change the distances between the tokens around it). Those run the dense path.
    One device-to-host read of B + 1 integers.
    """
    batch, length = keep.shape
    seqlens = keep.sum(1, dtype=torch.int32)
    right_padded = keep[:, 0].all() & (keep[:, 1:] <= keep[:, :-1]).all()
    summary = torch.cat([right_padded.view(1).to(torch.int32), seqlens]).tolist()
    lengths = summary[1:]
    if not summary[0] or min(lengths) == length:
        return None
    total = sum(lengths)
    indices = torch.nonzero_static(keep.reshape(-1), size=total).squeeze(1)
    return PackedBatch(indices, _cu_seqlens(seqlens), max(lengths), batch, length)


def pack_from_position_ids(position_ids: torch.Tensor, length: int) -> PackedBatch | None:
    """position_ids [B, L]: each row counts 0, 1, 2, ... and restarts at 0 where a new sequence starts.

    NEZHA has no absolute positions, so position_ids only mark sequence starts: None when no row
    restarts (nothing to do). Restarts are accepted in a [1, T] batch, the collator's output.
    One device-to-host copy of the ids.
    """
    if (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.dim() != 2
        or position_ids.shape[1] != length
        or position_ids.dtype.is_floating_point
        or position_ids.dtype == torch.bool
    ):
        raise ValueError(
            f"position_ids must be an integer [batch, seq_len] tensor with seq_len = {length}, "
            f"got {getattr(position_ids, 'dtype', type(position_ids).__name__)} "
            f"{list(getattr(position_ids, 'shape', []))}"
        )
    pos = position_ids.detach().cpu()
    expected = torch.cat([torch.zeros_like(pos[:, :1]), pos[:, :-1] + 1], dim=1)
    if not bool(((pos == expected) | (pos == 0)).all()):
        raise ValueError(
            "position_ids must count 0, 1, 2, ... within each sequence, restarting at 0 where the next "
            "sequence of a flattened batch starts (NEZHA has no absolute positions: position_ids only mark "
            "where sequences start)"
        )
    starts = (pos == 0).sum(1)
    if bool((starts == 1).all()):
        return None
    if pos.shape[0] != 1:
        raise ValueError(
            f"position_ids restart inside a row of a [{pos.shape[0]}, {length}] batch: a flattened batch "
            "(DataCollatorWithFlattening) is [1, T]"
        )
    begin = torch.nonzero(pos[0] == 0).squeeze(1)
    seqlens = torch.diff(begin, append=torch.tensor([length])).to(torch.int32)
    cu = _cu_seqlens(seqlens).to(position_ids.device)
    return PackedBatch(None, cu, int(seqlens.max()), 1, length)


def pack_from_cu_seqlens(
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_k: torch.Tensor | None,
    max_length_q: int | None,
    max_length_k: int | None,
    length: int,
    device: torch.device,
) -> PackedBatch:
    """The collator's ``cu_seq_lens_q/k`` (int32 [B+1], 0 .. T) and ``max_length_q/k`` keywords.

    Self-attention over one set of tokens: q and k must describe the same sequences. Values are read
    on CPU tensors outside torch.compile (where max_length_q defaults to T, an upper bound); the op validates
    cu_seqlens once more where it runs.
    """
    if not isinstance(cu_seq_lens_q, torch.Tensor) or cu_seq_lens_q.dim() != 1 or cu_seq_lens_q.numel() < 2:
        raise ValueError(f"cu_seq_lens_q must be a 1-D int32 tensor [B + 1], got {cu_seq_lens_q!r}")
    reads = not dense_only() and cu_seq_lens_q.device.type == "cpu"
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q:
        if (
            not isinstance(cu_seq_lens_k, torch.Tensor)
            or cu_seq_lens_k.shape != cu_seq_lens_q.shape
            or (reads and cu_seq_lens_k.device.type == "cpu" and not torch.equal(cu_seq_lens_k, cu_seq_lens_q))
        ):
            raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q: NEZHA's self-attention packs one set of tokens")
    if max_length_k is not None and max_length_q is not None and max_length_k != max_length_q:
        raise ValueError(f"max_length_k ({max_length_k}) must equal max_length_q ({max_length_q})")
    cu = cu_seq_lens_q.to(device=device, dtype=torch.int32)
    if max_length_q is None:
        max_length_q = max_length_k
    if max_length_q is None:
        max_length_q = int(torch.diff(cu).max()) if not dense_only() else length
    if isinstance(max_length_q, bool) or not isinstance(max_length_q, (int, torch.SymInt)) or max_length_q < 0:
        raise ValueError(f"max_length_q must be a non-negative int, got {max_length_q!r}")
    if reads and int(cu[-1]) != length:
        raise ValueError(f"cu_seq_lens_q ends at {int(cu[-1])} but the flattened batch holds {length} tokens")
    return PackedBatch(None, cu, max_length_q, 1, length)


def sequence_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """position_ids [B, L] -> [B, L] index of each token's sequence in its row (traceable: no host reads)."""
    return (position_ids == 0).cumsum(-1)


def sequence_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """cu_seqlens [S + 1] of a [1, T] batch -> [1, T] sequence index per token (traceable)."""
    cu = cu_seqlens.to(torch.int64)
    tokens = torch.arange(length, device=cu.device)
    return torch.searchsorted(cu[1:], tokens, right=True)[None]


def block_diagonal_mask(sequence_ids: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Additive float32 [B, 1, L, L] mask: each token attends to its own sequence (and kept keys only).

    The dense path of a flattened batch. Relative attention depends on j - i only, so a sequence's
    scores inside the flattened row equal its scores alone; shapes depend on L only, so this also
    holds under torch.compile.
    """
    allowed = sequence_ids[:, :, None] == sequence_ids[:, None, :]
    if keep is not None:
        allowed = allowed & keep[:, None, :]
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    return mask.masked_fill_(~allowed, MASKED_SCORE)[:, None]


def gather_tokens(x: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """[B, L, ...] -> [T, ...]: the real tokens, sequence after sequence."""
    flat = x.reshape(packed.batch * packed.length, *x.shape[2:])
    return flat if packed.indices is None else flat.index_select(0, packed.indices)


def scatter_tokens(x: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """[T, hidden] -> [B, L, hidden], zeros at padded positions."""
    if packed.indices is not None:
        full = x.new_zeros(packed.batch * packed.length, *x.shape[1:])
        x = full.index_copy(0, packed.indices, x)
    return x.view(packed.batch, packed.length, *x.shape[1:])
