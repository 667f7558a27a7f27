"""Huawei's original TensorFlow NEZHA checkpoints, read without TensorFlow: the index, the data files, the checksums.

A TF V2 checkpoint is ``PREFIX.index`` + ``PREFIX.data-0000i-of-0000n``. The index is a LevelDB-style
table: data blocks of prefix-compressed (key, value) entries, an index block of block handles, and a
48-byte footer (two varint block handles, padding, magic). Every block has a 5-byte trailer
(compression type, masked crc32c). Values are ``BundleEntryProto`` protobufs (dtype, shape, shard_id,
offset, size, masked crc32c of the tensor bytes); the empty key holds ``BundleHeaderProto``.
Only float32 tensors are read; everything else is skipped with a reason.

Name mapping and loading into a model: tf_checkpoint.py (which re-exports the public names here).
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from typing import Any

import numpy as np
import torch

__all__ = [
    "SKIPPED_SEGMENTS",
    "TFCheckpointError",
    "TFTensorInfo",
    "resolve_tf_checkpoint",
    "list_tf_variables",
    "read_tf_checkpoint",
]

logger = logging.getLogger("nezha_kernels.models")

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # 2 block handles padded to 40 bytes + 8-byte magic
_BLOCK_TRAILER_LEN = 5  # compression type (1 byte) + masked crc32c (4 bytes)
_DT_FLOAT = 1
# tensorflow/core/framework/types.proto, for messages only.
_DTYPE_NAMES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    19: "float16",
}
# Variables of the optimizer / training loop, not of the model (as in HF's BERT conversion).
SKIPPED_SEGMENTS = {
    "adam_m",
    "adam_v",
    "AdamWeightDecayOptimizer",
    "AdamWeightDecayOptimizer_1",
    "lamb_m",
    "lamb_v",
    "global_step",
    "Momentum",
    "bad_steps",
    "good_steps",
    "loss_scale",
}


class TFCheckpointError(ValueError):
    """The checkpoint files are not a valid TF V2 bundle (bad magic, checksum, truncated, ...)."""


# ---- crc32c (Castagnoli), masked as LevelDB/TF store it --------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c_py(data: bytes) -> int:
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # optional C implementations; pure Python does ~15 MB/s (a base model: ~25 s)
    import google_crc32c as _gcrc

    def _crc32c(data: bytes) -> int:
        return _gcrc.value(bytes(data))
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import crc32c as _ccrc

        def _crc32c(data: bytes) -> int:
            return _ccrc.crc32c(bytes(data))
    except ImportError:
        _crc32c = _crc32c_py


def _unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---- minimal protobuf wire-format decoding -------------------------------------------------------
def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise TFCheckpointError(f"truncated or malformed varint in {what}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, what: str) -> dict[int, list]:
    """field number -> list of values (ints for varint/fixed, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos, what)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            value, pos = bytes(buf[pos : pos + length]), pos + length
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire} in {what}")
        if pos > len(buf):
            raise TFCheckpointError(f"truncated protobuf in {what}")
        fields.setdefault(number, []).append(value)
    return fields


