"""Validation of the public op's arguments and their canonical form for the backends.

Every backend receives an :class:`AttentionInputs`: checked tensors, a normalized mask and
scalars. Backends never re-validate, and bad input never reaches a kernel.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import torch

from .table import default_table

__all__ = ["AttentionInputs", "prepare_inputs", "MASKED_SCORE"]

# Score given to a masked (query, key) pair. Using float32's most negative finite value keeps a
# row whose keys are all masked finite: every score is equal, so the row attends uniformly to all
# keys, exactly what the Hugging Face model computes with its additive finfo.min mask.
MASKED_SCORE = torch.finfo(torch.float32).min

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class AttentionInputs:
    """Validated arguments of one ``relative_attention`` call.

    q: [B, H, Lq, D]; k, v: [B, H, Lk, D]; table: [2R+1, D], all of one dtype and device.
    key_padding: bool [B, Lk] (True = attend) or None.
    additive_mask: float tensor of rank 4 broadcastable to [B, H, Lq, Lk] (expanded view) or None.
    head_mask: [B, H] in q's dtype family (float) or None.
    dropout_seed: 63-bit seed of the Philox stream when dropout_p > 0 (an int; a 0-d int64 CPU tensor while
        torch.compile traces), else None.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    max_relative_position: int
    key_padding: torch.Tensor | None
    additive_mask: torch.Tensor | None
    causal: bool
    q_offset: int
    dropout_p: float
    dropout_seed: int | torch.Tensor | None
    scale: float
    head_mask: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(B, H, Lq, Lk, D)."""
        b, h, lq, d = self.q.shape
        return b, h, lq, self.k.shape[2], d

    @property
    def table_requires_grad(self) -> bool:
        return self.table.requires_grad


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


def check_qkv(q, k, v, rank: int, layout: str) -> None:
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


def check_table(rel_table: torch.Tensor | None, r: int, q: torch.Tensor) -> torch.Tensor:
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


def check_scalars(causal: object, dropout_p: object, scale: object, d: int) -> tuple[float, float]:
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
    check_qkv(q, k, v, 4, "[B, H, L, D]")
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
    table = check_table(rel_table, r, q)

    offset = _check_int("q_offset", q_offset, minimum=0)
    dropout_p, scale = check_scalars(causal, dropout_p, scale, d)

    key_padding = additive = None
    if attention_mask is not None:
        key_padding, additive = _normalize_mask(attention_mask, b, h, lq, lk, q.device)
    hm = _normalize_head_mask(head_mask, b, h, q.device) if head_mask is not None else None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    seed = draw_dropout_seed(generator) if dropout_p > 0.0 else None

    return AttentionInputs(
        q=q,
        k=k,
        v=v,
        table=table,
        max_relative_position=r,
        key_padding=key_padding,
        additive_mask=additive,
        causal=causal,
        q_offset=offset,
        dropout_p=dropout_p,
        dropout_seed=seed,
        scale=float(scale),
        head_mask=hm,
    )
