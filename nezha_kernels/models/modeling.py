"""NezhaModel: the NEZHA encoder on ``nezha_kernels.relative_attention``.

The module tree and parameter names are those of the Hugging Face implementation, so its state dicts
load here with ``strict=True`` and back. Unlike it, no layer holds a [512, 512, head_dim] position
buffer: the attention op works from the (2R+1)-row sinusoid table, so inputs longer than
``max_position_embeddings`` work.

The layer modules live in :mod:`.layers` and :mod:`.self_attention`, the PreTrainedModel API in
:mod:`.pretrained`, the padding-free policy in :mod:`.packing_policy`; their public names are
re-exported here, where they were first defined.
"""

from __future__ import annotations

from typing import Any

import torch

from ..inputs import MASKED_SCORE
from .activations import ACT2FN, get_activation
from .checks import check_ids, check_keep_mask
from .configuration import NezhaConfig
from .layers import NezhaEmbeddings, NezhaEncoder, NezhaIntermediate, NezhaLayer, NezhaOutput, NezhaPooler
from .outputs import BaseModelOutputWithPoolingAndCrossAttentions
from .packing import gather_tokens, scatter_tokens
from .packing_policy import plan_batch
from .pretrained import NezhaPreTrainedModel
from .self_attention import NezhaAttention, NezhaSelfAttention, NezhaSelfOutput

__all__ = [
    "ACT2FN",
    "get_activation",
    "NezhaEmbeddings",
    "NezhaSelfAttention",
    "NezhaSelfOutput",
    "NezhaAttention",
    "NezhaIntermediate",
    "NezhaOutput",
    "NezhaLayer",
    "NezhaEncoder",
    "NezhaPooler",
    "NezhaPreTrainedModel",
    "NezhaModel",
]


class NezhaModel(NezhaPreTrainedModel):
    """The bare NEZHA encoder: embeddings, ``num_hidden_layers`` blocks and an optional pooler.

    ``config.is_decoder`` makes self-attention causal and enables ``past_key_values`` decoding
    (query positions continue after the cached keys, so a cached step equals the full forward);
    ``config.add_cross_attention`` adds encoder-decoder attention.

    Padding-free (``config.padding_free``, default True): when a right-padded attention_mask has padding,
    the real tokens are gathered once before the embeddings, every layer runs on [T, hidden] (attention
    through ``relative_attention_varlen``) and the outputs are scattered back to [B, L, hidden] with
    zeros at padded positions; the dense path zeroes them too, so every path gives the same tensors.
    Real-token outputs equal the dense computation. The dense path runs instead
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
        padding_free: bool | None = None,
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

        padding_free: this call's config.padding_free (None: the config's). When True, the hidden states
        (last_hidden_state and every hidden_states entry) are zero at the positions a 2-D attention_mask
        pads, on every path (packed, dense, compiled, exported, traced, cached); the pooler reads token 0
        before that, as transformers does. When False, padded positions hold the dense computation's values.

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

        padding_free = config.padding_free if padding_free is None else padding_free
        if not isinstance(padding_free, bool):
            raise TypeError(f"padding_free must be a bool or None, got {type(padding_free).__name__}")
        # The query rows a 2-D mask pads: zero in the output whichever path runs (see the docstring).
        padded_rows = ~key_padding[:, past_length:, None] if padding_free and key_padding is not None else None
        packed, key_padding = plan_batch(
            key_padding,
            additive_mask,
            position_ids,
            flattening,
            padding_free=padding_free,
            needs_dense=(
                output_attentions
                or use_cache
                or past_key_values is not None
                or encoder_hidden_states is not None
                or additive_mask is not None
            ),
            batch=batch,
            length=length,
            has_past=past_key_values is not None,
        )
        if packed is not None:
            input_ids, token_type_ids, inputs_embeds = (
                gather_tokens(t, packed) if t is not None else None for t in (input_ids, token_type_ids, inputs_embeds)
            )

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
        # Token 0 as computed (a left-padded row's too, as in transformers); packed, it is a real token.
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if packed is None and padded_rows is not None:
            sequence_output = sequence_output.masked_fill(padded_rows, 0.0)
            if enc["hidden_states"] is not None:
                enc["hidden_states"] = tuple(h.masked_fill(padded_rows, 0.0) for h in enc["hidden_states"])
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
