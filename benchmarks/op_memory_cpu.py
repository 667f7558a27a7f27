"""Peak memory and time of one relative_attention forward+backward on CPU, per backend and length.

Each measurement runs in a fresh subprocess (so peaks do not mix) under an address-space limit (so a
backend that would exhaust the machine fails cleanly and is reported as OOM). Peak memory is the rise of
the process's peak resident set (ru_maxrss) over its level after the inputs exist: it includes every
temporary the op allocates, forward and backward.

    python benchmarks/op_memory_cpu.py [--lengths 512 2048 4096] [--heads 12] [--limit-gib 16]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
limit = int(sys.argv[5]) * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch
import nezha_kernels as nk
backend, length, heads, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
q, k, v = (torch.randn(1, heads, length, dim, requires_grad=True) for _ in range(3))
grad = torch.randn(1, heads, length, dim)
nk.relative_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], backend=backend).sum().backward()  # warm-up
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = nk.relative_attention(q, k, v, backend=backend)
t1 = time.perf_counter()
out.backward(grad)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mib": (peak - base) / 1024, "fwd_s": t1 - t0, "bwd_s": t2 - t1}))
"""


def measure(backend: str, length: int, heads: int, dim: int, limit_gib: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, backend, str(length), str(heads), str(dim), str(limit_gib)],
        capture_output=True,
        text=True,
    )
    row = {"backend": backend, "B": 1, "H": heads, "L": length, "D": dim, "dtype": "float32"}
    if proc.returncode == 0:
        row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        row["status"] = "ok"
    else:
        oom = "MemoryError" in proc.stderr or "alloc" in proc.stderr.lower() or proc.returncode < 0
        row.update(
            peak_mib=None,
            fwd_s=None,
            bwd_s=None,
            status=f"OOM (> {limit_gib} GiB)" if oom else "error: " + proc.stderr.strip().splitlines()[-1][:120],
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["reference", "torch"])
    parser.add_argument("--limit-gib", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "op_memory_cpu.csv"))
    args = parser.parse_args()
    import torch

    rows = []
    for length in args.lengths:
        for backend in args.backends:
            row = measure(backend, length, args.heads, args.dim, args.limit_gib)
            row.update(torch=torch.__version__, machine=f"{platform.machine()} {torch.get_num_threads()} threads")
            rows.append(row)
            peak = "-" if row["peak_mib"] is None else f"{row['peak_mib']:.0f}"
            fwd = "-" if row["fwd_s"] is None else f"{row['fwd_s']:.2f}"
            bwd = "-" if row["bwd_s"] is None else f"{row['bwd_s']:.2f}"
            print(
                f"| {backend:<9} | [1, {args.heads}, {length}, {args.dim}] | {peak:>8} MiB "
                f"| fwd {fwd:>6} s | bwd {bwd:>6} s | {row['status']}",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
