"""Output containers of the NEZHA models: dataclasses that also behave like tuples.

Field names and order follow the Hugging Face classes users know (``last_hidden_state``,
``pooler_output``, ``logits``, ...). Like there, ``output[i]`` and ``output.to_tuple()`` skip fields that
are None, ``output["logits"]`` looks a field up by name, and iterating yields the field names (a dict's keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

__all__ = [
    "ModelOutput",
    "BaseModelOutputWithPoolingAndCrossAttentions",
    "NezhaForPreTrainingOutput",
    "MaskedLMOutput",
    "NextSentencePredictorOutput",
    "SequenceClassifierOutput",
    "MultipleChoiceModelOutput",
    "TokenClassifierOutput",
    "QuestionAnsweringModelOutput",
]

Tensors = tuple[torch.Tensor, ...]


@dataclasses.dataclass
class ModelOutput:
    """Base class: a dataclass whose non-None fields also read as a tuple, in field order."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        """The names of the non-None fields, as transformers' ModelOutput (an ordered dict) iterates:
        ``for k in out``, ``dict(out)``, ``list(out)``; ``out.to_tuple()`` gives the values."""
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclasses.dataclass
class BaseModelOutputWithPoolingAndCrossAttentions(ModelOutput):
    """last_hidden_state [B, L, hidden]; pooler_output [B, hidden] (None without a pooler);
    hidden_states: num_layers + 1 tensors [B, L, hidden]; past_key_values: per layer (k, v[, cross k, cross v])
    [B, H, L_total, D]; attentions / cross_attentions: per layer [B, H, Lq, Lk]."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    past_key_values: tuple | None = None
    attentions: Tensors | None = None
    cross_attentions: Tensors | None = None


@dataclasses.dataclass
class NezhaForPreTrainingOutput(ModelOutput):
    """loss (MLM + NSP); prediction_logits [B, L, vocab]; seq_relationship_logits [B, 2]."""

    loss: torch.Tensor | None = None
    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class MaskedLMOutput(ModelOutput):
    """logits [B, L, vocab]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class NextSentencePredictorOutput(ModelOutput):
    """logits [B, 2]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class SequenceClassifierOutput(ModelOutput):
    """logits [B, num_labels]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class MultipleChoiceModelOutput(ModelOutput):
    """logits [B, num_choices]; hidden_states / attentions over the flattened [B * C, L] batch."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class TokenClassifierOutput(ModelOutput):
    """logits [B, L, num_labels]."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    """start_logits, end_logits [B, L]; loss = (start CE + end CE) / 2."""

    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


def _register_pytree_nodes() -> None:
    """Make the outputs pytree nodes, as transformers does for its ModelOutput: torch.export (and so
    torch.onnx.export) only returns containers it can flatten. None fields flatten to nothing."""
    import torch.utils._pytree as pytree

    for cls in (
        BaseModelOutputWithPoolingAndCrossAttentions,
        NezhaForPreTrainingOutput,
        MaskedLMOutput,
        NextSentencePredictorOutput,
        SequenceClassifierOutput,
        MultipleChoiceModelOutput,
        TokenClassifierOutput,
        QuestionAnsweringModelOutput,
    ):
        pytree.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")


_register_pytree_nodes()
