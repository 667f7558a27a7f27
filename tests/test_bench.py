"""The benchmark suite: FLOP formula, result rows and files, table, plots and their ticks, progress lines,
timing warnings, OOM marking, CLI dry run and the GPU suite's dry run on CPU. Tiny shapes; the end-to-end
runs and the fresh-interpreter children take most of the time (marked slow)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nezha_kernels.bench import main as bench_main
from nezha_kernels.bench.memory import is_oom, run_child
from nezha_kernels.bench.op_bench import OpGrid, attention_flops, flex_keyside_attention, run_op_bench
from nezha_kernels.bench.plots import _plain_log_y, log_ticks, tick_labels
from nezha_kernels.bench.progress import Progress, shorten
from nezha_kernels.bench.results import FIELDS, Row, read_csv, rows_from_records, write_csv, write_json
from nezha_kernels.bench.table import format_table
from nezha_kernels.bench.timing import time_cpu, timing_warnings
from nezha_kernels.table import sinusoidal_table

REPO = Path(__file__).resolve().parent.parent
ENV = dict(
    device="cpu", device_name="test-cpu", nezha_kernels="0", torch=torch.__version__, triton="x", python="3", run_id="t"
)


def _row(provider="torch", mode="fwd", seq_len=128, status="ok", median=1.5, peak=10.0, bench="op", dtype="float32"):
    ok = status == "ok"
    return Row(
        bench=bench,
        op="relative_attention" if bench == "op" else "nezha-base",
        provider=provider,
        mode=mode,
        dtype=dtype,
        batch=4,
        heads=12,
        seq_len=seq_len,
        head_dim=64,
        status=status,
        median_ms=median if ok else None,
        p20_ms=median * 0.9 if ok else None,
        p80_ms=median * 1.2 if ok else None,
        reps=5 if ok else None,
        tflops=0.5 if ok else None,
        peak_mib=peak if ok else None,
        **ENV,
    )


# --- FLOP formula -------------------------------------------------------------------------------------


def _count_flops(b, h, lq, lk, d, r, sides):
    """Independent count: a multiply-add is 2 FLOPs; each output element of a matmul costs 2*K."""
    qk = b * h * lq * lk * (2 * d)  # S = Q K^T: [Lq, Lk] outputs, K = D
    pv = b * h * lq * d * (2 * lk)  # O = P V:   [Lq, D] outputs, K = Lk
    key_side = b * h * lq * (2 * r + 1) * (2 * d)  # q . table[m] for the 2R+1 distinct rows
    value_side = b * h * lq * d * (2 * (2 * r + 1))  # bucketed weights [Lq, 2R+1] @ table [2R+1, D]
    return qk + pv + (key_side if sides >= 1 else 0) + (value_side if sides == 2 else 0)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 11, 2), (1, 12, 513, 513, 64, 64), (3, 1, 17, 31, 16, 4)])
@pytest.mark.parametrize("sides", [0, 1, 2])
def test_flop_formula(shape, sides):
    b, h, lq, lk, d, r = shape
    fwd = _count_flops(b, h, lq, lk, d, r, sides)
    assert attention_flops(b, h, lq, lk, d, r, "fwd", sides) == fwd
    assert attention_flops(b, h, lq, lk, d, r, "bwd", sides) == pytest.approx(2.5 * fwd)
    assert attention_flops(b, h, lq, lk, d, r, "fwd+bwd", sides) == pytest.approx(3.5 * fwd)


def test_flop_formula_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        attention_flops(1, 1, 8, 8, 8, 2, "forward")
    with pytest.raises(ValueError, match="positional_sides"):
        attention_flops(1, 1, 8, 8, 8, 2, "fwd", 3)


# --- timing and OOM detection ---------------------------------------------------------------------------


def test_time_cpu_statistics():
    timing = time_cpu(lambda: time.sleep(0.003), warmup=1, min_reps=4, max_reps=6, budget_s=0.0)
    assert timing.reps == 4
    assert 3.0 <= timing.p20_ms <= timing.median_ms <= timing.p80_ms < 1000
    with pytest.raises(ValueError, match="min_reps"):
        time_cpu(lambda: None, min_reps=0)


def test_is_oom():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


@pytest.mark.slow
def test_oom_becomes_a_marked_cell():
    """The reference materializes an [L, L, D] table: 4 GiB at L = 4096 cannot fit under a 3 GiB cap."""
    grid = OpGrid(lengths=(4096,), tokens=4096, dtypes=("float32",), heads=1)
    rows = run_op_bench(grid, "cpu", ENV, providers=("reference",), limit_gib=3.0, cell_timeout_s=120)
    assert [r.mode for r in rows] == ["fwd", "bwd", "fwd+bwd"]
    assert all(r.status == "OOM (> 3 GiB)" and r.median_ms is None and r.tflops is None for r in rows)
    assert "OOM (> 3 GiB)" in format_table(rows)


def _allocate(spec: dict) -> dict:
    """Child target: the RSS rise of touching a spec["mib"] MiB tensor."""
    from nezha_kernels.bench.memory import RssProbe

    # Start torch's intra-op thread pool first (a parallel op of 256 KiB), as every bench cell does when it
    # builds its inputs: the pool's first start costs ~28 MiB of RSS that is not the allocation measured.
    torch.ones(1 << 16).sum()
    probe = RssProbe()
    x = torch.ones(spec["mib"] * 2**18)  # float32: 4 bytes each
    return {"rise": probe.rise_mib(), "sum": float(x.sum())}


@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_child_rss_rise_measures_an_allocation(method):
    if method == "spawn":  # a new interpreter: make this test module importable there
        os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    target = f"{_allocate.__module__}:_allocate" if method == "fork" else "test_bench:_allocate"
    result = run_child(target, {"mib": 96}, limit_gib=8, timeout_s=120, method=method)
    assert result["status"] == "ok", result
    assert result["result"]["sum"] == 96 * 2**18
    assert 96 * 0.97 <= result["result"]["rise"] <= 96 * 1.05 + 4


def test_child_failure_is_reported():
    result = run_child("nezha_kernels.bench.op_bench:measure_cell", {"provider": "torch"}, limit_gib=8, timeout_s=60)
    assert result["status"].startswith("error: KeyError")


# --- providers -------------------------------------------------------------------------------------


def test_triton_interpreter_is_never_timed(monkeypatch):
    from nezha_kernels.bench.op_bench import provider_availability

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    usable, why = provider_availability("triton", "cpu")
    assert not usable and "never timed" in why
    assert provider_availability("sdpa", "cpu")[0]
    with pytest.raises(ValueError, match="provider"):
        provider_availability("xformers", "cpu")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_keyside_matches_float64_formula():
    """FlexAttention peer (eager on CPU): softmax((q.k + q.a_ij) / sqrt(D)) v, no value-side term."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    torch.manual_seed(3)
    b, h, length, d, r = 2, 3, 37, 16, 5
    q, k, v = (torch.randn(b, h, length, d) for _ in range(3))
    table = sinusoidal_table(r, d)
    out = flex_keyside_attention(q, k, v, table, r, compiled=False)
    i = torch.arange(length)
    rel = table.double()[(i[None, :] - i[:, None]).clamp(-r, r) + r]  # [Lq, Lk, D]
    qd, kd, vd = q.double(), k.double(), v.double()
    scores = (qd @ kd.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", qd, rel)) / math.sqrt(d)
    expected = torch.softmax(scores, -1) @ vd
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


# --- results files, table, plots -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,r,lq", [(torch.float64, 5, 23), (torch.float32, 3, 17)])
def test_parity_formula_matches_the_reference_backend(dtype, r, lq):
    # The gate's own float64 formula (bucket tensors, never [L, L, D]) against the package's HF-math backend,
    # and its plain form against PyTorch's SDPA.
    import torch.nn.functional as F

    from nezha_kernels import relative_attention
    from nezha_kernels.bench.parity import formula

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, lq, 16, generator=g, dtype=dtype) for _ in range(3))
    want = relative_attention(q.double(), k.double(), v.double(), max_relative_position=r, backend="reference")
    torch.testing.assert_close(formula(q, k, v, r, relative=True), want, atol=1e-10, rtol=1e-10)
    plain = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(formula(q, k, v, r, relative=False), plain, atol=1e-10, rtol=1e-10)


