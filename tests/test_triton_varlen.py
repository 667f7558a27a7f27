"""backend="triton"'s padding-free (varlen) kernels on CPU tensors under the triton interpreter, against the
float64 formula (tests/formula.py) applied to each sequence alone with its bottom-right offset Lk_b - Lq_b.

q [Tq, H, D], k / v [Tk, H, D] with cu_seqlens int32 [B+1], through the launchers the one op calls
(nezha_kernels/triton_kernels/launch.py): forward output and row statistics ([2, H, Tq]), dq / dk / dv, in fp32
and bf16, with odd lengths, lengths 0 and 1, Lq_b != Lk_b both ways, R in {1, 7, 64} (block-band mode) and 70
(per-tile table slices), D in {32, 64, 128}, causal, head_mask [B, H] and dropout fed the dense op's keep mask on
the padded batch. Every tensor the launchers allocate (outputs, statistics, band scratch) is NaN-poisoned, so a
row the kernels miss, or a scratch slot read before it is written, fails the comparison. Then: the varlen
kernels equal the dense kernels on the padded batch for one seed, and the public relative_attention_varlen(...,
backend="triton") runs through dispatch and the op (forward and gradients).

As tests/test_triton_interpreter.py: a plain run runs this file again in a TRITON_INTERPRET=1 subprocess with the
interpreter's 16 x 16 tile, and a third time with the GPU's main tiles (a few cases; ~35 s in all on 2 cores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
interpreted_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of test_varlen_interpreter_suite"
)

pytest.importorskip("triton")

import formula  # noqa: E402
import varlen_reference as vref  # noqa: E402
from tolerance import assert_all_within  # noqa: E402
from triton_parity import run_interpreted  # noqa: E402

F32, BF16 = torch.float32, torch.bfloat16
# k per dtype and output (tests/tolerance.py): the kernels' error against the float64 formula (per sequence) is at
# most k times the error of the same formula computed by PyTorch in the kernels' dtype, from the same rounded inputs.
# fp16 / bf16 dk / dv: 3, as the dense Triton suite (tests/triton_parity.py): the kernels round P and dS to bf16 for the
# tensor-core products, where PyTorch keeps its softmax in higher precision (largest ratio measured: dv 2.09, causal +
# dropout + head_mask at D = 64, R = 64; fp32 at most 0.07).
K = {
    F32: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    torch.float16: dict(out=2.0, dq=2.0, dk=3.0, dv=3.0),
    BF16: dict(out=2.0, dq=2.0, dk=3.0, dv=3.0),
}
# With the op's own sinusoid the three kernels compute the same band scores by rotation (dK/dV from the forward's
# query blocks, backward_dkdv.py): the sinusoid cases keep the usual k. (While dK/dV read the bf16 table, its p
# differed from the forward's by the table's rounding and dk reached 3.28 x PyTorch's error; 2.05 now.)

STATS_TOL = {
    F32: dict(atol=1e-4, rtol=1e-5),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
    BF16: dict(atol=1e-2, rtol=1e-2),
}


from nezha_kernels.triton_kernels.configs import AUTOTUNE_ENV, INTERPRETER_TILES_ENV, ROTATION_ENV  # noqa: E402

# The GPU's own tiles (INTERPRETER_TILES_ENV=gpu, one config each) in a second subprocess.
GPU_TILES = os.environ.get(INTERPRETER_TILES_ENV) == "gpu"
gpu_tiles_only = pytest.mark.skipif(
    not GPU_TILES, reason="runs in the GPU-tiles subprocess of test_varlen_interpreter_suite"
)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_varlen_interpreter_suite():
    # Sinusoid cases take the rotation path (configs.rotation_band keeps varlen on the table path on a GPU).
    # Beside it, the GPU-tiles subprocess (the main tiles a GPU runs, one config each).
    run_interpreted(
        __file__,
        {ROTATION_ENV: "all"},
        "not interpreter_suite and not gpu_tiles",
        ({INTERPRETER_TILES_ENV: "gpu", AUTOTUNE_ENV: "0"}, "gpu_tiles"),
    )


@dataclasses.dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    lens_q: tuple[int, ...]
    lens_k: tuple[int, ...]
    heads: int
    d: int
    r: int
    causal: bool = False
    dropout_p: float = 0.0
    head_mask: bool = False
    fused: bool = False  # q, k, v as views of one packed [T, 3, H, D] projection (row stride 3 H D)
    # The table is the op's own sinusoid (launchers' sinusoid=True: the rotation path where configs runs it); the
    # float64 reference then uses the exact sinusoid (tests/triton_parity.check, table="default").
    sinusoid: bool = False


# Interpreter tiles are 16 x 16 (configs.INTERPRETER_TILE): 37 rows are three query blocks, the last ragged.
CASES = {
    "fp32_d32_r7_odd_zero_one": Case(F32, (37, 0, 1, 5), (37, 0, 1, 5), 2, 32, 7),
    "fp32_d64_r1_lq_lt_lk_causal": Case(F32, (20, 1, 33), (29, 3, 40), 1, 64, 1, causal=True),
    # Lq_b > Lk_b with causal: the rows at positions < 0 see no key (uniform weights, as the dense op).
    "fp32_d32_r7_lq_gt_lk_causal_sinusoid": Case(F32, (40, 4), (29, 4), 1, 32, 7, causal=True, sinusoid=True),
    "fp32_d128_r64_dropout_head_mask": Case(F32, (9, 17), (14, 17), 2, 128, 64, dropout_p=0.3, head_mask=True),
    # Queries without keys (Lk_b = 0 < Lq_b): zero output, zero dq; keys without queries: zero dk, dv.
    "fp32_d32_r1_no_keys_no_queries": Case(F32, (3, 6, 0), (0, 7, 5), 1, 32, 1),
    # No query row at all (Tq = 0: zero dk, dv), and no key row at all (Tk = 0: zero output).
    "fp32_d32_r7_no_query_rows": Case(F32, (0, 0), (2, 3), 1, 32, 7),
    "fp32_d32_r7_no_key_rows": Case(F32, (3, 2), (0, 0), 2, 32, 7, causal=True),
    "fp32_d32_r70_per_tile_causal_sinusoid": Case(F32, (30, 5), (41, 9), 1, 32, 70, causal=True, sinusoid=True),
    "bf16_d32_r7_causal_fused": Case(BF16, (13, 0, 34), (13, 0, 34), 2, 32, 7, causal=True, fused=True),
    "bf16_d64_r64_causal_dropout_head_mask_sinusoid": Case(
        BF16, (23, 1, 0, 31), (23, 1, 0, 40), 2, 64, 64, causal=True, dropout_p=0.2, head_mask=True, sinusoid=True
    ),
}


def _case_tensors(case: Case, seed: int):
    g = torch.Generator().manual_seed(seed)
    tq, tk, h, d = sum(case.lens_q), sum(case.lens_k), case.heads, case.d
    if case.fused:
        fused = torch.randn(tq, 3, h, d, generator=g).to(case.dtype)
        q, k, v = fused[:, 0], fused[:, 1], fused[:, 2]
    else:
        q, k, v = (torch.randn(n, h, d, generator=g).to(case.dtype) for n in (tq, tk, tk))
    table = formula.nezha_table(case.r, d).to(case.dtype)
    head_mask = torch.rand(len(case.lens_q), h, generator=g) + 0.25 if case.head_mask else None
    grad_out = torch.randn(q.shape, generator=g).to(case.dtype)
    return q, k, v, vref.cu_seqlens(case.lens_q), vref.cu_seqlens(case.lens_k), table, head_mask, grad_out


@contextlib.contextmanager
def _nan_poisoned_allocations():
    """torch.empty / empty_like fill floating tensors with NaN while the launchers run."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t

    torch.empty = lambda *a, **kw: poison(empty(*a, **kw))
    torch.empty_like = lambda *a, **kw: poison(empty_like(*a, **kw))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def _assert_within_rule(case, out, grads, ref, same_precision, label):
    """out and dq / dk / dv against the float64 per-sequence reference, by tests/tolerance.py's rule with K."""
    for name, got in zip(("out", "dq", "dk", "dv"), (out, *grads), strict=True):
        assert torch.isfinite(got).all(), f"{label}: {name} has unwritten or non-finite rows"
    (ref_out, ref_grads, _), (sp_out, sp_grads, _) = ref, same_precision
    assert_all_within(
        dict(out=out, dq=grads[0], dk=grads[1], dv=grads[2]),
        dict(out=ref_out, dq=ref_grads[0], dk=ref_grads[1], dv=ref_grads[2]),
        dict(out=sp_out, dq=sp_grads[0], dk=sp_grads[1], dv=sp_grads[2]),
        K[case.dtype],
        label,
    )


