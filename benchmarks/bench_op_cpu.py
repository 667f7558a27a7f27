"""CPU op timings of the torch backend against the reference, side by side, interleaved, medians.

    PYTHONPATH=. python benchmarks/bench_op_cpu.py [--before OLD/torch_backend] [--repeats 7] [--dropout 0.1]
        [--threads 1] [--only dense|varlen]

Dense cells: [B, 12, L, 64] float32 with B * L = 512 (the `nezha-kernels bench` CPU grid), fwd+bwd.
Varlen cells: the length mix (log-normal, median 48, sigma 0.6, clipped to [8, 512]) of 16 and 64 sentences,
fwd+bwd of relative_attention_varlen (torch, reference) and of the dense torch op on the padded batch.
``--before`` loads an older copy of the backend package (nezha_kernels/backends/torch_backend, e.g. from
``git worktree add``) as an extra provider "torch-before", so that a change is
measured against its predecessor in the same run (the machine is shared: every repeat runs every provider
once, in a rotating order, and the median is reported).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time

import torch

import nezha_kernels as nk
from nezha_kernels.inputs import prepare_inputs

H, D, R = 12, 64, 64


def length_mix(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.exp(math.log(48) + 0.6 * torch.randn(n, generator=g, dtype=torch.float64))
    return [int(x) for x in lengths.round().clamp(8, 512)]


def load_before(path: str):
    """The backend package in directory ``path``, imported as a sibling of nezha_kernels.backends.torch_backend."""
    spec = importlib.util.spec_from_file_location(
        "nezha_kernels.backends._torch_before", f"{path}/__init__.py", submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dense_cell(b: int, length: int, dropout_p: float, before):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, H, length, D, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, H, length, D, generator=g)

    def run(name):
        if name == "torch-before":
            out = before.forward(prepare_inputs(q, k, v, max_relative_position=R, dropout_p=dropout_p))
        else:
            out = nk.relative_attention(q, k, v, max_relative_position=R, dropout_p=dropout_p, backend=name)
        torch.autograd.grad(out, (q, k, v), grad)

    return run


def varlen_cell(n: int, dropout_p: float):
    lengths = length_mix(n, seed=n)
    cu = torch.tensor([0] + [sum(lengths[: i + 1]) for i in range(n)], dtype=torch.int32)
    t, lmax = sum(lengths), max(lengths)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(t, H, D, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(t, H, D, generator=g)
    pq, pk, pv = (torch.randn(n, H, lmax, D, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.arange(lmax)[None, :] < torch.tensor(lengths)[:, None]
    pgrad = torch.randn(n, H, lmax, D, generator=g)

    def run(name):
        if name == "torch-padded":
            out = nk.relative_attention(
                pq, pk, pv, attention_mask=mask, max_relative_position=R, dropout_p=dropout_p, backend="torch"
            )
            torch.autograd.grad(out, (pq, pk, pv), pgrad)
            return
        out = nk.relative_attention_varlen(q, k, v, cu, max_relative_position=R, dropout_p=dropout_p, backend=name)
        torch.autograd.grad(out, (q, k, v), grad)

    return run, f"{n} sentences, {t} tokens (padded {n * lmax})"


def measure(run, providers, repeats: int) -> dict[str, float]:
    for name in providers:  # warm-up (and the dropout mask's one-time compile)
        run(name)
    times = {name: [] for name in providers}
    for rep in range(repeats):
        order = providers[rep % len(providers) :] + providers[: rep % len(providers)]
        for name in order:
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="an older torch_backend package directory to time as 'torch-before'")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--only", choices=("dense", "varlen"), default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (1 isolates the work from OpenMP waits on a busy shared machine)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    before = load_before(args.before) if args.before else None
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, dropout_p={args.dropout}, "
        f"median of {args.repeats}, fwd+bwd ms"
    )
    if args.only != "varlen":
        providers = ["reference", "torch"] + (["torch-before"] if before else [])
        for b, length in ((4, 128), (2, 256), (1, 512)):
            result = measure(dense_cell(b, length, args.dropout, before), providers, args.repeats)
            print(f"dense [{b}, {H}, {length}, {D}]: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()))
    if args.only != "dense":
        for n in (16, 64):
            run, label = varlen_cell(n, args.dropout)
            result = measure(run, ["reference", "torch", "torch-padded"], args.repeats)
            print(f"varlen {label}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