def test_parity_gate_passes_a_right_provider_and_stops_a_wrong_one():
    from nezha_kernels import relative_attention
    from nezha_kernels.bench import parity

    spec = dict(device="cpu", dtype="float32", head_dim=16, max_relative_position=4, parity_len=40)

    def provider(r_used):
        return lambda q, k, v: lambda: relative_attention(q, k, v, max_relative_position=r_used, backend="torch")

    assert parity.check_parity("test-right", provider(4), spec) == ""
    why = parity.check_parity("test-wrong", provider(3), spec)  # R off by one: only far-field rows differ
    assert why.startswith("parity: ") and "vs float64 at [1, 2, 40, 16]" in why
    # a plain provider is held to plain attention: the relative backend fails it
    assert parity.check_parity("sdpa", provider(4), spec).startswith("parity: ")
    parity._checked.clear()


def test_failed_parity_rows_are_marked_not_timed():
    grid = OpGrid(lengths=(32,), tokens=32, dtypes=("float32",), modes=("fwd",))
    rows = run_op_bench(grid, "cpu", {}, providers=("torch",), failed_parity=("torch",))
    assert [(r.provider, r.status) for r in rows] == [
        ("torch", "skipped: its parity tests failed in the suite's tests phase (status.txt)")
    ]


def test_ratios_against_sdpa_and_the_twin():
    from nezha_kernels.bench.ratios import annotate_ratios, ratio_lines, ratio_table

    def row(provider, length, mode, ms, status="ok"):
        times = {"median_ms": ms, "p20_ms": ms, "p80_ms": ms} if status == "ok" else {}
        return Row("op", "relative_attention", provider, mode, "bfloat16", 16384 // length, 12, length, 64,
                   status=status, **times)  # fmt: skip

    rows = [
        row("sdpa", 1024, "fwd", 1.0), row("twin", 1024, "fwd", 1.25), row("triton", 1024, "fwd", 2.0),
        row("cuda", 1024, "fwd", 1.05), row("sdpa", 4096, "fwd", 4.0), row("twin", 4096, "fwd", 4.0),
        row("triton", 4096, "fwd", 4.4), row("cuda", 4096, "fwd", 1.0, status="OOM"),
        row("sdpa", 512, "fwd", 0.5), row("triton", 512, "fwd", 5.0),
        row("sdpa", 1024, "fwd+bwd", 3.0), row("triton", 1024, "fwd+bwd", 3.6),
    ]  # fmt: skip
    annotate_ratios(rows)
    by = {(r.provider, r.seq_len, r.mode): r for r in rows}
    assert by[("triton", 1024, "fwd")].vs_sdpa == pytest.approx(0.5)
    assert by[("triton", 1024, "fwd")].vs_twin == pytest.approx(0.625)
    assert by[("twin", 1024, "fwd")].vs_sdpa == pytest.approx(0.8) and by[("twin", 1024, "fwd")].vs_twin is None
    assert by[("cuda", 4096, "fwd")].vs_sdpa is None and by[("sdpa", 1024, "fwd")].vs_sdpa is None
    assert by[("triton", 1024, "fwd+bwd")].vs_twin is None  # no twin row in that mode
    lines = ratio_lines(rows)
    # L >= 1k only: triton fwd 0.5 (1k) and 0.909 (4k); the 512 row (0.1) is left out of the goal's range
    triton = next(line for line in lines if line.startswith("triton "))
    assert "fwd vs SDPA flash 0.50-0.91x (goal 0.9: NOT met), vs twin 0.62-0.91x" in triton
    assert "fwd+bwd vs SDPA flash 0.83x (goal 0.8: met)" in triton
    cuda = next(line for line in lines if line.startswith("cuda "))
    assert "fwd vs SDPA flash 0.95x (goal 0.9: met), vs twin 1.19x" in cuda
    assert len(ratio_table(rows).splitlines()) == 1 + sum(r.vs_sdpa is not None or r.vs_twin is not None for r in rows)
    assert lines[-1] in format_table(rows)


