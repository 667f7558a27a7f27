"""Tile selection and launch grids of the Triton backend (no GPU needed)."""

import math

import pytest
import torch

configs = pytest.importorskip("nezha_kernels.triton_kernels.configs")


def _tiles(cfgs):
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in cfgs]


def test_fp32_and_wide_heads_prune_to_small_tiles():
    cfgs = [configs.make_config(*t) for t in configs.FWD_TILES]
    assert _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1)})) == [(32, 16, 8, 1)]
    # fp16 / bf16: the one tile of configs.skeleton_choice (no autotuning among unchecked tiles), dK/dV too.
    half = {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=torch.float16)}
    assert _tiles(configs.prune(cfgs, half)) == [configs.FWD_TILES[0]]
    dkdv = [configs.make_config(*t) for t in configs.DKDV_TILES]
    assert _tiles(configs.prune(dkdv, half, kind="bwd_dkdv")) == [configs.DKDV_FAR_SM90]
    assert _tiles(configs.prune(dkdv, {**half, "HAS_DROPOUT": True}, kind="bwd_dkdv")) == [configs.DKDV_GENERAL]


def test_features_and_arch_choose_tile_and_far_loops(monkeypatch):
    # Off the GPU prune applies the sm_90 rules. Each entry was compiled spill-free (benchmarks/NOTES.md).
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 6, 0))
    assert configs.skeleton_choice("bwd_dq", 64, 2, {"HAS_DROPOUT": True}, 9) == (None, configs.FAR_NONE)
    assert configs.skeleton_choice("bwd_dkdv", 128, 2, {}, 9) == (None, configs.FAR_NONE)  # s1 there: 208 B
    assert configs.skeleton_choice("bwd_dq", 128, 2, {}, 9) == (configs.DQ_WIDE_SM90, configs.FAR_FULL)  # s1: 0 B
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 9, 0))
    full, narrow, none = configs.FAR_FULL, configs.FAR_NARROW, configs.FAR_NONE
    choice = configs.skeleton_choice
    assert choice("fwd", 64, 2, {}, 9) == (None, full) and choice("bwd_dq", 64, 2, {}, 9) == (None, full)
    assert choice("fwd", 64, 2, {"HAS_DROPOUT": True, "HAS_KPAD": True}, 9) == (None, narrow)
    assert choice("fwd", 64, 2, {"HAS_DROPOUT": True, "HAS_AMASK": True}, 9) == (None, none)
    assert choice("bwd_dq", 64, 2, {"HAS_DROPOUT": True}, 9) == (None, narrow)
    assert choice("bwd_dq", 64, 2, {"HAS_AMASK": True}, 9) == (None, none)
    assert choice("bwd_dq", 64, 2, {}, 8) == ((128, 32, 8, 2), full)
    assert choice("fwd", 64, 2, {"HAS_KPAD": True}, 8) == (None, none)
    assert choice("fwd", 128, 2, {"VARLEN": True}, 8) == ((128, 64, 8, 1), none)
    assert choice("fwd", 128, 2, {"HAS_AMASK": True}, 9) == ((128, 64, 8, 1), none)
    assert choice("fwd", 128, 2, {"HAS_AMASK": True}, 8) == ((64, 16, 8, 2), none)
    assert choice("fwd", 64, 4, {}, 9) == (None, none) and choice("bwd_dq", 128, 2, {"HAS_DROPOUT": True}, 9)[1] == none
    # dK/dV: far loops in the common case at D <= 64 (sm_90 64 x 64, sm_80 32 x 32), the general loop else.
    assert choice("bwd_dkdv", 64, 2, {}, 9) == (configs.DKDV_FAR_SM90, full)
    assert choice("bwd_dkdv", 64, 2, {}, 8) == (configs.DKDV_FAR_SM80, full)
    assert choice("bwd_dkdv", 64, 2, {"VARLEN": True}, 9) == (configs.DKDV_GENERAL, none)
    assert choice("bwd_dkdv", 128, 2, {}, 8) == (None, none) and choice("bwd_dkdv", 64, 4, {}, 9) == (None, none)
    # D = 128 on sm_90: far loops on the wgmma tiles (dQ 128 x 32, dK/dV 64 x 64 w8) without per-pair features or
    # varlen; dK/dV not with head mask and causal together, nor unpipelined (triton < 3.9): those spilled.
    assert choice("bwd_dkdv", 128, 2, {"CAUSAL": True}, 9) == (configs.DKDV_WIDE_SM90, full)
    assert choice("bwd_dq", 128, 2, {"CAUSAL": True, "HAS_HMASK": True}, 9) == (configs.DQ_WIDE_SM90, full)
    assert choice("bwd_dkdv", 128, 2, {"CAUSAL": True, "HAS_HMASK": True}, 9) == (None, none)
    assert choice("bwd_dkdv", 128, 2, {"VARLEN": True}, 9) == (None, none)
    assert choice("bwd_dq", 128, 2, {"VARLEN": True}, 9) == (None, full) and choice("bwd_dq", 128, 2, {}, 8)[0] is None
    assert choice("bwd_dq", 256, 2, {}, 9)[0] is None and choice("bwd_dkdv", 256, 2, {}, 9) == (None, none)
    for kind in configs.SKELETON_KERNELS:
        for elem_bytes in (2, 4):
            for arch in (8, 9):
                for d in (64, 128):
                    for features in ({}, {"HAS_DROPOUT": True}, {"HAS_AMASK": True}, {"VARLEN": True}):
                        tile = configs.candidates(kind, configs.gpu_tiles(kind), d, elem_bytes, features, arch)
                        assert len(tile) == 1 and tile[0] in configs.gpu_tiles(kind)
    # The autotuner prunes only on a cache miss: every feature the choice reads must be in its key.
    assert set(configs.CHOICE_FEATURES) <= set(configs.AUTOTUNE_KEY)
    cfgs = [configs.make_config(*t) for t in configs.gpu_tiles("bwd_dq")]
    half = {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=torch.float16)}
    assert _tiles(configs.prune(cfgs, {**half, "HAS_AMASK": True}, kind="bwd_dq")) == [configs.DQ_TILES[0]]


