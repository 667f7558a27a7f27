"""Importing nezha_kernels and running a model loads none of the tooling (bench, compile-check, emulator).

Run in fresh interpreters: once plain, once with TRITON_INTERPRET=1, where the import also loads the
triton and cuda backend modules (as on a CUDA build of torch).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = """
import os, sys, torch
before = dict(os.environ)
import nezha_kernels as nk
from nezha_kernels import NezhaConfig, NezhaForSequenceClassification
config = NezhaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64)
model = NezhaForSequenceClassification(config)
mask = torch.ones(2, 7, dtype=torch.long)
mask[1, 4:] = 0
model(torch.randint(0, 50, (2, 7)), attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
nk.available_backends("cpu")
tooling = ("nezha_kernels.bench", "nezha_kernels.compile_check", "nezha_kernels.cuda_ext.emulator",
           "matplotlib", "transformers")
loaded = sorted(m for m in sys.modules if m.startswith(tooling))
assert not loaded, loaded
assert dict(os.environ) == before, "importing or running changed os.environ"
print("clean")
"""


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_import_and_model_load_no_tooling(interpret):
    env = {**os.environ, "TRITON_INTERPRET": interpret}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0 and "clean" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
