"""nezha_kernels: fused relative-position attention for NEZHA, and the NEZHA models around it.

Importing the package never touches a GPU and never requires triton or the CUDA extension.
"""

from ._version import __version__
from .attention import relative_attention, relative_attention_with_weights
from .backends import (
    BACKENDS,
    BackendStatus,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from .table import relative_index, sinusoidal_table
from .varlen import relative_attention_varlen

__all__ = [
    "__version__",
    "relative_attention",
    "relative_attention_with_weights",
    "relative_attention_varlen",
    "sinusoidal_table",
    "relative_index",
    "available_backends",
    "BackendStatus",
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
]

# The NEZHA models are exported here too, imported on first use so that `import nezha_kernels` stays light.
_MODEL_EXPORTS = (
    "NezhaConfig",
    "NezhaModel",
    "NezhaPreTrainedModel",
    "NezhaForPreTraining",
    "NezhaForMaskedLM",
    "NezhaForNextSentencePrediction",
    "NezhaForSequenceClassification",
    "NezhaForMultipleChoice",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
)
__all__ += list(_MODEL_EXPORTS)
# Also lazy: transformers itself is only imported when a patch is applied.
_INTEGRATION_EXPORTS = ("patch_transformers_nezha", "unpatch_transformers_nezha")
__all__ += list(_INTEGRATION_EXPORTS)


def __getattr__(name: str):
    if name in _MODEL_EXPORTS:
        from . import models

        return getattr(models, name)
    if name in _INTEGRATION_EXPORTS:
        from .integrations import transformers_nezha

        return getattr(transformers_nezha, name)
    raise AttributeError(f"module 'nezha_kernels' has no attribute {name!r}")
