"""When a NezhaModel call runs padding-free (packed) and when it runs dense.

:mod:`.packing` says how a batch is packed; this module decides whether it is. The packed path runs
when ``config.padding_free`` is set and a right-padded 2-D mask has padding, or for a flattened batch
(position_ids restarting at 0, or the cu_seq_lens_q/k keywords of DataCollatorWithFlattening). The dense
path runs where packing cannot apply: output_attentions, use_cache / past_key_values, cross-attention,
a 3-D mask, masks that are not right-padded, and while torch.compile / torch.export / jit.trace capture
the model (data-dependent shapes; :func:`.packing.dense_only`).
"""

from __future__ import annotations

from typing import Any

import torch

from .packing import (
    PackedBatch,
    block_diagonal_mask,
    dense_only,
    pack_from_cu_seqlens,
    pack_from_position_ids,
    pack_padded,
    sequence_ids_from_cu_seqlens,
    sequence_ids_from_positions,
)

__all__ = ["plan_batch", "flattened_batch"]

FLATTENING_KEYWORDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def plan_batch(
    key_padding: torch.Tensor | None,
    additive_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    flattening: dict[str, Any],
    *,
    padding_free: bool,
    needs_dense: bool,
    batch: int,
    length: int,
    has_past: bool,
) -> tuple[PackedBatch | None, torch.Tensor | None]:
    """(PackedBatch or None, the mask the encoder gets) for one NezhaModel call.

    key_padding: bool [B, Lk] from a 2-D mask; additive_mask: float [B, 1, L, Lk] from a 3-D mask;
    needs_dense: the call asks for something only the dense path gives (weights, a cache, ...).
    Packed: the mask is None (the packing holds the sequence bounds). Dense: the additive mask if any,
    else a flattened batch's block-diagonal mask, else key_padding.
    """
    packed, flat_mask = flattened_batch(position_ids, flattening, key_padding, needs_dense, batch, length, has_past)
    if flat_mask is not None:
        key_padding = flat_mask
    elif packed is None and padding_free and key_padding is not None and not (dense_only() or needs_dense):
        packed = pack_padded(key_padding)
    if packed is not None:
        return packed, None
    return None, additive_mask if additive_mask is not None else key_padding


def flattened_batch(
    position_ids, flattening: dict, keep, needs_dense: bool, batch: int, length: int, has_past: bool
) -> tuple[PackedBatch | None, torch.Tensor | None]:
    """(PackedBatch, None) for a flattened batch run packed; (None, block-diagonal additive mask) for one
    on the dense path; (None, None) for an ordinary batch.

    cu_seq_lens_q needs no data-dependent step (nothing to gather in a [1, T] row), so it stays packed
    under torch.compile too: the varlen op traces with a dynamic T. position_ids need a nonzero() to find
    the sequence starts, so compiled ones take the block-diagonal dense path.
    """
    unknown = sorted(set(flattening) - set(FLATTENING_KEYWORDS))
    if unknown:
        raise TypeError(f"NezhaModel.forward got unexpected keyword arguments {unknown}")
    cu_q = flattening.get("cu_seq_lens_q")
    if position_ids is None and cu_q is None:
        return None, None
    if has_past:
        raise ValueError("past_key_values cannot continue a flattened batch (position_ids / cu_seq_lens_q)")
    if cu_q is not None and batch != 1:
        raise ValueError(f"cu_seq_lens_q describes a flattened [1, T] batch, got a batch of {batch} rows")
    compiling = torch.compiler.is_compiling() and not (torch.compiler.is_exporting() or torch.jit.is_tracing())
    dense = needs_dense or (dense_only() and not (compiling and cu_q is not None and keep is None))
    if keep is not None and not dense and not bool(keep.all()):
        dense = True  # a padded flattened batch: its keep mask is folded into the block-diagonal one
    if dense:
        if position_ids is not None and not dense_only():
            pack_from_position_ids(position_ids, length)  # the same checks as the packed path
        if cu_q is not None:
            sequences = sequence_ids_from_cu_seqlens(cu_q, length)
        else:
            sequences = sequence_ids_from_positions(position_ids)
        return None, block_diagonal_mask(sequences, keep)
    device = (cu_q if cu_q is not None else position_ids).device
    if cu_q is not None:
        packed: PackedBatch | None = pack_from_cu_seqlens(
            cu_q,
            flattening.get("cu_seq_lens_k"),
            flattening.get("max_length_q"),
            flattening.get("max_length_k"),
            length,
            device,
        )
    else:
        packed = pack_from_position_ids(position_ids, length)
    return packed, None
