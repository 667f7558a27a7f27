"""NEZHA encoder on ``nezha_kernels.relative_attention``: embeddings, layers, pooler, NezhaModel.

The module tree and parameter names are those of the Hugging Face implementation, so its state dicts
load here with ``strict=True`` and back. Unlike it, no layer holds a [512, 512, head_dim] position
buffer: the attention op works from the (2R+1)-row sinusoid table, so inputs longer than
``max_position_embeddings`` work.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..attention import relative_attention, relative_attention_with_weights
from ..backends import BACKENDS
from ..inputs import MASKED_SCORE
from .checks import check_ids, check_keep_mask
from .configuration import NezhaConfig
from .outputs import BaseModelOutputWithPoolingAndCrossAttentions
from .packing import (
    PackedBatch,
    block_diagonal_mask,
    dense_only,
    gather_tokens,
    pack_from_cu_seqlens,
    pack_from_position_ids,
    pack_padded,
    scatter_tokens,
    sequence_ids_from_cu_seqlens,
    sequence_ids_from_positions,
)

__all__ = [
    "ACT2FN",
    "NezhaEmbeddings",
    "NezhaSelfAttention",
    "NezhaAttention",
    "NezhaLayer",
    "NezhaEncoder",
    "NezhaPooler",
    "NezhaPreTrainedModel",
    "NezhaModel",
]


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


# The activations Hugging Face configs name ("gelu" is the exact erf GELU of nezha-cn-base).
ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "mish": F.mish,
}


def get_activation(name: str | Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if callable(name):
        return name
    if name not in ACT2FN:
        raise ValueError(f"hidden_act {name!r} is not supported; expected one of {sorted(ACT2FN)}")
    return ACT2FN[name]


class NezhaEmbeddings(nn.Module):
    """Word + token-type embeddings, LayerNorm, dropout. No absolute position embeddings."""

    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids=None, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        """input_ids / token_type_ids: [B, L] int; inputs_embeds: [B, L, hidden]. Returns [B, L, hidden]."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:-1], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H*D] -> [B, H, L, D]."""
        return x.view(*x.shape[:-1], self.num_attention_heads, self.attention_head_size).transpose(1, 2)

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
        q = self._heads(self.query(hidden_states))
        if encoder_hidden_states is not None:
            if past_key_value is not None:
                k, v = past_key_value
            else:
                k = self._heads(self.key(encoder_hidden_states))
                v = self._heads(self.value(encoder_hidden_states))
            key_padding, causal = encoder_key_padding, False
        else:
            k = self._heads(self.key(hidden_states))
            v = self._heads(self.value(hidden_states))
            if past_key_value is not None:
                k = torch.cat([past_key_value[0], k], dim=2)
                v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if self.is_decoder else None
        kwargs: dict[str, Any] = dict(
            attention_mask=key_padding,
            max_relative_position=self.config.max_relative_position,
            causal=causal,
            q_offset=q_offset,
            dropout_p=self.config.attention_probs_dropout_prob if self.training else 0.0,
            head_mask=head_mask,
        )
        weights = None
        if output_attentions:
            context, weights = relative_attention_with_weights(q, k, v, **kwargs)
        else:
            context = relative_attention(q, k, v, backend=self.config.attn_backend, **kwargs)
        context = context.transpose(1, 2).reshape(*hidden_states.shape[:-1], self.all_head_size)
        return context, weights, present

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


