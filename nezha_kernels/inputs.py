"""The description of one attention call: its checked arguments in canonical form, dense or padding-free.

``prepare_inputs`` (``relative_attention``) and ``prepare_varlen_inputs`` (``relative_attention_varlen``)
check every argument and return one :class:`AttentionInputs`; dispatch, the capability table and every
backend read that description and never re-validate, so bad input never reaches a kernel.

Host reads. Checking the values of cu_seqlens (starts at 0, never decreases, ends at T, fits max_seqlen)
needs them on the host: ``prepare_varlen_inputs`` reads both tensors once, in one copy (on CUDA, one
host-device synchronization per call). While torch.compile traces, the values are not read (shapes,
dtypes and devices still are): a compiled graph never syncs on them, and garbage cu_seqlens are the
caller's responsibility there.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from .table import default_table

__all__ = [
    "AttentionInputs",
    "MASKED_SCORE",
    "autocast_inputs",
    "draw_dropout_seed",
    "prepare_inputs",
    "prepare_varlen_inputs",
]

# Score given to a masked (query, key) pair. Using float32's most negative finite value keeps a
# row whose keys are all masked finite: every score is equal, so the row attends uniformly to all
# keys, exactly what the Hugging Face model computes with its additive finfo.min mask.
MASKED_SCORE = torch.finfo(torch.float32).min

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """Validated arguments of one ``relative_attention`` or ``relative_attention_varlen`` call.

    Dense (``varlen`` False): q [B, H, Lq, D]; k, v [B, H, Lk, D].
    Padding-free (``varlen`` True): q [Tq, H, D]; k, v [Tk, H, D], sequence b being rows
    ``cu_seqlens[b]:cu_seqlens[b+1]``; query i of sequence b sits at position i + (Lk_b - Lq_b).
    table: [2R+1, D]; all tensors of one dtype (the masks excepted) and one device.
    sinusoid: True when the table is the op's own default (``rel_table=None``: NEZHA's sinusoid table for q's
        (R, D, dtype)). Kernels may then compute the band's relative terms from the sinusoid's rotation identity
        instead of reading the table; a user-given table (even one equal to the sinusoid) is read as given.
    key_padding: bool [B, Lk] (True = attend) or None; dense calls only.
    additive_mask: float tensor of rank 4 broadcastable to [B, H, Lq, Lk] (expanded view) or None; dense only.
    q_offset: absolute position of query row 0 of a dense call; 0 for a padding-free one (its offsets are
        per sequence, above).
    head_mask: [B, H] (maybe an expanded view of an [H] mask) or None.
    dropout_seed: 63-bit seed of the Philox stream when dropout_p > 0 (an int; a 0-d int64 CPU tensor while
        torch.compile traces), else None.
    cu_seqlens_q / cu_seqlens_k: int32 [B+1] on q's device, 0 .. T, non-decreasing (the same tensor when the
        caller gave no cu_seqlens_k); None for a dense call.
    max_seqlen_q / max_seqlen_k: an upper bound of the sequences' lengths (exact when computed by
        ``prepare_varlen_inputs``); None for a dense call (see ``lengths``).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    max_relative_position: int
    causal: bool
    dropout_p: float
    dropout_seed: int | torch.Tensor | None
    scale: float
    head_mask: torch.Tensor | None = None
    key_padding: torch.Tensor | None = None
    additive_mask: torch.Tensor | None = None
    q_offset: int = 0
    cu_seqlens_q: torch.Tensor | None = None
    cu_seqlens_k: torch.Tensor | None = None
    max_seqlen_q: int | None = None
    max_seqlen_k: int | None = None
    sinusoid: bool = False

    def __post_init__(self):
        # Internal invariants (user input was checked before): a description is dense or padding-free, never a mix.
        padding_free = (self.cu_seqlens_q, self.cu_seqlens_k, self.max_seqlen_q, self.max_seqlen_k)
        if any(x is None for x in padding_free) and any(x is not None for x in padding_free):
            raise ValueError("cu_seqlens_q/k and max_seqlen_q/k are given together or not at all")
        if self.varlen and (self.key_padding is not None or self.additive_mask is not None or self.q_offset != 0):
            raise ValueError("a padding-free call takes no key_padding, additive_mask or q_offset")

    @property
    def varlen(self) -> bool:
        """True for a padding-free call (packed sequences with cu_seqlens)."""
        return self.cu_seqlens_q is not None

    @property
    def batch(self) -> int:
        """B: the number of sequences."""
        return self.cu_seqlens_q.shape[0] - 1 if self.cu_seqlens_q is not None else self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[-2] if self.varlen else self.q.shape[1]

    @property
    def lengths(self) -> tuple[int, int]:
        """(Lq, Lk): a dense call's lengths, or a padding-free call's max_seqlen_q / max_seqlen_k (upper bounds)."""
        if self.max_seqlen_q is not None and self.max_seqlen_k is not None:
            return self.max_seqlen_q, self.max_seqlen_k
        return self.q.shape[2], self.k.shape[2]

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(B, H, Lq, Lk, D), the lengths as in ``lengths``."""
        lq, lk = self.lengths
        return self.batch, self.heads, lq, lk, self.q.shape[-1]

    def dense_part(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int, head_mask: torch.Tensor | None
    ) -> AttentionInputs:
        """The dense description of sequences of a padding-free call: q [n, H, Lq, D], k / v [n, H, Lk, D], their
        ``q_offset`` (Lk - Lq, maybe negative) and head_mask rows [n, H]; the other arguments are this call's."""
        return dataclasses.replace(
            self,
            q=q,
            k=k,
            v=v,
            q_offset=q_offset,
            head_mask=head_mask,
            cu_seqlens_q=None,
            cu_seqlens_k=None,
            max_seqlen_q=None,
            max_seqlen_k=None,
        )


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _normalize_mask(
    attention_mask: torch.Tensor, b: int, h: int, lq: int, lk: int, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split a user mask into (key_padding bool [B, Lk], additive float [*, *, *, *])."""
    mask = _check_tensor("attention_mask", attention_mask)
    if mask.device != device:
        raise ValueError(f"attention_mask is on {mask.device} but q is on {device}")
    if mask.dtype == torch.bool or not (mask.dtype.is_floating_point or mask.dtype.is_complex):
        if mask.dtype.is_complex:
            raise TypeError("attention_mask must be bool, integer or floating, got complex")
        if tuple(mask.shape) != (b, lk):
            raise ValueError(
                f"a bool/integer attention_mask is a key-padding mask of shape [B, Lk] = [{b}, {lk}]; "
                f"got shape {list(mask.shape)}"
            )
        return mask != 0, None
    if mask.dtype.is_complex:
        raise TypeError("attention_mask must be bool, integer or floating, got complex")
    if mask.dim() != 4:
        raise ValueError(
            "a floating attention_mask is additive and must be 4-D, broadcastable to "
            f"[B, H, Lq, Lk] = [{b}, {h}, {lq}, {lk}] (e.g. [B, 1, 1, Lk]); got shape {list(mask.shape)}. "
            "Pass a bool/integer [B, Lk] tensor for a key-padding mask."
        )
    for axis, (got, want) in enumerate(zip(mask.shape, (b, h, lq, lk), strict=True)):
        if got not in (1, want):
            raise ValueError(
                f"attention_mask of shape {list(mask.shape)} is not broadcastable to "
                f"[B, H, Lq, Lk] = [{b}, {h}, {lq}, {lk}] (dimension {axis})"
            )
    if mask.requires_grad:
        raise ValueError("attention_mask must not require grad: no gradient flows to an additive mask")
    return None, mask.expand(b, h, lq, lk)


def _normalize_head_mask(head_mask: torch.Tensor, b: int, h: int, device: torch.device) -> torch.Tensor:
    hm = _check_tensor("head_mask", head_mask)
    if hm.device != device:
        raise ValueError(f"head_mask is on {hm.device} but q is on {device}")
    if not hm.dtype.is_floating_point:
        raise TypeError(f"head_mask must be a floating tensor, got {hm.dtype}")
    if tuple(hm.shape) == (h,):
        return hm.unsqueeze(0).expand(b, h)
    if tuple(hm.shape) == (b, h):
        return hm
    raise ValueError(f"head_mask must have shape [H] = [{h}] or [B, H] = [{b}, {h}], got {list(hm.shape)}")


def draw_dropout_seed(generator: torch.Generator | None) -> int | torch.Tensor:
    """A 63-bit Philox seed from ``generator`` (or torch's default CPU generator).

    An int in eager mode. While torch.compile traces, a 0-d int64 CPU tensor drawn inside the graph (reading
    it back with .item() would break the graph); every backend accepts both.
    """
    if torch.compiler.is_compiling():
        if generator is not None:
            raise ValueError("generator is not supported under torch.compile: seed torch's default generator instead")
        return torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator, device=device, dtype=torch.int64).item())


def _check_qkv(q, k, v, rank: int, layout: str) -> None:
    """q, k and v are floating tensors of rank ``rank`` (``layout`` names the dims), one dtype, one device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, t)
        if t.dim() != rank:
            raise ValueError(f"{name} must be {rank}-D {layout}, got {t.dim()}-D with shape {list(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")


def _check_table(rel_table: torch.Tensor | None, r: int, q: torch.Tensor) -> torch.Tensor:
    """The table of a call: the op's cached default for q's (R, D, dtype, device), or a checked rel_table."""
    d = q.shape[-1]
    if rel_table is None:
        if d % 2:
            raise ValueError(f"the default sinusoid table needs an even head dim, got D = {d}; pass rel_table")
        # int(): under torch.jit.trace sizes are 0-d tensors; the head dim is fixed by the weights anyway.
        return default_table(r, int(d), q.dtype, q.device)
    table = _check_tensor("rel_table", rel_table)
    if tuple(table.shape) != (2 * r + 1, d):
        raise ValueError(
            f"rel_table must have shape [2R+1, D] = [{2 * r + 1}, {d}] for max_relative_position={r}, "
            f"got {list(table.shape)}"
        )
    if table.dtype != q.dtype:
        raise TypeError(f"rel_table dtype {table.dtype} differs from q's {q.dtype}")
    if table.device != q.device:
        raise ValueError(f"rel_table is on {table.device} but q is on {q.device}")
    return table


def _check_scalars(causal: object, dropout_p: object, scale: object, d: int) -> tuple[float, float]:
    """(dropout_p, scale) after checking causal, dropout_p in [0, 1) and scale (default 1/sqrt(D))."""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    dropout_p = float(dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    elif not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return dropout_p, float(scale)


def _dropout_seed(dropout_p: float, generator: object) -> int | torch.Tensor | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return draw_dropout_seed(generator) if dropout_p > 0.0 else None


def autocast_inputs(q, k, v, rel_table):
    """(q, k, v, rel_table) in the autocast dtype under torch.autocast (as scaled_dot_product_attention runs)."""
    if not isinstance(q, torch.Tensor) or q.device.type not in ("cpu", "cuda"):
        return q, k, v, rel_table
    if not torch.is_autocast_enabled(q.device.type):
        return q, k, v, rel_table
    dtype = torch.get_autocast_dtype(q.device.type)

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return cast(q), cast(k), cast(v), cast(rel_table)


def prepare_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    max_relative_position: int = 64,
    rel_table: torch.Tensor | None = None,
    causal: bool = False,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    scale: float | None = None,
    head_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AttentionInputs:
    """Check every argument of ``relative_attention`` and return its canonical form."""
    _check_qkv(q, k, v, 4, "[B, H, L, D]")
    b, h, lq, d = q.shape
    if tuple(k.shape[:2]) != (b, h) or tuple(v.shape[:2]) != (b, h):
        raise ValueError(f"batch and head dimensions differ: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"head dim D differs: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length Lk, got {k.shape[2]} and {v.shape[2]}")
    lk = k.shape[2]
    if b == 0 or h == 0 or lq == 0 or lk == 0 or d == 0:
        raise ValueError(f"empty dimension in q {list(q.shape)} / k {list(k.shape)}")

    r = _check_int("max_relative_position", max_relative_position, minimum=1)
    table = _check_table(rel_table, r, q)

    offset = _check_int("q_offset", q_offset, minimum=0)
    dropout_p, scale = _check_scalars(causal, dropout_p, scale, d)

    key_padding = additive = None
    if attention_mask is not None:
        key_padding, additive = _normalize_mask(attention_mask, b, h, lq, lk, q.device)
    hm = _normalize_head_mask(head_mask, b, h, q.device) if head_mask is not None else None
    seed = _dropout_seed(dropout_p, generator)

    return AttentionInputs(
        q=q,
        k=k,
        v=v,
        table=table,
        sinusoid=rel_table is None,
        max_relative_position=r,
        causal=causal,
        dropout_p=dropout_p,
        dropout_seed=seed,
        scale=float(scale),
        head_mask=hm,
        key_padding=key_padding,
        additive_mask=additive,
        q_offset=offset,
    )


# --- padding-free calls: cu_seqlens ---


def _check_cu_seqlens_tensor(name: str, cu: object, device: torch.device) -> torch.Tensor:
    cu = _check_tensor(name, cu)
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
    lengths = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
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
) -> AttentionInputs:
    """Check every argument of ``relative_attention_varlen`` and return its canonical form."""
    _check_qkv(q, k, v, 3, "[T, H, D]")
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
    table = _check_table(rel_table, r, q)
    dropout_p, scale = _check_scalars(causal, dropout_p, scale, d)
    batch = cu_q.shape[0] - 1
    hm = _normalize_head_mask(head_mask, batch, h, q.device) if head_mask is not None else None
    seed = _dropout_seed(dropout_p, generator)

    return AttentionInputs(
        q=q,
        k=k,
        v=v,
        table=table,
        sinusoid=rel_table is None,
        max_relative_position=r,
        causal=causal,
        dropout_p=dropout_p,
        dropout_seed=seed,
        scale=scale,
        head_mask=hm,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
    )
