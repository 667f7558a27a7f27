import pytest
import torch

import nezha_kernels as nk
from nezha_kernels import backends


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    nk.set_backend("auto")
    yield
    nk.set_backend("auto")


def _chosen(monkeypatch):
    """Name of the backend that actually runs a call with backend="auto"."""
    seen = []
    for name in ("reference", "torch"):
        module = backends._load(name)[0]
        original = module.forward
        monkeypatch.setattr(module, "forward", lambda inputs, n=name, f=original: (seen.append(n), f(inputs))[1])
    q = torch.randn(1, 2, 5, 8)
    nk.relative_attention(q, q, q)
    return seen[0]  # the dispatched one (the torch backend runs small calls through the reference's math)


def test_auto_on_cpu_is_torch(monkeypatch):
    assert nk.get_backend() == "auto"
    assert _chosen(monkeypatch) == "torch"


def test_precedence(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert _chosen(monkeypatch) == "reference"
    nk.set_backend("torch")
    assert _chosen(monkeypatch) == "torch"
    with nk.use_backend("reference"):
        assert nk.get_backend() == "reference"
        assert _chosen(monkeypatch) == "reference"
        with nk.use_backend("torch"):
            assert _chosen(monkeypatch) == "torch"
        assert _chosen(monkeypatch) == "reference"
    assert nk.get_backend() == "torch"


def test_explicit_call_wins_over_context(monkeypatch):
    seen = []
    module = backends._load("reference")[0]
    original = module.forward
    monkeypatch.setattr(module, "forward", lambda inputs: (seen.append(1), original(inputs))[1])
    q = torch.randn(1, 1, 3, 4)
    with nk.use_backend("torch"):
        nk.relative_attention(q, q, q, backend="reference")
    assert seen == [1]


def test_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        nk.set_backend("fast")
    with pytest.raises(ValueError, match="unknown backend"):
        with nk.use_backend("fast"):
            pass
    monkeypatch.setenv(backends.ENV_VAR, "fast")
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="NEZHA_KERNELS_BACKEND: unknown backend 'fast'"):
        nk.relative_attention(q, q, q)


def test_available_backends_reports_reasons():
    status = nk.available_backends("cpu")
    assert list(status) == list(nk.BACKENDS)
    assert status["torch"].available and status["reference"].available
    assert not status["cuda"].available and status["cuda"].reason
    for s in status.values():
        assert isinstance(s.reason, str) and s.reason
