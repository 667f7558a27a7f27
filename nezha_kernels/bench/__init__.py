"""`nezha-kernels bench`: op and model benchmarks on the present device, and the length mix (real sentence lengths,
padded vs padding-free vs transformers, see bench/length_mix.py) -> table, CSV/JSON, PNG plots.

    nezha-kernels bench [--full] [--dry-run] [--device cpu|cuda] [--out DIR] [--only op|model|length-mix]
    nezha-kernels bench --replot [--out DIR]    # table and plots again from DIR/results.json, nothing run

Default: a quick grid (CPU: about 1.5 minutes on a quiet 2-core CPU, several times that on a busy one;
model points 1x128 and 1x1024, past transformers' 512 tokens); --full: lengths 128..16384 and every
model point; --dry-run: a tiny grid that checks the whole pipeline in seconds. Results go to
DIR/results.csv and DIR/results.json (appended to, so runs sit side by side; --fresh overwrites) and
DIR/speedup_<dtype>.png (the headline: speed-up over transformers per workload), DIR/ops_<dtype>.png,
DIR/models_<dtype>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from .op_bench import PROVIDERS

    p = argparse.ArgumentParser(
        prog="nezha-kernels bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the whole grid (lengths 128..16384, all model points)")
    size.add_argument("--dry-run", action="store_true", help="a tiny grid: checks the pipeline in seconds")
    size.add_argument(
        "--replot",
        action="store_true",
        help="run nothing: print the table and redraw the plots from --out's results.json (newest run of each cell)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda if present, else cpu)")
    p.add_argument("--out", default="bench-results", help="results folder (default: bench-results)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=("op", "model", "length-mix", "all"),
        default=["all"],
        help="which benchmarks to run (one or several)",
    )
    p.add_argument(
        "--providers",
        nargs="+",
        choices=tuple(PROVIDERS),
        default=None,
        help="op-benchmark providers (default: all; unusable ones are listed as skipped)",
    )
    p.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=None,
        metavar="L",
        help="op-benchmark sequence lengths instead of the grid's, e.g. 512 1024 2048",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=("float16", "bfloat16", "float32"),
        default=None,
        help="op-benchmark dtypes instead of the grid's",
    )
    p.add_argument(
        "--modes",
        nargs="+",
        choices=("fwd", "bwd", "fwd+bwd"),
        default=None,
        help="op-benchmark modes instead of all three",
    )
    p.add_argument(
        "--parity-len",
        type=int,
        default=None,
        metavar="L",
        help="length of the float64 parity check each op provider must pass before it is timed "
        "(default: 700 on GPU, 96 on CPU; 0: no check)",
    )
    p.add_argument(
        "--failed-parity",
        nargs="+",
        choices=tuple(PROVIDERS),
        default=(),
        help="op providers whose GPU tests failed: their rows are marked skipped, never timed (gpu_suite.sh)",
    )
    p.add_argument("--no-plots", action="store_true", help="write the table, CSV and JSON only")
    p.add_argument(
        "--head-dim",
        type=int,
        default=None,
        metavar="D",
        help="op-benchmark head dim instead of the grid's 64 (e.g. 128)",
    )
    p.add_argument(
        "--model-points",
        nargs="+",
        default=None,
        metavar="BxL",
        help="model batch x length points instead of the grid's, e.g. 4x512 1x2048",
    )
    p.add_argument(
        "--model-backends",
        nargs="+",
        default=None,
        choices=("reference", "torch", "triton", "cuda"),
        help="our attention backends for the model benchmark (default: the grid's)",
    )
    p.add_argument("--fresh", action="store_true", help="overwrite results.csv/json instead of appending")
    p.add_argument(
        "--limit-gib",
        type=float,
        default=None,
        help="CPU: address-space cap per measurement; above it a cell is OOM (default: min(16, 75%% of RAM))",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole run; cells not started by then are marked 'skipped: time budget'",
    )
    p.add_argument("--cell-timeout", type=float, default=600.0, help="CPU: seconds before a cell is marked timeout")
    return p


def _point(text: str) -> tuple[int, int]:
    batch, sep, length = text.lower().partition("x")
    if not (sep and batch.isdigit() and length.isdigit() and int(batch) > 0 and int(length) > 0):
        raise SystemExit(f"--model-points: expected BxL with positive integers (e.g. 4x512), got {text!r}")
    return int(batch), int(length)


def _replot(out: Path) -> int:
    from .plots import plot_all
    from .results import latest_per_cell, read_json
    from .table import format_table

    source = out / "results.json"
    if not source.is_file():
        raise SystemExit(f"--replot: no results.json in {out} (pass the folder of a run with --out)")
    rows = latest_per_cell(read_json(source))
    print(format_table(rows))
    written = plot_all(rows, out)
    print(f"\n{len(rows)} rows from {source}; wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv[:1] == ["--"]:  # `nezha-kernels bench -- --full` reaches us with the separator
        argv = argv[1:]
    args = _parser().parse_args(argv)
    if args.replot:
        return _replot(Path(args.out))
    import torch

    from .length_mix import length_mix_grid, run_length_mix_bench, steps_of
    from .memory import default_limit_gib
    from .model_bench import model_grid, run_model_bench
    from .op_bench import PROVIDERS, op_grid, run_op_bench
    from .plots import plot_all
    from .progress import Progress
    from .results import environment, write_csv, write_json
    from .table import format_table
    from .timing import cpu_cores, timing_warnings

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise SystemExit(f"--device: {exc}") from None
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be cpu or cuda[:N], got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    limit_gib = args.limit_gib or default_limit_gib()

    env = environment(device)
    ogrid = op_grid(device, full=args.full, dry_run=args.dry_run)
    mgrid = model_grid(device, full=args.full, dry_run=args.dry_run)
    if args.lengths:
        if min(args.lengths) <= 0:
            raise SystemExit(f"--lengths: expected positive integers, got {args.lengths}")
        ogrid = dataclasses.replace(ogrid, lengths=tuple(args.lengths))
    if args.dtypes:
        ogrid = dataclasses.replace(ogrid, dtypes=tuple(args.dtypes))
    if args.modes:
        ogrid = dataclasses.replace(ogrid, modes=tuple(args.modes))
    parity_len = args.parity_len if args.parity_len is not None else (700 if dev.type == "cuda" else 96)
    if parity_len < 0:
        raise SystemExit(f"--parity-len: expected 0 or a positive length, got {parity_len}")
    if args.head_dim is not None:
        if args.head_dim <= 0 or args.head_dim % 2:
            raise SystemExit(f"--head-dim: expected a positive even integer, got {args.head_dim}")
        ogrid = dataclasses.replace(ogrid, head_dim=args.head_dim)
    lgrid = length_mix_grid(device, full=args.full, dry_run=args.dry_run)
    if args.model_points:
        mgrid = dataclasses.replace(mgrid, points=tuple(_point(text) for text in args.model_points))
    if args.model_backends:
        mgrid = dataclasses.replace(mgrid, backends=tuple(args.model_backends))
    providers = tuple(args.providers or PROVIDERS)
    only = set(args.only)
    run_ops, run_models = bool(only & {"op", "all"}), bool(only & {"model", "all"})
    run_mix = bool(only & {"length-mix", "all"})
    steps = (
        (len(providers) * len(ogrid.dtypes) * len(ogrid.lengths) if run_ops else 0)
        + ((len(mgrid.backends) + 1) * len(mgrid.points) if run_models else 0)
        + (steps_of(lgrid) if run_mix else 0)
    )
    print(
        f"nezha-kernels bench on {env['device_name']} ({device}); torch {env['torch']}, triton {env['triton']}; "
        f"{'dry run' if args.dry_run else 'full grid' if args.full else 'default grid'}",
        flush=True,
    )
    # Short CPU timing budgets: each cell already runs a forward+backward for its memory pass (the warm-up).
    budget = 0.05 if args.dry_run else 0.5
    progress = Progress(steps)  # also samples the load average at every step
    if dev.type == "cpu" and progress.peak_load is not None and progress.peak_load > cpu_cores():
        print(
            f"warning: load average {progress.peak_load:.1f} on {cpu_cores()} core(s): the machine is busy, "
            "times will be inflated",
            flush=True,
        )
    start = time.perf_counter()
    deadline = op_deadline = None
    if args.time_budget is not None:
        if args.time_budget <= 0:
            raise SystemExit(f"--time-budget must be positive, got {args.time_budget}")
        deadline = time.monotonic() + args.time_budget
        # ops may use 60% when models follow; time they leave unused goes to the models
        op_deadline = time.monotonic() + args.time_budget * (0.6 if run_models else 1.0)
    rows = []
    try:
        if run_ops:
            rows += run_op_bench(
                ogrid,
                device,
                env,
                providers=providers,
                progress=progress,
                limit_gib=limit_gib,
                cell_timeout_s=args.cell_timeout,
                cpu_budget_s=budget,
                deadline=op_deadline,
                parity_len=parity_len,
                failed_parity=tuple(args.failed_parity),
            )
        if run_models:
            rows += run_model_bench(
                mgrid,
                device,
                env,
                progress=progress,
                limit_gib=limit_gib,
                cell_timeout_s=args.cell_timeout,
                cpu_budget_s=budget,
                deadline=deadline,
            )
        if run_mix:
            rows += run_length_mix_bench(
                lgrid,
                device,
                env,
                progress=progress,
                limit_gib=limit_gib,
                cell_timeout_s=args.cell_timeout,
                cpu_budget_s=budget,
                deadline=deadline,
            )
    finally:
        progress.close()
    elapsed = time.perf_counter() - start

    print(format_table(rows))
    for line in timing_warnings(rows, progress.peak_load if dev.type == "cpu" else None):
        print("\n" + line)
    out = Path(args.out)
    written = [
        write_csv(rows, out / "results.csv", append=not args.fresh),
        write_json(rows, out / "results.json", append=not args.fresh),
    ]
    if not args.no_plots:
        written += plot_all(rows, out)
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; wrote " + ", ".join(str(p) for p in written))
    return 0 if any(r.status == "ok" for r in rows) else 1
