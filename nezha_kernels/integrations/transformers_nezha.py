"""Drop-in acceleration of transformers' own NEZHA classes (transformers <= 4.57).

``patch_transformers_nezha(model)`` swaps the class of every ``NezhaSelfAttention`` in ``model`` for a
subclass whose forward calls ``relative_attention`` (same parameters, no copy) and deletes its
``[512, 512, head_dim]`` position buffer. ``patch_transformers_nezha()`` patches the transformers class
itself, so models built afterwards never allocate that buffer. Both are idempotent and undone by
``unpatch_transformers_nezha``. A patched layer also handles a key/value cache (the original assumes query
length == key length) by placing queries at ``q_offset = Lk - Lq``; transformers 4.57's model-level cache
handling for NEZHA is broken on its own, so decode with ``nezha_kernels.models`` instead.
"""

from __future__ import annotations

import importlib
import threading

import torch
from torch import nn

from ..models.self_attention import dense_self_attention

__all__ = ["patch_transformers_nezha", "unpatch_transformers_nezha", "is_patched"]

_MODULE = "transformers.models.deprecated.nezha.modeling_nezha"
_EXPECTED_CHILDREN = {"query", "key", "value", "dropout"}
_lock = threading.Lock()
_class_patch: dict[str, object] = {}


def _nezha_module():
    try:
        return importlib.import_module(_MODULE)
    except ImportError as exc:
        try:
            import transformers

            version = transformers.__version__
        except ImportError:
            raise ImportError(
                "patch_transformers_nezha needs transformers <= 4.57 (with NEZHA); it is not installed"
            ) from exc
        raise ImportError(
            f"transformers {version} has no NEZHA (it was removed in transformers 5); use nezha_kernels.models "
            "instead, or install transformers<=4.57"
        ) from exc


def _check_layout(module: nn.Module) -> None:
    children = {name for name, _ in module.named_children()}
    missing = _EXPECTED_CHILDREN - children
    attrs = ("num_attention_heads", "attention_head_size", "all_head_size", "is_decoder")
    absent = sorted(missing) or [a for a in attrs if not hasattr(module, a)]
    if absent:
        raise RuntimeError(
            f"unexpected NezhaSelfAttention layout (missing {absent}); refusing to patch this transformers version"
        )


def _head_mask_for_op(head_mask: torch.Tensor | None) -> torch.Tensor | None:
    """transformers passes per-layer head masks as [1 or B, H, 1, 1]; the op takes [H] or [B, H]."""
    if head_mask is None:
        return None
    hm = head_mask.reshape(head_mask.shape[0], -1) if head_mask.dim() == 4 else head_mask
    return hm[0] if hm.dim() == 2 and hm.shape[0] == 1 else hm


def _fast_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    head_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    past_key_values=None,
    output_attentions: bool | None = False,
    past_key_value=None,
):
    """NezhaSelfAttention.forward on relative_attention; same arguments and outputs as the original.

    The attention itself is nezha_kernels.models' (``dense_self_attention``); this adapts transformers'
    argument forms: [1 or B, H, 1, 1] head masks, and a [B, 1, Lk, Lk] causal mask while decoding.
    """
    if past_key_values is None:
        past_key_values = past_key_value
    mask = encoder_attention_mask if encoder_hidden_states is not None else attention_mask
    lq = hidden_states.shape[-2]
    if mask is not None and mask.dim() == 4 and mask.shape[-2] not in (1, lq):
        mask = mask[..., -lq:, :]  # a [B, 1, Lk, Lk] causal mask while decoding: keep the new rows
    context, probs, present = dense_self_attention(
        self,
        hidden_states,
        mask,
        _head_mask_for_op(head_mask),
        encoder_hidden_states,
        past_key_values,
        bool(output_attentions),
        max_relative_position=self.max_relative_position,
        dropout_p=self.dropout.p if self.training else 0.0,
    )
    outputs = (context, probs) if output_attentions else (context,)
    if self.is_decoder:
        outputs = outputs + (present,)
    return outputs


_fast_classes: dict[type, type] = {}


def _fast_class(original: type) -> type:
    if original not in _fast_classes:
        _fast_classes[original] = type(
            "FastNezhaSelfAttention",
            (original,),
            {"forward": _fast_forward, "_nezha_kernels_original_class": original, "__module__": __name__},
        )
    return _fast_classes[original]