@dataclasses.dataclass(frozen=True)
class TFTensorInfo:
    """One BundleEntryProto: where a tensor's bytes are and what they hold."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored
    sliced: bool  # a partitioned variable (its data lives under slice keys)


def _parse_entry(name: str, value: bytes) -> TFTensorInfo:
    f = _proto_fields(value, f"BundleEntryProto of {name!r}")
    shape: tuple[int, ...] = ()
    if 2 in f:
        dims = _proto_fields(f[2][0], f"shape of {name!r}").get(2, [])
        shape = tuple(_proto_fields(d, f"shape of {name!r}").get(1, [0])[0] for d in dims)
    dtype = f.get(1, [0])[0]
    return TFTensorInfo(
        name=name,
        dtype=_DTYPE_NAMES.get(dtype, f"dtype_enum_{dtype}"),
        shape=shape,
        shard_id=f.get(3, [0])[0],
        offset=f.get(4, [0])[0],
        size=f.get(5, [0])[0],
        crc32c=f[6][0] if 6 in f else None,
        sliced=7 in f,
    )


# ---- the LevelDB-style table of the .index file ------------------------------------------------
def _read_block(data: bytes, handle: tuple[int, int], path: str) -> bytes:
    offset, size = handle
    end = offset + size + _BLOCK_TRAILER_LEN
    if end > len(data) - _FOOTER_LEN:
        raise TFCheckpointError(f"{path}: block at {offset} (+{size}) runs past the end of the file (truncated?)")
    block = data[offset : offset + size]
    ctype = data[offset + size]
    stored = int.from_bytes(data[offset + size + 1 : end], "little")
    if _crc32c_py(data[offset : offset + size + 1]) != _unmask(stored):
        raise TFCheckpointError(f"{path}: checksum mismatch in the block at offset {offset}: the file is corrupt")
    if ctype != 0:
        raise TFCheckpointError(
            f"{path}: block at {offset} uses compression type {ctype} (only uncompressed is supported)"
        )
    return block


def _block_entries(block: bytes, path: str):
    """(key, value) of one block; keys are prefix-compressed against the previous key."""
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: block of {len(block)} bytes is too short")
    num_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TFCheckpointError(f"{path}: block restart array is corrupt")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, path)
        unshared, pos = _varint(block, pos, path)
        vlen, pos = _varint(block, pos, path)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise TFCheckpointError(f"{path}: block entry at {pos} is corrupt")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + vlen]
        pos += vlen


def _handle(buf: bytes, pos: int, path: str) -> tuple[tuple[int, int], int]:
    offset, pos = _varint(buf, pos, path)
    size, pos = _varint(buf, pos, path)
    return (offset, size), pos


def _read_index(path: str) -> tuple[dict, dict[str, TFTensorInfo]]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _FOOTER_LEN:
        raise TFCheckpointError(f"{path}: {len(data)} bytes is too short for a TF checkpoint index")
    footer = data[-_FOOTER_LEN:]
    magic = int.from_bytes(footer[-8:], "little")
    if magic != _TABLE_MAGIC:
        raise TFCheckpointError(
            f"{path}: bad magic number {magic:#018x} (expected {_TABLE_MAGIC:#018x}): "
            "not a TF V2 checkpoint index, or corrupt"
        )
    _, pos = _handle(footer, 0, path)  # metaindex: unused by TF bundles
    index_handle, _ = _handle(footer, pos, path)
    header: dict = {}
    entries: dict[str, TFTensorInfo] = {}
    for _, value in _block_entries(_read_block(data, index_handle, path), path):
        block_handle, _ = _handle(value, 0, path)
        for key, entry in _block_entries(_read_block(data, block_handle, path), path):
            if key == b"":
                h = _proto_fields(entry, "BundleHeaderProto")
                header = {"num_shards": h.get(1, [1])[0], "endianness": h.get(2, [0])[0]}
            else:
                name = key.decode("utf-8", errors="replace")
                entries[name] = _parse_entry(name, entry)
    if not header:
        raise TFCheckpointError(f"{path}: no BundleHeaderProto (empty key): not a TF V2 checkpoint index")
    if header["endianness"] != 0:
        raise TFCheckpointError(f"{path}: big-endian checkpoints are not supported")
    return header, entries


# ---- locating the files ----------------------------------------------------------------------------
def resolve_tf_checkpoint(path: str | os.PathLike) -> str:
    """The checkpoint prefix (``.../model.ckpt-NNN``) of a directory, prefix, .index or .data path.

    A directory uses its ``checkpoint`` file's model_checkpoint_path (relative, or an absolute path from
    another machine: its basename is looked up in the directory), else its only ``*.index`` file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = None
        state_file = os.path.join(path, "checkpoint")
        if os.path.isfile(state_file):
            with open(state_file, encoding="utf-8") as f:
                match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.M)
            if match:
                name = match.group(1)
                for candidate in (name, os.path.join(path, name), os.path.join(path, os.path.basename(name))):
                    if os.path.isfile(candidate + ".index"):
                        prefix = candidate
                        break
        if prefix is None:
            indexes = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
            if len(indexes) != 1:
                found = [os.path.basename(p) for p in indexes]
                raise FileNotFoundError(
                    f"cannot pick a TF checkpoint in {path!r}: expected one *.index file (or a 'checkpoint' file "
                    f"naming one), found {found}; pass the prefix, e.g. {os.path.join(path, 'model.ckpt-1000')!r}"
                )
            prefix = indexes[0][: -len(".index")]
        path = prefix
    path = re.sub(r"\.(index|data-\d{5}-of-\d{5})$", "", path)
    if not os.path.isfile(path + ".index"):
        raise FileNotFoundError(f"TF checkpoint index {path + '.index'!r} does not exist")
    return path


