"""Tile selection and launch grids of the Triton backend (no GPU needed)."""

import pytest
import torch

configs = pytest.importorskip("nezha_kernels.triton_kernels.configs")


def _tiles(cfgs):
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in cfgs]


def test_fp32_and_wide_heads_prune_to_small_tiles():
    cfgs = [configs.make_config(*t) for t in configs.FWD_TILES]
    assert _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1)})) == [(32, 16, 8, 1)]
    half = _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=torch.float16)}))
    assert half == [tuple(t) for t in configs.FWD_TILES]


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
            args = {"HEAD_DIM": 128, "Q": torch.empty(1, dtype=dtype)}
            kept = _tiles(configs.prune(cfgs, args, kind=kind))
            assert kept[0] == configs.WIDE_HEAD_TILES[(kind, nbytes)]
            assert len(set(kept)) == len(kept)
            # D = 64 never runs a wide-head-only tile: its general list already has spill-free tiles.
            narrow = _tiles(configs.prune(cfgs, {"HEAD_DIM": 64, "Q": torch.empty(1, dtype=dtype)}, kind=kind))
            assert not set(narrow) & configs._wide_only(kind)
            assert narrow[0] == configs.candidates(kind, configs.TILES[kind], 64, nbytes)[0]
    monkeypatch.setenv(configs.AUTOTUNE_ENV, "0")
    cfgs = [configs.make_config(*t) for t in configs.gpu_tiles("bwd_dq")]
    only = _tiles(configs.prune(cfgs, {"HEAD_DIM": 128, "Q": torch.empty(1, dtype=torch.bfloat16)}, kind="bwd_dq"))
    assert only == [configs.WIDE_HEAD_TILES[("bwd_dq", 2)]]


def test_pipelining_is_dropped_on_sm90_only_for_old_triton(monkeypatch):
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 6, 0))
    assert configs.stages_for(2, 9) == 1 and configs.stages_for(2, 8) == 2 and configs.stages_for(1, 9) == 1
    monkeypatch.setattr(configs, "TRITON_VERSION", (3, 9, 0))
    assert configs.stages_for(2, 9) == 2
    assert configs._version_tuple("3.6.0+git1a2b") == (3, 6, 0) and configs._version_tuple("3.10.0rc1") == (3, 10, 0)


class _GridRecorder:
    """Stands in for a kernel: records the grid of each launch and runs nothing."""

    def __init__(self, grids, name):
        self.grids, self.name = grids, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids[self.name] = grid

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
    shapes = {name: grid(cfg) if callable(grid) else grid for name, grid in grids.items()}
    rows_per_delta = launch.DELTA_ROWS_INTERPRETED if configs.interpreted() else launch.DELTA_ROWS_GPU
    assert shapes == {
        "_fwd": (b * h, 3),
        "_bwd_dq": (b * h, 3),
        "_bwd_dkdv": (b * h, 2),
        "_relattn_bwd_delta_kernel": (b * h, -(-lq // rows_per_delta)),
    }
