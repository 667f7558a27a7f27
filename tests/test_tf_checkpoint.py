"""Huawei's TF NEZHA checkpoints load without TensorFlow.

The fixture tests/data/tf_nezha_tiny/ was written once by real TensorFlow (tests/data/make_tf_checkpoint.py,
tf.compat.v1.train.Saver); expected.json holds what TF's own reader returned for every variable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nezha_kernels.models as ours
from nezha_kernels.models import tf_checkpoint as tfc
from nezha_kernels.models import tf_reader

FIXTURE = Path(__file__).resolve().parent / "data" / "tf_nezha_tiny"
PREFIX = FIXTURE / "model.ckpt-7"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())["variables"]
SLOTS = {n for n in EXPECTED if n.endswith(("/adam_m", "/adam_v"))}
WEIGHTS = {n for n in EXPECTED if n not in SLOTS and n != "global_step"}


@pytest.fixture(scope="module")
def tf_tensors():
    tensors, skipped = tfc.read_tf_checkpoint(PREFIX)
    return tensors, skipped


@pytest.fixture
def copy(tmp_path):
    for f in FIXTURE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_crc32c_known_answer():
    # The standard CRC-32C check value, and RFC 3720's 32 zero bytes.
    assert tf_reader._crc32c_py(b"123456789") == 0xE3069283
    assert tf_reader._crc32c_py(bytes(32)) == 0x8A9136AA


def test_index_lists_what_tensorflow_listed():
    entries = tfc.list_tf_variables(FIXTURE)
    assert set(entries) == set(EXPECTED)
    for name, info in entries.items():
        assert list(info.shape) == EXPECTED[name]["shape"], name
        assert info.dtype == EXPECTED[name]["dtype"], name
    assert entries["global_step"].dtype == "int64"


def test_values_match_tensorflow(tf_tensors):
    tensors, skipped = tf_tensors
    assert set(tensors) == WEIGHTS
    for name, t in tensors.items():
        exp = EXPECTED[name]
        assert t.dtype == torch.float32 and list(t.shape) == exp["shape"], name
        t64 = t.double()
        assert t64.sum().item() == pytest.approx(exp["sum"], rel=1e-12, abs=1e-9), name
        assert t64.abs().sum().item() == pytest.approx(exp["abs_sum"], rel=1e-12), name
        assert t.reshape(-1)[:4].tolist() == exp["first"], name  # bit-exact float32
    assert set(skipped) == SLOTS | {"global_step"}
    assert all("optimizer" in reason for reason in skipped.values())


@pytest.mark.parametrize("form", ["dir", "prefix", "index", "data"])
def test_path_forms_resolve(form):
    path = {"dir": FIXTURE, "prefix": PREFIX, "index": f"{PREFIX}.index", "data": f"{PREFIX}.data-00000-of-00001"}[form]
    assert tfc.resolve_tf_checkpoint(path) == str(PREFIX)


def test_checkpoint_file_with_foreign_absolute_path(copy):
    # Real checkpoint files carry the training machine's absolute paths: the basename is looked up locally.
    (copy / "checkpoint").write_text('model_checkpoint_path: "/cluster/job7/out/model.ckpt-7"\n')
    assert tfc.resolve_tf_checkpoint(copy) == str(copy / "model.ckpt-7")
    (copy / "checkpoint").unlink()
    assert tfc.resolve_tf_checkpoint(copy) == str(copy / "model.ckpt-7")  # the only *.index
    shutil.copy(copy / "model.ckpt-7.index", copy / "model.ckpt-9.index")
    with pytest.raises(FileNotFoundError, match="cannot pick"):
        tfc.resolve_tf_checkpoint(copy)


def test_config_from_bert_json():
    config = tfc.config_from_bert_json(FIXTURE / "bert_config.json")
    raw = json.loads((FIXTURE / "bert_config.json").read_text())
    assert "max_relative_position" not in raw and config.max_relative_position == 64
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        assert getattr(config, key) == raw[key]


def _tf(tensors, name):
    return tensors[name].double()


def test_pretraining_model_loads_with_transposes(tf_tensors, caplog):
    tensors, _ = tf_tensors
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = ours.NezhaForPreTraining.from_tf_checkpoint(FIXTURE, output_loading_info=True)
    assert info.missing_keys == [] and info.unexpected_keys == [] and info.mismatched_keys == []
    assert len(info.dropped_keys) == len(SLOTS) + 1 and not caplog.records
    assert not model.training
    sd = {k: v.double() for k, v in model.state_dict().items()}
    L = "bert/encoder/layer_0/"
    pairs = {  # ours -> (TF name, transposed?)
        "nezha.embeddings.word_embeddings.weight": ("bert/embeddings/word_embeddings", False),
        "nezha.embeddings.token_type_embeddings.weight": ("bert/embeddings/token_type_embeddings", False),
        "nezha.embeddings.LayerNorm.weight": ("bert/embeddings/LayerNorm/gamma", False),
        "nezha.embeddings.LayerNorm.bias": ("bert/embeddings/LayerNorm/beta", False),
        "nezha.encoder.layer.0.attention.self.query.weight": (L + "attention/self/query/kernel", True),
        "nezha.encoder.layer.0.attention.self.key.weight": (L + "attention/self/key/kernel", True),
        "nezha.encoder.layer.0.attention.self.value.bias": (L + "attention/self/value/bias", False),
        "nezha.encoder.layer.0.attention.output.dense.weight": (L + "attention/output/dense/kernel", True),
        "nezha.encoder.layer.0.attention.output.LayerNorm.weight": (L + "attention/output/LayerNorm/gamma", False),
        "nezha.encoder.layer.0.attention.output.LayerNorm.bias": (L + "attention/output/LayerNorm/beta", False),
        "nezha.encoder.layer.0.intermediate.dense.weight": (L + "intermediate/dense/kernel", True),
        "nezha.encoder.layer.0.output.dense.weight": (L + "output/dense/kernel", True),
        "nezha.encoder.layer.0.output.LayerNorm.bias": (L + "output/LayerNorm/beta", False),
        "nezha.pooler.dense.weight": ("bert/pooler/dense/kernel", True),
        "cls.predictions.transform.dense.weight": ("cls/predictions/transform/dense/kernel", True),
        "cls.predictions.transform.LayerNorm.weight": ("cls/predictions/transform/LayerNorm/gamma", False),
        "cls.predictions.bias": ("cls/predictions/output_bias", False),
        "cls.predictions.decoder.weight": ("bert/embeddings/word_embeddings", False),  # tied
        "cls.seq_relationship.weight": ("cls/seq_relationship/output_weights", False),
        "cls.seq_relationship.bias": ("cls/seq_relationship/output_bias", False),
    }
    for ours_name, (tf_name, transposed) in pairs.items():
        ref = _tf(tensors, tf_name)
        assert torch.equal(sd[ours_name], ref.t() if transposed else ref), ours_name
    assert model.cls.predictions.decoder.weight is model.nezha.embeddings.word_embeddings.weight


def test_layers_compute_what_tensorflow_computes(tf_tensors):
    """TF semantics in float64: dense = x @ kernel + bias, NSP = x @ output_weights^T + b, MLM tied to embeddings."""
    tensors, _ = tf_tensors
    model = ours.NezhaForPreTraining.from_tf_checkpoint(PREFIX).double()
    g = torch.Generator().manual_seed(3)
    x8 = torch.randn(5, 8, generator=g, dtype=torch.float64)
    x12 = torch.randn(5, 12, generator=g, dtype=torch.float64)
    L = "bert/encoder/layer_0/"
    with torch.no_grad():
        got = model.nezha.encoder.layer[0].intermediate.dense(x8)
        ref = x8 @ _tf(tensors, L + "intermediate/dense/kernel") + _tf(tensors, L + "intermediate/dense/bias")
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        got = model.nezha.encoder.layer[0].output.dense(x12)
        ref = x12 @ _tf(tensors, L + "output/dense/kernel") + _tf(tensors, L + "output/dense/bias")
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        got = model.cls.seq_relationship(x8)
        ref = x8 @ _tf(tensors, "cls/seq_relationship/output_weights").t() + _tf(
            tensors, "cls/seq_relationship/output_bias"
        )
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        got = model.cls.predictions.decoder(x8)
        ref = x8 @ _tf(tensors, "bert/embeddings/word_embeddings").t() + _tf(tensors, "cls/predictions/output_bias")
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        ids = torch.tensor([[2, 7, 19, 0, 5, 3, 11]])
        out = model(ids, token_type_ids=torch.tensor([[0, 0, 0, 1, 1, 1, 1]]))
    assert out.prediction_logits.shape == (1, 7, 20) and torch.isfinite(out.prediction_logits).all()


def test_other_task_classes_report_keys(caplog):
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        _, info = ours.NezhaModel.from_tf_checkpoint(FIXTURE, output_loading_info=True)
    assert info.missing_keys == []
    assert info.unexpected_keys and all(k.startswith("cls.") for k in info.unexpected_keys)
    assert "cls.seq_relationship.weight" in info.unexpected_keys
    assert any("were not used" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nezha_kernels.models"):
        model, info = ours.NezhaForSequenceClassification.from_tf_checkpoint(
            FIXTURE, output_loading_info=True, num_labels=3
        )
    assert info.missing_keys == ["classifier.bias", "classifier.weight"]
    assert any("newly initialized" in r.getMessage() for r in caplog.records)
    assert model.config.num_labels == 3


def test_load_into_existing_model():
    config = tfc.config_from_bert_json(FIXTURE / "bert_config.json")
    model = ours.NezhaForMaskedLM(config)
    info = tfc.load_tf_checkpoint(model, FIXTURE)
    # The MLM model has no pooler and no NSP head (as in Hugging Face): those TF weights are unused.
    assert info.missing_keys == [] and info.unexpected_keys == [
        "cls.seq_relationship.bias",
        "cls.seq_relationship.weight",
        "nezha.pooler.dense.bias",
        "nezha.pooler.dense.weight",
    ]
    tensors, _ = tfc.read_tf_checkpoint(FIXTURE, names=["bert/pooler/dense/kernel"])
    assert list(tensors) == ["bert/pooler/dense/kernel"]


def test_no_tensorflow_import():
    code = (
        "import sys, nezha_kernels.models as m; m.NezhaForPreTraining.from_tf_checkpoint(sys.argv[1]); "
        "assert 'tensorflow' not in sys.modules"
    )
    root = str(Path(__file__).resolve().parent.parent)
    subprocess.run(
        [sys.executable, "-c", code, str(FIXTURE)], check=True, cwd=root, env={**os.environ, "PYTHONPATH": root}
    )


def test_name_mapping_rules():
    assert tfc.tf_name_to_torch("bert/encoder/layer_11/attention/self/query/kernel") == (
        "nezha.encoder.layer.11.attention.self.query.weight",
        True,
    )
    assert tfc.tf_name_to_torch("cls/predictions/output_bias") == ("cls.predictions.bias", False)
    assert tfc.tf_name_to_torch("output_weights") == ("classifier.weight", False)  # run_classifier.py head
    assert tfc.tf_name_to_torch("bert/embeddings/word_embeddings/adam_m") is None
    assert tfc.tf_name_to_torch("global_step") is None


# ---- errors -----------------------------------------------------------------------------------------
def test_missing_files(copy):
    with pytest.raises(FileNotFoundError, match=r"model\.ckpt-8\.index"):
        tfc.read_tf_checkpoint(copy / "model.ckpt-8")
    (copy / "model.ckpt-7.data-00000-of-00001").unlink()
    with pytest.raises(FileNotFoundError, match="missing its data file"):
        tfc.read_tf_checkpoint(copy / "model.ckpt-7")
    (copy / "bert_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="bert_config.json"):
        ours.NezhaModel.from_tf_checkpoint(copy)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_bad_magic(copy):
    index = copy / "model.ckpt-7.index"
    _flip(index, index.stat().st_size - 1)
    with pytest.raises(tfc.TFCheckpointError, match="bad magic"):
        tfc.list_tf_variables(copy)
    index.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="too short"):
        tfc.list_tf_variables(copy)


def test_corrupt_index_block(copy):
    _flip(copy / "model.ckpt-7.index", 20)  # inside the first key of the first data block
    with pytest.raises(tfc.TFCheckpointError, match="checksum mismatch in the block"):
        tfc.list_tf_variables(copy)


def test_corrupt_data(copy):
    info = tfc.list_tf_variables(copy)["bert/pooler/dense/bias"]
    _flip(copy / "model.ckpt-7.data-00000-of-00001", info.offset + 5)
    with pytest.raises(tfc.TFCheckpointError, match="checksum mismatch for 'bert/pooler/dense/bias'"):
        tfc.read_tf_checkpoint(copy)
    tensors, _ = tfc.read_tf_checkpoint(copy, verify_checksums=False)
    assert tensors["bert/pooler/dense/bias"].double().sum().item() != pytest.approx(
        EXPECTED["bert/pooler/dense/bias"]["sum"], rel=1e-9
    )


def test_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match=r"word_embeddings.weight: checkpoint \[20, 8\] vs model \[21, 8\]"):
        ours.NezhaForPreTraining.from_tf_checkpoint(FIXTURE, vocab_size=21)
    model, info = ours.NezhaForPreTraining.from_tf_checkpoint(
        FIXTURE, vocab_size=21, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {k for k, _, _ in info.mismatched_keys} == {
        "nezha.embeddings.word_embeddings.weight",
        "cls.predictions.bias",
    }
    assert np.isfinite(model.nezha.embeddings.word_embeddings.weight.detach().numpy()).all()
