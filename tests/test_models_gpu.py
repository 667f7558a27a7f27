"""Our NEZHA models on a GPU: every usable GPU backend against the torch backend (skipped without CUDA)."""

import pytest
import torch

import nezha_kernels as nk
from nezha_kernels.models import NezhaConfig, NezhaForSequenceClassification

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Max abs difference of the logits / gradients against the torch backend in the same dtype.
TOL = {torch.float32: 2e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_model_on_gpu_backend_matches_torch_backend(backend, dtype):
    status = nk.available_backends("cuda")[backend]
    if not status.available:
        pytest.skip(f"{backend}: {status.reason}")
    torch.manual_seed(0)
    config = NezhaConfig(
        vocab_size=1000,
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=512,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        attn_backend="torch",
    )
    model = NezhaForSequenceClassification(config).to(device="cuda", dtype=dtype)
    ids = torch.randint(1, 1000, (3, 700), device="cuda")  # past 512 tokens
    mask = torch.ones(3, 700, dtype=torch.long, device="cuda")
    mask[1, 400:] = 0
    labels = torch.tensor([0, 2, 1], device="cuda")
    results = []
    for name in ("torch", backend):
        model.set_attn_backend(name)
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        grad = model.nezha.encoder.layer[0].attention.self.query.weight.grad.float().clone()
        results.append((out.logits.float(), grad))
    (logits_t, grad_t), (logits_b, grad_b) = results
    tol = TOL[dtype]
    torch.testing.assert_close(logits_b, logits_t, atol=tol, rtol=tol)
    torch.testing.assert_close(grad_b, grad_t, atol=tol * max(1.0, grad_t.abs().max().item()), rtol=tol)
