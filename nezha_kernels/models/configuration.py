"""NezhaConfig: the config.json of Hugging Face NEZHA checkpoints, torch-only.

Every key of nezha-cn-base's config.json with the same default, the generic keys Hugging Face
writes, ``attn_backend`` (which ``relative_attention`` backend the model calls) and ``padding_free``
(whether padded batches run on their real tokens only; True when a config.json lacks it, as
transformers' do). Keys this class does not know are kept as attributes and written back, never rejected.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch

__all__ = ["NezhaConfig", "CONFIG_NAME"]

CONFIG_NAME = "config.json"

# Model keys and their nezha-cn-base defaults (the order config.json is written in).
_MODEL_DEFAULTS: dict[str, Any] = {
    "vocab_size": 21128,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "max_relative_position": 64,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "classifier_dropout": 0.1,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    "use_cache": True,
}

# Generic keys of Hugging Face configs that change what the model does or returns.
_GENERIC_DEFAULTS: dict[str, Any] = {
    "architectures": None,
    "problem_type": None,
    "is_decoder": False,
    "is_encoder_decoder": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
    "torchscript": False,
    "pruned_heads": {},
    "torch_dtype": None,
    "finetuning_task": None,
    "tokenizer_class": None,
}

ATTN_BACKEND_DEFAULT = "auto"
PADDING_FREE_DEFAULT = True


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file when it is not valid JSON or not an object."""
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A torch.dtype from its name ("float16", "torch.bfloat16"), as transformers reads torch_dtype / dtype."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = value.replace("torch.", "") if isinstance(value, str) else None
    if name is None or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"NezhaConfig.torch_dtype must name a torch dtype (e.g. 'float16'), got {value!r}")
    return getattr(torch, name)


def _well_formed_pruned_heads(heads: Any) -> bool:
    return isinstance(heads, dict) and all(
        isinstance(k, int) and isinstance(v, (list, tuple, set)) and all(isinstance(h, int) for h in v)
        for k, v in heads.items()
    )


def _normalized_pruned_heads(heads: Any) -> Any:
    """{layer: sorted unique heads} with int keys (JSON writes them as strings); a malformed value is kept as
    given, for the model to refuse when it is built (as transformers does)."""
    try:
        normalized = {int(k): sorted(set(int(h) for h in v)) for k, v in (heads or {}).items()}
    except (TypeError, ValueError, AttributeError):
        return heads
    return normalized