def _check_case(case: Case, seed: int):
    """The launchers on one case (NaN-poisoned allocations) against the formula per sequence."""
    from nezha_kernels.triton_kernels import launch

    q, k, v, cu_q, cu_k, table, head_mask, grad_out = _case_tensors(case, seed)
    scale = case.d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)
    with _nan_poisoned_allocations():
        out, lse = launch.relattn_fwd(q, k, v, table, *tail, sinusoid=case.sinusoid)
        grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail, sinusoid=case.sinusoid)
    ref_table = formula.nezha_table(case.r, case.d) if case.sinusoid else table
    ref = vref.expected(case, q, k, v, cu_q, cu_k, ref_table, head_mask, grad_out, scale)
    same_precision = vref.expected(case, q, k, v, cu_q, cu_k, table, head_mask, grad_out, scale, dtype=case.dtype)
    stats = ref[2]

    assert out.shape == q.shape and out.dtype == case.dtype
    _assert_within_rule(case, out, grads, ref, same_precision, f"seed {seed}")
    assert lse.shape == (2, case.heads, q.shape[0]) and lse.dtype == F32
    for b, want in stats.items():
        got = lse[:, :, int(cu_q[b]) : int(cu_q[b + 1])].double()
        torch.testing.assert_close(
            got,
            want,
            **STATS_TOL[case.dtype],
            msg=lambda m: f"sequence {b} row max / log sum: {m}",  # noqa: B023 (called at once)
        )
    for got, like in zip(grads, (q, k, v), strict=True):
        assert got.shape == like.shape and got.dtype == case.dtype and got.is_contiguous()


