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

__all__ = [
    "__version__",
    "relative_attention",
    "relative_attention_with_weights",
    "sinusoidal_table",
    "relative_index",
    "available_backends",
    "BackendStatus",
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
]
