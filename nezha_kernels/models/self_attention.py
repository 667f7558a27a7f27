"""NEZHA's attention block: the self-attention module, its output projection, head pruning.

The dense forward (:func:`dense_self_attention`) is shared with the transformers integration
(``nezha_kernels.integrations.transformers_nezha``), which runs transformers' own NezhaSelfAttention
modules through it: one implementation of the q/k/v projections, the key/value cache and the op call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attention import relative_attention, relative_attention_with_weights
from .configuration import NezhaConfig
from .packing import PackedBatch

__all__ = ["NezhaSelfAttention", "NezhaSelfOutput", "NezhaAttention", "dense_self_attention", "split_heads"]


def split_heads(x: torch.Tensor, num_heads: int, head_size: int) -> torch.Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    return x.view(*x.shape[:-1], num_heads, head_size).transpose(1, 2)


def dense_self_attention(
    module: Any,  # ours or transformers' NezhaSelfAttention: duck-typed
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    head_mask: torch.Tensor | None,
    encoder_hidden_states: torch.Tensor | None,
    past_key_value: tuple[torch.Tensor, torch.Tensor] | None,
    output_attentions: bool,
    *,
    max_relative_position: int,
    dropout_p: float,
    q_offset: int | None = None,
    causal: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor]]:
    """The dense [B, L, hidden] forward of a NEZHA self-attention module (ours or transformers').

    ``module`` holds the ``query`` / ``key`` / ``value`` Linears and ``num_attention_heads``,
    ``attention_head_size``, ``all_head_size``. Self-attention appends the new keys/values to
    ``past_key_value``; cross-attention (``encoder_hidden_states`` [B, Le, hidden]) projects the encoder
    states, or reuses ``past_key_value`` as its cached projection. ``attention_mask`` masks the keys
    attended (bool [B, Lk], True = attend, or additive [B, 1, Lq or 1, Lk]). ``q_offset`` places the
    queries after the cached keys; None: Lk - Lq for self-attention, 0 for cross-attention.
    With ``output_attentions`` the weights come from ``relative_attention_with_weights`` (pure PyTorch,
    O(B * H * Lq * Lk) memory) whatever the backend.

    Returns (context [B, Lq, all_head_size], weights [B, H, Lq, Lk] or None, (k, v) [B, H, Lk, D]).
    """
    heads, size = module.num_attention_heads, module.attention_head_size
    q = split_heads(module.query(hidden_states), heads, size)
    if encoder_hidden_states is not None:
        if past_key_value is not None:
            k, v = past_key_value[0], past_key_value[1]
        else:
            k = split_heads(module.key(encoder_hidden_states), heads, size)
            v = split_heads(module.value(encoder_hidden_states), heads, size)
    else:
        k = split_heads(module.key(hidden_states), heads, size)
        v = split_heads(module.value(hidden_states), heads, size)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
    if q_offset is None:
        q_offset = k.shape[2] - q.shape[2] if encoder_hidden_states is None else 0
    kwargs: dict[str, Any] = dict(
        attention_mask=attention_mask,
        max_relative_position=max_relative_position,
        causal=causal,
        q_offset=q_offset,
        dropout_p=dropout_p,
        head_mask=head_mask,
    )
    weights = None
    if output_attentions:
        context, weights = relative_attention_with_weights(q, k, v, **kwargs)
    else:
        context = relative_attention(q, k, v, backend=backend, **kwargs)
    context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], module.all_head_size)
    return context, weights, (k, v)


class NezhaSelfAttention(nn.Module):
    """Multi-head relative-position attention through ``relative_attention``.

    The backend is ``config.attn_backend``, read at every call (so it can be switched on a live
    model). With ``output_attentions=True`` the weights are needed, so the call goes through
    ``relative_attention_with_weights`` (pure PyTorch, O(B * H * L^2) memory) whatever the backend.
    On a packed batch (``packed`` given, hidden_states [T, hidden]) it calls ``relative_attention_varlen``.
    """

    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.hidden_size // config.num_attention_heads
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(config.hidden_size, self.all_head_size)
        self.key = nn.Linear(config.hidden_size, self.all_head_size)
        self.value = nn.Linear(config.hidden_size, self.all_head_size)
        self.is_decoder = config.is_decoder

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_padding: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_key_padding: torch.Tensor | None = None,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        output_attentions: bool = False,
        q_offset: int = 0,
        causal: bool = False,
        packed: PackedBatch | None = None,
    ):
        """hidden_states [B, Lq, hidden] (or [T, hidden] with ``packed``); key_padding bool [B, Lk]
        (True = attend) or an additive float mask [B, 1, Lq, Lk]; head_mask [H].

        Returns (context [B, Lq, hidden], weights [B, H, Lq, Lk] or None, (k, v) [B, H, Lk, D] or None).
        """
        if packed is not None:
            return self._packed_forward(hidden_states, head_mask, causal, packed), None, None
        cross = encoder_hidden_states is not None
        context, weights, present = dense_self_attention(
            self,
            hidden_states,
            encoder_key_padding if cross else key_padding,
            head_mask,
            encoder_hidden_states,
            past_key_value,
            output_attentions,
            max_relative_position=self.config.max_relative_position,
            dropout_p=self.config.attention_probs_dropout_prob if self.training else 0.0,
            q_offset=q_offset,
            causal=causal and not cross,
            backend=self.config.attn_backend,
        )
        return context, weights, present if self.is_decoder else None

    def _packed_forward(
        self, hidden_states: torch.Tensor, head_mask: torch.Tensor | None, causal: bool, packed: PackedBatch
    ) -> torch.Tensor:
        """[T, hidden] -> [T, hidden]: q, k, v stay [T, H, D] (no transposes), one varlen call."""
        from ..varlen import relative_attention_varlen

        tokens = hidden_states.shape[0]

        def heads(x):
            return x.view(tokens, self.num_attention_heads, self.attention_head_size)

        context = relative_attention_varlen(
            heads(self.query(hidden_states)),
            heads(self.key(hidden_states)),
            heads(self.value(hidden_states)),
            packed.cu_seqlens,
            packed.cu_seqlens,
            max_seqlen_q=packed.max_seqlen,
            max_seqlen_k=packed.max_seqlen,
            max_relative_position=self.config.max_relative_position,
            causal=causal,
            dropout_p=self.config.attention_probs_dropout_prob if self.training else 0.0,
            head_mask=head_mask,
            backend=self.config.attn_backend,
        )
        return context.reshape(tokens, self.all_head_size)


class NezhaSelfOutput(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


def _prune_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping the rows (dim 0: outputs) or columns (dim 1: inputs) listed in ``keep``."""
    keep = keep.to(layer.weight.device)
    weight = layer.weight.index_select(dim, keep).detach().clone()
    bias = None
    if layer.bias is not None:
        bias = (layer.bias[keep] if dim == 0 else layer.bias).detach().clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    if bias is not None:
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new


class NezhaAttention(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.self = NezhaSelfAttention(config)
        self.output = NezhaSelfOutput(config)
        self.pruned_heads: set[int] = set()

    def prune_heads(self, heads) -> None:
        """Remove heads (indices in the ORIGINAL numbering) from query/key/value and output.dense."""
        heads = set(int(h) for h in heads) - self.pruned_heads
        if not heads:
            return
        att = self.self
        size = att.attention_head_size
        # Map original head numbers to current positions, skipping heads pruned before.
        current = [h for h in range(att.num_attention_heads + len(self.pruned_heads)) if h not in self.pruned_heads]
        remove = {current.index(h) for h in heads if h in current}
        keep_heads = [i for i in range(att.num_attention_heads) if i not in remove]
        keep = torch.tensor([i * size + d for i in keep_heads for d in range(size)], dtype=torch.long)
        att.query = _prune_linear(att.query, keep, 0)
        att.key = _prune_linear(att.key, keep, 0)
        att.value = _prune_linear(att.value, keep, 0)
        self.output.dense = _prune_linear(self.output.dense, keep, 1)
        att.num_attention_heads = len(keep_heads)
        att.all_head_size = size * att.num_attention_heads
        self.pruned_heads |= heads

    def forward(
        self,
        hidden_states,
        key_padding=None,
        head_mask=None,
        encoder_hidden_states=None,
        encoder_key_padding=None,
        past_key_value=None,
        output_attentions=False,
        q_offset=0,
        causal=False,
        packed=None,
    ):
        context, weights, present = self.self(
            hidden_states,
            key_padding,
            head_mask,
            encoder_hidden_states,
            encoder_key_padding,
            past_key_value,
            output_attentions,
            q_offset,
            causal,
            packed,
        )
        return self.output(context, hidden_states), weights, present
