import pytest
import torch

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "NezhaModel"):
    pytest.skip("this transformers has no NEZHA", allow_module_level=True)

from nezha_kernels import models  # noqa: E402
from nezha_kernels.convert import from_transformers, to_transformers  # noqa: E402

CLASSES = [
    "NezhaModel",
    "NezhaForMaskedLM",
    "NezhaForSequenceClassification",
    "NezhaForQuestionAnswering",
    "NezhaForPreTraining",
    "NezhaForNextSentencePrediction",
    "NezhaForTokenClassification",
    "NezhaForMultipleChoice",
]


def _config():
    return transformers.NezhaConfig(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_relative_position=6,
        num_labels=2,
    )


@pytest.mark.parametrize("name", CLASSES)
def test_round_trip_same_outputs(name):
    torch.manual_seed(0)
    hf = getattr(transformers, name)(_config()).eval()
    shape = (2, 3, 11) if name == "NezhaForMultipleChoice" else (2, 11)
    ids = torch.randint(1, 97, shape)
    mask = torch.ones(shape, dtype=torch.long)
    mask[0, ..., 7:] = 0
    ours = from_transformers(hf, attn_backend="torch")
    assert type(ours) is getattr(models, name)
    # The padding-free default zeroes padded positions (transformers does not): compare the dense path at every
    # position here; tests/test_models_padding_free.py covers the padding-free path at real tokens.
    ours.config.padding_free = False
    with torch.no_grad():
        expected = [t for t in hf(input_ids=ids, attention_mask=mask).to_tuple() if isinstance(t, torch.Tensor)]
        got = [t for t in ours.eval()(input_ids=ids, attention_mask=mask).to_tuple() if isinstance(t, torch.Tensor)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    back = to_transformers(ours).eval()
    assert type(back) is type(hf)
    for (k1, v1), (k2, v2) in zip(sorted(back.state_dict().items()), sorted(hf.state_dict().items()), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_weights_are_copied_not_shared():
    hf = transformers.NezhaModel(_config())
    ours = from_transformers(hf)
    with torch.no_grad():
        ours.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(ours.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight)


def test_refuses_other_models():
    with pytest.raises(TypeError, match="transformers NEZHA model"):
        from_transformers(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nezha_kernels.models NEZHA model"):
        to_transformers(torch.nn.Linear(2, 2))
