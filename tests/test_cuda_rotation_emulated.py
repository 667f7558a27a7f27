"""The tensor-core forward's rotation path (csrc/relattn_rotation.cuh) on the CUDA emulator: NEZHA's sinusoid table
(``sinusoid=True``: the launcher passes the extended sinusoid tables; PLAIN calls take the band from the rotation
identity) against the float64 formula, by the tolerance rule of tests/tolerance.py; calls the rotation does not serve
(D = 128; causal, key padding, dropout: the table slices) and user-given tables alongside.

Shapes mix far, band and partial tiles (Lk > 2 tiles of 64), odd lengths, positions far from 0 (q_offset, where the
angles are measured from the block's first position), R = 64 (every public checkpoint), R = 32 (the smallest the
rotation serves) and smaller R (the table slices: a band tile whose rows have far keys on both sides), and R above
the rotation's bound (the table slices).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import formula
import pytest
import torch
from tolerance import assert_all_within

from nezha_kernels.cuda_ext import emulator, launch
from nezha_kernels.dropout import keep_mask
from nezha_kernels.inputs import prepare_inputs, prepare_varlen_inputs

pytestmark = pytest.mark.skipif(emulator.find_cxx() is None, reason="the CUDA emulator needs g++ (C++20)")

F16, BF16 = torch.float16, torch.bfloat16
FMIN = torch.finfo(torch.float32).min
# k per dtype (tests/tolerance.py): the kernel's error against the float64 formula is at most k times PyTorch's error
# computing the formula in the dtype, from the same rounded inputs (and the same rounded table).
K = {F16: dict(out=2.0), BF16: dict(out=2.0)}


@dataclasses.dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    shape: tuple[int, int, int, int, int]  # B, H, Lq, Lk, D
    r: int
    q_offset: int = 0
    head_mask: bool = False
    causal: bool = False
    padding: bool = False
    dropout_p: float = 0.0
    table: str = "sinusoid"  # "sinusoid" (the op's default: sinusoid=True) | "user" (a random table)
    scale: float | None = None


CASES = {
    # The rotation (PLAIN, sinusoid): R = 64 as NEZHA; far-left, band and partial tiles; odd lengths; two row blocks.
    "rot_fp16_d64_r64_two_row_blocks": Case(F16, (1, 1, 150, 333, 64), 64, q_offset=40),
    "rot_bf16_d64_r64_two_blocks_head_mask": Case(BF16, (2, 1, 70, 150, 64), 64, head_mask=True),
    # Small R (< 32): one tile row holds far-left, band and far-right keys; the rotation kernel leaves it to the PLAIN
    # kernel's table slices (rotation_band_one_sided).
    "small_r_bf16_d32_table_slices": Case(BF16, (1, 2, 77, 141, 32), 5),
    # R above ROT_MAX_R (1024, the exactness bound of the rotation kernel's f16 band test): the table slices.
    "large_r_bf16_d64_table_slices": Case(BF16, (1, 1, 70, 150, 64), 1100, q_offset=1000),
    # Far from position 0: the angles stay small (measured from the block's first position).
    "rot_fp16_d64_far_positions": Case(F16, (1, 1, 70, 170, 64), 16, q_offset=3000),
    # R = 32, the smallest the rotation serves: a row's far keys in a band tile on one side, its band 63 keys wide.
    "rot_fp16_d32_two_row_tiles_r32": Case(F16, (1, 1, 150, 200, 32), 32, q_offset=11),
    # D = 128 with the sinusoid: the PLAIN kernel's table slices (no rotation kernel there: rotation_kernel).
    "sinusoid_bf16_d128_table_slices": Case(BF16, (1, 1, 65, 190, 128), 64, q_offset=7),
    # Feature sets the rotation does not serve, with the sinusoid: the GENERAL kernel's table slices.
    "general_fp16_d64_causal": Case(F16, (1, 1, 100, 150, 64), 64, causal=True),
    "general_bf16_d32_padding_dropout": Case(BF16, (2, 1, 45, 130, 32), 8, padding=True, dropout_p=0.2),
    # A negative scale: the PLAIN kernel's table slices (the rotation kernel takes the row max before the scale).
    "sinusoid_fp16_d32_negative_scale": Case(F16, (1, 1, 40, 100, 32), 8, scale=-0.3),
    # A user-given table: the PLAIN kernel's table slices.
    "user_table_bf16_d64": Case(BF16, (1, 1, 90, 160, 64), 12, q_offset=5, table="user"),
}


def _run(case: Case, name: str):
    b, h, lq, lk, d = case.shape
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    q, k, v = (torch.randn(b, h, n, d, generator=g).to(case.dtype) for n in (lq, lk, lk))
    kw = dict(max_relative_position=case.r, causal=case.causal, q_offset=case.q_offset, scale=case.scale)
    if case.table == "user":
        kw["rel_table"] = torch.randn(2 * case.r + 1, d, generator=g).to(case.dtype)
    if case.padding:
        pad = torch.rand(b, lk, generator=g) > 0.3
        pad[:, 0] = True
        kw["attention_mask"] = pad
    if case.head_mask:
        kw["head_mask"] = torch.rand(b, h, generator=g).to(case.dtype)
    if case.dropout_p:
        kw["dropout_p"] = case.dropout_p
        kw["generator"] = torch.Generator().manual_seed(3)
    inputs = prepare_inputs(q, k, v, **kw)
    assert inputs.sinusoid == (case.table == "sinusoid")
    tail = (inputs.key_padding, inputs.additive_mask, inputs.head_mask, None, None, lq, lk, case.r, inputs.causal)
    tail += (inputs.q_offset, inputs.scale, inputs.dropout_p, int(inputs.dropout_seed or 0))
    with emulator.emulated_cuda_backend():
        out, lse = launch.relattn_fwd(q, k, v, inputs.table, *tail, family="tc", sinusoid=inputs.sinusoid)
    keep = None
    if case.dropout_p:
        keep = keep_mask(inputs.dropout_seed, case.dropout_p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    raw = dict(
        r=case.r,
        attention_mask=kw.get("attention_mask"),
        causal=case.causal,
        q_offset=case.q_offset,
        scale=case.scale,
        keep=keep,
        dropout_p=case.dropout_p,
        head_mask=kw.get("head_mask"),
    )
    return q, k, v, inputs, raw, out, lse


def _row_stats(q, k, table, r, scale, key_padding, causal, q_offset, dtype=torch.float64):
    """[2, B, H, Lq] in ``dtype``: row max and log sum exp(s - max) of the masked scores, computed in ``dtype`` (the
    float64 oracle, or PyTorch's same computation at the kernel's precision: tests/tolerance.py's baseline)."""
    q, k, table = (x.to(dtype) for x in (q, k, table))
    lq, lk = q.shape[2], k.shape[2]
    i = torch.arange(lq).view(-1, 1) + q_offset
    j = torch.arange(lk).view(1, -1)
    a = table[(j - i).clamp(-r, r) + r]
    s = (torch.einsum("bhid,bhjd->bhij", q, k) + torch.einsum("bhid,ijd->bhij", q, a)) * scale
    masked = torch.zeros(1, 1, lq, lk, dtype=torch.bool)
    if key_padding is not None:
        masked = masked | ~key_padding.view(-1, 1, 1, lk)
    if causal:
        masked = masked | (j > i)
    s = torch.where(masked, torch.full_like(s, torch.finfo(dtype).min), s)
    m = s.amax(dim=-1)
    return torch.stack([m, (s - m.unsqueeze(-1)).exp().sum(-1).log()])


@pytest.mark.parametrize("name", list(CASES))
def test_forward_matches_formula(name):
    case = CASES[name]
    q, k, v, inputs, raw, out, lse = _run(case, name)
    table = inputs.table  # the op's sinusoid in the dtype (or the user's): both sides read the same rounded rows
    expected = formula.attention(q, k, v, table, dtype=torch.float64, **raw)
    same_precision = formula.attention(q, k, v, table, dtype=case.dtype, **raw)
    assert out.dtype == case.dtype and torch.isfinite(out).all()
    assert_all_within({"out": out}, {"out": expected}, {"out": same_precision}, K[case.dtype], label=name)
    # Row statistics (fp32 in the kernel, from scores whose operands, q_rot and s included, are rounded to the dtype):
    # by the same rule, against PyTorch's scores in the dtype. Masked rows (finfo.min) compare exactly below.
    args = (q, k, table, case.r, inputs.scale, inputs.key_padding, case.causal, case.q_offset)
    stats, stats_same = _row_stats(*args), _row_stats(*args, dtype=case.dtype)
    names = {"row max": 0, "log row sum": 1}
    assert_all_within(
        {n: lse[i] for n, i in names.items()},
        {n: stats[i] for n, i in names.items()},
        {n: stats_same[i] for n, i in names.items()},
        dict.fromkeys(names, 2.0),
        label=name,
    )


def test_rotation_path_takes_the_band_from_the_sinusoid():
    """With sinusoid=True a PLAIN call reads only the table's edge rows T[0], T[2R]: band rows replaced by noise
    change nothing (the band comes from the extended sinusoid tables), while the slice path (sinusoid=False) reads
    them."""
    name, r = "band_rows_unused", 32  # R >= 32: the rotation serves it (rotation_band_one_sided)
    case = Case(BF16, (1, 1, 40, 90, 32), r)
    q, k, v, inputs, raw, out, _ = _run(case, name)
    noisy = inputs.table.clone()
    noisy[1 : 2 * r] = torch.randn(2 * r - 1, 32, generator=torch.Generator().manual_seed(5)).to(BF16)
    tail = (None, None, None, None, None, 40, 90, r, False, 0, inputs.scale, 0.0, 0)
    with emulator.emulated_cuda_backend():
        rotated, _ = launch.relattn_fwd(q, k, v, noisy, *tail, family="tc", sinusoid=True)
        sliced, _ = launch.relattn_fwd(q, k, v, noisy, *tail, family="tc", sinusoid=False)
    torch.testing.assert_close(rotated, out, atol=0, rtol=0)
    assert (sliced.float() - out.float()).abs().max() > 1e-2


def test_rotation_table_is_the_sinusoid_at_shifted_positions():
    """Row u of the extended table is NEZHA's sinusoid (tests/formula.py's closed form) at position u - ROT_SHIFT."""
    r, d = 64, 64
    ext = launch.rotation_table(r, d)
    assert ext.shape == (2 * r + launch.ROT_MAX_BM + 2 * launch.ROT_SHIFT, d) and ext.dtype == torch.float64
    m = torch.arange(-launch.ROT_SHIFT, ext.shape[0] - launch.ROT_SHIFT, dtype=torch.float64).view(-1, 1)
    w = torch.tensor([10000.0 ** (-2 * t / d) for t in range(d // 2)], dtype=torch.float64)
    torch.testing.assert_close(ext[:, 0::2], torch.sin(m * w), atol=1e-12, rtol=0)
    torch.testing.assert_close(ext[:, 1::2], torch.cos(m * w), atol=1e-12, rtol=0)
    rows = slice(launch.ROT_SHIFT, launch.ROT_SHIFT + 2 * r + 1)
    torch.testing.assert_close(ext[rows], formula.nezha_table(r, d), atol=1e-12, rtol=0)


def test_rotation_tables_are_checked_by_the_binding():
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 1, n, 32, generator=g).to(F16) for n in (9, 11, 11))
    table = torch.randn(9, 32, generator=g).to(F16)
    keys, f32 = launch.rotation_table(4, 32).to(F16), launch.rotation_table(4, 32).float()
    ext = emulator.emulated_extension()
    args = (q, k, v, table, None, None, None, 4, 0, False, 32**-0.5, 0.0, 0, 0, 1)
    with pytest.raises(RuntimeError, match="both or neither"):
        ext.forward(*args, rot_keys=keys)
    with pytest.raises(RuntimeError, match="rot_keys must be a contiguous"):
        ext.forward(*args, rot_keys=keys[:-1], rot_f32=f32[:-1])
    with pytest.raises(RuntimeError, match="rot_f32 must be float32"):
        ext.forward(*args, rot_keys=keys, rot_f32=keys)


def test_varlen_rotation_matches_formula():
    """Padding-free sequences (each its own bottom-right positions) through the PACKED rotation kernel."""
    dtype, g = BF16, torch.Generator().manual_seed(12)
    lens_q, lens_k, h, d, r = (70, 3, 130), (150, 3, 130), 1, 64, 64
    q = torch.randn(sum(lens_q), h, d, generator=g).to(dtype)
    k, v = (torch.randn(sum(lens_k), h, d, generator=g).to(dtype) for _ in range(2))
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    inputs = prepare_varlen_inputs(
        q, k, v, cu_q, cu_k, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), max_relative_position=r
    )
    assert inputs.sinusoid
    tail = (None, None, None, cu_q, cu_k, max(lens_q), max(lens_k), r, False, 0, inputs.scale, 0.0, 0)
    with emulator.emulated_cuda_backend():
        out, _ = launch.relattn_fwd(q, k, v, inputs.table, *tail, family="tc", sinusoid=True)
    for s in range(len(lens_q)):
        qs, ks, vs = (x[c[s] : c[s + 1]].transpose(0, 1).unsqueeze(0) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k)))
        raw = dict(r=r, q_offset=lens_k[s] - lens_q[s])
        expected = formula.attention(qs, ks, vs, inputs.table, dtype=torch.float64, **raw)
        same = formula.attention(qs, ks, vs, inputs.table, dtype=dtype, **raw)
        got = out[cu_q[s] : cu_q[s + 1]].transpose(0, 1).unsqueeze(0)
        assert_all_within({"out": got}, {"out": expected}, {"out": same}, K[dtype], label=f"sequence {s}")
    assert math.isfinite(out.float().abs().max().item())