@interpreted_only
@pytest.mark.parametrize("name", list(CASES))
def test_varlen_kernels_match_formula_per_sequence(name):
    _check_case(CASES[name], sum(map(ord, name)))


@interpreted_only
def test_varlen_dkdv_far_loops(monkeypatch):
    # dK/dV's far loops forced on (configs.skeleton_choice runs them only without per-pair features and dense) with
    # causal, dropout and head_mask, R = 3: query tiles far above and far below each key block, Lq_b > Lk_b too.
    from nezha_kernels.triton_kernels import configs

    chosen = configs.far_loops
    monkeypatch.setattr(
        configs, "far_loops", lambda kind, *args: configs.FAR_FULL if kind == "bwd_dkdv" else chosen(kind, *args)
    )
    case = Case(BF16, (50, 3, 40), (45, 9, 28), 1, 32, 3, causal=True, dropout_p=0.2, head_mask=True)
    _check_case(case, 31)


# The GPU's main tiles (64-row forward and dQ, 32x32 dK/dV; 16x32 / 32x32 backward for D = 128): several 64-row
# blocks in one sequence with a ragged tail, sequences shorter than one block, empty ones, R = 64 block-band mode.
GPU_TILE_CASES = {
    "bf16_d64_r64_causal_dropout_head_mask_sinusoid": Case(
        BF16, (70, 0, 1, 33), (70, 0, 4, 40), 1, 64, 64, causal=True, dropout_p=0.2, head_mask=True, sinusoid=True
    ),
    "fp16_d128_r64_lq_gt_lk_causal": Case(torch.float16, (81, 5), (47, 0), 1, 128, 64, causal=True),
    "fp32_d32_r7_dropout": Case(F32, (37, 0, 1, 65), (37, 2, 1, 65), 2, 32, 7, dropout_p=0.3),
}


@interpreted_only
@gpu_tiles_only
@pytest.mark.parametrize("name", list(GPU_TILE_CASES))
def test_varlen_gpu_tiles(name):
    from nezha_kernels.triton_kernels import configs, launch

    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in launch._fwd.configs][:1] == [configs.FWD_TILES[0][:2]]
    _check_case(GPU_TILE_CASES[name], sum(map(ord, name)))


