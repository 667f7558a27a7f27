"""Hub ids in from_pretrained: offline, against Hub caches filled here with the real layout.

A cache holds ``models--org--name/refs/<branch or tag>`` (the commit hash) and
``models--org--name/snapshots/<commit>/<file>``, each file a symlink to ``blobs/<hash>`` (what
huggingface_hub writes) or a plain file (what copies of a cache and Windows hold). Nothing here reaches the
network: every test is offline (HF_HUB_OFFLINE=1 or local_files_only=True).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys

import pytest
import torch
from _nezha_helpers import SMALL, batch, randomize_

import nezha_kernels.models as ours

pytest.importorskip("huggingface_hub", reason="Hub ids go through the optional huggingface_hub package")
from huggingface_hub import constants  # noqa: E402

from nezha_kernels import hub  # noqa: E402

REPO = "nezha-org/tiny-nezha"
COMMIT_A = "a" * 8 + "0123456789abcdef0123456789abcdef"
COMMIT_B = "b" * 8 + "fedcba9876543210fedcba9876543210"


def _model(seed: int, name: str = "NezhaForSequenceClassification"):
    torch.manual_seed(seed)
    model = getattr(ours, name)(ours.NezhaConfig(**SMALL, num_labels=3))
    randomize_(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def _fill_cache(cache, model, commit, refs=("main",), blobs=True, repo=REPO, extra_files=(), **save_kwargs):
    """Save ``model`` and place it in ``cache`` as huggingface_hub would after a download of ``commit``."""
    source = cache.parent / f"saved-{commit[:8]}-{len(os.listdir(cache.parent))}"
    model.save_pretrained(source, **save_kwargs)
    for name, text in extra_files:
        (source / name).write_text(text, encoding="utf-8")
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if blobs:
            data = path.read_bytes()
            blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(exist_ok=True)
            blob.write_bytes(data)
            (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
        else:
            shutil.copy(path, snapshot / path.name)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def online_flags(monkeypatch):
    """No offline switch at all: only local_files_only keeps the test off the network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_hub_id_loads_from_cache_with_hf_hub_offline(tmp_path, offline):
    cache = tmp_path / "hub"
    cache.mkdir()
    model = _model(0)
    snapshot = _fill_cache(cache, model, COMMIT_A)
    loaded = ours.NezhaForSequenceClassification.from_pretrained(REPO, cache_dir=cache)
    assert _same_weights(loaded, model) and loaded.config.num_labels == 3
    ids, mask, types = batch(seed=1, length=19)
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    assert hub.resolve_checkpoint(REPO, cache_dir=cache) == str(snapshot)
    # A base model from the same task checkpoint (prefix handling and the rest work as for a directory).
    base = ours.NezhaModel.from_pretrained(REPO, cache_dir=cache)
    assert torch.equal(base.encoder.layer[1].output.dense.weight, model.nezha.encoder.layer[1].output.dense.weight)


@pytest.mark.parametrize("blobs", [True, False], ids=["blobs", "plain-files"])
def test_revision_picks_the_snapshot(tmp_path, offline, blobs):
    cache = tmp_path / "hub"
    cache.mkdir()
    main, tagged = _model(1), _model(2)
    _fill_cache(cache, main, COMMIT_A, refs=("main",), blobs=blobs)
    # Another revision, saved as a pickle: the cached format is read whatever it is.
    _fill_cache(cache, tagged, COMMIT_B, refs=("v2",), blobs=blobs, safe_serialization=False)
    cls = ours.NezhaForSequenceClassification
    assert _same_weights(cls.from_pretrained(REPO, cache_dir=cache), main)
    assert _same_weights(cls.from_pretrained(REPO, cache_dir=cache, revision="main"), main)
    assert _same_weights(cls.from_pretrained(REPO, cache_dir=cache, revision="v2"), tagged)
    assert _same_weights(cls.from_pretrained(REPO, cache_dir=cache, revision=COMMIT_B), tagged)
    with pytest.raises(FileNotFoundError, match=r"'nezha-org/tiny-nezha' at revision 'v3'.*HF_HUB_OFFLINE"):
        cls.from_pretrained(REPO, cache_dir=cache, revision="v3")


