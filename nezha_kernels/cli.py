"""The `nezha-kernels` command (also `python -m nezha_kernels`): info, check, build, compile-check, bench."""

from __future__ import annotations

import argparse
import os
import platform
import sys

# What a program killed by SIGPIPE returns (128 + 13), as `yes | head` does: the reader went away.
BROKEN_PIPE_EXIT = 141


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .backends import available_backends

    print(f"nezha_kernels {__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    print(f"torch         {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # triton is optional on some platforms
        triton_version = f"not importable ({type(exc).__name__})"
    print(f"triton        {triton_version}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"device        cuda: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB")
    else:
        print(f"device        cpu ({torch.get_num_threads()} threads); no CUDA device")
    print("backends:")
    for status in available_backends().values():
        print(f"  {'+' if status.available else '-'} {status.name:<10} {status.reason}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .check import format_rows, resolve_device, run_checks

    try:
        device = resolve_device(args.device)
    except ValueError as exc:  # a clear message, as `bench --device cuda` gives, not a traceback
        print(f"nezha-kernels check: {exc}", file=sys.stderr)
        return 2
    rows = run_checks(device)
    print(format_rows(rows))
    failed = sum(not r.ok for r in rows)
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _build(args: argparse.Namespace) -> int:
    from .cuda_ext.build import CudaBuildError, build_extension, default_archs, jit_build_dir, parse_archs

    try:
        archs = parse_archs(args.archs) if args.archs else default_archs()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        build_extension(archs, build_dir=args.build_dir, verbose=args.verbose)
    except CudaBuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(f"CUDA extension for {', '.join(f'sm_{a}' for a in archs)} built in {jit_build_dir(archs, args.build_dir)}")
    return 0


def _compile_check(rest: list[str]) -> int:
    from .compile_check import main

    return main(rest)


def _bench(rest: list[str]) -> int:
    try:
        from .bench import main
    except ModuleNotFoundError as exc:
        if exc.name != "nezha_kernels.bench":
            raise
        print("the benchmark suite is not part of this version", file=sys.stderr)
        return 2
    return main(rest)


# Sub-tools with their own argument parsers: everything after the command goes to them unchanged.
_PASSTHROUGH = {"compile-check": _compile_check, "bench": _bench}


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`nezha-kernels info | head`): stop quietly. stdout now points at
    /dev/null, so the flush at exit does not raise a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's stand-in): nothing to flush into
        pass
    return BROKEN_PIPE_EXIT


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        return _reader_gone()


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _PASSTHROUGH:
        return _PASSTHROUGH[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="nezha-kernels", description="NEZHA relative-attention kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and backend availability").set_defaults(fn=_info)
    check = sub.add_parser("check", help="numeric parity of every usable backend against the reference")
    check.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    check.set_defaults(fn=_check)
    build = sub.add_parser("build", help="build the CUDA extension ahead of time (instead of on first use)")
    build.add_argument("--archs", default=None, help="SM archs, e.g. 80,90 (default: the local GPU's, else 80)")
    build.add_argument(
        "--build-dir",
        default=None,
        help="cache directory (default $NEZHA_KERNELS_BUILD_DIR or "
        "~/.cache/nezha_kernels; a build elsewhere is used only with that variable set)",
    )
    build.add_argument("--verbose", action="store_true", help="show the compiler commands")
    build.set_defaults(fn=_build)
    sub.add_parser("compile-check", help="compile every GPU kernel for sm_80/sm_90 without a GPU (see --help)")
    sub.add_parser("bench", help="op and model benchmarks: table, CSV/JSON and plots (see --help)")
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