@interpreted_only
def test_varlen_equals_the_dense_kernels_on_the_padded_batch():
    """Same seed, same kept entries: the padding-free call equals the dense kernels on the padded batch (equal
    lengths, so bottom-right alignment is q_offset 0), output and gradients, dropout and head_mask included."""
    from nezha_kernels.triton_kernels import launch

    case = Case(F32, (19, 6, 1), (19, 6, 1), 2, 32, 7, causal=True, dropout_p=0.4, head_mask=True)
    q, k, v, cu_q, cu_k, table, head_mask, grad_out = _case_tensors(case, 3)
    scale = case.d**-0.5
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, scale)
    out, lse = launch.relattn_fwd(q, k, v, table, *tail)
    grads = launch.relattn_bwd(grad_out, q, k, v, table, out, lse, *tail)

    b, lmax = len(case.lens_q), max(case.lens_q)
    dense = [torch.zeros(b, case.heads, lmax, case.d) for _ in range(4)]  # q, k, v, grad_out
    padding = torch.zeros(b, lmax, dtype=torch.bool)
    spans = [(int(cu_q[i]), n) for i, n in enumerate(case.lens_q)]
    for i, (s, n) in enumerate(spans):
        for full, packed in zip(dense, (q, k, v, grad_out), strict=True):
            full[i, :, :n] = packed[s : s + n].transpose(0, 1)
        padding[i, :n] = True
    dense_tail = (padding, None, head_mask, None, None, lmax, lmax, case.r, True, 0, scale, case.dropout_p, vref.SEED)
    out_dense, lse_dense = launch.relattn_fwd(*dense[:3], table, *dense_tail)
    grads_dense = launch.relattn_bwd(dense[3], *dense[:3], table, out_dense, lse_dense, *dense_tail)
    for i, (s, n) in enumerate(spans):
        torch.testing.assert_close(out[s : s + n], out_dense[i, :, :n].transpose(0, 1), atol=1e-5, rtol=1e-5)
        for got, want in zip(grads, grads_dense, strict=True):
            torch.testing.assert_close(got[s : s + n], want[i, :, :n].transpose(0, 1), atol=1e-5, rtol=1e-5)


@interpreted_only
def test_public_varlen_op_through_dispatch():
    """relative_attention_varlen(..., backend="triton") through dispatch and the op: forward and gradients against
    the formula per sequence; with dropout, the same generator seed gives the torch backend's output."""
    import nezha_kernels as nk

    case = Case(F32, (11, 0, 1, 18), (11, 0, 4, 18), 2, 32, 7, causal=True)
    q, k, v, cu_q, cu_k, _, _, grad_out = _case_tensors(case, 5)
    head_mask = torch.tensor([0.5, 1.5])
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = nk.relative_attention_varlen(
        *leaves, cu_q, cu_k, max_relative_position=case.r, causal=True, head_mask=head_mask, backend="triton"
    )
    grads = torch.autograd.grad(out, leaves, grad_out)
    table = nk.sinusoidal_table(case.r, case.d)
    args = (case, q, k, v, cu_q, cu_k, table, head_mask.expand(4, 2), grad_out, case.d**-0.5)
    _assert_within_rule(case, out.detach(), grads, vref.expected(*args), vref.expected(*args, dtype=F32), "public")

    def dropped(backend):
        return nk.relative_attention_varlen(
            q,
            k,
            v,
            cu_q,
            cu_k,
            max_relative_position=case.r,
            dropout_p=0.3,
            generator=torch.Generator().manual_seed(21),
            backend=backend,
        )

    torch.testing.assert_close(dropped("triton"), dropped("torch"), atol=3e-5, rtol=3e-5)


@interpreted_only
def test_varlen_op_passes_opcheck():
    """The one op (nezha_kernels::relattn_fwd, impl triton) on a padding-free call: schema, fake tensors and the
    autograd registration."""
    from nezha_kernels.dropout import seed_tensor

    case = Case(F32, (5, 0, 9), (7, 0, 9), 1, 32, 7, causal=True, dropout_p=0.1, head_mask=True)
    q, k, v, cu_q, cu_k, table, head_mask, _ = _case_tensors(case, 8)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    tail = vref.launcher_tail(case, head_mask, cu_q, cu_k, case.d**-0.5)
    args = (q, k, v, table, *tail[:-1], seed_tensor(tail[-1]), "triton")
    torch.library.opcheck(
        torch.ops.nezha_kernels.relattn_fwd.default,
        args,
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


def test_cases_cover_the_brief():
    cases = CASES.values()
    assert {c.r for c in cases} >= {1, 7, 64} and {c.d for c in cases} >= {32, 64, 128}
    assert {c.dtype for c in cases} == {F32, BF16}
    lens = {n for c in cases for n in (*c.lens_q, *c.lens_k)}
    assert {0, 1} <= lens and any(n % 2 for n in lens)
    assert any(q > k for c in cases for q, k in zip(c.lens_q, c.lens_k, strict=True) if c.causal)
    assert any(q < k for c in cases for q, k in zip(c.lens_q, c.lens_k, strict=True))
    assert any(n > 32 for c in cases for n in c.lens_q)  # several query blocks in one sequence
    assert any(c.causal for c in cases) and any(c.dropout_p for c in cases) and any(c.head_mask for c in cases)
    assert {c.sinusoid for c in cases} == {False, True}  # both band paths: table read, and rotation (rotation.py)
