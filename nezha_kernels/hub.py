"""Hugging Face Hub ids for ``from_pretrained``, through the optional ``huggingface_hub`` package.

``resolve_checkpoint("sijunhe/nezha-cn-base")`` returns a local directory holding the checkpoint's
config.json and weights: the snapshot in the Hub cache (``models--org--name/snapshots/<commit>/``), downloaded
first when needed. Only the files the loader reads are fetched (config.json, then the first weight format
present, in the loader's order, with its shards), as transformers does. ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``), read at every call, and ``local_files_only=True`` use the cache alone and fail at once
(no network request, no retries) when it lacks a file; without them an unreachable Hub costs huggingface_hub's
retries (~25 s) before the same error, which then names HF_HUB_OFFLINE. A local
directory is returned unchanged, and nothing here imports ``huggingface_hub`` for it.
"""

from __future__ import annotations

import json
import os
import re

__all__ = ["is_hub_id", "resolve_checkpoint", "cached_file"]

CONFIG_NAME = "config.json"
# The loader's order (checkpoint._WEIGHT_FILES); an index is followed by the shards it lists.
WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# "name" or "org/name", the repo ids the Hub accepts (letters, digits, "-", "_", "."; at most 96 characters).
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a Hub model id ("org/name" or "name")."""
    return bool(_REPO_ID.match(name)) and len(name) <= 96 and ".." not in name and not name.endswith(".git")


def _offline_env() -> bool:
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _what_to_do(repo_id: str) -> str:
    return (
        f"Download it once where the Hub is reachable (`huggingface-cli download {repo_id}`, or any "
        f"from_pretrained({repo_id!r}) with network access), pass cache_dir= pointing at a Hub cache that "
        "holds it, or pass the path of a local directory with config.json and the weights."
    )


class _Fetcher:
    """hf_hub_download for one repo and revision, with our errors instead of huggingface_hub's."""

    def __init__(self, repo_id, revision, cache_dir, local_files_only, token):
        hub = _hub()
        if hub is None:
            raise ImportError(
                f"{repo_id!r} is not a local directory; loading it from the Hugging Face Hub needs the "
                "huggingface_hub package (pip install huggingface_hub), or pass a local checkpoint directory"
            )
        from huggingface_hub import constants, errors

        from ._version import __version__

        self.hub, self.errors = hub, errors
        self.repo_id, self.revision = repo_id, revision
        self.offline = bool(local_files_only) or _offline_env() or bool(constants.HF_HUB_OFFLINE)
        self.cache_misses: list[str] = []  # files absent from the cache while the Hub could not be asked
        self.cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
        self.kwargs = dict(
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=self.offline,
            token=token,
            library_name="nezha_kernels",
            library_version=__version__,
        )

    def _where(self) -> str:
        rev = f" at revision {self.revision!r}" if self.revision is not None else ""
        return f"{self.repo_id!r}{rev}"

    def not_cached(self, what: str) -> FileNotFoundError:
        why = (
            "offline mode is on (HF_HUB_OFFLINE / local_files_only=True)"
            if self.offline
            else "the Hugging Face Hub could not be reached"
        )
        # Unreachable without the offline switch, huggingface_hub retried for ~25 s first: say how to skip that.
        fast = "" if self.offline else " Set HF_HUB_OFFLINE=1 to use the cache alone, at once, with no retries."
        return FileNotFoundError(
            f"cannot load {self._where()}: it is not a local directory, {why}, and the Hub cache "
            f"({self.cache}) {what}. " + _what_to_do(self.repo_id) + fast
        )

    def get(self, filename: str, required: bool = True) -> str | None:
        """Local path of ``filename``; None when the repo (or, offline, the cache) lacks it and not required."""
        e = self.errors
        try:
            return self.hub.hf_hub_download(self.repo_id, filename, **self.kwargs)
        except e.LocalEntryNotFoundError:
            # Offline, or the Hub was unreachable, and the cache does not hold the file.
            self.cache_misses.append(filename)
            if not required:
                return None
            raise self.not_cached(f"has no {filename} for it") from None
        except e.EntryNotFoundError:
            if not required:
                return None
            raise FileNotFoundError(f"the Hub repo {self._where()} has no {filename}") from None
        except e.RevisionNotFoundError:
            raise FileNotFoundError(
                f"the Hub repo {self.repo_id!r} has no revision {self.revision!r} (a branch, tag or commit hash)"
            ) from None
        except e.RepositoryNotFoundError as exc:  # GatedRepoError too
            gated = isinstance(exc, e.GatedRepoError)
            raise FileNotFoundError(
                f"cannot load {self._where()}: it is not a local directory, and "
                + (
                    "the Hub repo is gated: accept its conditions on huggingface.co and pass token="
                    if gated
                    else "there is no such model on the Hugging Face Hub (or it is private: pass token=)"
                )
            ) from None
        except e.HfHubHTTPError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(f"cannot download {filename} of {self._where()} from the Hub: {first_line}") from None


def _check_name(name_or_path) -> str:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "pretrained_model_name_or_path must be a local directory or a Hub id (str), "
            f"got {type(name_or_path).__name__}"
        )
    return os.fspath(name_or_path)


def _not_found(name: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"checkpoint directory {name!r} does not exist, and it is not a Hugging Face Hub id ('org/name')"
    )


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> str:
    """A local directory with the checkpoint's config.json and weights.

    Args:
        name_or_path: a local directory (returned as is) or a Hub model id like "sijunhe/nezha-cn-base".
        revision: branch, tag or commit hash on the Hub (default "main").
        cache_dir: the Hub cache to use (default ``HF_HUB_CACHE``, i.e. ~/.cache/huggingface/hub).
        local_files_only: never touch the network (also when ``HF_HUB_OFFLINE=1``).
        token: Hub token for private or gated repos (True: the saved login).

    Raises FileNotFoundError naming the id and what to do when it is neither a directory nor obtainable.
    """
    name = _check_name(name_or_path)
    if os.path.isdir(name):
        return name
    if not is_hub_id(name):
        raise _not_found(name)
    fetch = _Fetcher(name, revision, cache_dir, local_files_only, token)
    config = fetch.get(CONFIG_NAME)
    snapshot = os.path.dirname(config)
    for weights in WEIGHT_NAMES:
        path = fetch.get(weights, required=False)
        if path is None:
            continue
        if weights.endswith(".index.json"):
            with open(path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map") or {}
            for shard in sorted(set(weight_map.values())):
                fetch.get(shard)
        return snapshot
    if fetch.cache_misses:
        raise fetch.not_cached(f"has its {CONFIG_NAME} but none of the weight files {list(WEIGHT_NAMES)}")
    raise FileNotFoundError(
        f"the Hub repo {fetch._where()} has no weights in a supported format: expected one of {list(WEIGHT_NAMES)}"
    )


def cached_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    required: bool = True,
) -> str | None:
    """Local path of one file of a checkpoint (e.g. "vocab.txt"): in the directory, or from the Hub.

    None when the file is absent and ``required`` is False; FileNotFoundError otherwise.
    """
    name = _check_name(name_or_path)
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        if os.path.isfile(path):
            return path
        if required:
            raise FileNotFoundError(f"{filename} not found in the checkpoint directory {name!r}")
        return None
    if not is_hub_id(name):
        raise _not_found(name)
    return _Fetcher(name, revision, cache_dir, local_files_only, token).get(filename, required=required)
