"""One named description of a kernel call: the launchers build it once and every kernel takes it by name.

The three kernels share ~50 arguments (pointers, strides, scalars, constexprs). ``KernelCall.kwargs`` names each
one as the kernels do: strides grouped by tensor (``stride_q{b,h,m,d}``, see STRIDE_AXES), scalars by meaning,
constexprs by role (shape, features, arithmetic). A feature is one field here and one parameter per kernel;
nothing is spliced by position.

Inside the kernels the same groups travel as tuples, built once per program and unpacked by the @jit helpers that
read them (softmax.py, band.py, backward_dq.py), so a loop helper takes a handful of packs instead of ~40 arguments:

    rows  = (b, h, bh, offs_m, m_valid)                     the program's batch row, head and query rows
    masks = (KPAD, stride_pb, stride_pn, AMASK, stride_ab, stride_ah, stride_am, stride_an)
    drop  = (dropout_p, dropout_scale, seed_lo, seed_hi)
    table = (T, stride_tr, stride_td, R)
    kv    = (k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd)   this (b, h)'s K / V rows
    dQ only: stats = (row_max, row_logsum, delta, hm), edges = (q . T[0], q . T[2R], dO . T[0], dO . T[2R])

Constexprs stay separate named parameters (they select code at compile time).
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from . import configs
from .philox import seed_words

# Kernel stride names: stride_<prefix><axis> for each axis of the tensor (q [B, H, Lq, D] -> stride_qb, ...).
STRIDE_AXES = {
    "q": "bhmd",
    "k": "bhnd",
    "v": "bhnd",
    "t": "rd",
    "o": "bhmd",
    "g": "bhmd",
    "p": "bn",
    "a": "bhmn",
    "h": "bh",
}


def strides(prefix: str, t: torch.Tensor | None) -> dict[str, int]:
    """{stride_<prefix><axis>: stride} of ``t`` (zeros for an absent optional tensor)."""
    axes = STRIDE_AXES[prefix]
    values = tuple(t.stride()) if t is not None else (0,) * len(axes)
    if len(values) != len(axes):
        raise ValueError(f"{prefix}: expected a {len(axes)}-d tensor, got strides {values}")
    return {f"stride_{prefix}{axis}": s for axis, s in zip(axes, values, strict=True)}


def length_key(length: int) -> int:
    """Autotuning key of a length (LQ_KEY / LK_KEY): a power of two, so new lengths rarely re-tune."""
    return triton.next_power_of_2(max(1, length))


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """Everything the forward and backward kernels share, for q, k, v as [B, H, L, D] (or varlen [1, H, T, D] views).

    relative off: the plain twin (exact softmax attention, no table term); table is then any [1, D] tensor.
    sinusoid: the table is NEZHA's default sinusoid (ops.py), so its band terms may be computed, not read.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    key_padding: torch.Tensor | None
    additive_mask: torch.Tensor | None
    head_mask: torch.Tensor | None
    cu_seqlens: tuple[torch.Tensor, torch.Tensor] | None
    r: int
    causal: bool
    q_offset: int
    scale: float
    dropout_p: float
    seed: int
    lq_key: int
    lk_key: int
    relative: bool = True
    sinusoid: bool = False

    def pointers(self) -> dict:
        """The input tensors; an absent optional one is q (never read: its HAS_* flag is off)."""
        dummy = self.q
        cu_q, cu_k = self.cu_seqlens if self.cu_seqlens is not None else (dummy, dummy)
        return dict(
            Q=self.q,
            K=self.k,
            V=self.v,
            T=self.table,
            KPAD=self.key_padding.view(torch.uint8) if self.key_padding is not None else dummy,
            AMASK=self.additive_mask if self.additive_mask is not None else dummy,
            HMASK=self.head_mask if self.head_mask is not None else dummy,
            CU_Q=cu_q,
            CU_K=cu_k,
        )

    def input_strides(self) -> dict:
        return {
            **strides("q", self.q),
            **strides("k", self.k),
            **strides("v", self.v),
            **strides("t", self.table),
            **strides("p", self.key_padding),
            **strides("a", self.additive_mask),
            **strides("h", self.head_mask),
        }

    def scalars(self) -> dict:
        seed_lo, seed_hi = seed_words(self.seed if self.dropout_p > 0.0 else 0)
        return dict(
            H=self.q.shape[1],
            LQ=self.q.shape[2],
            LK=self.k.shape[2],
            R=self.r,
            Q_OFFSET=self.q_offset,
            scale=float(self.scale),
            dropout_p=float(self.dropout_p),
            dropout_scale=1.0 / (1.0 - self.dropout_p),
            seed_lo=seed_lo,
            seed_hi=seed_hi,
            LQ_KEY=self.lq_key,
            LK_KEY=self.lk_key,
        )

    def constexprs(self) -> dict:
        d = self.q.shape[3]
        has_masks = self.key_padding is not None or self.additive_mask is not None
        shape = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)))
        features = dict(
            RELATIVE=self.relative,
            HAS_KPAD=self.key_padding is not None,
            HAS_AMASK=self.additive_mask is not None,
            HAS_HMASK=self.head_mask is not None,
            CAUSAL=self.causal,
            CAUSAL_SKIP=self.causal and not has_masks,
            HAS_DROPOUT=self.dropout_p > 0.0,
            VARLEN=self.cu_seqlens is not None,
        )
        # fp32 inputs multiply exactly (FMA dots); fp16 / bf16 run the tensor cores.
        arithmetic = dict(FMA_DOTS=self.q.dtype == torch.float32)
        return {**shape, **features, **arithmetic}

    def far_loops(self, kind: str) -> int:
        """FAR_LOOPS of the forward ("fwd"), dQ ("bwd_dq") or dK/dV ("bwd_dkdv") kernel for this call
        (configs.skeleton_choice)."""
        features = self._choice_features()
        return configs.far_loops(kind, self.q.shape[3], self.q.element_size(), features, configs.arch_major(self.q))

    def _choice_features(self) -> dict:
        return {name: value for name, value in self.constexprs().items() if name in configs.CHOICE_FEATURES}

    def rotation(self, kind: str) -> bool:
        """SINUSOID of the forward ("fwd"), dQ ("bwd_dq") or dK/dV ("bwd_dkdv") kernel: the band by rotation
        (configs.rotation_band)."""
        if not (self.relative and self.sinusoid):
            return False
        elem = self.q.element_size()
        return configs.rotation_band(kind, self.q.shape[3], elem, self._choice_features(), configs.arch_major(self.q))

    def rotation_block_m(self) -> int:
        """ROT_BLOCK_M of the dK/dV kernel: the forward's query block (configs.rotation_block_m)."""
        elem = self.q.element_size()
        return configs.rotation_block_m(self.q.shape[3], elem, self._choice_features(), configs.arch_major(self.q))

    def rotation_loop(self, kind: str) -> bool:
        """ROTATION_LOOP of a kernel on the rotation path (configs.rotation_loop): the forward and dQ against their
        key tile, dK/dV against its key block (BLOCK_N of its main tile)."""
        if kind != "bwd_dkdv":
            return configs.rotation_loop(self.r)
        # dK/dV: the loop runs beside the far loops, without per-pair features (its kernel's PLAIN_ROTATION), and
        # the delta kernel writes its rotated operands then (launch._launch_bwd).
        features = self._choice_features()
        per_pair = any(features.get(name, False) for name in configs.PER_PAIR_FEATURES)
        if self.far_loops(kind) == 0 or per_pair or self.cu_seqlens is not None:
            return False
        if self.q.shape[2] > configs.DKDV_ROTATION_LOOP_MAX_LQ:
            return False  # tensor-bound there: the delta kernel's copies would cost more than the loop saves
        elem = self.q.element_size()
        tile = configs.main_tile(kind, self.q.shape[3], elem, features, configs.arch_major(self.q))
        # Its query tiles must lie inside the forward's blocks (their angles from one block's start).
        inside = self.rotation_block_m() % min(tile[0], configs.ROTATION_LOOP_QUERIES) == 0
        return inside and configs.rotation_loop(self.r, tile[1])

    def kwargs(self, **kernel_specific) -> dict:
        """Every kernel argument by name: the shared ones plus a kernel's own (outputs, their strides, BAND_P)."""
        return {**self.pointers(), **self.input_strides(), **self.scalars(), **self.constexprs(), **kernel_specific}
