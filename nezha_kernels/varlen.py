"""Padding-free relative attention: ``relative_attention_varlen``, its argument checks and ``VarlenInputs``.

Sequences are packed along one token axis, as flash-attention's ``flash_attn_varlen_func`` takes them:
q [Tq, H, D], k / v [Tk, H, D], and sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``.

Host reads. Checking the values of cu_seqlens (starts at 0, never decreases, ends at T, fits max_seqlen)
needs them on the host: ``prepare_varlen_inputs`` reads both tensors once, in one copy (on CUDA, one
host-device synchronization per call). While torch.compile traces, the values are not read (shapes,
dtypes and devices still are): a compiled graph never syncs on them, and garbage cu_seqlens are the
caller's responsibility there.
"""

from __future__ import annotations

import dataclasses

import torch

from .attention import _autocast_inputs
from .backends import resolve_backend
from .inputs import (
    _check_int,
    _check_tensor,
    _normalize_head_mask,
    check_qkv,
    check_scalars,
    check_table,
    draw_dropout_seed,
)

__all__ = ["VarlenInputs", "prepare_varlen_inputs", "relative_attention_varlen"]


@dataclasses.dataclass(frozen=True)
class VarlenInputs:
    """Validated arguments of one ``relative_attention_varlen`` call.

    q: [Tq, H, D]; k, v: [Tk, H, D]; table: [2R+1, D], one dtype and device.
    cu_seqlens_q / cu_seqlens_k: int32 [B+1] on q's device, 0 .. T, non-decreasing (the same tensor when
        the caller gave no cu_seqlens_k).
    max_seqlen_q / max_seqlen_k: an upper bound of the sequences' lengths (exact when computed here).
    head_mask: [B, H] (maybe an expanded view of an [H] mask) or None.
    dropout_seed: as in ``AttentionInputs``.
    key_padding, additive_mask and q_offset exist for uniformity with ``AttentionInputs`` and are always
    None, None and 0: query i of sequence b sits at position i + (Lk_b - Lq_b) (bottom-right aligned).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    max_relative_position: int
    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    causal: bool
    dropout_p: float
    dropout_seed: int | torch.Tensor | None
    scale: float
    head_mask: torch.Tensor | None
    key_padding: None = None
    additive_mask: None = None
    q_offset: int = 0

    @property
    def batch(self) -> int:
        return self.cu_seqlens_q.shape[0] - 1

    @property
    def table_requires_grad(self) -> bool:
        return self.table.requires_grad


# --- cu_seqlens ---


def _check_cu_seqlens_tensor(name: str, value: object, device: torch.device) -> torch.Tensor:
    cu = _check_tensor(name, value)
    if cu.dtype != torch.int32:
        raise ValueError(f"{name} must be an int32 tensor, got {cu.dtype}")
    if cu.dim() != 1 or cu.shape[0] < 2:
        raise ValueError(f"{name} must be 1-D [B+1] with B >= 1, got shape {list(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but q is on {device}")
    return cu


def _check_cu_seqlens_values(name: str, values: list[int], total: int, rows: str) -> int:
    """The longest sequence of a host copy of cu_seqlens, after checking it against its T."""
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values, values[1:], strict=False)]
    for index, length in enumerate(lengths):
        if length < 0:
            raise ValueError(
                f"{name} must be non-decreasing, but entry {index + 1} ({values[index + 1]}) is below "
                f"entry {index} ({values[index]})"
            )
    if values[-1] != total:
        raise ValueError(f"{name} must end at the number of {rows} rows ({total}), got {values[-1]}")
    return max(lengths)


def _check_max_seqlen(name: str, given, longest: int | None, total: int) -> int:
    if given is None:
        # Under torch.compile the lengths are not read: T bounds every sequence.
        return longest if longest is not None else total
    given = _check_int(name, given, minimum=0)
    if longest is not None and given < longest:
        raise ValueError(f"{name} = {given} is below the longest sequence's length {longest}")
    return given


def prepare_varlen_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    max_relative_position: int = 64,
    rel_table: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> VarlenInputs:
    """Check every argument of ``relative_attention_varlen`` and return its canonical form."""
    check_qkv(q, k, v, 3, "[T, H, D]")
    tq, h, d = q.shape
    tk = k.shape[0]
    if tuple(k.shape[1:]) != (h, d) or tuple(v.shape[1:]) != (h, d):
        raise ValueError(f"heads and head dim differ: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if v.shape[0] != tk:
        raise ValueError(f"k and v must have the same number of rows Tk, got {tk} and {v.shape[0]}")
    if h == 0 or d == 0:
        raise ValueError(f"empty head or head dim in q {list(q.shape)}")

    cu_q = _check_cu_seqlens_tensor("cu_seqlens_q", cu_seqlens_q, q.device)
    if cu_seqlens_k is None:
        if tk != tq:
            raise ValueError(
                f"cu_seqlens_k is None, so k and v share q's sequences and need Tq = {tq} rows, got {tk}; "
                "pass cu_seqlens_k"
            )
        cu_k = cu_q
    else:
        cu_k = _check_cu_seqlens_tensor("cu_seqlens_k", cu_seqlens_k, q.device)
        if cu_k.shape != cu_q.shape:
            raise ValueError(
                f"cu_seqlens_q and cu_seqlens_k must have the same length B+1, got {cu_q.shape[0]} and {cu_k.shape[0]}"
            )
    longest_q = longest_k = None
    if not torch.compiler.is_compiling():
        # The one host read of the call (one sync on CUDA): both tensors in one copy.
        values = (torch.cat((cu_q, cu_k)) if cu_k is not cu_q else cu_q).tolist()
        n = cu_q.shape[0]
        longest_q = _check_cu_seqlens_values("cu_seqlens_q", values[:n], tq, "q")
        longest_k = (
            _check_cu_seqlens_values("cu_seqlens_k", values[n:], tk, "k and v") if cu_k is not cu_q else longest_q
        )
    max_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q, longest_q, tq)
    max_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k, longest_k, tk)

    r = _check_int("max_relative_position", max_relative_position, minimum=1)
    table = check_table(rel_table, r, q)
    dropout_p, scale = check_scalars(causal, dropout_p, scale, d)
    batch = cu_q.shape[0] - 1
    hm = _normalize_head_mask(head_mask, batch, h, q.device) if head_mask is not None else None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    seed = draw_dropout_seed(generator) if dropout_p > 0.0 else None

    return VarlenInputs(
        q=q,
        k=k,
        v=v,
        table=table,
        max_relative_position=r,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        causal=causal,
        dropout_p=dropout_p,
        dropout_seed=seed,
        scale=scale,
        head_mask=hm,
    )


def relative_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor | None = None,
    *,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    max_relative_position: int = 64,
    rel_table: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Relative-position attention over packed sequences, with no padding (``flash_attn_varlen_func``'s shape).

    Sequence b holds query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of q and key rows
    ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` of k and v. Within it, key j sits at position j and query i at
    ``i + (Lk_b - Lq_b)`` (bottom-right aligned, as flash-attention: a decode step's query attends to its
    whole cache); with equal lengths the offset is 0. Each sequence is then exactly the dense
    ``relative_attention`` with ``q_offset = Lk_b - Lq_b``: the same relative terms, causal mask, head_mask
    row ``head_mask[b]`` and gradients (q, k, v, and the table and head_mask where they require grad).

    Edge rows. A query row with no visible key (causal with Lq_b > Lk_b) attends uniformly to the
    sequence's Lk_b keys, as the dense op's fully masked row does; a sequence with Lk_b = 0 outputs zeros.
    Zero-length sequences are allowed.

    Dropout: the Philox mask of the dense op with b = the sequence index and i, j = positions within the
    sequence, so the same seed drops exactly the entries the dense op drops on the padded batch.

    Args:
        q: [Tq, H, D]; k, v: [Tk, H, D]. One floating dtype, one device.
        cu_seqlens_q: int32 [B+1] on q's device, from 0 to Tq, non-decreasing.
        cu_seqlens_k: the same for k and v; default cu_seqlens_q (self-attention).
        max_seqlen_q, max_seqlen_k: the longest sequence (an upper bound is fine); computed when None.
        head_mask: [H] or [B, H].
        The other arguments are those of ``relative_attention``.

    Returns:
        [Tq, H, D] in q's dtype.
    """
    q, k, v, rel_table = _autocast_inputs(q, k, v, rel_table)
    inputs = prepare_varlen_inputs(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        max_relative_position=max_relative_position,
        rel_table=rel_table,
        causal=causal,
        dropout_p=dropout_p,
        scale=scale,
        head_mask=head_mask,
        generator=generator,
    )
    module = resolve_backend(backend, inputs)
    with torch.autocast(inputs.q.device.type, enabled=False):
        return module.forward_varlen(inputs)