def test_results_csv_json_roundtrip_and_append(tmp_path):
    first = [_row("torch", m, L) for m in ("fwd", "bwd") for L in (128, 256)] + [_row("reference", "fwd", 256, "OOM")]
    write_csv(first, tmp_path / "r.csv", append=True)
    write_json(first, tmp_path / "r.json", append=True)
    second = [_row("sdpa", "fwd", 128, median=0.25)]
    write_csv(second, tmp_path / "r.csv", append=True)
    write_json(second, tmp_path / "r.json", append=True)

    records = read_csv(tmp_path / "r.csv")
    assert list(records[0]) == FIELDS
    assert len(records) == 6
    back = rows_from_records(records)
    assert back[0] == first[0] and back[-1] == second[0]
    assert back[4].status == "OOM" and back[4].median_ms is None
    assert records[0]["shape"] == "[4, 12, 128, 64]" and records[0]["torch"] == torch.__version__
    js = json.loads((tmp_path / "r.json").read_text())
    assert len(js) == 6 and js[-1]["provider"] == "sdpa" and js[-1]["median_ms"] == 0.25
    assert rows_from_records(js) == back

    write_csv(second, tmp_path / "r.csv", append=False)  # --fresh
    assert len(read_csv(tmp_path / "r.csv")) == 1


