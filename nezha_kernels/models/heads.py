"""NEZHA task models: pre-training, MLM, NSP, sequence / token classification, multiple choice, QA.

Each puts a small head on ``self.nezha`` (a NezhaModel) under the Hugging Face names (``cls.*``,
``classifier``, ``qa_outputs``) and computes the same losses (all but multiple choice also take
position_ids and the flattened-batch keywords of DataCollatorWithFlattening, see NezhaModel):
MLM cross-entropy (ignore_index -100), NSP cross-entropy over 2, pre-training = MLM + NSP,
sequence classification regression / single_label / multi_label chosen by ``config.problem_type``
(set on first use from num_labels and the labels' dtype), token classification cross-entropy,
QA (start CE + end CE) / 2 with positions clamped to [0, L] and L ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import NezhaConfig
from .modeling import NezhaModel, NezhaPreTrainedModel
from .outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    NextSentencePredictorOutput,
    NezhaForPreTrainingOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from .prediction_heads import NezhaLMPredictionHead as NezhaLMPredictionHead  # re-exported: defined here before
from .prediction_heads import NezhaOnlyMLMHead, NezhaOnlyNSPHead, NezhaPreTrainingHeads
from .prediction_heads import NezhaPredictionHeadTransform as NezhaPredictionHeadTransform  # re-exported

__all__ = [
    "NezhaForPreTraining",
    "NezhaForMaskedLM",
    "NezhaForNextSentencePrediction",
    "NezhaForSequenceClassification",
    "NezhaForMultipleChoice",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
]


def _classifier_dropout(config: NezhaConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _pack(return_dict: bool, output_cls, loss, logits: tuple, outputs):
    """The task output: a dataclass, or HF's tuple (loss?, *logits, *extras of the base model)."""
    if not return_dict:
        extras = tuple(outputs[2:])
        out = tuple(logits) + extras
        return ((loss,) + out) if loss is not None else out
    return output_cls(loss, *logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class _TaskModel(NezhaPreTrainedModel):
    """Shared forward plumbing of the heads: run self.nezha, forward the optional outputs."""

    nezha: NezhaModel

    def _run_base(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        head_mask,
        inputs_embeds,
        output_attentions,
        output_hidden_states,
        return_dict,
        **extra,
    ):
        """``extra``: position_ids and the flattened-batch keywords (cu_seq_lens_q, ...) pass through."""
        return self.nezha(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **extra,
        )

    def _return_dict(self, return_dict):
        return self.config.use_return_dict if return_dict is None else return_dict


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return F.cross_entropy(logits.view(-1, vocab_size), labels.view(-1).to(logits.device), ignore_index=-100)


class NezhaForPreTraining(_TaskModel):
    """MLM + NSP heads (``cls.predictions``, ``cls.seq_relationship``). loss = MLM CE + NSP CE."""

    _tied_weights_keys = ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.cls = NezhaPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        next_sentence_label=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **flattening,
    ):
        """labels [B, L] (-100 = ignored), next_sentence_label [B]. prediction_logits [B, L, vocab],
        seq_relationship_logits [B, 2]. The loss needs both labels, as in Hugging Face."""
        return_dict = self._return_dict(return_dict)
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            position_ids=position_ids,
            **flattening,
        )
        prediction_scores, seq_relationship_score = self.cls(outputs[0], outputs[1])
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = _mlm_loss(prediction_scores, labels, self.config.vocab_size) + F.cross_entropy(
                seq_relationship_score.view(-1, 2), next_sentence_label.view(-1).to(seq_relationship_score.device)
            )
        return _pack(return_dict, NezhaForPreTrainingOutput, loss, (prediction_scores, seq_relationship_score), outputs)


class NezhaForMaskedLM(_TaskModel):
    """MLM head (``cls.predictions``) on a pooler-less NezhaModel. loss = CE, ignore_index -100."""

    _tied_weights_keys = ["cls.predictions.decoder.weight", "cls.predictions.decoder.bias"]

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.cls = NezhaOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **flattening,
    ):
        """labels [B, L] (-100 = ignored). logits [B, L, vocab]."""
        return_dict = self._return_dict(return_dict)
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            position_ids=position_ids,
            **flattening,
        )
        logits = self.cls(outputs[0])
        loss = _mlm_loss(logits, labels, self.config.vocab_size) if labels is not None else None
        return _pack(return_dict, MaskedLMOutput, loss, (logits,), outputs)


class NezhaForNextSentencePrediction(_TaskModel):
    """NSP head (``cls.seq_relationship``) on the pooled output. loss = CE over 2 classes."""

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.cls = NezhaOnlyNSPHead(config)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **kwargs,
    ):
        """labels [B] in {0, 1} (``next_sentence_label`` accepted as an old alias). logits [B, 2]."""
        if "next_sentence_label" in kwargs:
            labels = kwargs.pop("next_sentence_label")
        flattening = kwargs
        return_dict = self._return_dict(return_dict)
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            position_ids=position_ids,
            **flattening,
        )
        logits = self.cls(outputs[1])
        loss = F.cross_entropy(logits.view(-1, 2), labels.view(-1).to(logits.device)) if labels is not None else None
        return _pack(return_dict, NextSentencePredictorOutput, loss, (logits,), outputs)