def test_autotune_off_runs_the_main_tile_that_fits(monkeypatch):
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "0")
    cfgs = [configs.make_config(*t) for t in configs.tiles("fwd")]
    assert _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=torch.bfloat16)})) == [
        configs.FWD_TILES[0]
    ]
    assert _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1)})) == [(32, 16, 8, 1)]


def test_wide_heads_run_their_spill_free_backward_tiles_first(monkeypatch):
    for kind in ("bwd_dkdv", "bwd_dq"):
        cfgs = [configs.make_config(*t) for t in configs.gpu_tiles(kind)]
        for dtype, nbytes in ((torch.float16, 2), (torch.bfloat16, 2), (torch.float32, 4)):
            # Per-pair features (here dropout) run the wide-head tiles; off the GPU prune applies the sm_90 rules.
            args = {"HEAD_DIM": 128, "Q": torch.empty(1, dtype=dtype), "HAS_DROPOUT": True}
            kept = _tiles(configs.prune(cfgs, args, kind=kind))
            assert kept[0] == configs.WIDE_HEAD_TILES[(kind, nbytes)]
            plain = _tiles(configs.prune(cfgs, {"HEAD_DIM": 128, "Q": torch.empty(1, dtype=dtype)}, kind=kind))
            wgmma = configs.DQ_WIDE_SM90 if kind == "bwd_dq" else configs.DKDV_WIDE_SM90
            assert plain == [wgmma if nbytes == 2 else configs.WIDE_HEAD_TILES[(kind, nbytes)]]
            assert len(set(kept)) == len(kept)
            # D = 64 never runs a wide-head-only tile: its general list already has spill-free tiles.
            narrow = _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=dtype)}, kind=kind))
            assert not set(narrow) & configs._wide_only(kind)
            assert narrow[0] == configs.candidates(kind, configs.TILES[kind], 64, nbytes)[0]
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "0")
    cfgs = [configs.make_config(*t) for t in configs.gpu_tiles("bwd_dq")]
    args = {"HEAD_DIM": 128, "Q": torch.empty(1, dtype=torch.bfloat16), "HAS_KPAD": True}
    only = _tiles(configs.prune(cfgs, args, kind="bwd_dq"))
    assert only == [configs.WIDE_HEAD_TILES[("bwd_dq", 2)]]