def test_results_csv_with_other_columns_is_merged(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("bench,provider,legacy\nop,torch,1\n")
    write_csv([_row()], path)
    records = read_csv(path)
    assert len(records) == 2 and records[0]["legacy"] == "1" and records[1]["provider"] == "torch"
    assert records[1]["legacy"] == ""


def test_table_layout():
    rows = [
        _row("reference", "fwd", 128, median=12.0),
        _row("torch", "fwd", 128, median=3.25),
        _row("reference", "fwd", 256, "OOM (> 16 GiB)"),
        _row("torch", "fwd", 256, median=6.5),
        _row("cuda", "fwd", 128, "skipped: needs a CUDA device"),
        _row("cuda", "fwd", 256, "skipped: needs a CUDA device"),
        _row("hf-4.57.6", "infer", 1024, "n/a: HF NEZHA's relative table covers 512 tokens", bench="model"),
    ]
    text = format_table(rows)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("B x L"))
    assert "reference" in header and "torch" in header and "cuda" not in header
    row_128 = next(line for line in lines if line.startswith("4 x 128"))
    assert "12 ms [10.8-14.4]" in row_128 and "3.25 ms" in row_128 and "0.5 TF/s" in row_128 and "10 MiB" in row_128
    row_256 = next(line for line in lines if line.startswith("4 x 256"))
    assert "OOM (> 16 GiB)" in row_256 and "6.5 ms" in row_256
    assert "  cuda: needs a CUDA device" in lines
    assert any(line.startswith("4 x 1024") and line.rstrip().endswith("n/a") for line in lines)


def _plot_rows():
    rows = [
        _row(p, m, L, median=L / 64 * (1 + i), peak=L / 8 * (1 + i))
        for i, p in enumerate(("reference", "torch", "sdpa"))
        for m in ("fwd", "bwd", "fwd+bwd")
        for L in (128, 256, 512)
    ]
    rows += [_row("reference", m, 1024, "OOM (> 16 GiB)") for m in ("fwd", "bwd", "fwd+bwd")]
    rows += [_row("torch", m, 1024, median=40.0) for m in ("fwd", "bwd", "fwd+bwd")]
    rows += [
        _row(p, mode, L, median=float(L) * (1.5 if p == "hf-4.57.6" else 1.0), peak=float(L) + 1400, bench="model")
        for p in ("torch", "hf-4.57.6")
        for mode in ("infer", "train")
        for L in (128, 512)
    ]
    rows += [
        _row(
            "hf-4.57.6",
            mode,
            1024,
            "n/a: HF NEZHA's relative table covers max_position_embeddings=512 tokens",
            bench="model",
        )
        for mode in ("infer", "train")
    ]
    rows += [_row("torch", mode, 1024, median=3000.0, peak=1500.0, bench="model") for mode in ("infer", "train")]
    mix = [("ours padding-free", 50.0), ("ours padded", 95.0), ("hf-4.57.6", 100.0)]
    for provider, median in mix:
        for mode in ("infer", "train"):
            row = _row(provider, mode, 106, median=median * (3 if mode == "train" else 1), bench="length-mix")
            row.op, row.batch, row.note = "nezha-base-2L", 16, "968 of 1696 tokens real (57%); lengths log-normal"
            rows.append(row)
    return rows


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_headline_figure_plots_speedups_with_their_spread():
    """Bars: transformers' median / ours per workload, whiskers their p20 / our p80 .. their p80 / our p20; the
    workload transformers cannot run is a sentence, not a bar."""
    from nezha_kernels.bench.headline import speedup_figure

    fig = speedup_figure(_plot_rows(), "float32")
    infer, train = fig.axes[:2]
    assert infer.get_title() == "inference" and train.get_title().startswith("training")
    for ax, scale in ((infer, 1), (train, 3)):
        widths = sorted(round(p.get_width(), 6) for p in ax.patches)
        # dense 4x128 and 4x512: 1.5x; length mix: 100/50 padding-free, 100/95 padded (train: both x3)
        assert widths == sorted([1.5, 1.5, round(100 * scale / (50 * scale), 6), round(100 / 95, 6)])
        assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > 2.0
        texts = _texts(ax)
        assert "2.00x" in texts and "1.05x" in texts and texts.count("1.50x") == 2
        assert [t for t in texts if "cannot run" in t] == [
            "hf-4.57.6 cannot run here (n/a past its 512 tokens): ours only"
        ]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == [
            "nezha-base 4 x 128",
            "nezha-base 4 x 512",
            "nezha-base 4 x 1024",
            "nezha-base-2L\nlength mix 16 x 106 (57% real)",
        ]
    # the whisker of the padding-free bar: 90 / 60 .. 120 / 45 (the rows' p20 = 0.9 x median, p80 = 1.2 x median)
    whiskers = [seg for coll in infer.collections for seg in coll.get_segments()]
    spans = sorted((round(seg[0][0], 4), round(seg[1][0], 4)) for seg in whiskers)
    assert (round(90 / 60, 4), round(120 / 45, 4)) in spans
    from nezha_kernels.bench.figures import pyplot as _pyplot

    _pyplot().close(fig)


