"""Checkpoint IO for Hugging Face NEZHA directories (local, or a Hub id's snapshot: see nezha_kernels.hub).

A directory holds config.json and one of: model.safetensors, model.safetensors.index.json (shards),
pytorch_model.bin, pytorch_model.bin.index.json. Pickles load with ``weights_only=True``. Keys are
normalized the way Hugging Face does it: old ``*relative_positions_encoding*`` buffers (from
transformers versions that saved them) are dropped, ``gamma``/``beta`` of old LayerNorms are renamed,
and the ``nezha.`` prefix is added or stripped so base checkpoints load into task models and back.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch

from .configuration import NezhaConfig

__all__ = [
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
    "WEIGHTS_NAME",
    "WEIGHTS_INDEX_NAME",
    "LoadingInfo",
    "MismatchedSizesError",
    "read_state_dict",
    "load_pretrained",
    "save_pretrained",
    "save_config",
    "unsaved_keys",
    "align_prefix",
    "tied_keys",
]

logger = logging.getLogger("nezha_kernels.models")

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
# Looked for in this order, like transformers.
_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)

# Buffers some checkpoints carry that are not (or no longer) model state.
_DROPPED_KEY_PATTERNS = (
    re.compile(r"relative_positions_encoding"),
    re.compile(r"(^|\.)embeddings\.(token_type_ids|position_ids)$"),
)


class LoadingInfo(dict):
    """What from_pretrained did with the checkpoint's keys (model names, after prefix handling).

    transformers' loading-info dict (``info["missing_keys"]``, ``unexpected_keys``, ``mismatched_keys``,
    ``error_msgs``, always empty: errors raise) plus ``dropped_keys``; each also reads as an attribute
    (``info.missing_keys``). mismatched_keys holds (name, checkpoint shape, model shape) tuples.
    """

    def __init__(
        self,
        missing_keys: list[str],
        unexpected_keys: list[str],
        mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        dropped_keys: list[str],
    ):
        super().__init__(
            missing_keys=missing_keys,
            unexpected_keys=unexpected_keys,
            mismatched_keys=mismatched_keys,
            error_msgs=[],
            dropped_keys=dropped_keys,
        )

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"LoadingInfo has no {name!r}") from None


class MismatchedSizesError(RuntimeError, ValueError):
    """Checkpoint weights whose shapes do not fit the model: a RuntimeError, as transformers raises (and a
    ValueError, as nezha_kernels raised before). ``ignore_mismatched_sizes=True`` re-initializes them instead."""


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickles with arbitrary objects are refused on purpose
        raise ValueError(f"cannot load {path!r} with torch.load(weights_only=True): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors)")
    return state


def _weight_files(directory: str | os.PathLike) -> list[str]:
    for name in _WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        if not name.endswith(".index.json"):
            return [path]
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{path!r} has no 'weight_map': not a sharded checkpoint index")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
        if missing:
            raise FileNotFoundError(f"{path!r} lists shard files that are missing: {missing}")
        return [os.path.join(directory, s) for s in shards]
    raise FileNotFoundError(f"no weights in {directory!r}: expected one of {list(_WEIGHT_FILES)}")


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (shards merged), keys as stored."""
    directory = os.fspath(directory)
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        state.update(_load_file(path))
    return state


def _normalize_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, dropped = {}, []
    for key, value in state.items():
        if any(p.search(key) for p in _DROPPED_KEY_PATTERNS):
            dropped.append(key)
            continue
        if "LayerNorm" in key:
            key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        out[key] = value
    return out, dropped


