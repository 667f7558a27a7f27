"""The README's code, run as written (with a tiny random model in place of a checkpoint)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _nezha_helpers import SMALL

import nezha_kernels.models as ours

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(section: str, containing: str) -> str:
    """The ```python block of README section ``section`` that contains ``containing``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    for block in re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S):
        if containing in block:
            return block
    raise AssertionError(f"no python block with {containing!r} in README section {section!r}")


@pytest.mark.slow  # an ONNX export (~10 s)
@pytest.mark.filterwarnings("ignore:# The axis name")
def test_readme_onnx_snippet_names_its_output_logits(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx", reason="onnx / onnxscript are in the test extra")
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    torch.manual_seed(0)
    model = ours.NezhaForSequenceClassification(ours.NezhaConfig(**SMALL, num_labels=3)).eval()

    class Checkpoint:  # stands in for NezhaForSequenceClassification.from_pretrained("path/to/nezha-cn-base")
        @staticmethod
        def from_pretrained(_path):
            return model

    ids = torch.randint(1, SMALL["vocab_size"], (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    namespace = dict(NezhaForSequenceClassification=Checkpoint, ids=ids, mask=mask, types=torch.zeros_like(ids))
    monkeypatch.chdir(tmp_path)
    # The block's torch.export line is tested in test_export.py; only its ONNX export runs here (half the time).
    code = "\n".join(
        line for line in _block("Export for serving", "torch.onnx.export").splitlines() if "program =" not in line
    )
    exec(compile(code, "README.md", "exec"), namespace)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["logits"]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