def test_table_ends_with_the_speedup_summary():
    last = format_table(_plot_rows()).splitlines()[-1]
    assert last.startswith("speed-up over hf-4.57.6 (its median time / ours, >1 = ours faster): ")
    assert "infer 1.50x-2.00x, train 1.50x-2.00x" in last
    assert "best 2.00x: infer on nezha-base-2L length mix 16 x 106 (57% real), ours padding-free" in last
    assert last.endswith("hf-4.57.6 did not run: nezha-base 4 x 1024 (n/a past its 512 tokens)")
    assert format_table([_row("torch"), _row("sdpa")]).splitlines()[-1].startswith("4 x 128")  # ops only: no line


def test_model_figure_joins_no_workloads_and_writes_not_run_cells():
    from nezha_kernels.bench.figures import pyplot as _pyplot
    from nezha_kernels.bench.plots import models_figure

    fig = models_figure(_plot_rows(), "float32")
    time_ax, memory_ax = fig.axes[0], fig.axes[2]
    for ax in fig.axes:
        for line in ax.lines:  # markers only: a line joining two batch x length points would have a linestyle
            assert line.get_linestyle() == "None" or len(line.get_xdata()) <= 2, line
    markers = sorted(
        (round(x, 3), y)
        for line in time_ax.lines
        if line.get_marker() == "o"
        for x, y in zip(*line.get_data(), strict=True)
    )
    # x: 0, 1, 2 = 4x128, 4x512, 4x1024; ours left (-0.2), transformers right (+0.2); nothing for its n/a cell
    assert markers == [(-0.2, 128.0), (0.2, 192.0), (0.8, 512.0), (1.2, 768.0), (1.8, 3000.0)]
    assert "hf-4.57.6: n/a" in _texts(time_ax) and "hf-4.57.6: n/a" in _texts(memory_ax)
    assert memory_ax.get_ylim()[0] == 0  # memory from zero: 1,528 vs 1,912 MiB must not look like 10x
    heights = sorted(p.get_height() for p in memory_ax.patches)
    assert heights == [1500.0, 1528.0, 1528.0, 1912.0, 1912.0]
    _pyplot().close(fig)


def test_op_figure_memory_from_zero_and_oom_as_text():
    from nezha_kernels.bench.figures import pyplot as _pyplot
    from nezha_kernels.bench.plots import ops_figure

    fig = ops_figure(_plot_rows(), "float32")
    fwd_time, fwd_memory = fig.axes[0], fig.axes[3]
    assert fwd_memory.get_ylim()[0] == 0
    assert "reference (HF math): OOM (> 16 GiB)" in _texts(fwd_time)
    reference = next(line for line in fwd_time.lines if line.get_label().startswith("reference"))
    assert list(reference.get_xdata()) == [128, 256, 512]  # the OOM cell is text, not a point
    _pyplot().close(fig)


