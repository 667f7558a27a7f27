"""NEZHA's layer modules around the attention block: embeddings, feed-forward, layer, encoder, pooler."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .activations import get_activation
from .configuration import NezhaConfig
from .self_attention import NezhaAttention

__all__ = ["NezhaEmbeddings", "NezhaIntermediate", "NezhaOutput", "NezhaLayer", "NezhaEncoder", "NezhaPooler"]


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
        all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        all_attn: list[torch.Tensor | None] | None = [] if output_attentions else None
        cross = output_attentions and self.config.add_cross_attention
        all_cross: list[torch.Tensor | None] | None = [] if cross else None
        cache: list[Any] | None = [] if use_cache else None
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
