"""Backend registry and selection.

A backend is a module exposing ``NAME``, ``availability(device) -> (bool, reason)`` (cheap: it never
builds or compiles anything), ``forward(inputs) -> Tensor`` for a dense call and ``forward_varlen(inputs) ->
Tensor`` for a padding-free one, ``inputs`` being the call's ``AttentionInputs`` (nezha_kernels/inputs.py).
What each backend supports (dtypes, head dims, gradients, padding-free calls, size limits) is its row of
nezha_kernels/capabilities.py. Optional
backends (triton, cuda) are imported lazily, so importing nezha_kernels never needs them and never
touches a GPU; a backend whose import fails is reported unavailable with the error as reason.

One fallback policy: a backend asked for by name runs the call or raises a ValueError saying why;
"auto" takes the first available backend (in ``_AUTO_ORDER``) whose capability row supports the
call. No backend hands a call to another.

Which backend runs a call, most specific first: the call's ``backend=`` argument, the innermost
``use_backend(...)`` context, ``set_backend(...)``, the ``NEZHA_KERNELS_BACKEND`` environment
variable, and finally "auto" (the fastest usable backend for the tensors' device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import threading
from collections.abc import Iterator
from types import ModuleType

import torch

from ..capabilities import CAPABILITIES, Capability, unsupported_reason
from ..inputs import AttentionInputs

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "available_backends",
    "get_backend",
    "set_backend",
    "use_backend",
    "resolve_backend",
    "ENV_VAR",
]

ENV_VAR = "NEZHA_KERNELS_BACKEND"
BACKENDS = ("reference", "torch", "triton", "cuda")
_MODULES = {
    "reference": "nezha_kernels.backends.reference",
    "torch": "nezha_kernels.backends.torch_backend",
    "triton": "nezha_kernels.backends.triton_backend",
    "cuda": "nezha_kernels.backends.cuda_backend",
}
# "auto" tries these in order and takes the first usable one.
_AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "other": ("torch",)}

_global_choice = "auto"
# Per-thread stack of use_backend() choices; a threading.local (unlike a ContextVar) is traceable by
# torch.compile, which guards on it, so a compiled model follows the block it runs in.
_context = threading.local()


@dataclasses.dataclass(frozen=True)
class BackendStatus:
    """Whether a backend is usable on a device (and why), with what it supports once it is."""

    name: str
    available: bool
    reason: str
    capability: Capability

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a backend name (str), got {type(name).__name__}")
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"{argument}: unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name


_LOADED: dict[str, tuple[ModuleType | None, str]] = {}


def _load(name: str) -> tuple[ModuleType | None, str]:
    """(backend module or None, why not); imported once, then served from a cache."""
    if name in _LOADED:
        return _LOADED[name]
    result: tuple[ModuleType | None, str]
    try:
        result = importlib.import_module(_MODULES[name]), ""
    except ModuleNotFoundError as exc:
        if exc.name == _MODULES[name]:
            result = None, "not part of this version of nezha_kernels"
        else:
            result = None, f"import failed: {exc}"
    except Exception as exc:  # an optional backend must never break the package
        result = None, f"import failed: {type(exc).__name__}: {exc}"
    _LOADED[name] = result
    return result


def _status(name: str, device: torch.device) -> BackendStatus:
    module, why = _load(name)
    if module is None:
        return BackendStatus(name, False, why, CAPABILITIES[name])
    ok, reason = module.availability(device)
    return BackendStatus(name, bool(ok), reason, CAPABILITIES[name])


def available_backends(device: torch.device | str | None = None) -> dict[str, BackendStatus]:
    """Every backend's status for ``device`` (default: cuda if present, else cpu), with the reason."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    return {name: _status(name, device) for name in BACKENDS}


def set_backend(name: str) -> None:
    """Set the process-wide default backend ("auto" restores automatic choice)."""
    global _global_choice
    _global_choice = _check_name(name, "backend")


def get_backend() -> str:
    """The backend name in force for calls that pass backend="auto" (may itself be "auto")."""
    stack = getattr(_context, "stack", None)
    if stack:
        return stack[-1]
    if _global_choice != "auto":
        return _global_choice
    env = os.environ.get(ENV_VAR, "").strip()
    return _check_name(env, ENV_VAR) if env else "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls with backend="auto" use ``name``."""
    name = _check_name(name, "backend")
    if not hasattr(_context, "stack"):
        _context.stack = []
    _context.stack.append(name)
    try:
        yield
    finally:
        _context.stack.pop()


def resolve_backend(requested: str, inputs: AttentionInputs) -> ModuleType:
    """The backend module that runs this call (its ``AttentionInputs``, dense or padding-free).

    A named backend (the argument, ``use_backend``, ``set_backend`` or the environment variable) runs the
    call or raises a ValueError saying why; "auto" takes the first available backend that supports it.
    """
    name = _check_name(requested, "backend")
    if name == "auto":
        name = get_backend()
    device = inputs.q.device
    if name != "auto":
        module, why = _load(name)
        if module is None:
            raise ValueError(f"backend {name!r} is unavailable: {why}")
        ok, reason = module.availability(device)
        if not ok:
            raise ValueError(f"backend {name!r} is unavailable for {device.type} tensors: {reason}")
        unsupported = unsupported_reason(name, inputs)
        if unsupported:
            raise ValueError(f"backend {name!r} cannot run this call: {unsupported}")
        return module
    order = _AUTO_ORDER["cuda" if device.type == "cuda" else "other"]
    for candidate in order:
        module, _ = _load(candidate)
        if module is None or not module.availability(device)[0]:
            continue
        if unsupported_reason(candidate, inputs) is None:
            return module
    raise ValueError(f"no backend can run this call on {device}")  # torch supports everything


# torch.compile cannot trace an import, so dispatch inside a compiled region only reads this cache:
# import the pure-PyTorch backends now, and the GPU ones too where they can matter (a CUDA build of
# torch, or the Triton interpreter), without touching the GPU. A CPU-only install skips triton's import cost.
for _name in BACKENDS:
    if (
        _name in ("reference", "torch")
        or torch.version.cuda
        or torch.version.hip
        or os.environ.get("TRITON_INTERPRET") == "1"
    ):
        _load(_name)