def _patch_instance(module: nn.Module, max_relative_position: int) -> None:
    if getattr(type(module), "_nezha_kernels_original_class", None) is not None:
        return  # already fast
    _check_layout(module)
    module.max_relative_position = max_relative_position
    if hasattr(module, "relative_positions_encoding"):
        del module.relative_positions_encoding  # frees the [512, 512, D] buffer
    module.__class__ = _fast_class(type(module))


def _unpatch_instance(module: nn.Module, config) -> None:
    original = getattr(type(module), "_nezha_kernels_original_class", None)
    if original is None:
        return
    mod = _nezha_module()
    ref = next(module.parameters())
    module.relative_positions_encoding = mod.NezhaRelativePositionsEncoding(
        length=config.max_position_embeddings,
        depth=module.attention_head_size,
        max_relative_position=config.max_relative_position,
    ).to(device=ref.device, dtype=ref.dtype)
    module.__class__ = original
    del module.max_relative_position


def _self_attentions(model: nn.Module, cls: type):
    for module in model.modules():
        if isinstance(module, cls):
            yield module


def patch_transformers_nezha(model: nn.Module | None = None) -> nn.Module | None:
    """Run transformers' NEZHA attention on nezha_kernels.

    With ``model`` (a transformers NEZHA model): patches its self-attention layers in place (same weights,
    no copy; the position buffers are freed) and returns the model. Without: patches transformers'
    ``NezhaSelfAttention`` class so models created afterwards are fast and never build the buffer.
    Idempotent; undo with ``unpatch_transformers_nezha``.
    """
    mod = _nezha_module()
    with _lock:
        if model is None:
            if "init" in _class_patch:
                return None
            cls = mod.NezhaSelfAttention
            if not callable(getattr(cls, "transpose_for_scores", None)):
                raise RuntimeError("unexpected NezhaSelfAttention layout; refusing to patch this transformers version")
            original_init = cls.__init__

            def fast_init(self, config):
                # Build the layer without its position buffer, then make it fast; unpatching the class
                # later leaves layers built meanwhile fast (and unpatch_transformers_nezha(model) still works).
                nn.Module.__init__(self)
                if config.hidden_size % config.num_attention_heads != 0:
                    raise ValueError(
                        f"hidden_size ({config.hidden_size}) is not a multiple of num_attention_heads "
                        f"({config.num_attention_heads})"
                    )
                self.num_attention_heads = config.num_attention_heads
                self.attention_head_size = config.hidden_size // config.num_attention_heads
                self.all_head_size = self.num_attention_heads * self.attention_head_size
                self.query = nn.Linear(config.hidden_size, self.all_head_size)
                self.key = nn.Linear(config.hidden_size, self.all_head_size)
                self.value = nn.Linear(config.hidden_size, self.all_head_size)
                self.dropout = nn.Dropout(config.attention_probs_dropout_prob)
                self.is_decoder = config.is_decoder
                self.max_relative_position = config.max_relative_position
                self.__class__ = _fast_class(cls)

            cls.__init__ = fast_init
            _class_patch.update(init=original_init, cls=cls)
            return None
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a transformers NEZHA model), got {type(model).__name__}")
        config = getattr(model, "config", None)
        if config is None or getattr(config, "model_type", None) != "nezha":
            raise ValueError("model is not a transformers NEZHA model (config.model_type != 'nezha')")
        found = list(_self_attentions(model, mod.NezhaSelfAttention))
        if not found:
            raise ValueError("model has no NezhaSelfAttention layers to patch")
        for module in found:
            _patch_instance(module, config.max_relative_position)
        return model


def unpatch_transformers_nezha(model: nn.Module | None = None) -> nn.Module | None:
    """Undo ``patch_transformers_nezha`` for ``model`` (rebuilding its position buffers) or for the class."""
    mod = _nezha_module()
    with _lock:
        if model is None:
            if "init" in _class_patch:
                _class_patch["cls"].__init__ = _class_patch["init"]
                _class_patch.clear()
            return None
        for module in _self_attentions(model, mod.NezhaSelfAttention):
            _unpatch_instance(module, model.config)
        return model


def is_patched(model: nn.Module | None = None) -> bool:
    """Whether ``model`` (every NEZHA self-attention in it) or, without a model, the class is patched."""
    if model is None:
        return "init" in _class_patch
    mod = _nezha_module()
    layers = list(_self_attentions(model, mod.NezhaSelfAttention))
    return bool(layers) and all(getattr(type(m), "_nezha_kernels_original_class", None) is not None for m in layers)