class NezhaConfig:
    """Configuration of a NEZHA model (``model_type = "nezha"``).

    Args (defaults of nezha-cn-base): vocab_size 21128, hidden_size 768, num_hidden_layers 12,
    num_attention_heads 12, intermediate_size 3072, hidden_act "gelu" (exact erf GELU),
    hidden_dropout_prob 0.1, attention_probs_dropout_prob 0.1, max_position_embeddings 512 (kept
    for compatibility: nothing in NEZHA needs absolute positions, longer inputs work),
    max_relative_position 64, type_vocab_size 2, initializer_range 0.02, layer_norm_eps 1e-12,
    classifier_dropout 0.1, pad/bos/eos_token_id 0/2/3, use_cache True, attn_backend "auto",
    padding_free True (NezhaModel runs a padded batch on its real tokens only, see NezhaModel);
    num_labels / id2label / label2id, problem_type, is_decoder, ... as in Hugging Face.
    Unknown keyword arguments become attributes and are saved.
    """

    model_type = "nezha"

    # The keys' types, for type checkers (annotations only: __init__ sets every one of them).
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: Any  # a name of models.activations or a callable
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    max_position_embeddings: int
    max_relative_position: int
    type_vocab_size: int
    initializer_range: float
    layer_norm_eps: float
    classifier_dropout: float | None
    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    use_cache: bool
    architectures: list[str] | None
    problem_type: str | None
    is_decoder: bool
    is_encoder_decoder: bool
    add_cross_attention: bool
    tie_word_embeddings: bool
    chunk_size_feed_forward: int
    output_attentions: bool
    output_hidden_states: bool
    return_dict: bool
    torchscript: bool
    pruned_heads: dict[int, list[int]]
    torch_dtype: torch.dtype | None
    finetuning_task: str | None
    tokenizer_class: str | None
    attn_backend: str
    padding_free: bool
    id2label: dict[int, str]
    label2id: dict[str, int]

    def __init__(self, **kwargs: Any):
        for key, default in {**_MODEL_DEFAULTS, **_GENERIC_DEFAULTS}.items():
            setattr(self, key, copy.deepcopy(kwargs.pop(key, default)))
        # transformers >= 4.56 writes "dtype"; older versions "torch_dtype". Held as a torch.dtype, as there.
        if "dtype" in kwargs:
            dtype = kwargs.pop("dtype")
            self.torch_dtype = dtype if self.torch_dtype is None else self.torch_dtype
        self.torch_dtype = _as_dtype(self.torch_dtype)
        self.name_or_path = kwargs.pop("name_or_path", kwargs.pop("_name_or_path", ""))
        self.attn_backend = kwargs.pop("attn_backend", ATTN_BACKEND_DEFAULT)
        self.padding_free = kwargs.pop("padding_free", PADDING_FREE_DEFAULT)
        kwargs.pop("model_type", None)
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if id2label is not None:
            self.id2label = {int(k): v for k, v in id2label.items()}
        else:
            self.id2label = {i: f"LABEL_{i}" for i in range(2 if num_labels is None else int(num_labels))}
        if num_labels is not None and int(num_labels) != len(self.id2label):
            self.id2label = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        if label2id is not None and len(label2id) == len(self.id2label):
            self.label2id = {k: int(v) for k, v in label2id.items()}
        else:
            self.label2id = {v: k for k, v in self.id2label.items()}
        self.pruned_heads = _normalized_pruned_heads(self.pruned_heads)
        self._extra_keys: list[str] = []
        for key, value in kwargs.items():
            setattr(self, key, value)
            self._extra_keys.append(key)
        # Our own key is checked here; the model keys when a model is built (validate), as transformers does.
        if not isinstance(self.padding_free, bool):
            raise ValueError(f"NezhaConfig.padding_free must be a bool, got {self.padding_free!r}")

    # ---- derived values -------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, value: int) -> None:
        if len(self.id2label) != int(value):
            self.id2label = {i: f"LABEL_{i}" for i in range(int(value))}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def use_return_dict(self) -> bool:
        """transformers' rule: TorchScript (``torchscript=True``) forces tuple outputs."""
        return bool(self.return_dict) and not self.torchscript

    @property
    def dtype(self) -> torch.dtype | None:
        """transformers >= 4.56's name of ``torch_dtype``."""
        return self.torch_dtype

    @dtype.setter
    def dtype(self, value: torch.dtype | str | None) -> None:
        self.torch_dtype = _as_dtype(value)

    @property
    def name_or_path(self) -> str:
        """The directory or Hub id the config was loaded from ("" for a new one); not saved."""
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str | os.PathLike) -> None:
        self._name_or_path = str(os.fspath(value)) if value is not None else ""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """ValueError (TypeError for a malformed pruned_heads) naming the first key whose value cannot build a
        model. Models call it when they are built: a config holds any values until then, as in transformers."""
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "type_vocab_size",
            "max_relative_position",
        ):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NezhaConfig.{key} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"NezhaConfig.hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"NEZHA's sinusoid table needs an even head size, got {self.head_dim}")
        if not _well_formed_pruned_heads(self.pruned_heads):
            raise TypeError(
                f"NezhaConfig.pruned_heads must map layer indices (int) to lists of head indices (int), "
                f"got {self.pruned_heads!r}"
            )
        if self.add_cross_attention and not self.is_decoder:
            raise ValueError("NezhaConfig.add_cross_attention=True requires is_decoder=True")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"NezhaConfig.pad_token_id {self.pad_token_id} is outside [0, {self.vocab_size})")

    # ---- dict / json ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_type": self.model_type}
        for key in list(_MODEL_DEFAULTS) + list(_GENERIC_DEFAULTS):
            out[key] = copy.deepcopy(getattr(self, key))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        heads = self.pruned_heads
        out["pruned_heads"] = {str(k): list(v) for k, v in heads.items()} if _well_formed_pruned_heads(heads) else heads
        if isinstance(self.torch_dtype, torch.dtype):
            out["torch_dtype"] = str(self.torch_dtype).replace("torch.", "")
        out["attn_backend"] = self.attn_backend
        out["padding_free"] = self.padding_free
        for key in self._extra_keys:
            out[key] = copy.deepcopy(getattr(self, key))
        return out

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **overrides: Any) -> NezhaConfig:
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config has model_type {model_type!r}, expected {cls.model_type!r}")
        merged = {**config_dict, **overrides}
        if "num_labels" in overrides and "id2label" not in overrides:
            merged.pop("id2label", None)
            merged.pop("label2id", None)
        return cls(**merged)

    def to_diff_dict(self) -> dict[str, Any]:
        """to_dict without the generic keys (and our own) that hold their defaults; the model keys always stay,
        as in transformers."""
        defaults = {**_GENERIC_DEFAULTS, "attn_backend": ATTN_BACKEND_DEFAULT, "padding_free": PADDING_FREE_DEFAULT}
        labels = {i: f"LABEL_{i}" for i in range(2)}
        out = {k: v for k, v in self.to_dict().items() if k not in defaults or v != defaults[k]}
        if self.id2label == labels and self.label2id == {v: k for k, v in labels.items()}:
            out.pop("id2label", None)
            out.pop("label2id", None)
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        """The config as JSON: with ``use_diff`` (the default, as transformers) only what differs from the defaults."""
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = False) -> None:
        """Every key by default (a self-describing config.json); ``use_diff=True`` writes the diff."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=use_diff))

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> NezhaConfig:
        return cls.from_dict(read_json_object(path), **overrides)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, subfolder: str = "", **overrides: Any) -> NezhaConfig:
        """Read ``directory[/subfolder]/config.json`` (FileNotFoundError naming the path when it is missing)."""
        if not isinstance(subfolder, (str, os.PathLike)):
            raise TypeError(f"subfolder must be a str, got {type(subfolder).__name__}")
        folder = os.path.join(os.fspath(directory), os.fspath(subfolder)) if subfolder else os.fspath(directory)
        path = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r}: a NEZHA checkpoint directory needs one")
        config = cls.from_json_file(path, **overrides)
        config.name_or_path = directory
        return config

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(os.fspath(directory), CONFIG_NAME))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NezhaConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"NezhaConfig {self.to_json_string()}"
