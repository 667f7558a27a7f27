"""backend="triton" on CUDA tensors against the float64 formula (skipped without a GPU)."""

from __future__ import annotations

import os

import pytest
import torch
from triton_parity import check

import nezha_kernels as nk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") == "1",
        reason="TRITON_INTERPRET=1 would run the interpreter, not the compiled kernels",
    ),
]
CUDA = "cuda"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [16, 32, 64, 128])
# table "default": the op's own sinusoid (rel_table=None), the band by rotation where configs.rotation_band runs it;
# "nezha": the same table passed explicitly (read by the kernels).
@pytest.mark.parametrize(
    "lq,lk,r,q_offset,table",
    [(97, 97, 64, 0, "default"), (113, 203, 8, 90, "nezha"), (257, 65, 16, 0, "default"), (1, 300, 64, 299, "nezha")],
)
def test_shapes_dtypes_head_dims(dtype, d, lq, lk, r, q_offset, table):
    check(CUDA, dtype, 2, 3, lq, lk, d, r, q_offset=q_offset, table=table)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_padding_additive_dropout_head_mask(dtype):
    kp = torch.rand(2, 190, generator=torch.Generator().manual_seed(1)) > 0.2
    kp[1, :40] = False  # with causal, the first rows of batch 1 are fully masked
    check(
        CUDA,
        dtype,
        2,
        3,
        150,
        190,
        64,
        64,
        key_padding=kp,
        causal=True,
        q_offset=40,
        dropout_p=0.2,
        head_mask=torch.tensor([1.0, 0.5, 0.0]),
        table="default",
    )
    add = torch.randn(1, 3, 150, 190, generator=torch.Generator().manual_seed(2))
    check(CUDA, dtype, 2, 3, 150, 190, 64, 5, additive=add, table="random")


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_long(dtype):
    check(CUDA, dtype, 1, 2, 700, 700, 64, 64, causal=True, table="default")


def test_strided_fused_projection():
    check(CUDA, torch.float16, 2, 4, 333, 333, 64, 64, strided=True)


def test_available():
    status = nk.available_backends("cuda")["triton"]
    assert status.available, status.reason
