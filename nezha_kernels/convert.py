"""In-memory conversion between transformers' NEZHA models (<= 4.57) and nezha_kernels.models.

Both sides share module names and state-dict keys (the position table is a non-persistent buffer in
transformers and absent here), so a conversion is a config translation plus a strict state-dict load.
Weights are copied; the source model is left untouched.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from . import models

__all__ = ["from_transformers", "to_transformers"]

# Task class names are identical on both sides.
_CLASSES = (
    "NezhaModel",
    "NezhaForPreTraining",
    "NezhaForMaskedLM",
    "NezhaForNextSentencePrediction",
    "NezhaForSequenceClassification",
    "NezhaForMultipleChoice",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
)


def _class_name(model: nn.Module, side: str) -> str:
    for cls in type(model).__mro__:
        if cls.__name__ in _CLASSES:
            return cls.__name__
    raise TypeError(f"model must be a {side} NEZHA model (one of {', '.join(_CLASSES)}), got {type(model).__name__}")


def _first_tensor(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _copy_weights(source: nn.Module, target: nn.Module) -> None:
    state = {k: v for k, v in source.state_dict().items() if "relative_positions_encoding" not in k}
    target.load_state_dict(state, strict=True)
    ref = _first_tensor(source)
    target.to(device=ref.device, dtype=ref.dtype)
    target.train(source.training)


def from_transformers(hf_model: nn.Module, attn_backend: str = "auto") -> nn.Module:
    """A nezha_kernels model with the same class, config and weights as a transformers NEZHA model."""
    if not isinstance(hf_model, nn.Module) or getattr(getattr(hf_model, "config", None), "model_type", None) != "nezha":
        raise TypeError(f"hf_model must be a transformers NEZHA model, got {type(hf_model).__name__}")
    name = _class_name(hf_model, "transformers")
    config = models.NezhaConfig.from_dict(hf_model.config.to_dict(), attn_backend=attn_backend)
    ours = getattr(models, name)(config)
    _copy_weights(hf_model, ours)
    return ours


def to_transformers(model: nn.Module) -> nn.Module:
    """The transformers (4.57) NEZHA model of the same class, config and weights as one of ours."""
    if not isinstance(model, models.NezhaPreTrainedModel):
        raise TypeError(f"model must be a nezha_kernels.models NEZHA model, got {type(model).__name__}")
    try:
        transformers = importlib.import_module("transformers")
        hf_class = getattr(transformers, _class_name(model, "nezha_kernels"))
    except (ImportError, AttributeError) as exc:
        raise ImportError("to_transformers needs transformers <= 4.57, which has NEZHA") from exc
    config_dict = model.config.to_dict()
    config_dict.pop("attn_backend", None)
    hf_config = transformers.NezhaConfig(**config_dict)
    hf_model = hf_class(hf_config)
    _copy_weights(model, hf_model)
    return hf_model
