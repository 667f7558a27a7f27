"""Every kind of bad input is a clear ValueError/TypeError that names the argument."""

import pytest
import torch

import nezha_kernels as nk


def qkv(b=2, h=3, lq=5, lk=7, d=8, dtype=torch.float32):
    return (
        torch.randn(b, h, lq, d, dtype=dtype),
        torch.randn(b, h, lk, d, dtype=dtype),
        torch.randn(b, h, lk, d, dtype=dtype),
    )


CASES = [
    ("q rank", lambda q, k, v: dict(q=q[0]), ValueError, "q must be 4-D"),
    ("k rank", lambda q, k, v: dict(k=k[0, 0]), ValueError, "k must be 4-D"),
    ("q not tensor", lambda q, k, v: dict(q=q.tolist()), TypeError, "q must be a torch.Tensor"),
    ("integer q", lambda q, k, v: dict(q=q.long(), k=k.long(), v=v.long()), TypeError, "q must be float16"),
    ("mixed dtypes", lambda q, k, v: dict(k=k.double()), TypeError, "share one dtype"),
    ("batch mismatch", lambda q, k, v: dict(k=k[:1], v=v[:1]), ValueError, "batch and head"),
    ("head mismatch", lambda q, k, v: dict(v=v[:, :2]), ValueError, "batch and head"),
    ("head dim mismatch", lambda q, k, v: dict(k=k[..., :4]), ValueError, "head dim D"),
    ("k v length", lambda q, k, v: dict(v=v[:, :, :3]), ValueError, "same length Lk"),
    (
        "table shape",
        lambda q, k, v: dict(rel_table=torch.randn(10, 8)),
        ValueError,
        r"rel_table must have shape \[2R\+1, D\]",
    ),
    (
        "table dtype",
        lambda q, k, v: dict(rel_table=torch.randn(129, 8, dtype=torch.float64)),
        TypeError,
        "rel_table dtype",
    ),
    ("R < 1", lambda q, k, v: dict(max_relative_position=0), ValueError, "max_relative_position must be >= 1"),
    ("R not int", lambda q, k, v: dict(max_relative_position=2.5), TypeError, "max_relative_position must be an int"),
    ("dropout 1", lambda q, k, v: dict(dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\)"),
    ("dropout negative", lambda q, k, v: dict(dropout_p=-0.1), ValueError, "dropout_p"),
    ("dropout type", lambda q, k, v: dict(dropout_p="0.1"), TypeError, "dropout_p"),
    (
        "bool mask shape",
        lambda q, k, v: dict(attention_mask=torch.ones(2, 5, dtype=torch.bool)),
        ValueError,
        "key-padding mask of shape",
    ),
    ("float mask rank", lambda q, k, v: dict(attention_mask=torch.zeros(2, 7)), ValueError, "must be 4-D"),
    (
        "float mask broadcast",
        lambda q, k, v: dict(attention_mask=torch.zeros(2, 1, 1, 6)),
        ValueError,
        "not broadcastable",
    ),
    ("head_mask shape", lambda q, k, v: dict(head_mask=torch.ones(4)), ValueError, "head_mask must have shape"),
    (
        "head_mask dtype",
        lambda q, k, v: dict(head_mask=torch.ones(3, dtype=torch.long)),
        TypeError,
        "head_mask must be a floating",
    ),
    ("q_offset negative", lambda q, k, v: dict(q_offset=-1), ValueError, "q_offset must be >= 0"),
    ("causal type", lambda q, k, v: dict(causal=1), TypeError, "causal must be a bool"),
    ("scale type", lambda q, k, v: dict(scale="x"), TypeError, "scale"),
    ("scale nan", lambda q, k, v: dict(scale=float("nan")), ValueError, "scale must be finite"),
    ("unknown backend", lambda q, k, v: dict(backend="flash"), ValueError, "unknown backend 'flash'"),
    ("backend type", lambda q, k, v: dict(backend=3), TypeError, "backend"),
    ("generator type", lambda q, k, v: dict(dropout_p=0.1, generator=5), TypeError, "generator"),
    ("empty", lambda q, k, v: dict(q=q[:, :, :0]), ValueError, "empty dimension"),
    (
        "odd D default table",
        lambda q, k, v: dict(q=q[..., :7], k=k[..., :7], v=v[..., :7]),
        ValueError,
        "even head dim",
    ),
]


@pytest.mark.parametrize("name,change,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, change, exc, pattern):
    q, k, v = qkv()
    kwargs = dict(q=q, k=k, v=v)
    kwargs.update(change(q, k, v))
    with pytest.raises(exc, match=pattern):
        nk.relative_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)


def test_mask_requiring_grad_is_refused():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="attention_mask must not require grad"):
        nk.relative_attention(q, k, v, attention_mask=torch.zeros(2, 1, 1, 7, requires_grad=True))


def test_unavailable_backend_on_this_device():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable"):
        nk.relative_attention(q, k, v, backend="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs two devices (CUDA and CPU) to mix")
def test_mixed_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        nk.relative_attention(q.cuda(), k, v)


def test_mixed_devices_for_masks_via_meta():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="attention_mask is on meta"):
        nk.relative_attention(q, k, v, attention_mask=torch.ones(2, 7, dtype=torch.bool, device="meta"))
    with pytest.raises(ValueError, match="one device"):
        nk.relative_attention(q, k.to("meta"), v)
