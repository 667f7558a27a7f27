"""The static profile (compile-check --profile): SASS analysis on hand-written listings, source roles, the
H100 issue model on hand-computed numbers, one real compile through the whole pipeline, and the plain
flash reference kernel against the softmax formula under the interpreter."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from nezha_kernels.compile_check import issue_model, roles, sass


def _listing(body: str, name: str = "k") -> str:
    """An nvdisasm-style listing of one function; ``body`` lines are "ADDR|PRED|INSTR" or labels/comments."""
    lines = [f"//--------------------- .text.{name} --------------------------", f'\t.section\t.text.{name},"ax"']
    lines += [f"{name}:", f".text.{name}:"]
    for raw in textwrap.dedent(body).strip().splitlines():
        raw = raw.strip()
        if raw.startswith(".L") or raw.startswith("//##") or raw.endswith(":"):
            lines.append(("\t" if raw.startswith("//") else "") + raw)
            continue
        addr, pred, ins = raw.split("|")
        lines.append(f"        /*{int(addr, 16):04x}*/              {pred:>6} {ins} ;")
    return "\n".join(lines) + "\n"


LOOP = _listing(
    """
    00|    |MOV R1, c[0x0][0x28]
    10|    |ISETP.GE.AND P0, PT, R2, R3, PT
    20| @P0|BRA `(.L_x_2)
    .L_x_0:
    30|    |WARPGROUP.ARRIVE
    40|    |HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24
    50|    |HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0
    60|    |WARPGROUP.DEPBAR.LE gsb0, 0x0
    70|    |MUFU.EX2 R5, R6
    80|@!P1|FFMA R7, R5, R8, R9
    90|    |LDGSTS.E.BYPASS.128 [R10], desc[UR4][R12.64]
    a0|    |LDGDEPBAR
    b0|    |DEPBAR.LE SB0, 0x1
    c0|    |IADD3 R2, R2, 0x40, RZ
    d0|    |ISETP.GE.AND P1, PT, R2, R3, PT
    e0|@!P1|BRA `(.L_x_0)
    .L_x_2:
    f0|    |EXIT
    .L_x_3:
    100|    |BRA `(.L_x_3)
    """
)


def test_parse_reads_instructions_predicates_and_labels():
    (fn,) = sass.parse(LOOP)
    assert fn.name == "k" and len(fn.instrs) == 17
    ffma = fn.instrs[8]
    assert (ffma.addr, ffma.pred, ffma.opcode, ffma.cls) == (0x80, "@!P1", "FFMA", "fp32")
    assert fn.instrs[4].opcode == "HGMMA.64x64x16.F32.BF16"
    assert fn.labels == {"k": 0, ".L_x_0": 3, ".L_x_2": 15, ".L_x_3": 16}


def test_loop_from_back_edge_counts_one_iteration_with_predicated_instructions():
    (fn,) = sass.parse(LOOP)
    sass.analyze_cfg(fn)
    assert len(fn.loops) == 1, "the self-branch trap after EXIT is not a loop"
    (loop,) = fn.loops
    path = sass.best_paths(fn, loop)["far"]
    assert [i.addr for i in path.instrs] == list(range(0x30, 0xF0, 0x10))
    counts = path.counts()
    assert counts == {"sync": 3, "mma": 2, "ex2": 1, "fp32": 1, "mem_async": 2, "int": 1, "select": 1, "branch": 1}
    assert sass.wgmma_batches(path.instrs) == [2]
    flight = sass.async_in_flight(path.instrs)
    assert flight == {"ldgsts": 1, "commit_groups": 1, "wait_pending": [1], "groups_in_flight": 2, "tma_loads": 0}
    line = sass.straight_line(fn)
    assert [i.addr for i in line.instrs] == [0x00, 0x10, 0x20, 0xF0] and line.inner_loops == [0]


NESTED = _listing(
    """
    00|    |MOV R1, RZ
    .L_x_0:
    10|    |LDS.128 R4, [R2]
    .L_x_1:
    20|    |HMMA.16816.F32.BF16 R8, R4, R6, R8
    30|    |IADD3 R3, R3, 0x1, RZ
    40| @P1|BRA `(.L_x_1)
    50|    |STS.64 [R2], R8
    60|    |ISETP.NE.AND P2, PT, R3, RZ, PT
    70| @P2|BRA `(.L_x_0)
    80|    |EXIT
    """
)


def test_nested_loops_have_parents_and_outer_path_skips_the_inner_body():
    (fn,) = sass.parse(NESTED)
    sass.analyze_cfg(fn)
    outer, inner = fn.loops
    assert inner.parent is outer and inner.depth == 1 and outer.depth == 0
    inner_path = sass.best_paths(fn, inner)["far"]
    assert [i.opcode for i in inner_path.instrs] == ["HMMA.16816.F32.BF16", "IADD3", "BRA"]
    outer_path = sass.best_paths(fn, outer)["far"]
    assert [i.opcode for i in outer_path.instrs] == ["LDS.128", "STS.64", "ISETP.NE.AND", "BRA"]
    assert outer_path.inner_loops == [inner.index]
    assert sass.mma_fma("HMMA.16816.F32.BF16") == 16 * 8 * 16
    assert sass.mma_fma("HGMMA.64x32x16.F32.BF16") == 64 * 32 * 16 / 4
    assert [sass.shared_bytes(i) for i in outer_path.instrs[:2]] == [512, 256]


# The shape nvcc 13 gives the sm_80 TC forward: a loop's exit is a predicated CALL.REL.NOINC to the label after
# its back edge (then an unconditional BRA back to the header), and a __syncwarp() in the next loop is a
# BRA.CONV ~URZ over a CALL of the warpsync subroutine (the diverged-warp fallback, which RETs).
CALL_EXIT = _listing(
    """
    00|    |MOV R1, c[0x0][0x28]
    10|    |ISETP.GE.AND P0, PT, R2, R3, PT
    .L_x_1:
    20|    |HMMA.16816.F32.BF16 R4, R8, R12, R4
    30|    |IADD3 R2, R2, 0x40, RZ
    40|    |ISETP.GE.AND P1, PT, R2, R3, PT
    50| @P1|CALL.REL.NOINC `(.L_x_2)
    60|    |BRA `(.L_x_1)
    .L_x_2:
    70|    |NOP
    80|    |MOV R5, RZ
    .L_x_3:
    90|    |HMMA.16816.F32.BF16 R4, R8, R12, R4
    a0|    |BRA.CONV ~URZ, `(.L_x_4)
    b0|    |MOV R150, 0xd0
    c0|    |CALL.REL.NOINC `($__internal_0_$__cuda_sm70_warpsync)
    .L_x_4:
    d0|    |MUFU.EX2 R6, R7
    e0|    |IADD3 R5, R5, 0x1, RZ
    f0|    |ISETP.GE.AND P2, PT, R5, R3, PT
    100| @P2|CALL.REL.NOINC `(.L_x_5)
    110|    |BRA `(.L_x_3)
    .L_x_5:
    120|    |EXIT
    $__internal_0_$__cuda_sm70_warpsync:
    130|    |WARPSYNC R151
    140|    |RET.REL.NODEC R150 `(k)
    .L_x_6:
    150|    |BRA `(.L_x_6)
    """
)


def test_loop_exit_through_call_rel_noinc_reaches_the_next_loop():
    (fn,) = sass.parse(CALL_EXIT)
    sass.analyze_cfg(fn)
    assert [(fn.blocks[lp.header].start, lp.parent) for lp in fn.loops] == [(0x20, None), (0x90, None)]
    first, second = (sass.best_paths(fn, lp)["far"] for lp in fn.loops)
    assert [i.addr for i in first.instrs] == [0x20, 0x30, 0x40, 0x50, 0x60]
    # BRA.CONV reads as the converged warp's jump: the warpsync fallback is not on the path
    assert [i.addr for i in second.instrs] == [0x90, 0xA0, 0xD0, 0xE0, 0xF0, 0x100, 0x110]
    line = sass.straight_line(fn)
    assert [i.addr for i in line.instrs] == [0x00, 0x10, 0x70, 0x80, 0x120] and line.inner_loops == [0, 1]
    # a CALL of a subroutine returns: it neither ends a block nor is a local (loop exit) call
    call = next(i for i in fn.instrs if i.addr == 0xC0)
    assert not call.local_call and not call.ends_block


@pytest.mark.parametrize(
    "opcode, cls",
    [
        ("HGMMA.64x16x16.F32.BF16", "mma"),
        ("HMMA.16816.F32", "mma"),
        ("MUFU.EX2", "ex2"),
        ("MUFU.RCP", "fp32"),
        ("FFMA", "fp32"),
        ("F2FP.BF16.F32.PACK_AB", "fp32"),
        ("FSEL", "select"),
        ("ISETP.GE.AND", "select"),
        ("P2R", "select"),
        ("UISETP.NE.AND", "select"),
        ("IMAD.WIDE.U32", "int"),
        ("LOP3.LUT", "int"),
        ("ULOP3.LUT", "int"),
        ("LEA.HI.X", "int"),
        ("LDG.E.128", "mem_global"),
        ("STG.E", "mem_global"),
        ("LDS.128", "mem_shared"),
        ("LDSM.16.MT88.4", "mem_shared"),
        ("LDGSTS.E.BYPASS.128", "mem_async"),
        ("UTMALDG.2D", "mem_async"),
        ("BAR.SYNC.DEFER_BLOCKING", "sync"),
        ("WARPGROUP.DEPBAR.LE", "sync"),
        ("SYNCS.PHASECHK.TRANS64", "sync"),
        ("BRA", "branch"),
        ("BSSY", "branch"),
        ("BSYNC", "branch"),
        ("EXIT", "branch"),
        ("MOV", "other"),
        ("SHFL.BFLY", "other"),
    ],
)
def test_classification(opcode, cls):
    assert sass.classify(opcode) == cls


KERNEL_SRC = """\
def kernel(n):
    acc = 0
    for j in range(n):
        s = j * 2
        if in_band:
            s += 1
            s += 2
        else:
            s -= 1
        acc += s
    for c in range(4):  # profile: other
        acc += c
    return acc


def attend_far_tile(x):
    return x
"""


def _line_info_prefix(tmp_path, text: str = KERNEL_SRC, name: str = "kern.py") -> str:
    """Write ``text`` as a source file and return the nvdisasm line-info comment prefix naming it (add the line)."""
    src = tmp_path / name
    src.write_text(text)
    roles.role_map.cache_clear()
    return f'//## File "{src}", line'


def _in_band_branch_loop(at: str) -> str:
    """Listing lines of KERNEL_SRC's key loop with its in-band branch (lines 4-10): the band arm 0x30-0x60, the far
    arm 0x70, the loop's back edge at 0x90 (``at``: _line_info_prefix's)."""
    return f"""
        .L_x_0:
        {at} 4
        10|    |IMAD R2, R3, 0x2, RZ
        20| @P0|BRA `(.L_x_1)
        {at} 6
        30|    |FADD R4, R4, 1
        40|    |FADD R4, R4, 2
        50|    |LDS R5, [R6]
        60|    |BRA `(.L_x_2)
        .L_x_1:
        {at} 9
        70|    |FADD R4, R4, -1
        .L_x_2:
        {at} 10
        80|    |MUFU.EX2 R7, R4
        90| @P1|BRA `(.L_x_0)
    """.strip()


def test_python_role_map_follows_the_convention(tmp_path):
    src = tmp_path / "kern.py"
    src.write_text(KERNEL_SRC)
    roles.role_map.cache_clear()
    got = roles.role_map(str(src))
    assert {line: got.get(line) for line in range(1, 18)} == {
        **dict.fromkeys(range(1, 18)),
        6: "band",
        7: "band",
        9: "far",
        12: "other",
        16: "far",
        17: "far",
    }
    # inline frames: the innermost frame with a role decides
    assert roles.instruction_role(((str(tmp_path / "none.py"), 3), (str(src), 6))) == "band"
    assert roles.instruction_role(((str(src), 17), (str(src), 6))) == "far"


def test_cpp_role_map_follows_the_convention(tmp_path):
    src = tmp_path / "kern.cu"
    src.write_text(
        "__device__ void fwd_band_tile(int x) {\n  x += 1;\n}\n"  # 1-3
        "__global__ void k(int n) {\n"  # 4
        "  for (int j = 0; j < n; ++j) {\n"  # 5
        "    if (in_band) {\n      n += 1;  // { not a brace\n    } else {\n      n -= 1;\n    }\n"  # 6-10
        "  }\n"  # 11
        "  for (int c = 0; c < 4; ++c) {  // profile: other\n    n += c;\n  }\n}\n"  # 12-15
    )
    roles.role_map.cache_clear()
    got = roles.role_map(str(src))
    assert [got.get(i) for i in range(1, 16)] == [
        "band", "band", None, None, None, "band", "band", "far", "far", None, None, "other", "other", None, None
    ]  # fmt: skip


def test_band_and_far_paths_follow_source_roles(tmp_path):
    at = _line_info_prefix(tmp_path)
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        {_in_band_branch_loop(at)}
        a0|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    sass.analyze_cfg(fn)
    roles.assign_roles(fn)
    paths = sass.best_paths(fn, fn.loops[0])
    assert [i.addr for i in paths["far"].instrs] == [0x10, 0x20, 0x70, 0x80, 0x90]
    assert [i.addr for i in paths["band"].instrs] == [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x80, 0x90]
    assert paths["band"].band_blocks == 1 and paths["far"].band_blocks == 0


def test_band_tile_counts_by_hand():
    # L = 256, 64-row blocks, 32-key tiles, R = 64: a block at p0 meets tiles with p0 - 95 < j0 < p0 + 127:
    # p0 = 0: j0 0..96 (4); 64: 0..160 (6); 128: 64..224 (6); 192: 128..224 (4) -> 20 of 32.
    assert issue_model.band_tiles(256, 64, 32, 64) == (20, 12)
    # Blocks far apart from most keys: L = 1024, 64 x 64 tiles, R = 64: 3 band tiles per interior block.
    band, far = issue_model.band_tiles(1024, 64, 64, 64)
    assert band == 16 * 3 - 2 and band + far == 16 * 16


def test_issue_model_by_hand():
    far = issue_model.Cost(instructions=400, ex2=4, fma_wgmma=64 * 32 * 64 / 8 * 2, shared_bytes=1024)
    band = issue_model.Cost(instructions=800, ex2=8, fma_wgmma=64 * 32 * 64 / 8 * 2, shared_bytes=2048)
    once = issue_model.Cost(instructions=1000)
    p = issue_model.predict(256, 2, 64, 32, 8, far, band, once, r=64, sms=4)
    # per head: 12 far + 20 band tiles + 4 programs' once; x 2 heads x 8 warps, over 4 SMs
    instructions = (12 * 400 + 20 * 800 + 4 * 1000) * 2 * 8 / 4
    assert p["cycles"]["issue"] == round(instructions / 4)
    assert p["cycles"]["ex2"] == round((12 * 4 + 20 * 8) * 2 * 8 / 4 * 32 / 16)
    assert p["cycles"]["tensor"] == round(32 * 64 * 32 * 64 / 8 * 2 * 2 * 8 / 4 / 2048)
    assert p["cycles"]["shared"] == round((12 * 1024 + 20 * 2048) * 2 * 8 / 4 / 128)
    assert p["bound"] == "issue" and p["programs"] == 8
    assert p["time_us"] == round(instructions / 4 / issue_model.CLOCK_HZ * 1e6, 2)


def test_occupancy_by_hand():
    from nezha_kernels.compile_check.profile_row import occupancy

    # 168 regs -> 5376 per warp (21 x 256); 8 warps -> 43008: 1 block by registers
    assert occupancy(168, 32768, 8, 90) == 1
    # 64 regs x 4 warps: 8192 per block -> 8 by regs; 16 KiB + 1 KiB shared -> 13 on sm_90; 64 / 4 = 16 warps
    assert occupancy(64, 16384, 4, 90) == 8
    assert occupancy(32, 48 * 1024, 4, 80) == 3


@pytest.fixture(scope="module")
def fwd_row(tmp_path_factory):
    pytest.importorskip("triton")
    from nezha_kernels.compile_check import profile

    out = tmp_path_factory.mktemp("profile")
    (row,) = profile.profile_rows((90,), ("bf16",), (64,), ("triton",), out, triton_kernels=("fwd",), plain=False)
    return row, out


def test_real_compile_through_the_pipeline(fwd_row):
    row, out = fwd_row
    assert row["status"] == "ok", row.get("message")
    for key in ("kernel", "backend", "arch", "compiler", "dtype", "head_dim", "tile", "warps", "stages",
                "registers", "spill_bytes", "shared_bytes", "loops", "model", "mma_kinds"):  # fmt: skip
        assert key in row
    assert (row["kernel"], row["backend"], row["arch"], row["dtype"], row["head_dim"]) == (
        "fwd",
        "triton",
        90,
        "bf16",
        64,
    )
    assert 0 < row["registers"] <= 255 and row["spill_bytes"] == 0 and row["shared_bytes"] > 0
    json.dumps(row)  # every field is JSON
    (out / row["sass_file"]).read_text().index("MUFU.EX2")
    far = [e for e in row["loops"] if e["role"] == "far"]
    assert far, row["loops"]
    main = max(far, key=lambda e: e["total"])
    assert main["instructions"]["mma"] > 0 and main["instructions"]["ex2"] > 0
    assert any(k.startswith("HGMMA.64x") for k in main["mma"])
    assert main["total"] == sum(main["instructions"].values())
    assert math.isclose(main["per_score"], main["total"] / main["scores_per_iter"], rel_tol=1e-3)
    assert main["scores_per_iter"] == row["tile"][0] * row["tile"][1] / row["warps"]
    times = [p["time_us"] for p in row["model"]["predictions"]]
    assert times == sorted(times) and times[0] > 0


def test_plain_flash_matches_the_formula_under_the_interpreter():
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from nezha_kernels.compile_check.plain_flash import plain_flash_forward
        torch.manual_seed(0)
        # fp16, not bf16: the interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584)
        for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 5e-3)):
            q, k, v = (torch.randn(3, n, 16, dtype=torch.float64) for n in (32, 48, 48))
            q, k, v = (t.to(dtype) for t in (q, k, v))
            out = plain_flash_forward(q, k, v, scale=0.3, block_m=16, block_n=16)
            q, k, v = (t.double() for t in (q, k, v))
            ref = torch.softmax(q @ k.transpose(1, 2) * 0.3, -1) @ v
            err = (out.double() - ref).abs().max().item()
            assert err < tol, (dtype, err)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_inner_loops_join_their_parent_at_one_trip_for_the_model():
    from nezha_kernels.compile_check import profile_analyze

    (fn,) = sass.parse(NESTED)
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64)
    outer, inner = analysis["loops"]
    assert (outer["depth"], inner["depth"]) == (0, 1)
    assert outer["total"] == 4 and outer["inner_loop_instructions"] == 3
    assert outer["per_score"] == round(4 / 64, 4) and outer["per_score_with_inner"] == round(7 / 64, 4)
    far, band, once = profile_analyze.model_costs(analysis)
    # no roles: the heaviest top-level loop is the per-tile loop; MOV + EXIT run once
    assert band is None and far.instructions == 7 and far.fma_sync == 16 * 8 * 16 and once.instructions == 2
    assert far.shared_bytes == 512 + 256


def test_profile_flags_need_profile_and_out():
    from nezha_kernels.compile_check import main

    with pytest.raises(SystemExit):
        main(["--profile"])
    with pytest.raises(SystemExit):
        main(["--out", "somewhere"])


def test_unmarked_arm_of_a_far_branch_is_band(tmp_path):
    # triton 3.6 emits no inline chains: the band arm's instructions may carry only helper lines (no role)
    src = tmp_path / "kern.py"
    src.write_text(KERNEL_SRC)
    helper = tmp_path / "helper.py"
    helper.write_text("def helper(x):\n    return x\n")
    roles.role_map.cache_clear()
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_0:
        //## File "{src}", line 4
        10| @P0|BRA `(.L_x_1)
        //## File "{helper}", line 2
        20|    |FADD R4, R4, 1
        30|    |HMMA.16816.F32.BF16 R8, R4, R6, R8
        40|    |BRA `(.L_x_2)
        .L_x_1:
        //## File "{src}", line 9
        50|    |FADD R4, R4, -1
        .L_x_2:
        //## File "{src}", line 10
        60| @P1|BRA `(.L_x_0)
        70|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    sass.analyze_cfg(fn)
    roles.assign_roles(fn)
    assert [b.role for b in fn.blocks] == ["", "", "band", "far", "", ""]
    paths = sass.best_paths(fn, fn.loops[0])
    assert [i.addr for i in paths["far"].instrs] == [0x10, 0x50, 0x60]
    assert [i.addr for i in paths["band"].instrs] == [0x10, 0x20, 0x30, 0x40, 0x60]


def test_band_only_loop_counts_its_own_tile_width(tmp_path):
    """A band loop of narrower tiles than the far loop (the Triton band loops: 16 keys against 64): its per-score
    figures use its own scores per iteration, and the model prices a far-width band tile at cols / band_cols of
    its iterations."""
    from nezha_kernels.compile_check import profile_analyze

    at = _line_info_prefix(tmp_path)
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_0:
        {at} 16
        10|    |FADD R4, R4, 1
        20| @P0|BRA `(.L_x_0)
        .L_x_1:
        {at} 6
        30|    |FADD R4, R4, 2
        40|    |FADD R4, R4, 3
        50|    |MUFU.EX2 R7, R4
        60| @P1|BRA `(.L_x_1)
        70|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64, band_scores_per_iter=16)
    far, band = analysis["loops"]
    assert (far["role"], far["scores_per_iter"], far["total"]) == ("far", 64, 2)
    assert (band["role"], band["scores_per_iter"], band["total"]) == ("band", 16, 4)
    assert band["per_score"] == 0.25 and band["ex2_per_score"] == 2.0
    far_cost, band_cost, _ = profile_analyze.model_costs(analysis)
    assert far_cost.instructions == 2 and band_cost.instructions == 16 and band_cost.ex2 == 4


def test_far_tiles_run_the_far_only_loop_and_the_band_loop_its_own_width(tmp_path):
    """The split kernels under triton 3.6: a far-only loop, then the band loop with a runtime in-band branch (a far
    and a band path, 16-key tiles), whose block of band code holds too few instructions to carry a role by vote.
    Far tiles cost the far-only loop, not the band loop's out-of-band path; the band loop is band by the one role
    its instructions name, and both its paths count at the band width."""
    from nezha_kernels.compile_check import profile_analyze

    at = _line_info_prefix(tmp_path)
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_0:
        {at} 16
        10|    |FADD R4, R4, 1
        20| @P0|BRA `(.L_x_0)
        .L_x_1:
        {at} 1
        30|    |FADD R4, R4, 2
        40|    |FADD R4, R4, 3
        {at} 6
        50|    |FADD R4, R4, 4
        {at} 1
        60|    |FADD R4, R4, 5
        70| @P1|BRA `(.L_x_1)
        80|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64, band_scores_per_iter=16)
    assert [(e["role"], e["scores_per_iter"], e["total"]) for e in analysis["loops"]] == [
        ("far", 64, 2),
        ("band", 16, 5),
    ]
    far, band, _ = profile_analyze.model_costs(analysis)
    assert far.instructions == 2 and band.instructions == 20


def test_out_of_band_path_of_a_band_loop_is_not_a_far_tile(tmp_path):
    """A far-only loop and a band loop with both paths (an in-band branch): the model's far tile is the far-only
    loop's iteration, though the band loop's out-of-band path is heavier; both band-loop paths count at the band
    width."""
    from nezha_kernels.compile_check import profile_analyze

    at = _line_info_prefix(tmp_path)
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_9:
        {at} 16
        08|    |FADD R4, R4, 1
        0c| @P2|BRA `(.L_x_9)
        {_in_band_branch_loop(at)}
        a0|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64, band_scores_per_iter=16)
    assert [(e["role"], e["scores_per_iter"], e["total"]) for e in analysis["loops"]] == [
        ("far", 64, 2),
        ("far", 16, 5),
        ("band", 16, 8),
    ]
    far, band, _ = profile_analyze.model_costs(analysis)
    assert far.instructions == 2 and band.instructions == 32


def test_far_tiles_of_a_far_loop_nested_in_a_loop_over_sides(tmp_path):
    """The CUDA forward's structure: an outer loop over the two sides around the far-tile loop. A far tile costs
    one iteration of the nested far-only loop, not an iteration of the outer loop (whose path may skip it)."""
    from nezha_kernels.compile_check import profile_analyze

    at = _line_info_prefix(tmp_path)
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_0:
        {at} 4
        10|    |IMAD R2, R3, 0x2, RZ
        20| @P0|BRA `(.L_x_2)
        .L_x_1:
        {at} 16
        30|    |FADD R4, R4, 1
        40|    |MUFU.EX2 R7, R4
        50| @P1|BRA `(.L_x_1)
        .L_x_2:
        {at} 4
        60| @P2|BRA `(.L_x_0)
        70|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64)
    assert [(e["role"], e["depth"]) for e in analysis["loops"]] == [("other", 0), ("far", 1)]
    far, band, once = profile_analyze.model_costs(analysis)
    assert band is None and (far.instructions, far.ex2) == (3, 1)
    assert once.instructions == 2 + 3  # MOV, EXIT; the outer loop at one trip (its path skips the far loop)


def test_each_band_loop_counts_at_its_own_function_width(tmp_path):
    """The Triton forward's rotation band loop (32-key tiles) and its general band loop (16, the partial tail): a
    {function: scores} map gives each loop the width of the function it is written in, and band tiles run the
    first function of the model's preference that the kernel has."""
    from nezha_kernels.compile_check import profile_analyze

    functions = ("far_loop", "band_loop", "rotation_band_loop")
    at = _line_info_prefix(
        tmp_path, "\n\n\n".join(f"def {name}(x):\n    return x" for name in functions) + "\n", "loops.py"
    )
    src = tmp_path / "loops.py"
    assert [roles.function_at(str(src), line) for line in (2, 6, 10, 3)] == [
        "far_loop",
        "band_loop",
        "rotation_band_loop",
        "",
    ]
    text = _listing(
        f"""
        00|    |MOV R1, RZ
        .L_x_0:
        {at} 2
        10|    |FADD R4, R4, 1
        20| @P0|BRA `(.L_x_0)
        .L_x_1:
        {at} 10
        30|    |FADD R4, R4, 2
        40|    |FADD R4, R4, 3
        50| @P1|BRA `(.L_x_1)
        .L_x_2:
        {at} 6
        60|    |FADD R4, R4, 4
        70|    |FADD R4, R4, 5
        80| @P2|BRA `(.L_x_2)
        90|    |EXIT
        """
    )
    (fn,) = sass.parse(text)
    widths = {"band_loop": 16, "rotation_band_loop": 32}
    analysis = profile_analyze.analyze_function(fn, scores_per_iter=64, band_scores_per_iter=widths)
    assert [(e["role"], e["scores_per_iter"], e["total"]) for e in analysis["loops"]] == [
        ("far", 64, 2),
        ("band", 32, 3),
        ("band", 16, 3),
    ]
    far, band, _ = profile_analyze.model_costs(analysis)
    assert far.instructions == 2 and band.instructions == 12  # the heaviest: the general loop's 3 at 16 keys, x 4
    far, band, _ = profile_analyze.model_costs(analysis, band_functions=("rotation_band_loop", "band_loop"))
    assert far.instructions == 2 and band.instructions == 6  # band tiles run the rotation loop: 3 at 32 keys, x 2
