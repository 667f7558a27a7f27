"""backend="triton" on CPU tensors under the triton interpreter, against the float64 formula.

TRITON_INTERPRET is read when the kernels are decorated, so these tests must run in a process that
set it before importing the kernels, while the AOT compile tests need it unset. A plain pytest run
therefore runs this file a second time in a subprocess with TRITON_INTERPRET=1 (the one test that
is not skipped here); inside that subprocess the parity tests run and the launcher is skipped.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
interpreted_only = pytest.mark.skipif(
    not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess of test_interpreter_suite"
)

pytest.importorskip("triton")

from triton_parity import run_interpreted  # noqa: E402

from nezha_kernels.triton_kernels.configs import AUTOTUNE_ENV, INTERPRETER_TILES_ENV, ROTATION_ENV  # noqa: E402

# The GPU's own tiles (INTERPRETER_TILES_ENV=gpu) in a second subprocess: slower, few cases.
GPU_TILES = os.environ.get(INTERPRETER_TILES_ENV) == "gpu"
gpu_tiles_only = pytest.mark.skipif(not GPU_TILES, reason="runs in the GPU-tiles subprocess of test_interpreter_suite")


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
def test_interpreter_suite():
    # Every "default"-table case takes the rotation path, whatever configs.rotation_band would choose on a GPU. Beside
    # it, the GPU-tiles subprocess: the main tiles a GPU runs (64-row forward, 32x32 dK/dV, head-dim-128 tiles...).
    run_interpreted(
        __file__,
        {ROTATION_ENV: "all"},
        "not gpu_tiles",
        ({INTERPRETER_TILES_ENV: "gpu", AUTOTUNE_ENV: "0"}, "gpu_tiles"),
    )


if INTERPRETED:
    import formula
    import triton
    import triton.language as tl
    from triton_parity import check

    import nezha_kernels as nk
    from nezha_kernels.backends import available_backends
    from nezha_kernels.triton_kernels.dot import dot
    from nezha_kernels.triton_kernels.rotation import rotate_query, rotate_rows_at, rotation_table

    @triton.jit
    def _rotations_kernel(x_ptr, rot_ptr, block_ptr, tile_ptr, M: tl.constexpr, TILE: tl.constexpr, D: tl.constexpr):
        # The forward's q_rot of an M-row block, and dK/dV's of each TILE-row slice of it (angles from the block start).
        rows = tl.arange(0, M)[:, None] * D
        d = tl.arange(0, D)[None, :]
        tl.store(block_ptr + rows + d, rotate_query(tl.load(x_ptr + rows + d), rot_ptr, M, D))
        for m0 in tl.static_range(0, M, TILE):
            t_rows = (m0 + tl.arange(0, TILE))[:, None] * D
            x = tl.load(x_ptr + t_rows + d)
            ones = tl.full(x.shape, 1, tl.int1)
            tl.store(tile_ptr + t_rows + d, rotate_rows_at(x, x_ptr + t_rows + (d ^ 1), ones, rot_ptr, m0))

    @triton.jit
    def _bf16_matmul_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
        r = tl.arange(0, N)
        a = tl.load(a_ptr + r[:, None] * N + r[None, :])
        b = tl.load(b_ptr + r[:, None] * N + r[None, :])
        tl.store(c_ptr + r[:, None] * N + r[None, :], dot(a, b, None, False))


CPU = "cpu"
F32 = torch.float32


@interpreted_only
def test_available_backends_reports_interpreted():
    status = available_backends("cpu")["triton"]
    assert status.available and "interpreted" in status.reason


# table: "nezha" passes the sinusoid as rel_table (the kernels read it: block-band scratch or table slices),
# "default" leaves rel_table None (the op's own sinusoid: the band by rotation, triton_kernels/rotation.py). The
# cases are split between the two so that both band paths run without doubling the suite. b: batch rows (2 heads
# each); the two largest cases run one batch row (CI's time: the other six cover batch strides).
@interpreted_only
@pytest.mark.parametrize(
    "b,lq,lk,d,r,q_offset,table",
    [
        (1, 45, 45, 32, 64, 0, "nezha"),  # every tile in the band
        (1, 47, 45, 48, 64, 0, "default"),  # D = 48: BLOCK_D 64 pads the rotated pairs
        (2, 70, 17, 64, 3, 0, "nezha"),  # far-field tiles on both sides, Lq > Lk
        (2, 17, 70, 16, 5, 53, "default"),  # Lq < Lk with an offset (decoding a chunk)
        (2, 1, 45, 32, 8, 44, "default"),  # one query row
        (2, 45, 1, 16, 2, 0, "nezha"),  # one key
        (2, 30, 41, 16, 70, 5, "nezha"),  # R > 64: per-tile table slices instead of the block-band scratch
        (2, 31, 41, 16, 70, 5, "default"),  # R > 64 by rotation (no scratch in either mode)
    ],
)
def test_forward_backward_shapes(b, lq, lk, d, r, q_offset, table):
    check(CPU, F32, b, 2, lq, lk, d, r, q_offset=q_offset, table=table)


@interpreted_only
def test_custom_table_and_scale():
    check(CPU, F32, 1, 3, 40, 33, 32, 4, table="random", scale=0.37)


@interpreted_only
@pytest.mark.parametrize("q_offset,table", [(0, "nezha"), (25, "default")])
def test_causal(q_offset, table):
    check(CPU, F32, 2, 2, 38, 38 + q_offset, 16, 6, causal=True, q_offset=q_offset, table=table)


@interpreted_only
def test_key_padding_with_fully_masked_row():
    b, lk = 3, 37
    kp = torch.rand(b, lk, generator=torch.Generator().manual_seed(3)) > 0.3
    kp[1] = False  # batch row 1: every key padded -> uniform weights, finite output
    out = check(CPU, F32, b, 2, 29, lk, 32, 4, key_padding=kp, table="default")
    assert torch.isfinite(out).all()


@interpreted_only
def test_causal_with_padding_gives_fully_masked_rows():
    kp = torch.ones(2, 40, dtype=torch.bool)
    kp[0, :12] = False  # with causal, query rows 0..11 of batch 0 see no key at all
    check(CPU, F32, 2, 2, 40, 40, 16, 5, key_padding=kp, causal=True)


@interpreted_only
def test_additive_masks():
    g = torch.Generator().manual_seed(4)
    hf = torch.zeros(2, 1, 1, 31)
    hf[0, ..., 20:] = torch.finfo(torch.float32).min
    hf[1, ..., 5] = float("-inf")
    check(CPU, F32, 2, 2, 23, 31, 32, 7, additive=hf)
    dense = torch.randn(1, 3, 23, 31, generator=g)  # broadcast over batch only
    check(CPU, F32, 2, 3, 23, 31, 16, 7, additive=dense, table="default")


@interpreted_only
def test_dropout_and_head_mask():
    hm = torch.tensor([1.0, 0.0, 0.5])
    check(CPU, F32, 1, 3, 33, 40, 32, 4, dropout_p=0.3, head_mask=hm, q_offset=7, table="default")


@interpreted_only
def test_dropout_is_reproducible_and_matches_torch_backend():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 30, 16, generator=g) for _ in range(3))
    outs = []
    for backend in ("triton", "triton", "torch"):
        torch.manual_seed(11)
        outs.append(nk.relative_attention(q, k, v, max_relative_position=4, dropout_p=0.5, backend=backend))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    torch.testing.assert_close(outs[0], outs[2], atol=3e-5, rtol=3e-5)


@interpreted_only
def test_strided_views_of_fused_projection():
    check(CPU, F32, 2, 3, 26, 26, 16, 4, strided=True)


@interpreted_only
@pytest.mark.parametrize(
    "dtype,lk,r,causal,q_offset",
    [
        (torch.float16, 40, 5, True, 7),
        (torch.bfloat16, 40, 5, True, 7),
        # R >= 16 (configs.rotation_loop): the band's full tiles run softmax.rotation_band_loop; far tiles on both
        # sides, an offset off the tiles (causal: test_bfloat16_sinusoid_dkdv_band_by_rotation).
        (torch.float16, 97, 16, False, 37),
        # dQ's rotation band loop (configs.rotation_loop) at R = 64, causal at an offset; R = 16 above, R = 5 (2R
        # below its tile: the general loop) and R = 40 with a head mask (test_bfloat16_sinusoid_dkdv_band_by_rotation).
        (torch.bfloat16, 97, 64, True, 29),
    ],
)
def test_low_precision(dtype, lk, r, causal, q_offset):
    check(CPU, dtype, 1, 2, 33, lk, 32, r, causal=causal, q_offset=q_offset, table="default")


@interpreted_only
def test_negative_scale():
    # A negative scale compiles the forward with NEGATIVE_SCALE (its sign folded into q: the far loops' row max
    # commutes with the scale): fp16 split far loops on both sides and, R = 16, the rotation band loop. |scale| 3
    # spreads a row's scores past exp2's range, so a row max taken with the wrong sign overflows (NaN), not passes.
    check(CPU, torch.float16, 1, 1, 33, 97, 32, 16, q_offset=37, scale=-3.0, table="default")


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_masks_on_the_far_loops(dtype):
    # fp32 runs one general key loop, fp16 / bf16 the split far loops (configs.skeleton_choice): their masked path
    # with key padding (a fully padded batch row) and causal at an offset, R = 3 (far tiles on both sides).
    kp = torch.rand(2, 45, generator=torch.Generator().manual_seed(11)) > 0.25
    kp[1] = False
    table = "default" if dtype == torch.bfloat16 else "nezha"
    check(CPU, dtype, 2, 2, 37, 45, 32, 3, key_padding=kp, causal=True, q_offset=9, table=table)


@interpreted_only
def test_bfloat16_padding_dropout_head_mask_far_field():
    # Far-field tiles on both sides (R = 3), a fully padded batch row, dropout and head_mask in bf16.
    kp = torch.rand(2, 45, generator=torch.Generator().manual_seed(9)) > 0.25
    kp[1] = False
    check(
        CPU,
        torch.bfloat16,
        2,
        1,  # one head (CI time): the mask scales it, the batch's second row is fully padded
        70,
        45,
        64,
        3,
        key_padding=kp,
        dropout_p=0.2,
        head_mask=torch.tensor([0.5]),
        q_offset=4,
        table="default",
    )


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, F32])
def test_dkdv_rotates_the_rows_as_the_forward_does(dtype):
    # dK/dV's rotation (pair-swapped reload, angles from the forward block's start) gives the forward's q_rot bit for
    # bit: the same products and sums, rounded to q's dtype alike.
    m, tile, d = 32, 16, 64
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(3)).to(dtype)
    block, tiles = torch.empty_like(x), torch.empty_like(x)
    _rotations_kernel[(1,)](x, rotation_table(5, d, "cpu"), block, tiles, M=m, TILE=tile, D=d)
    bits = torch.int32 if dtype == F32 else torch.int16
    assert torch.equal(block.view(bits), tiles.view(bits))
    assert not torch.equal(block, x)


@interpreted_only
def test_bfloat16_sinusoid_dkdv_band_by_rotation(monkeypatch):
    # NEZHA's own table (rel_table=None) in bf16: dK/dV's band tiles rebuild P by the rotation from the forward's query
    # blocks (backward_dkdv.py), the forward's scores, so P matches the forward's row statistics. R = 40 over 96
    # positions: band tiles and far tiles on both sides of each key block, causal with a head mask (the far loops).
    # The band's full tiles run dkdv_rotation_band_loop (ROTATION_LOOP: 2R >= the key block), its q_rot / dO_rot from
    # the delta kernel; the R = 16 case of test_low_precision runs it without causal or head mask.
    from nezha_kernels.triton_kernels.call import KernelCall

    chosen = KernelCall.rotation_loop
    loops = []
    monkeypatch.setattr(
        KernelCall, "rotation_loop", lambda self, kind: loops.append((kind, chosen(self, kind))) or loops[-1][1]
    )
    hm = torch.tensor([[0.5, 1.5]])
    check(CPU, torch.bfloat16, 1, 2, 96, 96, 64, 40, causal=True, head_mask=hm, table="default")
    assert ("bwd_dkdv", True) in loops


@pytest.fixture
def dkdv_far_loops_forced(monkeypatch):
    """dK/dV runs its far loops (FAR_LOOPS 2) whatever the features (configs.skeleton_choice keeps them to the common
    case on a GPU, where they spill with masks or dropout): their exact per-pair path, checked here."""
    from nezha_kernels.triton_kernels import configs

    chosen = configs.far_loops
    monkeypatch.setattr(
        configs, "far_loops", lambda kind, *args: configs.FAR_FULL if kind == "bwd_dkdv" else chosen(kind, *args)
    )


@interpreted_only
def test_dkdv_far_loops_every_feature(dkdv_far_loops_forced):
    # R = 3, 16 x 16 tiles: each key block sees query tiles far above (causal: all masked), in the band and far
    # below, plus a ragged last tile; a fully padded batch row; dropout and head_mask; then an additive mask.
    bf16 = torch.bfloat16
    kp = torch.rand(2, 41, generator=torch.Generator().manual_seed(21)) > 0.25
    kp[1] = False
    hm = torch.tensor([[0.5], [1.0]])
    check(CPU, bf16, 2, 1, 50, 41, 16, 3, key_padding=kp, causal=True, q_offset=4, dropout_p=0.2, head_mask=hm, seed=1)
    add = torch.randn(1, 1, 50, 41, generator=torch.Generator().manual_seed(22))
    add[..., 30:, :7] = float("-inf")
    check(CPU, bf16, 1, 1, 50, 41, 16, 3, additive=add, q_offset=9)


@interpreted_only
def test_dq_branchless_band(monkeypatch):
    # dQ's band and tail without the branch on the tile's position (what sm_90 runs under triton 3.6,
    # configs.dq_branchless_band): far tiles on both sides, a partial tail beyond the band, and R > 64 (table slices).
    from nezha_kernels.triton_kernels import configs

    monkeypatch.setattr(configs, "dq_branchless_band", lambda arch_major: True)
    assert configs.far_loops("bwd_dq", 16, 2, {}, 9) == configs.FAR_FULL  # bf16: the split loops (fp32: one loop)
    check(CPU, torch.bfloat16, 1, 1, 40, 45, 16, 3, q_offset=4)
    # fp16: the per-tile path's bf16 dQ is 2.1x PyTorch's bf16 error here, branched or not (limit 2x).
    check(CPU, torch.float16, 1, 1, 17, 100, 16, 70)


@interpreted_only
def test_bfloat16_dot_is_exact_under_the_interpreter():
    # triton-lang/triton#11584: the interpreter multiplies bf16 bit patterns; kernels go through dot.dot,
    # which widens bf16 operands to fp32 there. Products of bf16 values are exact in fp32.
    g = torch.Generator().manual_seed(10)
    a, b = (torch.randn(16, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    c = torch.empty(16, 16)
    _bf16_matmul_kernel[(1,)](a, b, c, N=16)
    torch.testing.assert_close(c.double(), a.double() @ b.double(), atol=1e-5, rtol=1e-6)


@interpreted_only
@gpu_tiles_only
@pytest.mark.parametrize("dtype,d", [(torch.float16, 64), (torch.bfloat16, 128)])
def test_gpu_tiles(dtype, d):
    # NEZHA's R = 64 (block-band mode) over several 64-row tiles with ragged tails, far-field key tiles,
    # a fully padded batch row, dropout and head_mask; then causal with a small R. fp32 is left out (CI's time: it was
    # the slowest case, ~80 s): its GPU tiles are FMA tiles of 32 x 16, the interpreter's own 16 x 16 but for the row
    # count, which the fp32 cases above run at every feature.
    from nezha_kernels.triton_kernels import configs, launch

    assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in launch._fwd.configs][:1] == [configs.FWD_TILES[0][:2]]
    kp = torch.rand(2, 141, generator=torch.Generator().manual_seed(13)) > 0.2
    kp[1] = False
    hm = torch.tensor([1.0, 0.5])
    check(CPU, dtype, 2, 2, 150, 141, d, 64, key_padding=kp, q_offset=5, dropout_p=0.1, head_mask=hm, table="default")
    check(CPU, dtype, 1, 2, 97, 97, d, 6, causal=True)
    if d == 128:  # sm_90's wgmma far-loop tiles at D = 128 (dQ 128 x 32, dK/dV 64 x 64 w8): far tiles on both sides
        check(CPU, dtype, 1, 1, 200, 200, d, 6, head_mask=hm[1:])


@interpreted_only
def test_learnable_table_is_refused_by_name_and_auto_sends_it_elsewhere():
    # One fallback policy: backend="triton" runs the call or says why; no backend calls another.
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 2, 12, 16, generator=g) for _ in range(3))
    table = torch.randn(9, 16, generator=g, requires_grad=True)
    with pytest.raises(ValueError, match="backend 'triton' cannot run this call: rel_table requires grad"):
        nk.relative_attention(q, k, v, rel_table=table, max_relative_position=4, backend="triton")
    out = nk.relative_attention(q, k, v, rel_table=table, max_relative_position=4)  # auto: torch on CPU
    out.sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


@interpreted_only
def test_float64_is_rejected_with_a_reason():
    q = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        nk.relative_attention(q, q, q, max_relative_position=2, backend="triton")


@interpreted_only
def test_launchers_take_the_op_arguments_in_order():
    # The launcher pair the one op calls (ops.py): (..., cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
    # R, causal, q_offset, scale, dropout_p, seed), seed a Python int; lse = [row max, log row sum].
    from nezha_kernels.dropout import keep_mask
    from nezha_kernels.triton_kernels import launch

    g = torch.Generator().manual_seed(12)
    b, h, lq, lk, d, r, q_offset, scale, p, seed = 2, 2, 20, 27, 16, 4, 7, 0.3, 0.25, 987654321987
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))
    table = torch.randn(2 * r + 1, d, generator=g)
    hm = torch.tensor([[1.0, 0.5], [0.0, 2.0]])
    out, lse = launch.relattn_fwd(q, k, v, table, None, None, hm, None, None, lq, lk, r, True, q_offset, scale, p, seed)
    keep = keep_mask(seed, p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    expected = formula.attention(
        *ref, table, r=r, causal=True, q_offset=q_offset, scale=scale, keep=keep, dropout_p=p, head_mask=hm
    )
    torch.testing.assert_close(out.double(), expected, atol=3e-5, rtol=3e-5)
    i, j = torch.arange(lq).view(-1, 1) + q_offset, torch.arange(lk).view(1, -1)
    a = table.double()[(j - i).clamp(-r, r) + r]
    scores = (ref[0] @ ref[1].transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", ref[0], a)) * scale
    scores = scores.masked_fill(j > i, formula.FMIN).detach()
    assert lse.shape == (2, b, h, lq) and lse.dtype == torch.float32
    torch.testing.assert_close(lse[0].double(), scores.amax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((lse[0] + lse[1]).double(), torch.logsumexp(scores, -1), atol=1e-5, rtol=1e-5)
    grad_out = torch.randn(b, h, lq, d, generator=g)
    grads = launch.relattn_bwd(
        grad_out, q, k, v, table, out, lse, None, None, hm, None, None, lq, lk, r, True, q_offset, scale, p, seed
    )
    for name, got, want in zip("qkv", grads, torch.autograd.grad(expected, ref, grad_out.double()), strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")  # noqa: B023 (called at once)
