"""Activation functions by the names Hugging Face configs use (``config.hidden_act``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["ACT2FN", "get_activation"]


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