def align_prefix(state: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """Add ``nezha.`` for a base checkpoint going into a task model; strip it the other way."""
    prefix = model.base_model_prefix + "."
    model_has_base = hasattr(model, model.base_model_prefix)
    state_has_prefix = any(k.startswith(prefix) for k in state)
    if model_has_base and not state_has_prefix:
        return {prefix + k: v for k, v in state.items()}
    if not model_has_base and state_has_prefix:
        # Head weights (cls.*, classifier.*) of a task checkpoint stay unprefixed and end up unexpected.
        return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
    return state


def tied_keys(model: Any) -> set[str]:
    """State-dict names that are aliases of another parameter (the tied MLM decoder)."""
    if getattr(model, "get_output_embeddings", lambda: None)() is None:
        return set()
    keys = {"cls.predictions.decoder.bias"}
    if model.config.tie_word_embeddings:
        keys.add("cls.predictions.decoder.weight")
    return keys


def load_pretrained(
    cls,
    directory: str | os.PathLike | None,
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
    """Build ``cls`` from a Hugging Face NEZHA checkpoint and load its weights.

    Args:
        directory: a local directory with config.json and model.safetensors / pytorch_model.bin (or their
            sharded indexes), or a Hugging Face Hub id ("sijunhe/nezha-cn-base"), fetched into the Hub cache
            through huggingface_hub (optional dependency) unless cached; HF_HUB_OFFLINE=1 uses the cache only.
        revision, cache_dir, local_files_only, token: for a Hub id, as in transformers
            (see :func:`nezha_kernels.hub.resolve_checkpoint`); unused for a local directory.
        attn_backend: overrides ``config.attn_backend``.
        torch_dtype: cast the loaded model (e.g. torch.bfloat16); default float32 as stored upcast, like HF.
        device: move the model there.
        config: use this config instead of directory/config.json.
        ignore_mismatched_sizes: re-initialize (and report) weights whose shapes differ instead of failing.
        output_loading_info: also return a :class:`LoadingInfo`.
        state_dict: load these weights instead of the directory's; with ``directory=None`` (and ``config``)
            the model is built from the config and these weights alone, as in transformers.
        subfolder: the checkpoint lies in this subfolder of the directory (or of the Hub snapshot).
        **config_overrides: set on the config before the model is built (e.g. num_labels=3).

    Weights the checkpoint lacks (a new task head) are initialized and reported with a warning on
    the "nezha_kernels.models" logger, as Hugging Face does. The model is returned in eval mode.
    """
    from ..hub import resolve_checkpoint

    if state_dict is not None and not (
        isinstance(state_dict, dict) and all(isinstance(v, torch.Tensor) for v in state_dict.values())
    ):
        raise TypeError(f"state_dict must map names to tensors, got {type(state_dict).__name__}")
    if directory is None:
        if config is None or state_dict is None:
            raise ValueError("from_pretrained(None, ...) needs both config= and state_dict= (there is no directory)")
        source = "the given state_dict"
    else:
        directory = resolve_checkpoint(
            directory, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        if subfolder:
            directory = os.path.join(directory, os.fspath(subfolder))
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"subfolder {subfolder!r} does not exist: no directory {directory!r}")
        source = directory
    if config is None:
        assert directory is not None  # checked above: no directory needs config= and state_dict=
        config = NezhaConfig.from_pretrained(directory, **config_overrides)
    else:
        for key, value in config_overrides.items():
            setattr(config, key, value)
    if attn_backend is not None:
        config.attn_backend = attn_backend
    # Fail on missing weights before building the model.
    weight_files = _weight_files(directory) if state_dict is None and directory is not None else []

    model = cls(config)
    state: dict[str, torch.Tensor] = dict(state_dict) if state_dict is not None else {}
    for path in weight_files:
        state.update(_load_file(path))
    state, dropped = _normalize_keys(state)
    state = align_prefix(state, model)

    expected = model.state_dict()
    tied = tied_keys(model)
    mismatched = []
    for key in list(state):
        if key in expected and tuple(state[key].shape) != tuple(expected[key].shape):
            mismatched.append((key, tuple(state[key].shape), tuple(expected[key].shape)))
            del state[key]
    if mismatched and not ignore_mismatched_sizes:
        lines = "\n".join(f"  {k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched)
        raise MismatchedSizesError(
            f"weights in {source!r} do not fit the config (vocab_size={config.vocab_size}, "
            f"hidden_size={config.hidden_size}, num_labels={config.num_labels}, ...):\n{lines}\n"
            "Fix the config, or pass ignore_mismatched_sizes=True to re-initialize these weights."
        )
    unexpected = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state and k not in tied)
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    model.tie_weights()

    name = cls.__name__
    if unexpected:
        logger.warning(
            "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
            source,
            name,
            unexpected,
        )
    # Mismatched weights were dropped from the state, so they are in `missing` too: name each once, and
    # those with their two shapes (as transformers does).
    resized = {k for k, _, _ in mismatched}
    newly_initialized = [k for k in missing if k not in resized]
    advice = (
        "You should probably TRAIN this model on a down-stream task to be able to use it for predictions and inference."
    )
    if newly_initialized:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly initialized: %s\n%s",
            name,
            source,
            newly_initialized,
            advice,
        )
    if mismatched:
        shapes = "\n".join(
            f"- {k}: found shape {list(a)} in the checkpoint and {list(b)} in the model" for k, a, b in mismatched
        )
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
            "initialized because the shapes did not match:\n%s\n%s",
            name,
            source,
            shapes,
            advice,
        )
    if torch_dtype is not None or device is not None:
        model.to(device=device, dtype=torch_dtype)
    if torch_dtype is not None:
        config.torch_dtype = torch_dtype
    if directory is not None:
        config.name_or_path = directory
    model.eval()
    if output_loading_info:
        return model, LoadingInfo(missing, unexpected, mismatched, dropped)
    return model


