"""NezhaPreTrainedModel: the Hugging Face PreTrainedModel API of every NEZHA model.

Weight init and tying, gradient checkpointing, vocabulary resizing, head pruning, and checkpoint IO
(delegated to :mod:`.checkpoint` and :mod:`.tf_checkpoint`).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..backends import BACKENDS
from .configuration import NezhaConfig

if TYPE_CHECKING:
    from .modeling import NezhaModel

__all__ = ["NezhaPreTrainedModel"]


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
        config.validate()  # where transformers validates: when a model is built
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
            # Re-recorded under the real layer indices (a key -1 names the last layer, as in transformers).
            heads, self.config.pruned_heads = self.config.pruned_heads, {}
            self.prune_heads(heads)
        if getattr(self.config, "gradient_checkpointing", False):
            # Old configs carry the flag; transformers honours it with this deprecation warning, then drops it.
            warnings.warn(
                "Passing `gradient_checkpointing` to a config initialization is deprecated: use "
                "`model.gradient_checkpointing_enable()` instead (or TrainingArguments(gradient_checkpointing=True)).",
                FutureWarning,
                stacklevel=2,
            )
            self.gradient_checkpointing_enable()
        if hasattr(self.config, "gradient_checkpointing"):
            delattr(self.config, "gradient_checkpointing")
            self.config._extra_keys = [k for k in self.config._extra_keys if k != "gradient_checkpointing"]

    @property
    def base_model(self) -> NezhaModel:
        return cast("NezhaModel", getattr(self, self.base_model_prefix, self))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.embeddings.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return None

    def tie_weights(self) -> None:
        """Share the MLM decoder's weight with the word embeddings (config.tie_word_embeddings); under
        ``config.torchscript`` copy it instead, as transformers does (TorchScript cannot export shared weights)."""
        output = self.get_output_embeddings()
        if output is not None and self.config.tie_word_embeddings:
            weight = self.get_input_embeddings().weight
            output.weight = nn.Parameter(weight.detach().clone()) if self.config.torchscript else weight

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
            if isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int):
                raise ValueError(  # transformers' words
                    f"Asking to pad the embedding matrix to a multiple of `{pad_to_multiple_of}`, which is not "
                    "an integer. Please make sure to pass an integer"
                )
            if pad_to_multiple_of < 1:
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
        self.config.vocab_size = self.vocab_size = n
        self.tie_weights()
        return new

    def _resize_output_bias(self, n: int, keep: int, mean_resizing: bool) -> None:
        output = self.get_output_embeddings()
        if output is None:
            return
        heads: Any = self.cls  # only models with an output embedding (an MLM head) get here
        head = heads.predictions
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
        for layer_index, heads in list(heads_to_prune.items()):
            layer_index = int(layer_index)
            if not -len(layers) <= layer_index < len(layers):
                raise ValueError(f"prune_heads: layer {layer_index} out of range [-{len(layers)}, {len(layers)})")
            layer_index %= len(layers)  # negative counts from the last layer, as in transformers
            heads = sorted(set(int(h) for h in heads))
            total = self.config.num_attention_heads
            if any(not -total <= h < total for h in heads):
                raise ValueError(f"prune_heads: head indices {heads} out of range [-{total}, {total})")
            heads = sorted({h % total for h in heads})  # negative counts from the last head, as in transformers
            merged = sorted(set(self.config.pruned_heads.get(layer_index, [])) | set(heads))
            if len(merged) == total:
                raise ValueError(f"prune_heads: cannot prune every head of layer {layer_index}")
            layer: Any = layers[layer_index]
            layer.attention.prune_heads(heads)
            self.config.pruned_heads[layer_index] = merged

    # ---- checkpoint IO (see checkpoint.py) ----------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None,
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
        state_dict: dict[str, torch.Tensor] | None = None,
        subfolder: str = "",
        **config_overrides: Any,
    ):
        """Load a local Hugging Face NEZHA directory or a Hub id ("sijunhe/nezha-cn-base"), or build from
        ``config`` and ``state_dict`` alone (path None); see :func:`.checkpoint.load_pretrained`."""
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
            state_dict=state_dict,
            subfolder=subfolder,
            **config_overrides,
        )

    @classmethod
    def from_tf_checkpoint(cls, path_or_dir: str | os.PathLike, config: NezhaConfig | None = None, **kwargs: Any):
        """Load Huawei's original TF checkpoint (no TensorFlow needed); see :mod:`.tf_checkpoint`."""
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