def test_replot_from_results_json(tmp_path, capsys):
    """--replot: the table and the plots again from a results.json, nothing measured; an appended older run of
    the same cell is left out."""
    rows = _plot_rows()
    old = [dataclasses.replace(r, run_id="s", median_ms=r.median_ms and r.median_ms * 10) for r in rows]
    write_json(old, tmp_path / "results.json")
    write_json(rows, tmp_path / "results.json")  # run_id "t", newer than "s"
    assert bench_main(["--replot", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(rows)} rows from" in printed
    assert "infer 1.50x-2.00x" in printed
    assert printed.rstrip().endswith(
        "speedup_float32.png, " + str(tmp_path / "ops_float32.png") + ", " + str(tmp_path / "models_float32.png")
    )
    from PIL import Image

    for name in ("speedup_float32.png", "ops_float32.png", "models_float32.png"):
        with Image.open(tmp_path / name) as image:  # a real PNG of a figure's size (dpi 80), not an empty file
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    with pytest.raises(SystemExit, match="no results.json"):
        bench_main(["--replot", "--out", str(tmp_path / "missing")])


@pytest.mark.parametrize(
    "low, high", [(156.0, 168.0), (40.0, 180.0), (1.2, 160.0), (0.013, 0.9), (1400.0, 1455.0), (10.0, 11.0), (2.0, 9.0)]
)
def test_log_axis_ticks_are_few_distinct_and_plain(low, high):
    ticks = log_ticks(low, high)
    labels = tick_labels(ticks)
    assert 3 <= len(ticks) <= 8 and all(low <= t <= high for t in ticks) and ticks == sorted(ticks)
    assert len(set(labels)) == len(labels), labels
    assert not any("e" in label or "^" in label for label in labels)
    assert [float(label.replace(",", "")) for label in labels] == pytest.approx(ticks)
    if high / low >= 10:  # across decades: round 1-2-5 values
        assert {
            float(label.replace(",", "")) / 10 ** math.floor(math.log10(t))
            for label, t in zip(labels, ticks, strict=True)
        } <= {
            1.0,
            2.0,
            5.0,
        }


def test_plot_axis_labels_are_distinct():
    """One point per line (a narrow range) used to read "14 14 15 16 16" on the memory axis."""
    from nezha_kernels.bench.figures import pyplot as _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [14.0, 17.4], marker="o")
    _plain_log_y(ax)
    fig.canvas.draw()
    low, high = ax.get_ylim()
    shown = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True) if low <= v <= high]
    minor = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert len(shown) >= 3 and len(set(shown)) == len(shown) and not minor, (shown, minor)


def test_progress_lines_end_on_a_word(capsys, monkeypatch):
    label = "op triton float32 L=128: skipped: CPU runs only under the Triton interpreter, which is never timed"
    assert shorten(label, len(label)) == label
    cut = shorten(label, 60)
    assert len(cut) <= 60 and cut.endswith(" ...") and label.startswith(cut[:-4])
    assert label[len(cut) - 4] == " "  # the cut falls between words
    monkeypatch.setenv("COLUMNS", "100")
    progress = Progress(2, stream=sys.stdout)
    progress.advance(label)
    line = capsys.readouterr().out.rstrip("\n")
    assert len(line) <= 100 and line.endswith(" ...") and "1/2" in line
    words = label.split()
    assert all(word in words for word in line.split("  ")[-1].split()[:-1])


def test_progress_names_the_step_that_is_running(capsys, monkeypatch):
    """The line that stays up while a step runs names that step (before: the one that had just finished)."""
    monkeypatch.setenv("COLUMNS", "120")
    progress = Progress(3, stream=sys.stdout)
    progress.start("model hf-4.57.6 1x128")
    assert capsys.readouterr().out.split()[1:] == ["1/3", "0.0s", "model", "hf-4.57.6", "1x128"]
    progress.advance()
    assert capsys.readouterr().out == ""  # finishing a step prints nothing: its line already named it
    progress.advance("op cuda float32 L=128: skipped")  # a step that ends as it starts
    assert "2/3" in capsys.readouterr().out
    progress.start("model torch 1x1024")
    line = capsys.readouterr().out
    assert "3/3" in line and line.rstrip().endswith("model torch 1x1024") and line.startswith("[################")