def test_pipelining_is_dropped_on_sm90_only_for_old_triton(monkeypatch):
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 6, 0))
    assert configs.stages_for(2, 9) == 1 and configs.stages_for(2, 8) == 2 and configs.stages_for(1, 9) == 1
    # Triton 3.6 pipelines the forward and dQ on sm_90 without per-pair features or varlen; never dK/dV.
    for kind in ("fwd", "bwd_dq"):
        assert configs.stages_for(2, 9, kind) == 2 and configs.stages_for(2, 9, kind, {"CAUSAL": True}) == 2
        for feature in ("HAS_KPAD", "HAS_AMASK", "HAS_DROPOUT", "VARLEN"):
            assert configs.stages_for(2, 9, kind, {feature: True}) == 1
    assert configs.stages_for(2, 9, "bwd_dkdv") == 1
    assert configs.dq_branchless_band(9) and not configs.dq_branchless_band(8)
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 9, 0))
    assert not configs.dq_branchless_band(9)
    assert configs.stages_for(2, 9) == 2
    assert configs.stages_for(2, 9, "bwd_dq", {"VARLEN": True}) == 2 and configs.stages_for(2, 9, "bwd_dkdv") == 2
    assert configs._version_tuple("3.6.0+git1a2b") == (3, 6, 0) and configs._version_tuple("3.10.0rc1") == (3, 10, 0)


class _GridRecorder:
    """Stands in for a kernel: records the grid of each launch and runs nothing."""

    def __init__(self, grids, name):
        self.grids, self.name = grids, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids[self.name] = grid
            self.grids[self.name + " FAR_LOOPS"] = kwargs.get("FAR_LOOPS")

        return launch


