"""Huawei's original TensorFlow NEZHA checkpoints, read without TensorFlow (tf_reader.py), mapped onto a model.

Names map the way Hugging Face's BERT/NEZHA TF conversion maps them: ``bert/`` -> ``nezha.``,
``layer_N`` -> ``layer.N``, ``kernel`` -> ``weight`` transposed (TF kernels are [in, out]),
``gamma``/``beta`` -> ``weight``/``bias``, embeddings get ``.weight``, ``cls/predictions/output_bias``
-> ``cls.predictions.bias``, ``output_weights`` (already [out, in]) -> ``weight``. Optimizer slots
(``adam_m``, ``adam_v``, ...) and ``global_step`` are skipped.
"""

from __future__ import annotations

import logging
import os
import re

import torch

from .checkpoint import LoadingInfo, MismatchedSizesError, align_prefix, tied_keys
from .configuration import NezhaConfig, read_json_object
from .tf_reader import (
    SKIPPED_SEGMENTS,
    TFCheckpointError,
    TFTensorInfo,
    list_tf_variables,
    read_tf_checkpoint,
    resolve_tf_checkpoint,
)

__all__ = [
    "TFCheckpointError",
    "TFTensorInfo",
    "resolve_tf_checkpoint",
    "list_tf_variables",
    "read_tf_checkpoint",
    "tf_name_to_torch",
    "config_from_bert_json",
    "load_tf_checkpoint",
    "from_tf_checkpoint",
]

logger = logging.getLogger("nezha_kernels.models")


# ---- names -------------------------------------------------------------------------------------------
def tf_name_to_torch(name: str) -> tuple[str, bool] | None:
    """``(state-dict name, transpose)`` for a TF variable name, or None for names that are not weights.

    ``bert/...`` becomes ``nezha....`` (stripped again by the loader for a bare NezhaModel).
    """
    segments = name.split("/")
    if set(segments) & SKIPPED_SEGMENTS:
        return None
    if segments[0] == "bert":
        segments[0] = "nezha"
    out: list[str] = []
    transpose = False
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if m := re.fullmatch(r"layer_(\d+)", seg):
            out += ["layer", m.group(1)]
        elif last and seg == "kernel":
            out.append("weight")
            transpose = True
        elif last and seg in ("gamma", "output_weights"):
            out.append("weight")
        elif last and seg in ("beta", "output_bias"):
            out.append("bias")
        else:
            out.append(seg)
    if segments[-1].endswith("_embeddings"):
        out.append("weight")
    key = ".".join(out)  # cls/predictions/output_bias -> cls.predictions.bias
    if key in ("weight", "bias"):  # run_classifier.py's top-level output_weights / output_bias
        key = "classifier." + key
    return key, transpose


def config_from_bert_json(path: str | os.PathLike, **overrides) -> NezhaConfig:
    """NezhaConfig from Huawei's ``bert_config.json`` (max_relative_position defaults to 64 when absent)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path!r} does not exist (Huawei's checkpoints ship a bert_config.json)")
    data = read_json_object(path)
    data.setdefault("max_relative_position", 64)
    data.pop("use_relative_position", None)  # NEZHA's flag; our model is always relative
    data.setdefault("model_type", "nezha")
    return NezhaConfig.from_dict(data, **overrides)


# ---- loading ------------------------------------------------------------------------------------------
def load_tf_checkpoint(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    verify_checksums: bool = True,
    ignore_mismatched_sizes: bool = False,
) -> LoadingInfo:
    """Copy a TF checkpoint's weights into ``model`` (any NEZHA task class or NezhaModel), in place.

    Returns a :class:`LoadingInfo`: ``unexpected_keys`` are mapped names the model lacks (e.g. ``cls.*``
    for a NezhaModel), ``missing_keys`` model weights the checkpoint lacks (left as initialized),
    ``dropped_keys`` TF entries not read (optimizer slots, global_step, non-float32) as ``name (reason)``.
    Shapes that do not fit raise MismatchedSizesError (a RuntimeError) unless ``ignore_mismatched_sizes``.
    """
    prefix = resolve_tf_checkpoint(path)
    tensors, skipped = read_tf_checkpoint(prefix, verify_checksums=verify_checksums)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        mapped = tf_name_to_torch(name)
        if mapped is None:  # pragma: no cover - read_tf_checkpoint already skips these
            skipped[name] = "optimizer/training state, not a model weight"
            continue
        key, transpose = mapped
        if transpose:
            if tensor.dim() != 2:
                raise ValueError(f"TF kernel {name!r} has shape {list(tensor.shape)}, expected 2-D [in, out]")
            tensor = tensor.t().contiguous()
        state[key] = tensor
    state = align_prefix(state, model)

    expected = model.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(f"  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched)
        raise MismatchedSizesError(
            f"weights in TF checkpoint {prefix!r} do not fit the model's config:\n{lines}\n"
            "Fix the config (bert_config.json), or pass ignore_mismatched_sizes=True."
        )
    for k, _, _ in mismatched:
        del state[k]
    tied = tied_keys(model)
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state and k not in tied)
    with torch.no_grad():
        for key, value in state.items():
            if key in expected:
                expected[key].copy_(value)  # state_dict() tensors share storage with the parameters
    tie_weights = getattr(model, "tie_weights", None)
    if tie_weights is not None:
        tie_weights()
    name = type(model).__name__
    if unexpected:
        logger.warning(
            "Some weights of the TF checkpoint at %s were not used when initializing %s: %s", prefix, name, unexpected
        )
    newly = missing + [k for k, _, _ in mismatched]
    if newly:
        logger.warning(
            "Some weights of %s were not initialized from the TF checkpoint at %s and are newly initialized: %s",
            name,
            prefix,
            newly,
        )
    dropped = [f"{k} ({r})" for k, r in sorted(skipped.items())]
    return LoadingInfo(missing, unexpected, mismatched, dropped)


def from_tf_checkpoint(
    cls,
    path: str | os.PathLike,
    config: NezhaConfig | None = None,
    *,
    verify_checksums: bool = True,
    ignore_mismatched_sizes: bool = False,
    output_loading_info: bool = False,
    **config_overrides,
):
    """Build ``cls`` from a TF checkpoint directory or prefix (config: bert_config.json next to it)."""
    prefix = resolve_tf_checkpoint(path)
    if config is None:
        config = config_from_bert_json(os.path.join(os.path.dirname(prefix), "bert_config.json"), **config_overrides)
    else:
        for key, value in config_overrides.items():
            setattr(config, key, value)
    model = cls(config)
    info = load_tf_checkpoint(
        model, prefix, verify_checksums=verify_checksums, ignore_mismatched_sizes=ignore_mismatched_sizes
    )
    model.eval()
    return (model, info) if output_loading_info else model