class NezhaIntermediate(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = get_activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class NezhaOutput(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class NezhaLayer(nn.Module):
    """Post-LN block: self-attention (+ cross-attention in decoders), then the feed-forward."""

    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.attention = NezhaAttention(config)
        self.is_decoder = config.is_decoder
        self.add_cross_attention = config.add_cross_attention
        if self.add_cross_attention:
            self.crossattention = NezhaAttention(config)
        self.intermediate = NezhaIntermediate(config)
        self.output = NezhaOutput(config)

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
        """Returns (hidden [B, L, hidden] or [T, hidden] when packed, self weights | None,
        cross weights | None, present cache | None)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        attention_output, weights, present = self.attention(
            hidden_states,
            key_padding,
            head_mask,
            past_key_value=self_past,
            output_attentions=output_attentions,
            q_offset=q_offset,
            causal=causal,
            packed=packed,
        )
        cross_weights = None
        if encoder_hidden_states is not None:
            if not self.add_cross_attention:
                raise ValueError(
                    "encoder_hidden_states was passed but the model has no cross-attention layers: "
                    "build it with config.add_cross_attention=True (and is_decoder=True)"
                )
            cross_past = past_key_value[2:4] if past_key_value is not None and len(past_key_value) == 4 else None
            attention_output, cross_weights, cross_present = self.crossattention(
                attention_output,
                None,
                head_mask,
                encoder_hidden_states,
                encoder_key_padding,
                cross_past,
                output_attentions,
                q_offset,
            )
            present = present + cross_present if present is not None else None
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, weights, cross_weights, present


class NezhaEncoder(nn.Module):
    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([NezhaLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.checkpoint_kwargs: dict[str, Any] = {"use_reentrant": False}
        self.checkpoint_every, self.checkpoint_offload = 1, False

    def _offloaded(self, hidden_states: torch.Tensor):
        """Where a checkpointed layer keeps its saved inputs: host memory when offloading (pinned on CUDA)."""
        if not self.checkpoint_offload:
            return contextlib.nullcontext()
        return torch.autograd.graph.save_on_cpu(pin_memory=hidden_states.is_cuda)

    def forward(
        self,
        hidden_states,
        key_padding=None,
        head_masks=None,
        encoder_hidden_states=None,
        encoder_key_padding=None,
        past_key_values=None,
        use_cache=False,
        output_attentions=False,
        output_hidden_states=False,
        q_offset=0,
        causal=False,
        packed=None,
    ):
        """head_masks: one [H] tensor or None per layer; packed: hidden_states are the [T, hidden] tokens
        of that PackedBatch. Returns a dict of the collected outputs."""
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        all_cross = [] if output_attentions and self.config.add_cross_attention else None
        cache = [] if use_cache else None
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, layer in enumerate(self.layer):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            args = (
                hidden_states,
                key_padding,
                head_masks[i] if head_masks is not None else None,
                encoder_hidden_states,
                encoder_key_padding,
                past_key_values[i] if past_key_values is not None else None,
                output_attentions,
                q_offset,
                causal,
                packed,
            )
            if checkpointing and i % self.checkpoint_every == 0:
                # Both kinds of checkpointing restore the RNG state on recomputation, so the attention
                # dropout seed (drawn from torch's generator) and nn.Dropout repeat exactly.
                if self.checkpoint_kwargs.get("use_reentrant") and not args[0].requires_grad:
                    # Reentrant checkpointing only backpropagates into a layer whose input requires grad
                    # (frozen embeddings): nothing flows upstream of it anyway, so make it a leaf that does.
                    args = (args[0].detach().requires_grad_(),) + args[1:]
                with self._offloaded(args[0]):
                    hidden_states, weights, cross, present = checkpoint(layer, *args, **self.checkpoint_kwargs)
            else:
                hidden_states, weights, cross, present = layer(*args)
            if cache is not None:
                cache.append(present)
            if all_attn is not None:
                all_attn.append(weights)
            if all_cross is not None:
                all_cross.append(cross)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return {
            "last_hidden_state": hidden_states,
            "past_key_values": tuple(cache) if cache is not None else None,
            "hidden_states": tuple(all_hidden) if all_hidden is not None else None,
            "attentions": tuple(all_attn) if all_attn is not None else None,
            "cross_attentions": tuple(all_cross) if all_cross is not None else None,
        }


class NezhaPooler(nn.Module):
    """tanh(dense(first token)): [B, L, hidden] -> [B, hidden]."""

    def __init__(self, config: NezhaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class NezhaPreTrainedModel(nn.Module):
    """Base of every NEZHA model: config, weight init, tying, checkpoint IO and model surgery."""

    config_class = NezhaConfig
    base_model_prefix = "nezha"
    main_input_name = "input_ids"  # transformers' Trainer reads it (e.g. to count input tokens)
    supports_gradient_checkpointing = True
    # forward takes **kwargs (the flattened-batch keywords), from which Trainer would infer that it takes
    # num_items_in_batch; our losses are batch means, so Trainer must scale them for gradient accumulation.
    accepts_loss_kwargs = False

    def __init__(self, config: NezhaConfig, *args, **kwargs):
        super().__init__()
        if not isinstance(config, NezhaConfig):
            raise TypeError(f"config must be a NezhaConfig, got {type(config).__name__}")
        self.config = config

    # ---- init and tying --------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        """Linear / Embedding ~ N(0, initializer_range), biases 0, padding row 0, LayerNorm 1 / 0."""
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(mean=0.0, std=std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(mean=0.0, std=std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def post_init(self) -> None:
        self.apply(self._init_weights)
        self.tie_weights()
        if self.config.pruned_heads:
            self.prune_heads(self.config.pruned_heads)

    @property
    def base_model(self) -> NezhaModel:
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return None

    def tie_weights(self) -> None:
        """Share the MLM decoder's weight with the word embeddings (config.tie_word_embeddings)."""
        output = self.get_output_embeddings()
        if output is not None and self.config.tie_word_embeddings:
            output.weight = self.get_input_embeddings().weight

    # ---- properties -----------------------------------------------------------------------------
    @property
    def _keys_to_ignore_on_save(self) -> list[str] | None:
        """What save_pretrained leaves out (tied aliases): transformers' Trainer re-ties the weights when a
        checkpoint it loads lacks exactly these."""
        from .checkpoint import unsaved_keys

        return unsaved_keys(self) or None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters counted once (tied ones too); ``exclude_embeddings`` leaves out the nn.Embedding tables
        (transformers 5's Trainer counts FLOPs with it)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        unique = {id(p): p for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in skip}
        return sum(p.numel() for p in unique.values())

    def set_attn_backend(self, name: str) -> None:
        """Switch the attention backend of this live model ("auto", "reference", "torch", ...)."""
        if not isinstance(name, str) or (name != "auto" and name not in BACKENDS):
            raise ValueError(f"attn_backend must be one of {('auto',) + BACKENDS}, got {name!r}")
        self.config.attn_backend = name

    # ---- gradient (activation) checkpointing ----------------------------------------------------
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """Recompute encoder layers in the backward pass instead of keeping their activations.

        ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint.checkpoint``; the default is
        ``{"use_reentrant": False}`` (transformers 4 defaults to reentrant; both give the same gradients here).
        ``every_n_layers``: checkpoint layers 0, n, 2n, ... only; ``offload``: keep the activations saved for
        the recompute in host memory (``torch.autograd.graph.save_on_cpu``). Both as in transformers 5.
        """
        if isinstance(every_n_layers, bool) or not isinstance(every_n_layers, int) or every_n_layers < 1:
            raise ValueError(f"every_n_layers must be a positive int, got {every_n_layers!r}")
        if not isinstance(offload, bool):
            raise TypeError(f"offload must be a bool, got {type(offload).__name__}")
        encoder = self.base_model.encoder
        encoder.checkpoint_kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        encoder.checkpoint_every, encoder.checkpoint_offload = every_n_layers, offload
        encoder.gradient_checkpointing = True

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        """transformers 5's name (its Trainer calls it): the same as :meth:`gradient_checkpointing_enable`."""
        self.gradient_checkpointing_enable(activation_checkpointing_kwargs, every_n_layers, offload)

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.encoder.gradient_checkpointing = False

    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.base_model.encoder.gradient_checkpointing

    is_activation_checkpointing = is_gradient_checkpointing

    # ---- surgery ----------------------------------------------------------------------------------
    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Grow or shrink the vocabulary (and the tied MLM decoder and its bias); returns the embedding.

        Kept rows are copied. New rows get the mean of the old embeddings when ``mean_resizing``
        (as Hugging Face does by default), else N(0, initializer_range); new MLM bias entries get the
        old bias' mean (or 0).
        """
        old = self.get_input_embeddings()
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        n = old.num_embeddings if new_num_tokens is None else new_num_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"new_num_tokens must be a positive int, got {new_num_tokens!r}")
        if pad_to_multiple_of is not None:
            if (
                isinstance(pad_to_multiple_of, bool)
                or not isinstance(pad_to_multiple_of, int)
                or pad_to_multiple_of < 1
            ):
                raise ValueError(f"pad_to_multiple_of must be a positive int, got {pad_to_multiple_of!r}")
            n = math.ceil(n / pad_to_multiple_of) * pad_to_multiple_of
        pad = self.config.pad_token_id
        if pad is not None and pad >= n:
            raise ValueError(f"new_num_tokens={n} would drop the padding token id {pad}")
        keep = min(n, old.num_embeddings)
        new = nn.Embedding(
            n, old.embedding_dim, padding_idx=old.padding_idx, device=old.weight.device, dtype=old.weight.dtype
        )
        with torch.no_grad():
            if n > keep:
                if mean_resizing:
                    new.weight[keep:] = old.weight.mean(dim=0)
                else:
                    new.weight[keep:].normal_(0.0, self.config.initializer_range)
            new.weight[:keep] = old.weight[:keep]
        new.weight.requires_grad_(old.weight.requires_grad)
        self.set_input_embeddings(new)
        self._resize_output_bias(n, keep, mean_resizing)
        self.config.vocab_size = n
        self.tie_weights()
        return new

    def _resize_output_bias(self, n: int, keep: int, mean_resizing: bool) -> None:
        output = self.get_output_embeddings()
        if output is None:
            return
        head = self.cls.predictions
        old_bias = head.bias
        bias = torch.zeros(n, dtype=old_bias.dtype, device=old_bias.device)
        with torch.no_grad():
            bias[:keep] = old_bias[:keep]
            if n > keep and mean_resizing:
                bias[keep:] = old_bias.mean()
        head.bias = nn.Parameter(bias, requires_grad=old_bias.requires_grad)
        if not self.config.tie_word_embeddings:
            old_w = output.weight
            weight = torch.empty(n, old_w.shape[1], dtype=old_w.dtype, device=old_w.device)
            with torch.no_grad():
                weight.normal_(0.0, self.config.initializer_range)
                weight[:keep] = old_w[:keep]
            output.weight = nn.Parameter(weight, requires_grad=old_w.requires_grad)
        output.bias = head.bias
        output.out_features = n

    def prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        """Remove attention heads: {layer index: [head indices]} (recorded in config.pruned_heads)."""
        layers = self.base_model.encoder.layer
        for layer_index, heads in heads_to_prune.items():
            layer_index = int(layer_index)
            if not -len(layers) <= layer_index < len(layers):
                raise ValueError(f"prune_heads: layer {layer_index} out of range [-{len(layers)}, {len(layers)})")
            layer_index %= len(layers)  # negative counts from the last layer, as in transformers
            heads = sorted(set(int(h) for h in heads))
            total = self.config.num_attention_heads
            if any(not 0 <= h < total for h in heads):
                raise ValueError(f"prune_heads: head indices {heads} out of range [0, {total})")
            merged = sorted(set(self.config.pruned_heads.get(layer_index, [])) | set(heads))
            if len(merged) == total:
                raise ValueError(f"prune_heads: cannot prune every head of layer {layer_index}")
            layers[layer_index].attention.prune_heads(heads)
            self.config.pruned_heads[layer_index] = merged

    # ---- checkpoint IO (see checkpoint.py) ----------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        attn_backend: str | None = None,
        torch_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        config: NezhaConfig | None = None,
        ignore_mismatched_sizes: bool = False,
        output_loading_info: bool = False,
        **config_overrides: Any,
    ):
        """Load a local Hugging Face NEZHA directory or a Hub id ("sijunhe/nezha-cn-base");
        see :func:`nezha_kernels.models.checkpoint.load_pretrained`."""
        from .checkpoint import load_pretrained

        return load_pretrained(
            cls,
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            attn_backend=attn_backend,
            torch_dtype=torch_dtype,
            device=device,
            config=config,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            output_loading_info=output_loading_info,
            **config_overrides,
        )

    @classmethod
    def from_tf_checkpoint(cls, path_or_dir: str | os.PathLike, config: NezhaConfig | None = None, **kwargs: Any):
        """Load Huawei's original TF checkpoint (no TensorFlow needed).

        See :mod:`nezha_kernels.models.tf_checkpoint`.
        """
        from .tf_checkpoint import from_tf_checkpoint

        return from_tf_checkpoint(cls, path_or_dir, config, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        safe_serialization: bool = True,
        max_shard_size: int | str | None = None,
    ) -> None:
        """Write config.json and the weights; see :func:`nezha_kernels.models.checkpoint.save_pretrained`."""
        from .checkpoint import save_pretrained

        save_pretrained(self, save_directory, safe_serialization=safe_serialization, max_shard_size=max_shard_size)


class NezhaModel(NezhaPreTrainedModel):
    """The bare NEZHA encoder: embeddings, ``num_hidden_layers`` blocks and an optional pooler.

    ``config.is_decoder`` makes self-attention causal and enables ``past_key_values`` decoding
    (query positions continue after the cached keys, so a cached step equals the full forward);
    ``config.add_cross_attention`` adds encoder-decoder attention.

    Padding-free (``config.padding_free``, default True): when a right-padded attention_mask has padding,
    the real tokens are gathered once before the embeddings, every layer runs on [T, hidden] (attention
    through ``relative_attention_varlen``) and the outputs are scattered back to [B, L, hidden] with
    zeros at padded positions. Real-token outputs equal the dense computation. The dense path runs instead
    under torch.compile / torch.export / jit.trace, with output_attentions, past_key_values / use_cache,
    cross-attention, a 3-D mask, and masks that are not right-padded (a padded first token or a hole).
    Flattened batches ([1, T] with position_ids restarting at 0, or cu_seq_lens_q/k + max_length_q/k, as
    transformers' DataCollatorWithFlattening writes them) run packed too; on the dense path they get a
    block-diagonal mask, the same numbers.
    """

    def __init__(self, config: NezhaConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = NezhaEmbeddings(config)
        self.encoder = NezhaEncoder(config)
        self.pooler = NezhaPooler(config) if add_pooling_layer else None
        self.post_init()

    def _prune_heads(self, heads_to_prune: dict[int, list[int]]) -> None:
        self.prune_heads(heads_to_prune)

    def _layer_head_masks(self, head_mask: torch.Tensor | None) -> list[torch.Tensor] | None:
        """[H] or [num_layers, H] -> one [H] tensor per layer, in the model's dtype."""
        if head_mask is None:
            return None
        if not isinstance(head_mask, torch.Tensor):
            raise TypeError(f"head_mask must be a torch.Tensor, got {type(head_mask).__name__}")
        n_layers, n_heads = self.config.num_hidden_layers, self.config.num_attention_heads
        head_mask = head_mask.to(dtype=self.dtype)
        if head_mask.dim() == 1 and head_mask.shape[0] == n_heads:
            return [head_mask] * n_layers
        if head_mask.dim() == 2 and tuple(head_mask.shape) == (n_layers, n_heads):
            return list(head_mask.unbind(0))
        raise ValueError(
            f"head_mask must have shape [num_heads] = [{n_heads}] or [num_layers, num_heads] = "
            f"[{n_layers}, {n_heads}], got {list(head_mask.shape)}"
        )

    @staticmethod
    def _key_padding(mask: torch.Tensor | None, name: str, batch: int, length: int) -> torch.Tensor | None:
        """A [B, L] 1/0 keep mask as bool (True = attend)."""
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
        if tuple(mask.shape) != (batch, length):
            raise ValueError(
                f"{name} must have shape [batch, key length] = [{batch}, {length}], got {list(mask.shape)}"
            )
        check_keep_mask(name, mask)
        return mask != 0

    @classmethod
    def _self_attention_mask(cls, mask: torch.Tensor | None, batch: int, length: int, key_length: int):
        """(bool keep [B, Lk] or None, additive float32 [B, 1, L, Lk] or None) from a 2-D or 3-D 1/0 mask.

        A 3-D [B, L, Lk] mask is transformers' get_extended_attention_mask form: it says, per query, which
        keys to attend to (and replaces the decoder's causal mask, as there); it runs the dense path.
        """
        if isinstance(mask, torch.Tensor) and mask.dim() == 3:
            if tuple(mask.shape) != (batch, length, key_length):
                raise ValueError(
                    f"a 3-D attention_mask must have shape [batch, seq_len, key length] = "
                    f"[{batch}, {length}, {key_length}], got {list(mask.shape)}"
                )
            check_keep_mask("attention_mask", mask)
            additive = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            return None, additive.masked_fill_(mask == 0, MASKED_SCORE)[:, None]
        if isinstance(mask, torch.Tensor) and tuple(mask.shape) != (batch, key_length):
            raise ValueError(
                f"attention_mask must have shape [batch, key length] = [{batch}, {key_length}] (or a 3-D "
                f"[batch, seq_len, key length] mask), got {list(mask.shape)}"
            )
        return cls._key_padding(mask, "attention_mask", batch, key_length), None

    @staticmethod
    def _flattened_batch(
        position_ids, flattening: dict, keep, needs_dense: bool, batch: int, length: int, has_past: bool
    ) -> tuple[PackedBatch | None, torch.Tensor | None]:
        """(PackedBatch, None) for a flattened batch run packed; (None, block-diagonal additive mask) for one
        on the dense path; (None, None) for an ordinary batch.

        cu_seq_lens_q needs no data-dependent step (nothing to gather in a [1, T] row), so it stays packed
        under torch.compile too: the varlen op traces with a dynamic T. position_ids need a nonzero() to find
        the sequence starts, so compiled ones take the block-diagonal dense path.
        """
        unknown = sorted(set(flattening) - {"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"})
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
            packed = pack_from_cu_seqlens(
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

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        position_ids: torch.Tensor | None = None,
        **flattening: Any,
    ):
        """input_ids / token_type_ids [B, L] int (or inputs_embeds [B, L, hidden]); attention_mask [B, L_past + L]
        of 1/0 (or [B, L, L_past + L], per query); head_mask [H] or [num_layers, H]; encoder_hidden_states
        [B, Le, hidden] with encoder_attention_mask [B, Le]; past_key_values: per layer (k, v[, cross k,
        cross v]) [B, H, L_past, D].

        Flattened batches (DataCollatorWithFlattening): input_ids [1, T] with position_ids [1, T] restarting
        at 0 at each sequence, or the keywords cu_seq_lens_q / cu_seq_lens_k (int32 [S + 1]) and
        max_length_q / max_length_k. NEZHA has no absolute positions: position_ids only mark sequence starts.
        The pooler reads token 0 of the row, as for any [1, T] input.

        Returns BaseModelOutputWithPoolingAndCrossAttentions, or with return_dict=False the tuple
        (last_hidden_state, pooler_output, [past_key_values], [hidden_states], [attentions], [cross_attentions]).
        """
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.use_return_dict if return_dict is None else return_dict
        use_cache = (config.use_cache if use_cache is None else use_cache) if config.is_decoder else False
        if self.encoder.gradient_checkpointing and self.training:
            use_cache = False

        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("pass either input_ids or inputs_embeds, not both")
        if input_ids is None and inputs_embeds is None:
            raise ValueError("pass input_ids or inputs_embeds (neither was given)")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                raise ValueError(
                    f"input_ids must be a [batch, seq_len] tensor, got {getattr(input_ids, 'shape', input_ids)!r}"
                )
            check_ids("input_ids", input_ids, config.vocab_size, "vocab_size")
            batch, length = input_ids.shape
        else:
            if (
                not isinstance(inputs_embeds, torch.Tensor)
                or inputs_embeds.dim() != 3
                or inputs_embeds.shape[-1] != config.hidden_size
            ):
                raise ValueError(
                    f"inputs_embeds must be [batch, seq_len, hidden_size={config.hidden_size}], "
                    f"got {list(getattr(inputs_embeds, 'shape', []))}"
                )
            batch, length = inputs_embeds.shape[:2]
        if length == 0:
            raise ValueError("the input sequence is empty (seq_len = 0)")
        if token_type_ids is not None:
            if not isinstance(token_type_ids, torch.Tensor) or tuple(token_type_ids.shape) != (batch, length):
                raise ValueError(
                    f"token_type_ids must have shape [batch, seq_len] = [{batch}, {length}], "
                    f"got {list(getattr(token_type_ids, 'shape', []))}"
                )
            check_ids("token_type_ids", token_type_ids, config.type_vocab_size, "type_vocab_size")

        past_length = 0
        if past_key_values is not None:
            if not config.is_decoder:
                raise ValueError("past_key_values needs a decoder model (config.is_decoder=True)")
            if len(past_key_values) != config.num_hidden_layers:
                raise ValueError(
                    f"past_key_values must hold one entry per layer ({config.num_hidden_layers}), "
                    f"got {len(past_key_values)}"
                )
            past_length = past_key_values[0][0].shape[2]
        key_padding, additive_mask = self._self_attention_mask(attention_mask, batch, length, past_length + length)

        encoder_key_padding = None
        if encoder_hidden_states is not None:
            if not config.is_decoder:
                raise ValueError("encoder_hidden_states needs a decoder model (config.is_decoder=True)")
            encoder_key_padding = self._key_padding(
                encoder_attention_mask, "encoder_attention_mask", batch, encoder_hidden_states.shape[1]
            )

        # The dense path where packing cannot apply (see the class docstring).
        needs_dense = (
            output_attentions
            or use_cache
            or past_key_values is not None
            or encoder_hidden_states is not None
            or additive_mask is not None
        )
        dense = dense_only() or needs_dense
        packed, flat_mask = self._flattened_batch(
            position_ids, flattening, key_padding, needs_dense, batch, length, past_key_values is not None
        )
        if flat_mask is not None:
            key_padding = flat_mask
        elif packed is None and config.padding_free and key_padding is not None and not dense:
            packed = pack_padded(key_padding)
        if packed is not None:
            key_padding = None
            input_ids, token_type_ids, inputs_embeds = (
                gather_tokens(t, packed) if t is not None else None for t in (input_ids, token_type_ids, inputs_embeds)
            )
        elif additive_mask is not None:
            key_padding = additive_mask

        embedding_output = self.embeddings(input_ids, token_type_ids, inputs_embeds)
        enc = self.encoder(
            embedding_output,
            key_padding,
            self._layer_head_masks(head_mask),
            encoder_hidden_states,
            encoder_key_padding,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
            q_offset=past_length,
            causal=config.is_decoder and additive_mask is None,
            packed=packed,
        )
        if packed is not None:
            enc["last_hidden_state"] = scatter_tokens(enc["last_hidden_state"], packed)
            if enc["hidden_states"] is not None:
                enc["hidden_states"] = tuple(scatter_tokens(h, packed) for h in enc["hidden_states"])
        sequence_output = enc["last_hidden_state"]
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if not return_dict:
            rest = tuple(
                enc[k]
                for k in ("past_key_values", "hidden_states", "attentions", "cross_attentions")
                if enc[k] is not None
            )
            return (sequence_output, pooled_output) + rest
        return BaseModelOutputWithPoolingAndCrossAttentions(
            last_hidden_state=sequence_output,
            pooler_output=pooled_output,
            **{k: enc[k] for k in ("hidden_states", "past_key_values", "attentions", "cross_attentions")},
        )