def test_grids_put_batch_times_heads_on_axis_0(monkeypatch):
    # Axis 1 and 2 of a CUDA grid stop at 65535 programs: B*H = 70000 used to sit on axis 1 and failed at
    # launch. B*H goes on axis 0 (2**31 - 1); axis 1 holds the row blocks, cdiv(L, BLOCK) <= 65535.
    launch = pytest.importorskip("nezha_kernels.triton_kernels.launch")
    grids = {}
    for name in ("_fwd", "_bwd_dkdv", "_bwd_dq", "_relattn_bwd_delta_kernel"):
        monkeypatch.setattr(launch, name, _GridRecorder(grids, name))
    b, h, lq, lk, d, r = 7000, 10, 40, 24, 16, 4
    q = torch.zeros(b, h, lq, d)
    k = v = torch.zeros(b, h, lk, d)
    table = torch.zeros(2 * r + 1, d)
    out, lse = launch.relattn_fwd(q, k, v, table, None, None, None, None, None, lq, lk, r, False, 0, 0.25, 0.0, 0)
    launch.relattn_bwd(out, q, k, v, table, out, lse, None, None, None, None, None, lq, lk, r, False, 0, 0.25, 0.0, 0)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16}
    # The launcher passes FAR_LOOPS as configs.far_loops gives it (fp32: one general loop).
    far = [grids.pop(f"{name} FAR_LOOPS") for name in ("_fwd", "_bwd_dq", "_bwd_dkdv")]
    assert far == [configs.FAR_NONE] * 3
    assert grids.pop("_relattn_bwd_delta_kernel FAR_LOOPS") is None
    shapes = {name: grid(cfg) if callable(grid) else grid for name, grid in grids.items()}
    rows_per_delta = launch.DELTA_ROWS_INTERPRETED if configs.interpreted() else launch.DELTA_ROWS_GPU
    assert shapes == {
        "_fwd": (b * h, 3),
        "_bwd_dq": (b * h, 3),
        "_bwd_dkdv": (b * h, 2),
        "_relattn_bwd_delta_kernel": (b * h, -(-lq // rows_per_delta)),
    }


def test_rotation_band_runs_where_it_compiles_spill_free(monkeypatch):
    # NEZHA's own table (sinusoid): the band by rotation only where the compile check found it spill-free
    # (benchmarks/NOTES.md "Triton band on tensor cores: rotation"); the table path everywhere else.
    monkeypatch.delenv(configs.ROTATION_ENV, raising=False)
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 9, 0))
    rotation = configs.rotation_band
    for kind in ("fwd", "bwd_dq"):
        assert rotation(kind, 64, 2, {}, 9) and rotation(kind, 32, 2, {}, 9)
        assert not rotation(kind, 64, 2, {}, 8)  # sm_80: spills even plain
        assert not rotation(kind, 64, 4, {}, 9)  # fp32 FMA tiles
        assert not rotation(kind, 128, 2, {}, 9)
        assert not rotation(kind, 64, 2, {"VARLEN": True}, 9)
        assert not rotation(kind, 64, 2, {"HAS_AMASK": True}, 9)  # one general loop
    assert rotation("fwd", 64, 2, {"HAS_KPAD": True, "HAS_DROPOUT": True}, 9)
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 6, 0))  # there the narrow forward spills 24 B
    assert not rotation("fwd", 64, 2, {"HAS_KPAD": True, "HAS_DROPOUT": True}, 9) and rotation("fwd", 64, 2, {}, 9)
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 9, 0))
    assert not rotation("bwd_dq", 64, 2, {"HAS_KPAD": True, "HAS_DROPOUT": True}, 9)
    # dK/dV rebuilds P from the forward's statistics: it takes the path exactly where the forward does.
    for features in ({}, {"CAUSAL": True}, {"HAS_KPAD": True, "HAS_DROPOUT": True}, {"VARLEN": True}):
        for arch, elem, d in ((9, 2, 64), (8, 2, 64), (9, 4, 64), (9, 2, 128)):
            assert rotation("bwd_dkdv", d, elem, features, arch) == rotation("fwd", d, elem, features, arch)
    assert rotation("bwd_dkdv", 64, 2, {"HAS_KPAD": True, "HAS_DROPOUT": True}, 9)
    # The forward's and dQ's rotation band loops: a key tile of at most 2R keys (out-of-band keys of a row on one side).
    assert configs.rotation_loop(64) and configs.rotation_loop(16) and not configs.rotation_loop(15)
    # dK/dV's loop holds the program's whole key block per query: 2R >= BLOCK_N (64 keys on sm_90).
    block_n = configs.main_tile("bwd_dkdv", 64, 2, {}, 9, configs.gpu_tiles("bwd_dkdv"))[1]
    assert configs.rotation_loop(block_n // 2, block_n) and not configs.rotation_loop(block_n // 2 - 1, block_n)
    monkeypatch.setenv(configs.ROTATION_ENV, "all")  # the tests' switch: every sinusoid call
    assert rotation("fwd", 64, 4, {"HAS_AMASK": True}, 8) and rotation("bwd_dkdv", 128, 2, {"VARLEN": True}, 9)
    monkeypatch.setenv(configs.ROTATION_ENV, "off")
    assert not rotation("fwd", 64, 2, {}, 9) and not rotation("bwd_dkdv", 64, 2, {}, 9)


def test_dkdv_rotation_follows_the_forward_blocks():
    # dK/dV measures its rotation angles from the forward's query blocks (ROT_BLOCK_M): the forward's one tile.
    gpu = configs.gpu_tiles("fwd")
    for features in ({}, {"HAS_KPAD": True, "HAS_DROPOUT": True}, {"VARLEN": True}):
        for d, elem in ((64, 2), (128, 2), (64, 4)):
            block_m = configs.rotation_block_m(d, elem, features, 9, gpu)
            assert block_m == configs.candidates("fwd", gpu, d, elem, features, 9)[0][0]
            assert block_m <= 128 and block_m % 16 == 0
    assert configs.rotation_block_m(64, 2, {}, 9, gpu) == configs.FWD_TILES[0][0]


def test_rotation_table_rows_cover_every_band_tile():
    # A band tile of a query block (first position pos0, up to MAX_BLOCK_M rows) reads rows j - pos0 + R of keys
    # j0 .. j0 + BLOCK_N - 1; for a tile with an in-band pair those lie in the table (load_positional's clamp
    # only ever moves tiles without one).
    rotation = pytest.importorskip("nezha_kernels.triton_kernels.rotation")
    r, block_m = 64, rotation.MAX_BLOCK_M
    block_n = max(t[1] for t in configs.FWD_TILES + configs.DQ_TILES)
    assert block_n <= rotation.PAD_ROWS
    lowest = -(block_n - 2)  # j0 + BLOCK_N - 1 - pos0 > -R
    highest = (block_m - 1 + r - 1) + block_n - 1  # j0 - (pos0 + BLOCK_M - 1) < R, last key of the tile
    rows = rotation.rotation_rows(r)
    assert 0 <= lowest + r + rotation.PAD_ROWS and highest + r + rotation.PAD_ROWS < rows
    table = rotation.rotation_table(r, 48, torch.device("cpu"))  # D = 48: BLOCK_D 64, padded columns 0
    assert table.shape == (rows, 64) and table.dtype == torch.float32 and not table[:, 48:].any()
    m = torch.tensor([-5.0, 0.0, 200.0], dtype=torch.float64)
    w = torch.exp(-torch.arange(0, 48, 2, dtype=torch.float64) * (math.log(10000.0) / 48))
    want = torch.stack([torch.sin(m[:, None] * w), torch.cos(m[:, None] * w)], dim=-1).reshape(3, 48)
    got = table[(m + rotation.PAD_ROWS).long(), :48].double()
    torch.testing.assert_close(got, want, atol=6e-8, rtol=0)  # float64 values rounded to float32