def test_model_bench_announces_each_cell_before_measuring_it(monkeypatch):
    from nezha_kernels.bench import model_bench

    class Recorder:
        running = None

        def start(self, label):
            self.running = label

        def advance(self, label=None):
            self.running = None

    recorder, measured_while = Recorder(), []

    def fake_measure(target, spec, modes, **kwargs):
        measured_while.append((recorder.running, spec["provider"], spec["batch"], spec["seq_len"]))
        return {
            "modes": {m: {"status": "ok", "median_ms": 1.0, "p20_ms": 1.0, "p80_ms": 1.0} for m in modes},
            "note": "",
        }

    monkeypatch.setattr(model_bench, "measure_in_place_or_child", fake_measure)
    monkeypatch.setattr(model_bench, "hf_nezha_status", lambda: (False, "transformers not installed"))
    grid = model_bench.ModelGrid("nezha-tiny", ((2, 32), (1, 64)), "float32", ("torch",))
    model_bench.run_model_bench(grid, "cpu", ENV, progress=recorder)
    assert measured_while == [("model torch 2x32", "torch", 2, 32), ("model torch 1x64", "torch", 1, 64)]


def test_timing_warnings():
    quiet = [_row("torch", median=10.0), _row("sdpa", median=2.0), _row("reference", status="OOM")]
    assert timing_warnings(quiet, peak_load=1.5, cores=2) == []
    noisy = _row("reference", "fwd", 512, median=130.0)
    noisy.p20_ms, noisy.p80_ms = 85.2, 168.0
    (spread,) = timing_warnings(quiet + [noisy], peak_load=None, cores=2)
    assert "1 timing(s) vary widely" in spread and "reference fwd 4x512 (130 ms [85.2-168])" in spread
    (load,) = timing_warnings(quiet, peak_load=16.8, cores=2)
    assert "load average reached 16.8 on 2 core(s)" in load


def test_default_cpu_grid_goes_past_transformers_limit():
    """One model point past the 512 tokens transformers' NEZHA can run; op lengths stay cheap."""
    from nezha_kernels.bench.model_bench import model_grid
    from nezha_kernels.bench.op_bench import op_grid

    grid = model_grid("cpu")
    assert grid.size == "nezha-base" and max(length for _, length in grid.points) > 512
    assert max(op_grid("cpu").lengths) <= 512