def test_local_files_only_default_cache_and_cache_dir(tmp_path, monkeypatch, online_flags):
    default_cache = tmp_path / "default-hub"
    default_cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(default_cache))
    model = _model(3)
    # Sharded safetensors in the cache: the index and every shard it lists are resolved.
    snapshot = _fill_cache(
        cache=default_cache,
        model=model,
        commit=COMMIT_A,
        max_shard_size=20_000,
        extra_files=[("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")],
    )
    assert (snapshot / "model.safetensors.index.json").exists()
    cls = ours.NezhaForSequenceClassification
    assert _same_weights(cls.from_pretrained(REPO, local_files_only=True), model)
    assert hub.cached_file(REPO, "vocab.txt", local_files_only=True) == str(snapshot / "vocab.txt")
    assert hub.cached_file(REPO, "tokenizer.json", local_files_only=True, required=False) is None
    other = tmp_path / "other-hub"
    other.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{REPO}.*local_files_only.*{other}"):
        cls.from_pretrained(REPO, local_files_only=True, cache_dir=other)


def test_missing_id_names_it_and_says_what_to_do(tmp_path, offline):
    cache = tmp_path / "hub"
    cache.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        ours.NezhaModel.from_pretrained("sijunhe/nezha-cn-base", cache_dir=cache)
    message = str(info.value)
    assert "'sijunhe/nezha-cn-base'" in message and "not a local directory" in message
    assert "HF_HUB_OFFLINE" in message and str(cache) in message
    assert "huggingface-cli download sijunhe/nezha-cn-base" in message and "cache_dir=" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no huggingface_hub traceback
    # The config is cached but no weights: named too.
    snapshot = _fill_cache(cache, _model(4), COMMIT_A)
    for name in os.listdir(snapshot):
        if name != "config.json":
            os.remove(snapshot / name)
    with pytest.raises(FileNotFoundError, match="has its config.json but none of the weight files"):
        ours.NezhaModel.from_pretrained(REPO, cache_dir=cache)


def _record_requests(monkeypatch, raise_with):
    """Every HTTP request huggingface_hub would make, recorded and failed at once with ``raise_with``."""
    from huggingface_hub import file_download

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise raise_with

    monkeypatch.setattr(file_download, "_request_wrapper", refuse)
    monkeypatch.setattr(file_download, "http_backoff", refuse)
    return calls


def test_hf_hub_offline_fails_at_once_without_a_request(tmp_path, offline, monkeypatch, capfd):
    """HF_HUB_OFFLINE=1: a clear error, no request and so no retries (without it, an unreachable Hub costs
    huggingface_hub's five retries over ~25 s)."""
    import time

    calls = _record_requests(monkeypatch, AssertionError("a request was made while HF_HUB_OFFLINE=1"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="offline mode is on") as info:
        ours.NezhaModel.from_pretrained("someorg/nezha-absent", cache_dir=tmp_path)
    assert calls == [] and time.perf_counter() - start < 5
    assert "Retrying" not in capfd.readouterr().err
    assert "no retries" not in str(info.value)  # the hint below is for the online case only


def test_unreachable_hub_error_names_the_offline_switch(tmp_path, online_flags, monkeypatch):
    import requests

    calls = _record_requests(monkeypatch, requests.ConnectionError("Failed to resolve 'huggingface.co'"))
    with pytest.raises(FileNotFoundError, match="could not be reached") as info:
        ours.NezhaModel.from_pretrained("someorg/nezha-absent", cache_dir=tmp_path)
    assert calls, "the Hub was not asked"
    assert "Set HF_HUB_OFFLINE=1 to use the cache alone, at once, with no retries." in str(info.value)


def test_local_directories_and_paths_need_no_hub(tmp_path, monkeypatch):
    model = _model(5)
    model.save_pretrained(tmp_path / "ckpt")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails: as if not installed
    assert _same_weights(ours.NezhaForSequenceClassification.from_pretrained(tmp_path / "ckpt"), model)
    with pytest.raises(ImportError, match="'org/model' is not a local directory.*pip install huggingface_hub"):
        ours.NezhaModel.from_pretrained("org/model")
    with pytest.raises(FileNotFoundError, match="does not exist, and it is not a Hugging Face Hub id"):
        ours.NezhaModel.from_pretrained("some/local/dir")
    with pytest.raises(TypeError, match="pretrained_model_name_or_path"):
        ours.NezhaModel.from_pretrained(42)


def test_is_hub_id():
    for name in ("sijunhe/nezha-cn-base", "bert-base-chinese", "org_1/name.v2"):
        assert hub.is_hub_id(name), name
    for name in ("a/b/c", "/abs/dir", "./rel", "org/", "../up", "org/na me", "", "x" * 97):
        assert not hub.is_hub_id(name), name