_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    if isinstance(size, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
        if match:
            return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
    raise ValueError(f"max_shard_size must be bytes (int) or a string like '500MB', got {size!r}")


def _shards(state: dict[str, torch.Tensor], limit: int | None) -> list[dict[str, torch.Tensor]]:
    if limit is None:
        return [state]
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and used + size > limit:
            shards.append({})
            used = 0
        shards[-1][key] = tensor
        used += size
    return shards


def save_config(model: Any, directory: str | os.PathLike) -> None:
    """Write the model's config.json, recording its class and dtype as transformers does."""
    os.makedirs(directory, exist_ok=True)
    config: NezhaConfig = model.config
    config.architectures = [type(model).__name__]
    config.torch_dtype = model.dtype
    config.save_pretrained(directory)


def unsaved_keys(model: torch.nn.Module) -> list[str]:
    """State-dict names save_pretrained leaves out: the tied aliases, restored by tie_weights() on load."""
    return sorted(tied_keys(model))


def save_pretrained(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    max_shard_size: int | str | None = None,
) -> None:
    """Write config.json and model.safetensors (or pytorch_model.bin) that transformers 4.57 loads.

    Tied aliases (cls.predictions.decoder.*) are not written, as in transformers. With
    ``max_shard_size`` the weights are split into model-0000i-of-0000n files plus an index.
    """
    directory = os.fspath(directory)
    save_config(model, directory)

    tied = tied_keys(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in tied}
    limit = _parse_size(max_shard_size) if max_shard_size is not None else None
    shards = _shards(state, limit)
    base, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    names = (
        [f"{base}.{ext}"]
        if len(shards) == 1
        else [f"{base}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    )
    # Stale files of another layout would shadow (or mix with) the new ones on load.
    for stale in _WEIGHT_FILES:
        path = os.path.join(directory, stale)
        if os.path.isfile(path) and stale not in names:
            os.remove(path)
    for shard, name in zip(shards, names, strict=True):
        path = os.path.join(directory, name)
        if safe_serialization:
            from safetensors.torch import save_file

            # Clone so that no two entries share storage (safetensors refuses shared tensors).
            save_file({k: v.clone() for k, v in shard.items()}, path, metadata={"format": "pt"})
        else:
            torch.save(shard, path)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {k: name for shard, name in zip(shards, names, strict=True) for k in shard},
        }
        index_name = SAFE_WEIGHTS_INDEX_NAME if safe_serialization else WEIGHTS_INDEX_NAME
        with open(os.path.join(directory, index_name), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