def _data_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def list_tf_variables(path: str | os.PathLike) -> dict[str, TFTensorInfo]:
    """Every entry of the checkpoint's index (name -> dtype, shape, location), nothing read from .data."""
    prefix = resolve_tf_checkpoint(path)
    return _read_index(prefix + ".index")[1]


def _skip_reason(info: TFTensorInfo) -> str | None:
    segments = set(info.name.split("/"))
    if segments & SKIPPED_SEGMENTS:
        return "optimizer/training state, not a model weight"
    if info.dtype != "float32":
        return f"dtype {info.dtype} is not read (only float32 tensors are)"
    if info.sliced:
        return "partitioned variable (TensorSliceProto entries) is not supported"
    return None


def read_tf_checkpoint(
    path: str | os.PathLike, *, verify_checksums: bool = True, names: list[str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read the float32 tensors of a TF V2 checkpoint.

    Args:
        path: directory, prefix (``model.ckpt-NNN``), or its .index / .data file.
        verify_checksums: check each tensor's crc32c (the index blocks are always checked).
        names: read only these entries (default: every model weight).

    Returns ``(tensors, skipped)``: name -> float32 CPU tensor in TF's layout (kernels [in, out]), and
    name -> why an entry was not read (optimizer slots, global_step, other dtypes).
    """
    prefix = resolve_tf_checkpoint(path)
    header, entries = _read_index(prefix + ".index")
    num_shards = header["num_shards"]
    shards = [_data_path(prefix, i, num_shards) for i in range(num_shards)]
    missing = [p for p in shards if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"TF checkpoint {prefix!r} is missing its data file(s) {missing}")
    if names is not None:
        unknown = sorted(set(names) - set(entries))
        if unknown:
            raise KeyError(f"not in TF checkpoint {prefix!r}: {unknown}")
        entries = {n: entries[n] for n in names}
    tensors: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    files: dict[str, Any] = {}
    try:
        for name, info in entries.items():
            reason = _skip_reason(info)
            if reason is not None:
                skipped[name] = reason
                continue
            numel = int(np.prod(info.shape, dtype=np.int64))
            if info.size != 4 * numel:
                raise TFCheckpointError(f"{prefix}.index: {name!r} has shape {list(info.shape)} but {info.size} bytes")
            if not 0 <= info.shard_id < num_shards:
                raise TFCheckpointError(f"{prefix}.index: {name!r} is in shard {info.shard_id} of {num_shards}")
            shard = shards[info.shard_id]
            f = files.get(shard) or files.setdefault(shard, open(shard, "rb"))
            f.seek(info.offset)
            raw = f.read(info.size)
            if len(raw) != info.size:
                raise TFCheckpointError(f"{shard}: {name!r} runs past the end of the file (truncated?)")
            if verify_checksums and info.crc32c is not None and _crc32c(raw) != _unmask(info.crc32c):
                raise TFCheckpointError(f"{shard}: checksum mismatch for {name!r}: the data file is corrupt")
            array = np.frombuffer(raw, dtype="<f4").reshape(info.shape)
            tensors[name] = torch.from_numpy(array.copy())
    finally:
        for f in files.values():
            f.close()
    return tensors, skipped
