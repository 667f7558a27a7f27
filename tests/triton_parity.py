"""Parity checks of backend="triton" against the float64 formula (tests/formula.py), shared by the
interpreter tests (CPU tensors, TRITON_INTERPRET=1) and the GPU tests (CUDA tensors).

Every check draws fresh random inputs, runs the public op forward and backward, and compares the
output and the gradients of q, k and v with the formula's autograd in float64. run_interpreted runs a
test file's interpreted tests in a TRITON_INTERPRET=1 subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import formula
import torch
from tolerance import assert_all_within

import nezha_kernels as nk
from nezha_kernels.dropout import keep_mask

# k per dtype and output (tests/tolerance.py): the kernels' error against the float64 formula is at most k times the
# error of the formula computed by PyTorch in the kernels' dtype (on the same device), both from the same rounded
# inputs. Low-precision kernels round p to the input dtype before the p @ V and bucket @ T dots, as flash attention.
# Largest ratios under the interpreter when k was set (NEZHA_TOL_LOG): fp32 0.27 (the floor), fp16 0.99 (dq). bf16
# had needed 3 for dk / dv while the interpreter rounded float32 -> bf16 toward zero (tests/interpreter_rounding.py:
# gradients at 1.8x PyTorch's error, median); rounded as a GPU rounds, 0.3-1.0x (median), 1.75 at most over 48 seeded
# cases (benchmarks/NOTES.md "bf16 parity under the interpreter: the interpreter truncates").
K = {
    torch.float32: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    torch.float16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
    torch.bfloat16: dict(out=2.0, dq=2.0, dk=2.0, dv=2.0),
}

# Fixed absolute / relative tolerances for values of order 1, still used by tests/test_triton_varlen.py.
TOL = {
    torch.float32: dict(fwd=3e-5, grad=1e-4),
    torch.float16: dict(fwd=5e-3, grad=2e-2),
    torch.bfloat16: dict(fwd=4e-2, grad=1.2e-1),
}


def run_interpreted(test_file: str, extra_env: dict, select: str, *more: tuple[dict, str]) -> None:
    """Run the tests of ``test_file`` matching ``-k select`` in a subprocess with TRITON_INTERPRET=1.

    TRITON_INTERPRET is read when the kernels are decorated: the interpreted tests need a process that set it
    before importing them, while the AOT compile tests need it unset. ``more``: further (extra_env, select) runs of
    the same file, started at once and run side by side (one torch thread each): the interpreter is single-threaded
    Python, so two suites on two cores take the time of the longer one (CI time).
    """
    runs = [(extra_env, select), *more]
    threads = {"OMP_NUM_THREADS": "1"} if len(runs) > 1 else {}
    procs = []
    for env_extra, sel in runs:
        env = {**os.environ, "TRITON_INTERPRET": "1", **threads, **env_extra}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            sel,
            str(Path(test_file).resolve()),
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        )
    for (env_extra, sel), proc in zip(runs, procs, strict=True):
        try:
            stdout, stderr = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        label = f"-k {sel!r} with {env_extra}"
        assert proc.returncode == 0, label + "\n" + stdout[-8000:] + stderr[-4000:]
        assert " passed" in stdout and " failed" not in stdout, label


def check(
    device,
    dtype,
    b,
    h,
    lq,
    lk,
    d,
    r,
    *,
    table="nezha",
    key_padding=None,
    additive=None,
    causal=False,
    q_offset=0,
    head_mask=None,
    scale=None,
    dropout_p=0.0,
    strided=False,
    seed=0,
):
    """Run backend="triton" and the formula on the same inputs; assert output and dq, dk, dv agree.

    table: "nezha" passes NEZHA's sinusoid as an explicit rel_table (the kernels read it: gathers / block-band
    scratch), "default" passes rel_table=None (the op's own sinusoid: the kernels' rotation path, rotation.py),
    "random" a random table. With "default" the float64 reference uses the exact sinusoid (formula.nezha_table: what
    the rotation path evaluates, to fp32 rounding) and the same-precision baseline the table in the kernels' dtype
    (what the op's default is at that dtype).
    """
    g = torch.Generator().manual_seed(seed)
    if strided:
        # q, k, v as views of one fused [B, L, 3, H, D] projection (Lq == Lk): no contiguous copies.
        assert lq == lk
        fused = torch.randn(b, lq, 3, h, d, generator=g).to(dtype).to(device)
        q, k, v = (fused[:, :, i].permute(0, 2, 1, 3) for i in range(3))
    else:
        q, k, v = (torch.randn(b, h, n, d, generator=g).to(dtype).to(device) for n in (lq, lk, lk))
    if table in ("nezha", "default"):
        tab = nk.sinusoidal_table(r, d, dtype=dtype, device=device)
    else:
        tab = torch.randn(2 * r + 1, d, generator=g).to(dtype).to(device)
    mask = key_padding if key_padding is not None else additive
    mask = mask.to(device) if mask is not None else None
    hm = head_mask.to(device) if head_mask is not None else None

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)] if not strided else None
    if strided:
        fused_leaf = fused.detach().clone().requires_grad_()
        leaves = [fused_leaf[:, :, i].permute(0, 2, 1, 3) for i in range(3)]
        assert not leaves[0].is_contiguous()
    torch.manual_seed(seed + 1)  # the op draws its dropout seed from torch's default generator
    out = nk.relative_attention(
        *leaves,
        rel_table=None if table == "default" else tab,
        max_relative_position=r,
        attention_mask=mask,
        causal=causal,
        q_offset=q_offset,
        head_mask=hm,
        scale=scale,
        dropout_p=dropout_p,
        backend="triton",
    )
    assert out.dtype == dtype and out.shape == (b, h, lq, d) and out.device.type == torch.device(device).type

    keep = None
    if dropout_p > 0.0:
        torch.manual_seed(seed + 1)
        drop_seed = int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())
        keep = keep_mask(drop_seed, dropout_p, b, h, torch.arange(lq), lk, torch.device("cpu"))
    raw = dict(
        r=r,
        attention_mask=mask,
        causal=causal,
        q_offset=q_offset,
        scale=scale,
        keep=keep,
        dropout_p=dropout_p,
        head_mask=hm,
    )
    grad_out = torch.randn(b, h, lq, d, generator=g).to(dtype).to(device)
    grads = torch.autograd.grad(out, [fused_leaf] if strided else leaves, grad_out)
    if strided:
        grads = [grads[0][:, :, i].permute(0, 2, 1, 3) for i in range(3)]
    # The formula in float64 on the CPU (the reference) and in the kernels' dtype on their device (the baseline).
    expected, same_precision = {}, {}
    for results, precision, where in ((expected, torch.float64, "cpu"), (same_precision, dtype, device)):
        ref = [t.detach().to(device=where, dtype=precision).requires_grad_() for t in (q, k, v)]
        placed = {n: t.to(where) if isinstance(t, torch.Tensor) else t for n, t in raw.items()}
        ref_table = tab
        if table == "default" and precision == torch.float64:
            ref_table = formula.nezha_table(r, d)
        o = formula.attention(*ref, ref_table.to(where), dtype=precision, **placed)
        ref_grads = torch.autograd.grad(o, ref, grad_out.to(device=where, dtype=precision))
        results.update(out=o.detach().cpu(), **{f"d{n}": t.cpu() for n, t in zip("qkv", ref_grads, strict=True)})
    got = {"out": out.detach().cpu(), **{f"d{n}": t.cpu() for n, t in zip("qkv", grads, strict=True)}}
    assert_all_within(got, expected, same_precision, K[dtype])
    return out