class NezhaForSequenceClassification(_TaskModel):
    """``classifier`` on the dropped-out pooled output; loss picked by ``config.problem_type``.

    problem_type None is set on first use: "regression" when num_labels == 1 (MSE),
    "single_label_classification" for long/int labels (CE), else "multi_label_classification"
    (BCE with logits on float multi-hot labels).
    """

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **flattening,
    ):
        """labels: [B] long (classification), [B] float (regression) or [B, num_labels] float (multi-label)."""
        return_dict = self._return_dict(return_dict)
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            position_ids=position_ids,
            **flattening,
        )
        logits = self.classifier(self.dropout(outputs[1]))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"
            kind = self.config.problem_type
            if kind == "regression":
                if self.num_labels == 1:
                    loss = F.mse_loss(logits.squeeze(), labels.squeeze())
                else:
                    loss = F.mse_loss(logits, labels)
            elif kind == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
            elif kind == "multi_label_classification":
                loss = F.binary_cross_entropy_with_logits(logits, labels)
            else:
                raise ValueError(
                    f"config.problem_type {kind!r} is not one of 'regression', 'single_label_classification', "
                    "'multi_label_classification'"
                )
        return _pack(return_dict, SequenceClassifierOutput, loss, (logits,), outputs)


class NezhaForMultipleChoice(_TaskModel):
    """Inputs [B, C, L] are flattened to [B * C, L]; a 1-unit ``classifier`` scores each pooled output.
    logits [B, C]; loss = CE over the C choices."""

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.nezha = NezhaModel(config)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        """input_ids / attention_mask / token_type_ids [B, C, L] or inputs_embeds [B, C, L, hidden]; labels [B]."""
        return_dict = self._return_dict(return_dict)
        source = input_ids if input_ids is not None else inputs_embeds
        expected_dim = 3 if input_ids is not None else 4
        if source is None or source.dim() != expected_dim:
            raise ValueError(
                "NezhaForMultipleChoice needs input_ids [batch, num_choices, seq_len] or inputs_embeds "
                f"[batch, num_choices, seq_len, hidden], got {list(getattr(source, 'shape', []))}"
            )
        num_choices = source.shape[1]

        def flat(t):
            return t.reshape(-1, t.shape[-1]) if t is not None else None

        outputs = self._run_base(
            flat(input_ids),
            flat(attention_mask),
            flat(token_type_ids),
            head_mask,
            inputs_embeds.reshape(-1, *inputs_embeds.shape[-2:]) if inputs_embeds is not None else None,
            output_attentions,
            output_hidden_states,
            return_dict,
        )
        logits = self.classifier(self.dropout(outputs[1])).view(-1, num_choices)
        loss = F.cross_entropy(logits, labels.to(logits.device)) if labels is not None else None
        return _pack(return_dict, MultipleChoiceModelOutput, loss, (logits,), outputs)


class NezhaForTokenClassification(_TaskModel):
    """``classifier`` on every dropped-out token state. logits [B, L, num_labels]; loss = CE (-100 ignored)."""

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **flattening,
    ):
        """labels [B, L] in [0, num_labels) or -100."""
        return_dict = self._return_dict(return_dict)
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            position_ids=position_ids,
            **flattening,
        )
        logits = self.classifier(self.dropout(outputs[0]))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        return _pack(return_dict, TokenClassifierOutput, loss, (logits,), outputs)


class NezhaForQuestionAnswering(_TaskModel):
    """``qa_outputs`` (num_labels = 2 units) on every token -> start_logits, end_logits [B, L]."""

    def __init__(self, config: NezhaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.nezha = NezhaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        head_mask=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        position_ids=None,
        **flattening,
    ):
        """start_positions / end_positions [B] (or [B, 1]); positions outside [0, L) are ignored in the loss.

        With both positions given (a loss), the call runs as ``padding_free=False`` unless told otherwise:
        the span softmax runs over all L positions, padded ones too, as in transformers, so their logits
        must be transformers' (the dense computation's), not ``qa_outputs(0)``. The loss then equals
        transformers'; without positions (inference) a padded batch runs padding-free.
        """
        return_dict = self._return_dict(return_dict)
        if start_positions is not None and end_positions is not None and flattening.get("padding_free") is None:
            flattening["padding_free"] = False
        outputs = self._run_base(
            input_ids,
            attention_mask,
            token_type_ids,
            head_mask,
            inputs_embeds,
            output_attentions,
            output_hidden_states,
            return_dict,
            position_ids=position_ids,
            **flattening,
        )
        logits = self.qa_outputs(outputs[0])
        if logits.shape[-1] != 2:
            raise ValueError(f"NezhaForQuestionAnswering needs config.num_labels == 2, got {logits.shape[-1]}")
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            if start_positions.dim() > 1:
                start_positions = start_positions.squeeze(-1)
            if end_positions.dim() > 1:
                end_positions = end_positions.squeeze(-1)
            ignored = start_logits.shape[1]
            # Positions beyond the input (truncated answers) become L, which the loss ignores.
            start_positions = start_positions.to(logits.device).clamp(0, ignored)
            end_positions = end_positions.to(logits.device).clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits, start_positions, ignore_index=ignored)
                + F.cross_entropy(end_logits, end_positions, ignore_index=ignored)
            ) / 2
        return _pack(return_dict, QuestionAnsweringModelOutput, loss, (start_logits, end_logits), outputs)
