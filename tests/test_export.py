"""Our NEZHA models exported for serving, each run at another batch and length than it was captured at and
compared with eager PyTorch: torch.export (all 8 classes, dynamic batch and length), torch.jit.trace, and ONNX
(torch.onnx.export, dynamo=True and the TorchScript exporter) run in ONNX Runtime.

Captured models take the dense path (packing has data-dependent shapes). They are captured on the default CPU
attention backend ("torch"), which under torch.export / jit.trace / ONNX export runs the materialized form (its
shapes follow the length symbolically). Eager runs on "torch", dense, as the oracle (the banded form where L > 181).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from _nezha_helpers import CLASS_NAMES, SMALL, batch, max_diff, randomize_

import nezha_kernels.models as ours

pytestmark = pytest.mark.slow  # the quick subset (-m "not slow") leaves these to CI

EXPORT_BACKEND = "torch"  # the default on a CPU (auto); capture needs no switch
# fp32 throughout: the exported graph and eager differ in the backend's summation order only.
TOL_TORCH = 1e-5
TOL_ORT = 1e-4  # ONNX Runtime's own matmul / softmax kernels
CHOICES = 2
CAPTURE = (3, 23)  # batch x length the model is captured at
RUNS = ((5, 31), (1, 4), (2, 9))  # and run at: longer, shorter than max_relative_position, in between


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ours.NezhaConfig(**SMALL, num_labels=2 if name == "NezhaForQuestionAnswering" else 3, attn_backend="torch")
    model = getattr(ours, name)(config).eval()
    randomize_(model, torch.Generator().manual_seed(seed + 1))
    return model


def _inputs(name: str, b: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """Padded batches (ragged right padding, and a fully masked row when b > 2); [B, CHOICES, L] for multiple choice."""
    rows = b * CHOICES if name == "NezhaForMultipleChoice" else b
    ids, mask, types = batch(seed=seed, b=rows, length=length, fully_masked=b > 2)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if name == "NezhaForMultipleChoice":
        inputs = {k: v.view(b, CHOICES, length) for k, v in inputs.items()}
    return inputs


def _dynamic_shapes(name: str, dims) -> dict:
    axes = {0: dims[0], 2: dims[1]} if name == "NezhaForMultipleChoice" else {0: dims[0], 1: dims[1]}
    return {k: axes for k in ("input_ids", "attention_mask", "token_type_ids")}


def _eager(model, inputs) -> tuple:
    """The eager outputs, as a tuple of tensors: every path gives the same tensors (zero hidden states at
    padded positions), so a captured graph must too."""
    model.config.attn_backend = "torch"
    with torch.no_grad():
        return model(**inputs).to_tuple()


@contextlib.contextmanager
def _captured(model):
    """``model`` on EXPORT_BACKEND while it is captured (the capture reads config.attn_backend)."""
    model.set_attn_backend(EXPORT_BACKEND)
    try:
        yield
    finally:
        model.set_attn_backend("torch")


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_torch_export_dynamic_batch_and_length(name):
    from torch.export import Dim, export

    model = _model(name)
    dims = (Dim("batch", min=1, max=64), Dim("length", min=1, max=512))
    with _captured(model):
        program = export(model, (), _inputs(name, *CAPTURE, seed=1), dynamic_shapes=_dynamic_shapes(name, dims))
    exported = program.module()
    for i, (b, length) in enumerate(RUNS):
        inputs = _inputs(name, b, length, seed=10 + i)
        with torch.no_grad():
            got = exported(**inputs)
        assert type(got) is type(model(**inputs))  # the output dataclass survives the export
        want = _eager(model, inputs)
        assert len(got.to_tuple()) == len(want) >= 1
        assert max_diff(got.to_tuple(), want) <= TOL_TORCH, (name, b, length)


class Positional(torch.nn.Module):
    """Positional tensors in, logits out: what torch.jit.trace (and the TorchScript ONNX exporter) take.
    Built in eval mode: exporting restores the wrapper's training flag on every submodule."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.eval()

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.inner(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]


def test_jit_trace_task_model_at_other_shapes():
    name = "NezhaForTokenClassification"
    model = _model(name, seed=2)
    with _captured(model), torch.no_grad():
        traced = torch.jit.trace(Positional(model), tuple(_inputs(name, *CAPTURE, seed=3).values()))
    for i, (b, length) in enumerate(RUNS):
        inputs = _inputs(name, b, length, seed=20 + i)
        with torch.no_grad():
            got = traced(*inputs.values())
        assert max_diff(got, _eager(model, inputs)[0]) <= TOL_TORCH, (b, length)


# ---- ONNX ------------------------------------------------------------------------------------------------

# Multiple choice: the one with [B, C, L] inputs. The other four export as well (checked by hand; ~5 s each).
ONNX_CLASSES = (
    "NezhaForSequenceClassification",
    "NezhaForTokenClassification",
    "NezhaForQuestionAnswering",
    "NezhaForMultipleChoice",
)


def _onnx_session(model, name, path):
    ort = pytest.importorskip("onnxruntime", reason="onnx / onnxscript / onnxruntime are in the test extra")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    from torch.export import Dim

    dims = (Dim("batch", min=1, max=64), Dim("length", min=1, max=512))
    inputs = _inputs(name, *CAPTURE, seed=4)
    with _captured(model):
        torch.onnx.export(
            model,
            (),
            str(path),
            kwargs=inputs,
            dynamic_shapes=_dynamic_shapes(name, dims),
            input_names=list(inputs),
            dynamo=True,
            verbose=False,
        )
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# The exporter's note that batch / length name one axis of every input.
@pytest.mark.filterwarnings("ignore:# The axis name")
@pytest.mark.parametrize("name", ONNX_CLASSES)
def test_onnx_runtime_matches_eager(tmp_path, name):
    model = _model(name, seed=5)
    session = _onnx_session(model, name, tmp_path / "model.onnx")
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    for i, (b, length) in enumerate(RUNS):
        inputs = _inputs(name, b, length, seed=30 + i)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        want = _eager(model, inputs)
        assert len(got) == len(want)
        assert max_diff(tuple(torch.from_numpy(g) for g in got), want) <= TOL_ORT, (name, b, length)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_onnx_torchscript_exporter_matches_eager(tmp_path):
    """The older exporter (dynamo=False, dynamic_axes) on the same wrapper jit.trace takes."""
    ort = pytest.importorskip("onnxruntime", reason="onnx / onnxruntime are in the test extra")
    name = "NezhaForSequenceClassification"
    model = _model(name, seed=6)
    inputs = _inputs(name, *CAPTURE, seed=7)
    path = str(tmp_path / "model.onnx")
    with _captured(model):
        torch.onnx.export(
            Positional(model),
            tuple(inputs.values()),
            path,
            input_names=list(inputs),
            dynamic_axes={k: {0: "batch", 1: "length"} for k in inputs},
            dynamo=False,
        )
    assert not model.training
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for i, (b, length) in enumerate(RUNS):
        inputs = _inputs(name, b, length, seed=40 + i)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        assert max_diff(torch.from_numpy(got), _eager(model, inputs)[0]) <= TOL_ORT, (b, length)