def test_bench_help_and_readme_agree_on_the_run_time():
    import re

    from nezha_kernels.bench import _parser

    phrase = re.compile(r"about [\d.]+ minutes? on a quiet 2-core CPU")
    in_help = phrase.findall(" ".join(_parser().format_help().split()))
    in_readme = phrase.findall(" ".join((REPO / "README.md").read_text().split()))
    assert len(in_help) == 1 and in_help[0] in in_readme, (in_help, in_readme)


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_bench_dry_run_ops(tmp_path, capsys):
    assert bench_main(["--dry-run", "--only", "op", "--device", "cpu", "--out", str(tmp_path), "--fresh"]) == 0
    printed = capsys.readouterr().out
    assert "mode=fwd+bwd" in printed and "skipped providers:" in printed
    rows = rows_from_records(read_csv(tmp_path / "results.csv"))
    assert {r.mode for r in rows} == {"fwd", "bwd", "fwd+bwd"} and {r.seq_len for r in rows} == {32, 64}
    for r in rows:
        if r.provider in ("reference", "torch", "sdpa"):
            assert r.status == "ok", r
            assert r.median_ms > 0 and r.p20_ms <= r.median_ms <= r.p80_ms and r.peak_mib >= 0
            sides = 0 if r.provider == "sdpa" else 2
            expected = attention_flops(r.batch, 12, r.seq_len, r.seq_len, 64, 64, r.mode, sides) / r.median_ms / 1e9
            assert r.tflops == pytest.approx(expected, rel=1e-3)
        elif r.provider in ("cuda", "flex"):
            assert r.status.startswith("skipped: ")
    from nezha_kernels.bench.figures import pyplot as _pyplot
    from nezha_kernels.bench.plots import ops_figure

    fig = ops_figure(rows, "float32")  # what the PNG shows: one point per measured length of each usable provider
    plotted = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].lines}
    _pyplot().close(fig)
    assert {label.split(" ")[0]: xs for label, xs in plotted.items()} == {
        "reference": [32, 64],
        "torch": [32, 64],
        "SDPA,": [32, 64],
    }
    assert (tmp_path / "ops_float32.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(rows)


@pytest.mark.slow
def test_cli_bench_dry_run_length_mix(tmp_path):
    # Model rows (ours padding-free / padded / transformers, infer and train) and op rows (varlen vs dense-padded)
    # on the length mix and on a full batch (every token real: the varlen bookkeeping alone).
    assert bench_main(["--dry-run", "--only", "length-mix", "--device", "cpu", "--out", str(tmp_path), "--fresh"]) == 0
    rows = rows_from_records(read_csv(tmp_path / "results.csv"))
    assert {r.bench for r in rows} == {"length-mix"}
    models = [r for r in rows if r.op != "relative_attention"]
    assert {r.provider for r in models} == {"ours padding-free", "ours padded", "hf-4.57.6"}
    assert {r.mode for r in models} == {"infer", "train"} and all(r.status == "ok" for r in models)
    ops = [r for r in rows if r.op == "relative_attention"]
    full = [r for r in ops if r.note.startswith("full batch")]
    mix = [r for r in ops if not r.note.startswith("full batch")]
    assert {(r.provider, r.mode) for r in full} == {
        (p, m) for p in ("varlen", "dense-padded") for m in ("fwd", "fwd+bwd")
    }
    assert {(r.provider, r.mode) for r in mix} == {
        (p, m) for p in ("varlen", "dense-padded") for m in ("fwd", "fwd+bwd")
    }
    assert all(r.status == "ok" and r.median_ms > 0 for r in ops)
    assert {(r.batch, r.seq_len) for r in full} == {(2, 16)} and all("real (" in r.note for r in mix)


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        bench_main(["--device", "tpu", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench_main(["--full", "--dry-run"])
    with pytest.raises(SystemExit, match="model-points"):
        bench_main(["--model-points", "4by512", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="time-budget"):
        bench_main(["--time-budget", "0", "--out", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_suite_dry_run(tmp_path):
    # No time budgets in the dry run (a busy CPU must not turn cells into skips): the timeout only guards a hang.
    out = tmp_path / "suite"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8
    assert {"log.txt", "status.txt", "results.csv", "results.json", "ops_float32.png", "models_float32.png"} <= set(
        files
    )
    status = [line for line in (out / "status.txt").read_text().split("\n") if line]
    names = [line.split()[0] for line in status]
    parity = {"parity-triton-bf16", "parity-triton-other", "parity-triton-determinism", "parity-cuda",
              "parity-cuda-determinism"}  # fmt: skip
    assert names[:2] == ["install", "info"] and set(names[2:8]) == parity | {"build"}
    assert names[8:] == ["gpu-tests-rest", "check", "bench-d64", "bench-d128", "bench-models", "ratios"]
    assert all(" rc=0 " in line for line in status if "skipped" not in line)
    log = (out / "log.txt").read_text()
    assert "nezha_kernels" in log and "mode=train" in log
    assert "test_triton_gpu.py" in log and "test_cuda_gpu.py" in log  # the parity groups collected their files
    rows = rows_from_records(read_csv(out / "results.csv"))
    ops = [r for r in rows if r.bench == "op"]
    # Both head dims, fwd and fwd+bwd; the GPU-only providers skipped with a reason; ours against SDPA.
    assert {(r.head_dim, r.mode) for r in ops} == {(d, m) for d in (64, 128) for m in ("fwd", "fwd+bwd")}
    assert {r.provider for r in ops} == {"sdpa", "triton", "twin", "cuda", "torch"}
    for r in ops:
        if r.provider in ("sdpa", "torch"):
            assert r.status == "ok" and r.tflops > 0, r  # passed the float64 parity gate, then timed
        else:
            assert r.status.startswith("skipped: "), r
    torch_rows = [r for r in ops if r.provider == "torch"]
    sdpa_ms = {(r.head_dim, r.mode): r.median_ms for r in ops if r.provider == "sdpa"}
    for r in torch_rows:
        assert r.vs_sdpa == pytest.approx(sdpa_ms[(r.head_dim, r.mode)] / r.median_ms)
    assert "vs_sdpa" in log and "speed vs baselines" in log  # the ratio table and its summary close the log
    model = [r for r in rows if r.bench == "model"]
    assert {(r.provider, r.mode) for r in model if r.status == "ok"} >= {("torch", "infer"), ("torch", "train")}
    hf = [r for r in model if r.provider.startswith("hf")]
    if hf and not hf[0].status.startswith("skipped"):  # transformers 4.x with NEZHA installed
        assert {r.seq_len: r.status.split(":")[0] for r in hf} == {32: "ok", 64: "n/a"}
