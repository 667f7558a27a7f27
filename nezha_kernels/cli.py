"""The `nezha-kernels` command (also `python -m nezha_kernels`): info, check, compile-check, bench."""

from __future__ import annotations

import argparse
import platform
import sys


def _info(_: argparse.Namespace) -> int:
    import torch

    from . import __version__
    from .backends import available_backends

    print(f"nezha_kernels {__version__}")
    print(f"python        {platform.python_version()} ({platform.machine()})")
    print(f"torch         {torch.__version__} (CUDA build: {torch.version.cuda or 'none'})")
    try:
        import triton

        print(f"triton        {triton.__version__}")
    except Exception as exc:  # triton is optional on some platforms
        print(f"triton        not importable ({type(exc).__name__})")
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
    from .check import format_rows, run_checks

    rows = run_checks(args.device)
    print(format_rows(rows))
    failed = sum(not r.ok for r in rows)
    print(f"\n{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _compile_check(args: argparse.Namespace) -> int:
    from .compile_check import main

    return main(args.rest)


def _bench(args: argparse.Namespace) -> int:
    try:
        from .bench import main
    except ModuleNotFoundError as exc:
        if exc.name != "nezha_kernels.bench":
            raise
        print("the benchmark suite is not part of this version", file=sys.stderr)
        return 2
    return main(args.rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nezha-kernels", description="NEZHA relative-attention kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device and backend availability").set_defaults(fn=_info)
    check = sub.add_parser("check", help="numeric parity of every usable backend against the reference")
    check.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    check.set_defaults(fn=_check)
    for name, fn, text in (("compile-check", _compile_check, "compile every GPU kernel for sm_80/sm_90 without a GPU"),
                           ("bench", _bench, "op and model benchmarks: table, CSV/JSON and plots")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fn)
    # argparse's REMAINDER does not capture options (e.g. "--only cuda"): pass unknown ones through to
    # the sub-tools that parse their own arguments, and let the others reject them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "rest"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.rest = [*args.rest, *extra]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