@pytest.mark.parametrize("name", ["rot_bf16_d64_r64_two_blocks_head_mask"])
def test_backward_after_a_rotation_forward(name):
    """The backward reads the table (in the dtype) while the forward's band came from the rotation (operands rounded
    differently): the row statistics it reuses must still give gradients within the rule against float64."""
    case = CASES[name]
    q, k, v, inputs, raw, out, lse = _run(case, name)
    b, h, lq, lk, d = case.shape
    grad_out = torch.randn(b, h, lq, d, generator=torch.Generator().manual_seed(7)).to(case.dtype)
    tail = (inputs.key_padding, inputs.additive_mask, inputs.head_mask, None, None, lq, lk, case.r, inputs.causal)
    tail += (inputs.q_offset, inputs.scale, inputs.dropout_p, int(inputs.dropout_seed or 0))
    with emulator.emulated_cuda_backend():
        grads = launch.relattn_bwd(grad_out, q, k, v, inputs.table, out, lse, *tail, family="tc", sinusoid=True)
    ref = {}
    for precision in (torch.float64, case.dtype):
        leaves = [t.detach().to(precision).requires_grad_() for t in (q, k, v)]
        o = formula.attention(*leaves, inputs.table, dtype=precision, **raw)
        ref[precision] = dict(
            zip(("dq", "dk", "dv"), torch.autograd.grad(o, leaves, grad_out.to(precision)), strict=True)
        )
    got = dict(zip(("dq", "dk", "dv"), grads, strict=True))
    assert_all_within(got, ref[torch.float64], ref[case.dtype], dict(dq=2.0, dk=2.0, dv=2.0), label=name)


def test_rotation_runs_at_any_key_range():
    """The rotation kernels run the PLAIN kernels' block heights (128 rows at D = 64 too), so the launcher passes the
    rotation tables for every key range; only the op's sinusoid, the tensor-core family, fp16 / bf16 and head dims
    32 and 64 take them (D = 128: the table slices, as csrc/relattn_rotation.cuh rotation_kernel)."""
    q64, q32 = torch.zeros(1, 1, 4, 64, dtype=BF16), torch.zeros(1, 1, 4, 32, dtype=BF16)
    assert launch.rotation_args(torch.zeros(1, 1, 4, 128, dtype=BF16), 64, "tc", True) == (None, None)
    assert "keys" not in inspect.signature(launch.rotation_args).parameters
    assert all(t is not None for t in launch.rotation_args(q64, 64, "tc", True))
    assert all(t is not None for t in launch.rotation_args(q32, 64, "tc", True))
    assert launch.rotation_args(q64, 64, "tc", False) == (None, None)
    assert launch.rotation_args(q64, 64, "simt", True) == (None, None)
    assert launch.rotation_args(q64.float(), 64, "tc", True) == (None, None)
